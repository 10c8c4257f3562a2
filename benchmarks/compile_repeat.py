# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Compile time of the growth model's train step, repeated: AdamW vs Shampoo in one process.

``growth.py`` compiles each step once, and one compile on a shared CPU moves by a second or
more. This script compiles each optimizer's whole train step and its update alone
``--repeats`` times, with ``jax.clear_caches()`` between, drops the first (warm-up) and keeps
the fastest of the others. To compare two versions of the package, run it once per version
from a ``git archive`` snapshot on ``PYTHONPATH``, alternating, on one pinned core, e.g.:

  git archive <commit> shampoo_optax | tar -x -C /tmp/snap
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false PYTHONPATH=/tmp/snap \\
      taskset -c 0 python benchmarks/compile_repeat.py --layers 4

It prints one line: the fastest whole-step and update compiles of each, and Shampoo's over
AdamW's. ``--tiny`` (1 layer, 2 repeats) is a smoke run.
"""

from __future__ import annotations

import argparse
import time

import growth  # noqa: I001 (sets the BLAS threads before JAX is imported)
import hostinfo
import jax
import lm_common

import shampoo_optax


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=4, help="compiles per optimizer, the "
                      "first dropped (default 4)")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args(argv)
  if args.tiny:
    args.layers, args.repeats = 1, 2
  report = hostinfo.start()
  print(f"shampoo_optax from {shampoo_optax.__file__}")
  corpus = lm_common.load_corpus(num_chars=200_000)
  model = lm_common.CharTransformer(len(corpus.vocab), d_model=128, num_layers=args.layers,
                                    num_heads=4, seq_len=64)
  x, y = next(lm_common.batches(corpus.train, 16, 64, seed=0))
  params = jax.jit(model.init)(jax.random.key(0), x)
  best = {}
  for name in ("adamw", "shampoo"):
    tx = growth.make_optimizer(name, 1e-3, "auto")
    state = jax.jit(tx.init)(params)
    whole, update = [], []
    for _ in range(args.repeats):
      jax.clear_caches()
      t = time.perf_counter()
      jax.jit(growth.make_step(model, tx)).trace(params, state, x, y).lower().compile()
      whole.append(time.perf_counter() - t)
      jax.clear_caches()
      t = time.perf_counter()
      jax.jit(tx.update).trace(params, state, params).lower().compile()
      update.append(time.perf_counter() - t)
    best[name] = (min(whole[1:]), min(update[1:]))
  (aw, au), (sw, su) = best["adamw"], best["shampoo"]
  print(f"layers {args.layers}: whole step AdamW {aw:.2f} s, Shampoo {sw:.2f} s, ratio "
        f"{sw / aw:.2f} | update AdamW {au:.2f} s, Shampoo {su:.2f} s, ratio {su / au:.2f}")
  hostinfo.finish(report, args, fastest={k: dict(whole_s=v[0], update_s=v[1])
                                         for k, v in best.items()})


if __name__ == "__main__":
  main()
