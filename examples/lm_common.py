# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A character-level Transformer LM on text that ships with Python itself.

The corpus is the source of Python's standard library (every CPython install
has it, so nothing is downloaded). Shared by examples/ and benchmarks/.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sysconfig

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Files read in sorted order until this many characters: the same text on
# every machine with the same Python minor version.
_STDLIB_MODULES = ("json", "email", "http", "logging", "unittest", "asyncio", "xml", "importlib",
                   "concurrent", "urllib", "collections", "sqlite3", "wsgiref", "html")


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: np.ndarray  # uint8 token ids
  valid: np.ndarray
  vocab: tuple[str, ...]


def load_corpus(num_chars: int = 2_000_000, valid_fraction: float = 0.1) -> Corpus:
  """Python standard-library source as a character corpus (printable ASCII)."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for m in _STDLIB_MODULES for p in (root / m).rglob("*.py"))
  if not files:
    raise RuntimeError(f"no Python sources found under {root}")
  chunks, total = [], 0
  for path in files:
    text = path.read_text(encoding="utf-8", errors="ignore")
    text = "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)
    chunks.append(text)
    total += len(text)
    if total >= num_chars:
      break
  text = "".join(chunks)[:num_chars]
  vocab = tuple(sorted(set(text)))
  table = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((table[c] for c in text), dtype=np.uint8, count=len(text))
  split = int(len(ids) * (1 - valid_fraction))
  return Corpus(ids[:split], ids[split:], vocab)


def batches(data: np.ndarray, batch_size: int, seq_len: int, seed: int):
  """An endless stream of (inputs, targets) windows, deterministic per seed."""
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    window = np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int32)
    yield window[:, :-1], window[:, 1:]


def fixed_batches(data: np.ndarray, num: int, batch_size: int, seq_len: int, seed: int = 1234):
  stream = batches(data, batch_size, seq_len, seed)
  return [next(stream) for _ in range(num)]


class Block(nn.Module):
  d_model: int
  num_heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h, mask=mask)
    h = nn.LayerNorm()(x)
    h = nn.Dense(4 * self.d_model)(h)
    return x + nn.Dense(self.d_model)(nn.gelu(h))


class CharTransformer(nn.Module):
  vocab_size: int
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  seq_len: int = 64

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.d_model)(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))
    x = x + pos[: tokens.shape[1]]
    for _ in range(self.num_layers):
      x = Block(self.d_model, self.num_heads)(x)
    return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))


def cross_entropy(logits, targets):
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
