# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Bytes of Shampoo's statistics and roots per device, for N = 1, 2, 4, 8 devices.

The state of ``shampoo(..., mesh=mesh, block_axis="data")`` for the example
Transformer's parameters, on a mesh of N simulated CPU devices (set up here
with XLA_FLAGS, before JAX starts). Printed per N: bytes per device of the
statistics and roots (measured from ``addressable_shards``), that total times
N over the unsharded total (1.0 = no duplication; padding shows as a little
more), and the whole optimizer state per device (first moments follow the
parameters' sharding: replicated here, FSDP would split them too).

    python benchmarks/sharding_memory.py            # 8-layer model
    python benchmarks/sharding_memory.py --tiny
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import lm  # noqa: E402
import lm_common  # noqa: E402

import shampoo_optax  # noqa: E402


def per_device_bytes(tree) -> int:
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--d-model", type=int, default=256)
  p.add_argument("--optimizer", choices=["shampoo", "soap"], default="shampoo")
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args(argv)
  if args.tiny:
    args.layers, args.d_model = 1, 64
  print(f"$ python {' '.join(sys.argv)}")
  print(lm.machine())
  model = lm_common.CharTransformer(96, d_model=args.d_model, num_layers=args.layers)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  make = getattr(shampoo_optax, args.optimizer)
  rows = []
  for n in (1, 2, 4, 8):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:n])
    with jax.set_mesh(mesh):
      state = jax.jit(make(1e-3, mesh=mesh, block_axis="data").init)(params)[0]
    groups = [x for name, x in state._asdict().items() if name not in ("count", "mu", "nu")]
    rows.append((n, per_device_bytes(groups), per_device_bytes(state)))
  total = rows[0][1]
  print(f"\n{args.optimizer}, {args.layers}-layer d={args.d_model} Transformer "
        f"({n_params:,} parameters), float32 statistics")
  print(f"{'devices':>7s} {'stats+roots / device':>20s} {'x N / total':>11s} "
        f"{'whole state / device':>20s}")
  for n, groups_bytes, state_bytes in rows:
    print(f"{n:7d} {groups_bytes / 2**20:17.2f} MiB {groups_bytes * n / total:11.3f} "
          f"{state_bytes / 2**20:17.2f} MiB")


if __name__ == "__main__":
  main()
