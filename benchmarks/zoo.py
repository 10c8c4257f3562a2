# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Optimizers side by side on four small problems that no default here was tuned on.

A breadth check beside the LM, the CNN and the ViT: each problem is a different kind of
model, and none of them was used to choose an option or a default. Every optimizer runs
every learning rate of the problem's grid (``PROBLEMS``) on every seed; its row is the
learning rate with the best mean. The last column is the README's "what to try first"
check: the optimizer at AdamW's best learning rate.

- ``lstsq``: least squares, ``min_W |A W - B|^2`` with ``A`` 512 x 64 of condition number
  1e3 and ``W`` 64 x 32, minibatches of 128 rows, 300 steps. Loss: the full objective.
- ``autoencoder``: scikit-learn's digits through a tanh MLP 64-128-16-128-64, batch 64,
  600 steps. Loss: test reconstruction MSE.
- ``deep_mlp``: the digits classified by an 8-hidden-layer ReLU MLP of width 128 (no
  normalization), batch 64, 400 steps. Loss: cross-entropy on the training examples (an
  optimization problem: its test loss is best at the smallest learning rate, i.e. it
  measures overfitting).
- ``lstm``: the adding problem (Hochreiter and Schmidhuber, 1997): an LSTM of 64 units
  reads 20 pairs (value, mark) and regresses the sum of the two marked values; batch 64,
  500 steps. Loss: test MSE.

    python benchmarks/zoo.py             # the recorded figures (~20 min on one core)
    python benchmarks/zoo.py --problems lstsq   # one of them
    python benchmarks/zoo.py --schedule cosine  # every learning rate decayed to 0
    python benchmarks/zoo.py --tiny      # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/char_lm.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hostinfo  # noqa: E402
import peers  # noqa: E402

import shampoo_optax  # noqa: E402

TEST = 300  # held-out examples of the digits (the last ones) and of the adding problem


def _dense(key, sizes):
  return [{"w": jax.random.normal(jax.random.fold_in(key, i), (a, b)) / np.sqrt(a),
           "b": jnp.zeros(b)} for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def _mlp(params, x, act):
  for i, p in enumerate(params):
    x = x @ p["w"] + p["b"]
    x = act(x) if i < len(params) - 1 else x
  return x


def _digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)


def lstsq(seed):
  """(params, minibatch loss, train size, batch, evaluation)."""
  rng = np.random.default_rng(123)  # one problem; the seed sets the start and the batches
  u, _ = np.linalg.qr(rng.normal(size=(512, 64)))
  v, _ = np.linalg.qr(rng.normal(size=(64, 64)))
  a = jnp.asarray((u * np.logspace(0, 3, 64)) @ v.T, jnp.float32)
  b = a @ jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)
  objective = lambda p, rows: jnp.mean((a[rows] @ p["w"] - b[rows]) ** 2) / 1e3  # noqa: E731
  params = {"w": 0.01 * jax.random.normal(jax.random.PRNGKey(seed), (64, 32))}
  return params, objective, 512, 128, lambda p: objective(p, jnp.arange(512))


def autoencoder(seed):
  x, _ = _digits()
  loss = lambda p, rows: jnp.mean((_mlp(p, x[rows], jnp.tanh) - x[rows]) ** 2)  # noqa: E731
  test = jnp.arange(len(x) - TEST, len(x))
  return (_dense(jax.random.PRNGKey(seed), [64, 128, 16, 128, 64]), loss, len(x) - TEST, 64,
          lambda p: loss(p, test))


def deep_mlp(seed):
  x, y = _digits()

  def loss(p, rows):
    logits = _mlp(p, x[rows], jax.nn.relu)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]))

  train = jnp.arange(len(x) - TEST)  # with so few examples the test loss measures overfitting
  return (_dense(jax.random.PRNGKey(seed), [64] + [128] * 8 + [10]), loss, len(x) - TEST, 64,
          lambda p: loss(p, train))


def lstm(seed, length=20, units=64, n=4096):
  rng = np.random.default_rng(1000 + seed)
  values = rng.uniform(size=(n, length)).astype(np.float32)
  marks = np.zeros((n, length), np.float32)
  for row in range(n):
    marks[row, rng.choice(length, 2, replace=False)] = 1
  xs = jnp.asarray(np.stack([values, marks], -1).swapaxes(0, 1))  # [time, n, 2]
  ys = jnp.asarray((values * marks).sum(1))
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"wx": 0.5 * jax.random.normal(k[0], (2, 4 * units)),
            "wh": jax.random.normal(k[1], (units, 4 * units)) / np.sqrt(units),
            "b": jnp.zeros(4 * units),
            "out": jax.random.normal(k[2], (units, 1)) / np.sqrt(units)}

  def loss(p, rows):
    def cell(carry, x_t):
      h, c = carry
      i, f, g, o = jnp.split(x_t @ p["wx"] + h @ p["wh"] + p["b"], 4, axis=-1)
      c = jax.nn.sigmoid(f + 1) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      return (jax.nn.sigmoid(o) * jnp.tanh(c), c), None
    zeros = jnp.zeros((rows.shape[0], units))
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), xs[:, rows])
    return jnp.mean(((h @ p["out"])[:, 0] - ys[rows]) ** 2)

  return params, loss, n - TEST, 64, lambda p: loss(p, jnp.arange(n - TEST, n))


# Each problem: (builder, steps, learning-rate grid wide enough that every optimizer's best
# is inside it with a constant rate).
PROBLEMS = {
    "lstsq": (lstsq, 300, (1e-2, 3e-2, 1e-1, 3e-1, 1.0)),
    "autoencoder": (autoencoder, 600, (1e-3, 3e-3, 1e-2, 3e-2)),
    "deep_mlp": (deep_mlp, 400, (3e-4, 1e-3, 3e-3, 1e-2)),
    "lstm": (lstm, 500, (1e-3, 3e-3, 1e-2, 3e-2)),
}


