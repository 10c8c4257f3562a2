# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Optimizers side by side on a small CNN (scikit-learn's digits, Flax NNX), in one run.

The model and loop of examples/nnx_digits.py. Learning rates are swept on the
first seed; the best is run on every seed. Printed as means over seeds and as
ratios to AdamW measured in the same run: test loss and accuracy after the
epoch budget, epochs and training seconds to reach AdamW's final test loss,
median step time, compile time (first step), optimizer-state bytes.

    python benchmarks/cnn.py            # the recorded figures (~15 min on 2 CPUs)
    python benchmarks/cnn.py --tiny     # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/char_lm.py

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import lm  # noqa: E402
import nnx_digits  # noqa: E402
import peers  # noqa: E402

import shampoo_optax  # noqa: E402


def run(tx, data, *, epochs, batch_size, seed, make_model=nnx_digits.CNN):
  """Like nnx_digits.train, also timing every step and the first (compiling) one."""
  x_train, y_train, x_test, y_test = data
  model = make_model(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(optimizer, nnx.OptState)))
  rng = np.random.default_rng(seed)
  elapsed, steps, step_times, compile_s, evals = 0.0, 0, [], None, []
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      t = time.perf_counter()
      float(nnx_digits.train_step(model, optimizer, x_train[idx], y_train[idx]))
      dt = time.perf_counter() - t
      if compile_s is None:
        compile_s = dt
      else:
        step_times.append(dt)
        elapsed += dt
      steps += 1
    loss, acc = nnx_digits.evaluate(model, x_test, y_test)
    evals.append((steps, elapsed, float(loss), float(acc)))
  return dict(evals=evals, step_s=float(np.median(step_times)), compile_s=compile_s,
              state_bytes=state_bytes, worst=max(step_times) / float(np.median(step_times)))


