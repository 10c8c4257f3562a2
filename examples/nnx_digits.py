# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shampoo in a Flax NNX loop: a small CNN on scikit-learn's handwritten digits.

``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``optimizer.update(model,
grads)``, with ``shampoo_optax.shampoo`` and ``optax.adamw`` side by side on the
same model, data and seed. The 1,797 8x8 digit images ship with scikit-learn.

    python examples/nnx_digits.py               # about a minute on 2 CPU cores
    python examples/nnx_digits.py --epochs 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/char_lm.py

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import shampoo_optax  # noqa: E402


class CNN(nnx.Module):
  """Two 3x3 convolutions and two dense layers (about 60k parameters)."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.dense1 = nnx.Linear(64 * 4 * 4, 64, rngs=rngs)
    self.dense2 = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.dense2(nnx.relu(self.dense1(x)))


def load_digits(seed: int = 0, test_fraction: float = 0.25):
  """(x_train, y_train, x_test, y_test): images in [0, 1], shape [n, 8, 8, 1]."""
  from sklearn.datasets import load_digits as sklearn_digits  # noqa: PLC0415

  data = sklearn_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  split = int(len(x) * (1 - test_fraction))
  train, test = order[:split], order[split:]
  return x[train], y[train], x[test], y[test]


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def train_step(model, optimizer, x, y):
  (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def evaluate(model, x, y):
  loss, logits = loss_fn(model, x, y)
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def train(tx, data, *, epochs: int, batch_size: int, seed: int) -> dict:
  x_train, y_train, x_test, y_test = data
  model = CNN(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  steps, seconds, history = 0, 0.0, []
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      t = time.perf_counter()
      float(train_step(model, optimizer, x_train[idx], y_train[idx]))
      seconds += time.perf_counter() - t
      steps += 1
    loss, accuracy = evaluate(model, x_test, y_test)
    history.append((steps, seconds, float(loss), float(accuracy)))
  return {"history": history, "test_loss": history[-1][2], "test_accuracy": history[-1][3]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=3e-3, help="learning rate for both optimizers")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  data = load_digits(args.seed)
  print(f"digits: {len(data[0])} training and {len(data[2])} test images")
  results = {}
  for name, tx in (("AdamW", optax.adamw(args.lr, weight_decay=args.weight_decay)),
                   ("Shampoo", shampoo_optax.shampoo(args.lr, weight_decay=args.weight_decay))):
    results[name] = train(tx, data, epochs=args.epochs, batch_size=args.batch_size,
                          seed=args.seed)
    print(f"{name:>8s}: " + ", ".join(
        f"epoch {e + 1} loss {loss:.3f} acc {acc:.3f}"
        for e, (_, _, loss, acc) in enumerate(results[name]["history"])
        if e in (0, args.epochs // 2, args.epochs - 1)))
  print(f"\n{'optimizer':>10s} {'test loss':>9s} {'test acc':>8s} {'train s':>7s}")
  for name, r in results.items():
    print(f"{name:>10s} {r['test_loss']:9.4f} {r['test_accuracy']:8.3f} {r['history'][-1][1]:7.1f}")


if __name__ == "__main__":
  main()
