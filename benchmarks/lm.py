# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Optimizers side by side on a character-level Transformer LM, in one run.

Same model, data, seeds and step budget for every optimizer: ``optax.adamw``,
``optax.contrib.muon``, Google's original ``precondition.distributed_shampoo``
(see benchmarks/peers.py) and ``shampoo_optax.shampoo``. Each optimizer's
learning rate is swept on the first seed; the best one is then run on every
seed. Printed per optimizer, as means (and spreads) over seeds and as ratios
to AdamW measured in the same run: validation loss at the budget, steps and
training seconds to reach AdamW's final validation loss, median step time,
worst step / median step, compile time and optimizer-state bytes.

    python benchmarks/lm.py                       # every optimizer, full grid, 3 seeds (hours)
    python benchmarks/lm.py --tiny                # a smoke run (CI)
    python benchmarks/lm.py --optimizers adamw,shampoo --seeds 0
    python benchmarks/lm.py --optimizers adamw,shampoo_bf16,shampoo_int8 \
        --lrs 4e-3 --adamw-b2s 0.95            # compact statistics
    python benchmarks/lm.py --interleave --steps 200 \
        --optimizers adamw@2e-3,shampoo@4e-3,soap@5e-3   # step time only, interleaved

``--interleave`` measures step time alone, and more steadily than the training runs, which
time each optimizer in its own stretch of minutes: every optimizer's train step is compiled,
then each takes one step in turn on the same batch, ``--steps`` times (after a warm-up of
``--precondition-every`` steps), so that a machine that slows down for a while slows every
optimizer alike. Printed: the median ms/step, and the ratio to AdamW's over each window of
``--precondition-every`` consecutive steps (one cycle of staggered refreshes): the windows'
median and range. Each optimizer runs at its first learning rate (``@lr`` or ``--lrs``'s).

The script leaves ``OPENBLAS_NUM_THREADS`` as it finds it: on CPU the package sets SciPy's BLAS,
which runs jaxlib's eigh, to one thread itself when the variable is unset
(``shampoo_optax.matrix_functions.single_threaded_cpu_lapack``), so a run without it measures
what a user gets.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import hostinfo  # noqa: E402
import lm_common  # noqa: E402
import peers  # noqa: E402

import shampoo_optax  # noqa: E402


def make_optimizers(weight_decay: float, block_size: int, precondition_every: int):
  """Name -> ``maker(lr, **kwargs)``; kwargs (from ``name+key=value``) replace settings."""
  ours = dict(block_size=block_size, precondition_every=precondition_every,
              weight_decay=weight_decay)

  def google(lr, **kw):
    return peers.google_shampoo(lr, **{"block_size": block_size,
                                       "preconditioning_compute_steps": precondition_every,
                                       "weight_decay": weight_decay, **kw})

  def variant(make, **fixed):
    return lambda lr, **kw: make(lr, **{**ours, **fixed, **kw})

  return {
      "adamw": lambda lr, b2=0.999, **kw: optax.adamw(lr, b2=b2, weight_decay=weight_decay, **kw),
      "muon": lambda lr, **kw: peers.muon(lr, weight_decay=weight_decay, **kw),
      "google_shampoo": google,
      "shampoo": variant(shampoo_optax.shampoo),
      "soap": variant(shampoo_optax.soap),
      # Variants of ours, for issue-7 figures: compact statistics, pseudo-inverse.
      "shampoo_bf16": variant(shampoo_optax.shampoo, statistics_dtype="bfloat16"),
      "shampoo_int8": variant(shampoo_optax.shampoo, statistics_dtype="int8"),
      "shampoo_pinv": variant(shampoo_optax.shampoo, pseudo_inverse_rtol=1e-6),
      # Earlier defaults, for comparison.
      "shampoo_start_10": variant(shampoo_optax.shampoo, start_preconditioning_step=10),
      "soap_b2_0.95": variant(shampoo_optax.soap, b2=0.95),
  }


def summarize(runs: dict[str, list[lm_common.History]], baseline: str = "adamw") -> list[dict]:
  """Means over seeds, and ratios to the baseline's means."""
  base = runs[baseline]
  base_final = {i: h.final_valid for i, h in enumerate(base)}
  rows = []
  for name, hs in runs.items():
    reach = [h.reach(base_final[i]) for i, h in enumerate(hs)]
    steps = [s for s, _ in reach if s is not None]
    secs = [t for _, t in reach if t is not None]
    rows.append(dict(
        name=name,
        lr=hs[0].lr,
        config=hs[0].config,
        seeds=len(hs),
        valid=float(np.mean([h.final_valid for h in hs])),
        valid_std=float(np.std([h.final_valid for h in hs])),
        reached=f"{len(steps)}/{len(hs)}",
        steps_to_baseline=float(np.mean(steps)) if len(steps) == len(hs) else None,
        secs_to_baseline=float(np.mean(secs)) if len(secs) == len(hs) else None,
        step_ms=1e3 * float(np.median([h.median_step for h in hs])),
        worst_step=float(max(max(h.step_seconds) / h.median_step for h in hs)),
        compile_s=float(np.median([h.compile_seconds for h in hs])),
        state_mb=hs[0].state_bytes / 2**20,
    ))
  b = rows[[r["name"] for r in rows].index(baseline)]
  base_steps, base_secs = base[0].eval_steps[-1], float(np.mean([h.eval_seconds[-1] for h in base]))
  for r in rows:
    r["valid_x"] = r["valid"] / b["valid"]
    r["steps_x"] = None if r["steps_to_baseline"] is None else r["steps_to_baseline"] / base_steps
    r["secs_x"] = None if r["secs_to_baseline"] is None else r["secs_to_baseline"] / base_secs
    r["step_x"] = r["step_ms"] / b["step_ms"]
    r["compile_x"] = r["compile_s"] / b["compile_s"]
    r["state_x"] = r["state_mb"] / b["state_mb"]
  return rows


def table(rows: list[dict]) -> str:
  fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
  w = max(15, *(len(r["name"]) for r in rows))
  head = (f"{'optimizer':>{w}s} {'lr':>7s} {'valid (mean±sd)':>16s} {'x AdamW':>7s} "
          f"{'reached':>7s} {'steps x':>7s} {'secs x':>7s} {'ms/step':>8s} {'step x':>6s} "
          f"{'worst/med':>9s} {'compile s':>9s} {'x':>5s} {'state MB':>8s} {'x':>5s}")
  lines = [head]
  for r in rows:
    lines.append(
        f"{r['name']:>{w}s} {r['lr']:7.0e} {r['valid']:9.4f}±{r['valid_std']:.4f} "
        f"{r['valid_x']:7.3f} {r['reached']:>7s} {fmt(r['steps_x'], '7.2f'):>7s} "
        f"{fmt(r['secs_x'], '7.2f'):>7s} {r['step_ms']:8.1f} {r['step_x']:6.2f} "
        f"{r['worst_step']:9.2f} {r['compile_s']:9.1f} {r['compile_x']:5.2f} "
        f"{r['state_mb']:8.2f} {r['state_x']:5.2f}")
  return "\n".join(lines)


def interleaved(entries: list[tuple[str, optax.GradientTransformation]], corpus, args,
                seed: int, baseline: int = 0) -> list[dict]:
  """Step time only: each optimizer's compiled train step, one step each in turn (see above);
  ratios to ``entries[baseline]``'s step."""
  window = args.precondition_every
  if args.steps < window:
    raise SystemExit(f"--interleave needs --steps >= --precondition-every ({window}): the "
                     "ratios are taken over windows of that many steps")
  kw = dict(num_layers=args.layers, seq_len=args.seq_len, batch_size=args.batch_size, seed=seed)
  runs, data = [], None
  for label, tx in entries:
    # Every setup draws the same stream (one seed); the first one's serves them all.
    _, state, compiled, compile_s, stream = lm_common.setup_lm(tx, corpus, **kw)
    data = data or stream
    runs.append(dict(label=label, state=state, step=compiled, compile_s=compile_s,
                     state_bytes=sum(x.nbytes for x in jax.tree.leaves(state.opt_state)),
                     times=[]))
  for i in range(window + args.steps):
    x, y = next(data)
    for run in runs:
      t = time.perf_counter()
      run["state"], loss = run["step"](run["state"], x, y)
      loss = float(loss)  # waits for the step
      if i >= window:
        run["times"].append(time.perf_counter() - t)
      if not np.isfinite(loss):
        raise SystemExit(f"{run['label']}: loss {loss} at step {i + 1}")
  base = np.asarray(runs[baseline]["times"])
  rows = []
  for run in runs:
    times = np.asarray(run["times"])
    ratios = [times[k:k + window].sum() / base[k:k + window].sum()
              for k in range(0, len(times) - window + 1, window)]
    rows.append(dict(optimizer=run["label"], ms_per_step=1e3 * float(np.median(times)),
                     x_adamw=float(np.median(ratios)), x_adamw_min=float(min(ratios)),
                     x_adamw_max=float(max(ratios)), windows=len(ratios),
                     compile_s=run["compile_s"], state_bytes=run["state_bytes"]))
  return rows


def interleaved_table(rows: list[dict]) -> str:
  lines = [f"{'optimizer':>40} {'ms/step':>8} {'x AdamW':>8} {'windows':>14} {'compile s':>9}"]
  for r in rows:
    lines.append(f"{r['optimizer']:>40} {r['ms_per_step']:8.1f} {r['x_adamw']:8.3f} "
                 f"{r['x_adamw_min']:6.2f}-{r['x_adamw_max']:<4.2f} ({r['windows']:>2}) "
                 f"{r['compile_s']:9.1f}")
  return "\n".join(lines)


def machine() -> str:
  return hostinfo.describe()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--lrs", default="1e-3,2e-3,3e-3,4e-3,5e-3,7e-3,1e-2",
                 help="learning rates swept on the 1st seed")
  p.add_argument("--adamw-b2s", default="0.95,0.999",
                 help="AdamW's b2 values, swept with the learning rates (tuned AdamW)")
  p.add_argument("--optimizers", default="adamw,muon,google_shampoo,shampoo,soap")
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--block-size", type=int, default=128)
  p.add_argument("--precondition-every", type=int, default=10)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--eval-every", type=int, default=10)
  p.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
  p.add_argument("--json", type=pathlib.Path, help="also write the results here")
  p.add_argument("--interleave", action="store_true",
                 help="step time only: the optimizers' steps taken in turn, --steps times")
  p.add_argument("--sweep-only", action="store_true",
                 help="ablations: only the first seed's sweeps, no AdamW baseline and no table")
  args = p.parse_args(argv)
  if args.tiny:
    args.steps, args.seeds, args.lrs, args.layers, args.eval_every = 12, "0", "2e-3", 1, 4
    args.adamw_b2s = "0.95"
    args.batch_size, args.block_size, args.precondition_every = 8, 32, 4
  seeds = [int(s) for s in args.seeds.split(",")]
  lrs = [float(v) for v in args.lrs.split(",")]
  specs = [peers.parse_spec(spec) for spec in args.optimizers.split(",")]
  if "adamw" not in [name for name, _, _ in specs] and (args.interleave or not args.sweep_only):
    specs = [("adamw", {}, None), *specs]  # the ratios' baseline
  print(f"$ python {' '.join(sys.argv)}")
  print(machine())
  corpus = lm_common.load_corpus(200_000 if args.tiny else 2_000_000)
  optimizers = make_optimizers(args.weight_decay, args.block_size, args.precondition_every)
  common = dict(num_layers=args.layers, seq_len=args.seq_len, batch_size=args.batch_size,
                steps=args.steps, eval_every=args.eval_every, progress=False)

  if args.interleave:
    entries = []
    for name, kwargs, own_lrs in specs:
      config = dict(lr=(own_lrs or lrs)[0], **kwargs)
      if name == "adamw":
        config.setdefault("b2", float(args.adamw_b2s.split(",")[0]))
      lr = config.pop("lr")
      entries.append((peers.spec_label(name, kwargs) + f"@{lr:g}", optimizers[name](lr, **config)))
    rows = interleaved(entries, corpus, args, seeds[0],
                       baseline=[name for name, _, _ in specs].index("adamw"))
    print(f"\n{args.layers}-layer char Transformer, batch {args.batch_size}x{args.seq_len}, "
          f"{args.steps} steps each, taken in turn after {args.precondition_every} untimed; "
          f"x AdamW: median (range) over windows of {args.precondition_every} steps")
    print(interleaved_table(rows))
    if args.json:
      args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), machine=machine(),
                                           rows=rows), indent=1))
    return

  def run(label, name, config, seed):
    t = time.perf_counter()
    h = lm_common.train_lm(optimizers[name](**config), corpus, name=name, seed=seed, **common)
    h.lr, h.config = config["lr"], config
    print(f"  {label} {config} seed {seed}: valid {h.final_valid:.4f}, "
          f"{1e3 * h.median_step:.1f} ms/step ({time.perf_counter() - t:.0f} s)", flush=True)
    return h

  runs, sweeps, edges = {}, {}, []
  for name, kwargs, own_lrs in specs:
    label = peers.spec_label(name, kwargs)
    grid = [dict(lr=lr, **kwargs) for lr in own_lrs or lrs]
    if name == "adamw":
      grid = [dict(c, b2=float(b2)) for b2 in args.adamw_b2s.split(",") for c in grid]
    sweep = [run(label, name, config, seeds[0]) for config in grid]
    best = min(sweep, key=lambda h: h.final_valid)
    sweeps[label] = [(h.config, h.final_valid) for h in sweep]
    edges.append(peers.edge_note(label, [c["lr"] for c in grid], best.lr))
    if not args.sweep_only:
      runs[label] = [best] + [run(label, name, best.config, s) for s in seeds[1:]]
  if args.sweep_only:
    for label, sweep in sweeps.items():
      print(f"  {label}: " + ", ".join(f"{c['lr']:g}: {v:.4f}" for c, v in sweep))
    return
  baseline = next(label for label in runs if label.split("+")[0] == "adamw")
  rows = summarize(runs, baseline=baseline)
  print()
  print(f"{args.layers}-layer char Transformer, batch {args.batch_size}x{args.seq_len}, "
        f"{args.steps} steps, seeds {seeds}; lrs swept on seed {seeds[0]} (below; default grid "
        f"{lrs}; AdamW also over b2 in {args.adamw_b2s}; best: {runs[baseline][0].config})")
  print(table(rows))
  for edge in filter(None, edges):
    print(f"NOTE {edge}: widen the grid before quoting this row")
  print("\nsweeps on the first seed (config: final valid loss):")
  for name, sweep in sweeps.items():
    print(f"  {name}: " + ", ".join(f"{c}: {v:.4f}" for c, v in sweep))
  if args.json:
    args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), machine=machine(),
                                         rows=rows, sweeps=sweeps), indent=1))


if __name__ == "__main__":
  main()
