# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Optimizers side by side on a small Vision Transformer (scikit-learn's digits, Flax NNX).

The held-out benchmark of issue 13: chosen before any tuning for that issue and
never used to pick a default. Same table, sweep and seeds as benchmarks/cnn.py
(whose loop it reuses), on a different architecture: 2x2 patches of the 8x8
images (16 tokens), a learned position table, 3 pre-LayerNorm Transformer
blocks (d 64, 4 heads, MLP 128), mean-pooled, and a linear head; 20 epochs of
batch 64 (420 steps).

    python benchmarks/vit.py            # the recorded figures (2 CPUs)
    python benchmarks/vit.py --tiny     # a smoke run (CI)
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/char_lm.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from optax.contrib import MuonDimensionNumbers  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cnn  # noqa: E402

PATCH, D_MODEL, HEADS, MLP, LAYERS = 2, 64, 4, 128, 3


class Block(nnx.Module):
  """Pre-LayerNorm self-attention and MLP, each with a residual."""

  def __init__(self, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.qkv = nnx.Linear(D_MODEL, 3 * D_MODEL, rngs=rngs)
    self.proj = nnx.Linear(D_MODEL, D_MODEL, rngs=rngs)
    self.norm2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.up = nnx.Linear(D_MODEL, MLP, rngs=rngs)
    self.down = nnx.Linear(MLP, D_MODEL, rngs=rngs)

  def __call__(self, x):
    b, n, _ = x.shape
    q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(b, n, 3 * HEADS, -1), 3, axis=2)
    att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]), axis=-1)
    x = x + self.proj(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, D_MODEL))
    return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class ViT(nnx.Module):
  """About 100k parameters on 8x8x1 images."""

  def __init__(self, rngs: nnx.Rngs):
    tokens = (8 // PATCH) ** 2
    self.embed = nnx.Linear(PATCH * PATCH, D_MODEL, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, D_MODEL)))
    self.blocks = nnx.List([Block(rngs) for _ in range(LAYERS)])
    self.norm = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.head = nnx.Linear(D_MODEL, 10, rngs=rngs)

  def __call__(self, x):
    b = x.shape[0]
    x = x.reshape(b, 8 // PATCH, PATCH, 8 // PATCH, PATCH).transpose(0, 1, 3, 2, 4)
    x = self.embed(x.reshape(b, -1, PATCH * PATCH)) + self.pos[...]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x).mean(axis=1))


def muon_dimension_numbers(params):
  """Muon on the blocks' weight matrices; its AdamW fallback on the patch embedding, the
  position table, the head, biases and norms (the customary split, as for the LM)."""

  def spec(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    if "blocks" in keys and "kernel" in keys and leaf.ndim == 2:
      return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    return None

  return jax.tree_util.tree_map_with_path(spec, params)


def main(argv=None):
  cnn.main(argv, doc=__doc__, title="ViT on digits", make_model=ViT,
           lrs="3e-4,1e-3,3e-3,1e-2,3e-2", epochs=20, muon_dimension_numbers=muon_dimension_numbers)


if __name__ == "__main__":
  main()
