# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""What ``shampoo_optax.diagnostics`` costs, next to a training step.

Trains the LM benchmark's Transformer for a few steps with ``shampoo`` (so the
statistics are real), then times ``diagnostics(opt_state, params)`` called
as is (it compiles its array work once per layout) and under ``jax.jit``,
against the median training step. Logging it
every N steps costs (diagnostics time / step time) / N of the training time.

    python benchmarks/diagnostics_cost.py
    python benchmarks/diagnostics_cost.py --tiny
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/char_lm.py

import jax  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import lm  # noqa: E402
import lm_common  # noqa: E402

import shampoo_optax  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--steps", type=int, default=40, help="training steps before measuring")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args(argv)
  if args.tiny:
    args.layers, args.steps, args.repeats = 1, 12, 2
  print(f"$ python {' '.join(sys.argv)}")
  print(lm.machine())
  corpus = lm_common.load_corpus(200_000 if args.tiny else 2_000_000)
  h = lm_common.train_lm(shampoo_optax.shampoo(3e-3, weight_decay=1e-4), corpus, name="shampoo",
                         num_layers=args.layers, steps=args.steps, eval_every=args.steps,
                         progress=False)
  state = h.final_state
  eager = lambda: shampoo_optax.diagnostics(state.opt_state, state.params)  # noqa: E731
  jitted_fn = jax.jit(shampoo_optax.diagnostics)
  jitted = lambda: jitted_fn(state.opt_state, state.params)  # noqa: E731
  t = time.perf_counter()
  report = jax.block_until_ready(jitted())
  compile_s = time.perf_counter() - t
  jax.block_until_ready(eager())  # compiles diagnostics' own jitted core, once
  eager_s = median_seconds(eager, args.repeats)
  jit_s = median_seconds(jitted, args.repeats)
  step_s = h.median_step
  print(f"\n{args.layers}-layer char Transformer, {len(report)} preconditioned parameters, "
        f"after {args.steps} steps")
  print(f"training step (median)     {1e3 * step_s:8.1f} ms")
  print(f"diagnostics, as is         {1e3 * eager_s:8.1f} ms  = {eager_s / step_s:5.2f} steps")
  print(f"diagnostics, jitted        {1e3 * jit_s:8.1f} ms  = {jit_s / step_s:5.2f} steps "
        f"(compile {compile_s:.1f} s, once)")
  for every in (10, 100):
    print(f"logged every {every:3d} steps (jitted): {100 * jit_s / step_s / every:.2f}% "
          "of training time")


if __name__ == "__main__":
  main()