def main(argv=None, *, doc=__doc__, title="CNN on digits", make_model=nnx_digits.CNN,
         lrs="3e-4,1e-3,3e-3,1e-2,3e-2", epochs=10, muon_dimension_numbers=None):
  """The sweep and the table, for any NNX model of the digits (benchmarks/vit.py reuses it)."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=epochs)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--lrs", default=lrs, help="learning rates swept on the 1st seed")
  p.add_argument("--optimizers", default="adamw,muon,google_shampoo,shampoo,soap")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json", type=pathlib.Path)
  args = p.parse_args(argv)
  if args.tiny:
    args.epochs, args.seeds, args.lrs = 1, "0", "3e-3"
  seeds = [int(s) for s in args.seeds.split(",")]
  lrs = [float(v) for v in args.lrs.split(",")]
  wd = args.weight_decay
  makers = {
      "adamw": lambda lr, **kw: peers.adamw(lr, weight_decay=wd, **kw),
      # Muon on the 2-D (dense) kernels, its Adam fallback on convolutions and
      # biases (optax's default split) unless the model names its own split;
      # consistent_rms as in peers.muon.
      "muon": lambda lr, **kw: optax.contrib.muon(lr, **{
          "weight_decay": wd, "adam_weight_decay": wd, "consistent_rms": 0.2,
          "muon_weight_dimension_numbers": muon_dimension_numbers, **kw}),
      "google_shampoo": lambda lr, **kw: peers.google_shampoo(lr, weight_decay=wd, **kw),
      "shampoo": lambda lr, **kw: shampoo_optax.shampoo(lr, **{"weight_decay": wd, **kw}),
      "soap": lambda lr, **kw: shampoo_optax.soap(lr, **{"weight_decay": wd, **kw}),
  }
  # Earlier defaults, by the names benchmarks/README.md's commands use
  # (the same as shampoo+b2=0.99 and so on).
  for label, base, fixed in (("shampoo_b2_0.99", "shampoo", dict(b2=0.99)),
                             ("shampoo_start_10", "shampoo", dict(start_preconditioning_step=10)),
                             ("soap_b2_0.95", "soap", dict(b2=0.95))):
    makers[label] = functools.partial(makers[base], **fixed)
  specs = [peers.parse_spec(spec) for spec in args.optimizers.split(",")]
  if "adamw" not in [name for name, _, _ in specs]:  # the ratios' baseline, as in lm.py
    specs = [("adamw", {}, None), *specs]
  print(f"$ python {' '.join(sys.argv)}")
  print(lm.machine())
  results, failed, edges = {}, {}, []
  train = dict(epochs=args.epochs, batch_size=args.batch_size, make_model=make_model)
  for name, kwargs, own_lrs in specs:
    label = peers.spec_label(name, kwargs)
    sweep = {}
    for lr in own_lrs or lrs:
      data = nnx_digits.load_digits(seeds[0])
      try:
        sweep[lr] = run(makers[name](lr, **kwargs), data, seed=seeds[0], **train)
      except Exception as e:  # noqa: BLE001  (a peer that cannot run here is a result)
        failed[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        print(f"  {label:>15s} fails under nnx.Optimizer: {failed[label]}", flush=True)
        break
      loss = sweep[lr]["evals"][-1][2]
      print(f"  {label:>15s} lr {lr:.0e} seed {seeds[0]}: test loss {loss:.4f}", flush=True)
    if label in failed:
      continue
    best = min(sweep, key=lambda lr: sweep[lr]["evals"][-1][2])
    edges.append(peers.edge_note(label, sweep, best))
    results[label] = (best, [sweep[best]] + [
        run(makers[name](best, **kwargs), nnx_digits.load_digits(s), seed=s, **train)
        for s in seeds[1:]])
    results[label][1][0]["sweep"] = {lr: r["evals"][-1][2] for lr, r in sweep.items()}
  baseline = next((label for label in results if label.split("+")[0] == "adamw"), None)
  if baseline is None:
    raise SystemExit(f"AdamW, the ratios' baseline, did not run: {failed}")
  _, base = results[baseline]
  base_loss = [r["evals"][-1][2] for r in base]
  base_secs = np.mean([r["evals"][-1][1] for r in base])
  base_step = np.median([r["step_s"] for r in base])
  base_compile = np.median([r["compile_s"] for r in base])
  print(f"\n{title}, {args.epochs} epochs of batch {args.batch_size}, seeds {seeds}; "
        f"lrs swept on seed {seeds[0]} (below; default grid {lrs})")
  print(f"{'optimizer':>15s} {'lr':>7s} {'test loss':>16s} {'x AdamW':>7s} {'acc':>6s} "
        f"{'epochs to AdamW':>15s} {'secs x':>6s} {'ms/step':>7s} {'step x':>6s} "
        f"{'worst/med':>9s} {'compile x':>9s} {'state x':>7s}")
  rows = []
  for name, (lr, rs) in results.items():
    losses = [r["evals"][-1][2] for r in rs]
    reach = []
    for r, target in zip(rs, base_loss):
      hit = [(e, s) for e, (_, s, loss, _) in enumerate(r["evals"], 1) if loss <= target]
      reach.append(hit[0] if hit else None)
    ok = all(x is not None for x in reach)
    row = dict(name=name, lr=lr, sweep=rs[0]["sweep"], loss=float(np.mean(losses)),
               loss_std=float(np.std(losses)),
               acc=float(np.mean([r["evals"][-1][3] for r in rs])),
               epochs_to_adamw=float(np.mean([x[0] for x in reach])) if ok else None,
               secs_x=float(np.mean([x[1] for x in reach]) / base_secs) if ok else None,
               step_ms=1e3 * float(np.median([r["step_s"] for r in rs])),
               worst=float(max(r["worst"] for r in rs)),
               compile_x=float(np.median([r["compile_s"] for r in rs]) / base_compile),
               state_x=rs[0]["state_bytes"] / base[0]["state_bytes"])
    row["loss_x"] = row["loss"] / float(np.mean(base_loss))
    row["step_x"] = row["step_ms"] / (1e3 * base_step)
    rows.append(row)
    fmt = lambda v, f: format("-", ">" + f.split(".")[0]) if v is None else format(v, f)  # noqa: E731
    print(f"{name:>15s} {lr:7.0e} {row['loss']:9.4f}±{row['loss_std']:.4f} {row['loss_x']:7.3f} "
          f"{row['acc']:6.3f} {fmt(row['epochs_to_adamw'], '15.1f')} "
          f"{fmt(row['secs_x'], '6.2f')} {row['step_ms']:7.1f} {row['step_x']:6.2f} "
          f"{row['worst']:9.2f} {row['compile_x']:9.2f} {row['state_x']:7.2f}")
  for name, reason in failed.items():
    print(f"{name:>15s} failed: {reason}")
  for edge in filter(None, edges):
    print(f"NOTE {edge}: widen the grid before quoting this row")
  print("\nsweeps on the first seed (lr: final test loss):")
  for name, (_, rs) in results.items():
    print(f"  {name}: " + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in rs[0]["sweep"].items()))
  if args.json:
    args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), machine=lm.machine(),
                                         rows=rows, failed=failed), indent=1))


if __name__ == "__main__":
  main()