def makers(weight_decay):
  wd = weight_decay
  return {
      "adamw": lambda lr, **kw: peers.adamw(lr, weight_decay=wd, **kw),
      # peers.muon (consistent_rms, so that it shares AdamW's grid) with optax's default
      # split: Muon on every 2-D weight, its AdamW on the rest.
      "muon": lambda lr, **kw: peers.muon(lr, weight_decay=wd, **{
          "muon_weight_dimension_numbers": None, **kw}),
      "google_shampoo": lambda lr, **kw: peers.google_shampoo(lr, weight_decay=wd, **kw),
      "shampoo": lambda lr, **kw: shampoo_optax.shampoo(lr, **{"weight_decay": wd, **kw}),
      "soap": lambda lr, **kw: shampoo_optax.soap(lr, **{"weight_decay": wd, **kw}),
  }


def train(problem, tx, seed, steps):
  """The evaluation loss after training (inf if it is not finite)."""
  params, loss, n_train, batch, evaluate = PROBLEMS[problem][0](seed)
  state = tx.init(params)

  @jax.jit
  def step(params, state, rows):
    grads = jax.grad(loss)(params, rows)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    params, state = step(params, state, jnp.asarray(rng.integers(0, n_train, batch)))
  value = float(evaluate(params))
  return value if np.isfinite(value) else float("inf")


def _rate(lr, schedule, steps):
  return lr if schedule == "constant" else optax.cosine_decay_schedule(lr, steps)


def _cell(value, spec):
  return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--problems", default=",".join(PROBLEMS))
  p.add_argument("--optimizers", default="adamw,muon,google_shampoo,shampoo,soap")
  p.add_argument("--lrs", help="one grid for every problem (default: each problem's own)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--steps", type=int, help="override every problem's step count")
  p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                 help="cosine: optax.cosine_decay_schedule(lr, steps), to 0 at the last step")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json", type=pathlib.Path)
  args = p.parse_args(argv)
  if args.tiny:
    args.lrs, args.seeds, args.steps = "3e-3", "0", 3
    args.optimizers = "adamw,shampoo,soap"  # the peers' code runs at --tiny in cnn.py
    args.problems = "lstsq,lstm"
  run = hostinfo.start()
  if args.tiny:
    # Trained: the quadratic and the scan (each jit compiles the whole update). The two
    # MLPs are only built and evaluated once, so that CI still runs their code.
    for problem in ("autoencoder", "deep_mlp"):
      params, *_, evaluate = PROBLEMS[problem][0](0)
      print(f"{problem}: loss at initialization {float(evaluate(params)):.4g}")
  seeds = [int(s) for s in args.seeds.split(",")]
  make = makers(args.weight_decay)
  specs = [peers.parse_spec(s) for s in args.optimizers.split(",")]
  if "adamw" not in [name for name, _, _ in specs]:  # the ratios' baseline
    specs = [("adamw", {}, None), *specs]
  rows, notes = [], []
  for problem in args.problems.split(","):
    lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else PROBLEMS[problem][2]
    steps = args.steps or PROBLEMS[problem][1]
    print(f"\n{problem}: {len(seeds)} seeds per learning rate ({args.schedule}, {steps} "
          f"steps); loss mean ± sd at the best lr; the last column at AdamW's best lr")
    print(f"{'optimizer':>15s} {'lr':>7s} {'loss':>21s} {'x AdamW':>8s} {'x Muon':>7s} "
          f"{'at AdamW lr':>12s}   grid (lr: mean loss)")
    sweeps = {}
    for name, kwargs, own_lrs in specs:
      label = peers.spec_label(name, kwargs)
      try:
        sweeps[label] = {
            lr: [train(problem, make[name](_rate(lr, args.schedule, steps), **kwargs), s, steps)
                 for s in seeds] for lr in own_lrs or lrs}
      except Exception as e:  # noqa: BLE001  (a peer that cannot run here is a result)
        print(f"{label:>15s} fails: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    means = {label: {lr: float(np.mean(v)) for lr, v in sweep.items()}
             for label, sweep in sweeps.items()}
    best = {label: min(m, key=m.get) for label, m in means.items()}
    base = next((label for label in sweeps if label.split("+")[0] == "adamw"), None)
    if base is None:
      raise SystemExit(f"{problem}: AdamW, the ratios' baseline, did not run")
    muon = next((label for label in sweeps if label.split("+")[0] == "muon"), None)
    for label, sweep in sweeps.items():
      lr = best[label]
      row = dict(problem=problem, optimizer=label, lr=lr, loss=means[label][lr],
                 loss_std=float(np.std(sweep[lr])), sweep=means[label],
                 at_adamw_lr=means[label].get(best[base]),
                 x_adamw=means[label][lr] / means[base][best[base]],
                 x_muon=means[label][lr] / means[muon][best[muon]] if muon else None)
      rows.append(row)
      print(f"{label:>15s} {lr:7.0e} {row['loss']:10.4g} ± {row['loss_std']:<8.2g} "
            f"{row['x_adamw']:8.3g} {_cell(row['x_muon'], '7.3g')} "
            f"{_cell(row['at_adamw_lr'], '12.4g')}   "
            + " ".join(f"{k:g}: {v:.4g}" for k, v in row["sweep"].items()), flush=True)
      notes.append(peers.edge_note(f"{problem} {label}", sweep, lr))
  for note in filter(None, notes):
    print(f"NOTE {note}")
  hostinfo.finish(run, args, rows=rows)


if __name__ == "__main__":
  main()
