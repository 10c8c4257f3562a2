# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shampoo next to AdamW on a character-level Transformer: the README's main job.

Trains the same 4-layer Transformer (Flax linen, ``TrainState``) twice on the
source code of Python's standard library (it ships with Python: nothing to
download), once with ``optax.adamw`` at its tuned learning rate and b2 and once with
``shampoo_optax.shampoo`` at the same learning rate, same data order and seed.
Prints a table (final losses, steps and seconds to reach AdamW's final loss,
step time) and writes two plots: validation loss against steps and against
training seconds.

    python examples/char_lm.py                 # about 2-3 minutes on 2 CPU cores
    python examples/char_lm.py --steps 30      # a quick look
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

# On CPU, jaxlib's eigh runs in OpenBLAS, whose threads fight XLA's own pool
# (4x slower eigh inside a jitted step). Must be set before numpy/jax load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import optax  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import lm_common  # noqa: E402

import shampoo_optax  # noqa: E402

# AdamW's best setting for this model in a sweep over lr x b2 (benchmarks/lm.py).
ADAMW_LR = 2e-3
ADAMW_B2 = 0.95


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=300, help="training steps per optimizer")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--lr", type=float, default=ADAMW_LR,
                 help="learning rate for both optimizers (AdamW's tuned one)")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-every", type=int, default=25)
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"),
                 help="directory for the PNG plots")
  p.add_argument("--diagnostics-every", type=int, default=100,
                 help="log Shampoo's root errors and condition estimates every N steps (0: off)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p.parse_args(argv)


def compare(histories: list[lm_common.History]) -> str:
  """A plain-text table; the first history is the baseline."""
  base = histories[0]
  lines = [
      f"{'optimizer':>10s} {'train':>7s} {'valid':>7s} {'valid/AdamW':>11s} "
      f"{'steps to AdamW':>14s} {'secs to AdamW':>13s} {'ms/step':>8s} {'step x':>6s} "
      f"{'compile s':>9s}",
  ]
  for h in histories:
    steps, secs = h.reach(base.final_valid)
    lines.append(
        f"{h.name:>10s} {h.train_loss[-1]:7.4f} {h.final_valid:7.4f} "
        f"{h.final_valid / base.final_valid:11.3f} "
        f"{'-' if steps is None else steps:>14} "
        f"{'-' if secs is None else f'{secs:.1f}':>13} "
        f"{1e3 * h.median_step:8.1f} {h.median_step / base.median_step:6.2f} "
        f"{h.compile_seconds:9.1f}"
    )
  return "\n".join(lines)


def plot(histories: list[lm_common.History], out: pathlib.Path) -> list[pathlib.Path]:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for key, xlabel in (("eval_steps", "step"), ("eval_seconds", "training seconds")):
    fig, ax = plt.subplots(figsize=(6, 4))
    for h in histories:
      ax.plot(getattr(h, key), h.valid_loss, marker=".", label=h.name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("char-level Transformer on Python's stdlib")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / f"char_lm_loss_vs_{xlabel.split()[-1]}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv=None):
  args = parse_args(argv)
  corpus = lm_common.load_corpus()
  print(f"corpus: {len(corpus.train):,} training and {len(corpus.valid):,} validation "
        f"characters of Python's standard library, {len(corpus.vocab)} symbols")
  common = dict(num_layers=args.layers, seq_len=args.seq_len, batch_size=args.batch_size,
                steps=args.steps, seed=args.seed, eval_every=args.eval_every,
                progress=not args.no_progress)
  histories = [
      lm_common.train_lm(optax.adamw(args.lr, b2=ADAMW_B2, weight_decay=args.weight_decay),
                         corpus,
                         name="AdamW", **common),
      lm_common.train_lm(shampoo_optax.shampoo(args.lr, weight_decay=args.weight_decay), corpus,
                         name="Shampoo", diagnostics_every=args.diagnostics_every, **common),
  ]
  print()
  print(compare(histories))
  final = histories[1].final_state
  report = shampoo_optax.diagnostics(final.opt_state, final.params)
  print(f"\nShampoo's preconditioners at the end ({len(report)} preconditioned parameters; "
        "the three with the largest root error):")
  for path, d in sorted(report.items(), key=lambda kv: -float(kv[1]["root_error"]))[:3]:
    print(f"  {path}: root error {float(d['root_error']):.1e}, "
          f"{int(d['root_failures'])} rejected, condition {float(d['condition']):.1e}")
  for path in plot(histories, args.out):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
