# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Compact storage of Shampoo's statistics and inverse roots.

Statistics ``G G^T`` and their inverse roots are symmetric, so only the upper
triangle is stored, row by row: ``d (d + 1) / 2`` numbers for a ``d x d``
matrix, half of the full one. On top of that, ``statistics_dtype``:

* ``float32``: the packed triangle as is (the default).
* ``bfloat16``: the packed triangle rounded to bfloat16.
* ``int8``: the off-diagonal entries quantized to int8 with one float32 scale
  per row (the largest off-diagonal magnitude of the row), and the diagonal
  kept in float32: the diagonal dominates a PSD matrix, and storing it exactly
  keeps the small off-diagonal entries from being swamped (Google's original
  implementation does the same with int16).

Computation always happens in float32: a group of stored matrices is decoded
to ``[n, d, d]`` float32 before use and encoded after an update.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float32", "bfloat16", "int8")


class Int8Matrices(NamedTuple):
  """Symmetric matrices as int8 off-diagonals, per-row scales and a diagonal.

  Attributes:
    values: int8 ``[n, d (d + 1) / 2]``, the packed upper triangle (its diagonal
      positions are unused).
    scales: float32 ``[n, d]``, per row: largest off-diagonal magnitude / 127.
    diagonal: float32 ``[n, d]``.
  """

  values: jax.Array
  scales: jax.Array
  diagonal: jax.Array


def canonical_dtype(dtype) -> str:
  name = jnp.dtype(dtype).name if dtype is not None else "float32"
  if name not in DTYPES:
    raise ValueError(f"statistics_dtype must be one of {DTYPES}, got {dtype!r}")
  return name


@functools.lru_cache(maxsize=64)
def _layout(d: int):
  """Index maps between a d x d matrix and its packed upper triangle."""
  rows, cols = np.triu_indices(d)
  packed_of = np.zeros((d, d), np.int32)  # (i, j) -> packed position, symmetric
  packed_of[rows, cols] = np.arange(rows.size)
  packed_of[cols, rows] = np.arange(rows.size)
  flat = (rows * d + cols).astype(np.int32)  # packed position -> flat (i, j)
  return flat, packed_of, rows.astype(np.int32), (rows == cols)


@dataclasses.dataclass(frozen=True)
class Codec:
  """How a group of ``d x d`` matrices is stored: dtype, and packed or not.

  Symmetric matrices keep their upper triangle only; others (eigenbases) are
  stored whole, as ``[n, d * d]``.
  """

  dtype: str = "float32"
  symmetric: bool = True

  def empty(self, n: int, d: int, identity: bool = False):
    """n stored d x d matrices: zeros, or identities."""
    eye = jnp.eye(d, dtype=jnp.float32) if identity else jnp.zeros((d, d), jnp.float32)
    return self.encode(jnp.broadcast_to(eye, (n, d, d)))

  def encode(self, full: jax.Array):
    """float32 ``[n, d, d]`` -> stored form."""
    n, d = full.shape[0], full.shape[-1]
    if self.symmetric:
      flat, _, rows, on_diagonal = _layout(d)
      packed = full.reshape(n, d * d)[:, flat]
    else:
      packed = full.reshape(n, d * d)
      rows, on_diagonal = np.repeat(np.arange(d), d), (np.arange(d * d) % (d + 1) == 0)
    if self.dtype == "float32":
      return packed
    if self.dtype == "bfloat16":
      return packed.astype(jnp.bfloat16)
    diagonal = jnp.diagonal(full, axis1=-2, axis2=-1)
    off = jnp.where(jnp.eye(d, dtype=bool)[None], 0.0, jnp.abs(full))
    scales = jnp.max(off, axis=-1) / 127.0
    safe = jnp.where(scales > 0, scales, 1.0)
    values = jnp.round(packed / safe[:, rows])
    values = jnp.where(jnp.asarray(on_diagonal)[None], 0, values).astype(jnp.int8)
    return Int8Matrices(values, scales, diagonal)

  def decode(self, stored, d: int) -> jax.Array:
    """Stored form -> float32 ``[n, d, d]``."""
    if self.symmetric:
      _, packed_of, rows, _ = _layout(d)
    else:
      rows = np.repeat(np.arange(d), d)
    if isinstance(stored, Int8Matrices):
      packed = stored.values.astype(jnp.float32) * stored.scales[:, rows]
    else:
      packed = stored.astype(jnp.float32)
    n = packed.shape[0]
    full = packed[:, packed_of] if self.symmetric else packed.reshape(n, d, d)
    if isinstance(stored, Int8Matrices):
      eye = jnp.eye(d, dtype=bool)[None]
      full = jnp.where(eye, stored.diagonal[:, :, None], full)
    return full


def take_rows(stored, rows: jax.Array):
  """The stored matrices at ``rows`` (out of range: zeros)."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0, mode="fill", fill_value=0), stored)


def put_rows(stored, rows: jax.Array, new):
  """``stored`` with the matrices at ``rows`` replaced (out of range: dropped)."""
  return jax.tree.map(lambda x, y: x.at[rows].set(y, mode="drop"), stored, new)


def num_matrices(stored) -> int:
  return jax.tree.leaves(stored)[0].shape[0]


def packed_size(d: int) -> int:
  """Numbers stored for one symmetric d x d matrix."""
  return d * (d + 1) // 2
