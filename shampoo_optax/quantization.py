# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Compact storage of Shampoo's statistics and inverse roots.

Statistics ``G G^T`` and their inverse roots are symmetric, so half of each
matrix is stored. ``statistics_dtype``:

* ``float32`` (the default): two symmetric matrices share one ``d x d`` array,
  matrix ``2j`` in its upper triangle (with the diagonal), matrix ``2j + 1`` in
  its strict lower triangle, with its diagonal beside (:class:`SymmetricPairs`).
  Reading and writing them is an elementwise select and a transpose, with no
  gather, so the per-step statistics update and the roots' use cost one pass
  over half-sized arrays, and the accumulation ``b2 S + (1 - b2) G G^T`` is
  done in the stored form (it is linear). (Until 0.2, float32 matrices were
  packed upper triangles, unpacked and re-packed by gathers with a ``d x d``
  index map on every step.)
* ``bfloat16``: roots (SOAP: eigenbases) in bfloat16; statistics in 16 bits
  as ``int16`` below.
* ``int8``: roots / bases as int8 off-diagonals with one float32 scale per row
  (the row's largest off-diagonal magnitude) and the diagonal in float32;
  statistics in 16 bits as ``int16``.

``int16`` is the int8 scheme with 16-bit integers (Google's original
implementation stores its statistics the same way). Statistics need it: they
are running averages whose small eigenvalues set the largest directions of
``L^(-1/p)``, and 8 significant bits lose them. Measured on the LM benchmark
(``benchmarks/lm.py``, seed 0, validation loss after 300 steps): float32
1.759; bfloat16 statistics 2.005 (before the ridge below existed); int8
statistics 1.893; int16 statistics with bfloat16 roots 1.762, with int8 roots
1.757.

Encoding the statistics rounds stochastically (unbiased running averages), and
before a root is computed the decoded statistics get a ridge the size of their
rounding noise (``Codec.rounding_noise``), which keeps them PSD: without it,
quantized statistics come out slightly indefinite and most roots are rejected.

Computation always happens in float32: stored matrices are decoded to
``[n, d, d]`` float32 before use and encoded after an update. The compact
forms store upper triangles packed row by row (``d (d + 1) / 2`` numbers) and
unpack them with a gather: they trade step time for memory.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float32", "bfloat16", "int8")
_INTS = {"int8": (jnp.int8, 127.0), "int16": (jnp.int16, 32767.0)}


class ScaledIntMatrices(NamedTuple):
  """Matrices as integer off-diagonals, per-row scales and a float32 diagonal.

  Attributes:
    values: int8 or int16 ``[n, d (d + 1) / 2]``, the packed upper triangle
      (``[n, d * d]`` for unsymmetric matrices); diagonal positions unused.
    scales: float32 ``[n, d]``, per row: largest off-diagonal magnitude over
      the largest integer (127 or 32767).
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


# statistics_dtype -> (how statistics are stored, how roots / bases are stored).
# Compact statistics always take 16-bit integers: on the LM benchmark, bfloat16
# statistics cost 0.25 nats of validation loss (without the noise ridge) and
# int8 ones 0.13, int16 ones nothing measurable (see the module docstring).
STORAGE = {
    "float32": ("float32", "float32"),
    "bfloat16": ("int16", "bfloat16"),
    "int8": ("int16", "int8"),
}


def codecs(statistics_dtype, factor_symmetric: bool = True) -> tuple[Codec, Codec]:
  """The codecs of the statistics and of the matrices derived from them."""
  stats, factors = STORAGE[canonical_dtype(statistics_dtype)]
  return Codec(stats), Codec(factors, symmetric=factor_symmetric)


def stored_dtype(stored) -> str:
  """The codec dtype of a stored group of matrices."""
  if isinstance(stored, ScaledIntMatrices):
    return jnp.dtype(stored.values.dtype).name
  return jnp.dtype(jax.tree.leaves(stored)[0].dtype).name


@functools.lru_cache(maxsize=64)
def _layout(d: int):
  """Index maps between a d x d matrix and its packed upper triangle."""
  rows, cols = np.triu_indices(d)
  packed_of = np.zeros((d, d), np.int32)  # (i, j) -> packed position, symmetric
  packed_of[rows, cols] = np.arange(rows.size)
  packed_of[cols, rows] = np.arange(rows.size)
  flat = (rows * d + cols).astype(np.int32)  # packed position -> flat (i, j)
  return flat, packed_of, rows.astype(np.int32), (rows == cols)


class SymmetricPairs(NamedTuple):
  """Pairs of symmetric float32 matrices, half the storage of the full ones.

  Attributes:
    triangles: float32 ``[h, d, d]``: matrix ``2j`` in the upper triangle of
      ``triangles[j]`` (with the diagonal), matrix ``2j + 1`` in its strict
      lower triangle.
    diagonals: float32 ``[h, d]``: the diagonal of matrix ``2j + 1``.
  """

  triangles: jax.Array
  diagonals: jax.Array


@functools.lru_cache(maxsize=64)
def _mask_arrays(d: int):
  i, j = np.indices((d, d))
  return i <= j, i > j, i == j


def _masks(d: int):
  """Upper triangle with the diagonal; strict lower; the diagonal. As constants:
  XLA:CPU compiled the same selects from iotas 5x slower (0.83 s against
  0.15 s for one 32 x 32 pair decode)."""
  return tuple(jnp.asarray(m) for m in _mask_arrays(d))


def _pair_encode(full: jax.Array) -> SymmetricPairs:
  """``[2h, d, d]`` symmetric -> :class:`SymmetricPairs` (elementwise selects)."""
  return pair_encode_split(full[0::2], full[1::2])


def pair_encode_split(first: jax.Array, second: jax.Array,
                      second_diagonal: jax.Array | None = None) -> SymmetricPairs:
  """:class:`SymmetricPairs` of matrices ``2j`` (``first[j]``) and ``2j + 1``
  (``second[j]``), each ``[h, d, d]`` symmetric; ``second_diagonal``, if
  given, is ``diagonal(second)`` (read where it is cheapest)."""
  upper = _masks(first.shape[-1])[0]
  if second_diagonal is None:
    second_diagonal = diagonal(second)
  return SymmetricPairs(jnp.where(upper, first, second), second_diagonal)


def diagonal(x: jax.Array) -> jax.Array:
  """``[..., d]``: the diagonals of ``[..., d, d]``, as a strided slice (no gather)."""
  d = x.shape[-1]
  return x.reshape(*x.shape[:-2], d * d)[..., ::d + 1]


def _pair_decode(stored: SymmetricPairs) -> jax.Array:
  """:class:`SymmetricPairs` -> ``[2h, d, d]``."""
  triangles, diagonals = stored
  mirrored = jnp.swapaxes(triangles, -1, -2)
  upper, lower, eye = _masks(triangles.shape[-1])
  first = jnp.where(upper, triangles, mirrored)
  second = jnp.where(eye, diagonals[..., None], jnp.where(lower, triangles, mirrored))
  return jnp.stack([first, second], axis=1).reshape(-1, *triangles.shape[1:])


@dataclasses.dataclass(frozen=True)
class Codec:
  """How a set of ``d x d`` matrices is stored: dtype, and symmetric or not.

  Symmetric float32 matrices are stored in pairs (:class:`SymmetricPairs`),
  compact symmetric ones as packed upper triangles; others (eigenbases) whole,
  as ``[n, d, d]`` (float32, bfloat16) or ``[n, d * d]`` (int8).
  """

  dtype: str = "float32"  # or "bfloat16", "int8", "int16"
  symmetric: bool = True

  @property
  def paired(self) -> bool:
    return self.symmetric and self.dtype == "float32"

  def empty(self, n: int, d: int, identity: bool = False):
    """n stored d x d matrices: zeros, or identities (n even when paired)."""
    eye = jnp.eye(d, dtype=jnp.float32) if identity else jnp.zeros((d, d), jnp.float32)
    return self.encode(jnp.broadcast_to(eye, (n, d, d)))

  def num_matrices(self, stored) -> int:
    n = jax.tree.leaves(stored)[0].shape[0]
    return 2 * n if self.paired else n

  def encode(self, full: jax.Array, key: jax.Array | None = None):
    """float32 ``[n, d, d]`` -> stored form.

    With ``key``, compact dtypes round stochastically (unbiased): the
    statistics are running averages, and rounding to nearest would drop every
    increment or decay smaller than half a unit in the last place, step after
    step, so their small entries would freeze.
    """
    if self.paired:
      return _pair_encode(full)
    n, d = full.shape[0], full.shape[-1]
    if not self.symmetric and self.dtype in ("float32", "bfloat16"):
      return full.astype(self.dtype)
    if self.symmetric:
      flat, _, rows, on_diagonal = _layout(d)
      packed = full.reshape(n, d * d)[:, flat]
    else:
      packed = full.reshape(n, d * d)
      rows, on_diagonal = np.repeat(np.arange(d), d), (np.arange(d * d) % (d + 1) == 0)
    if self.dtype == "bfloat16":
      if key is None:
        return packed.astype(jnp.bfloat16)
      # Add uniform noise below bfloat16's last place, then truncate.
      bits = jax.lax.bitcast_convert_type(packed.astype(jnp.float32), jnp.uint32)
      noise = jax.random.bits(key, packed.shape, jnp.uint32) >> 16
      bits = (bits + noise) & jnp.uint32(0xFFFF0000)
      return jax.lax.bitcast_convert_type(bits, jnp.float32).astype(jnp.bfloat16)
    int_dtype, largest = _INTS[self.dtype]
    diag = diagonal(full)
    off = jnp.where(jnp.eye(d, dtype=bool)[None], 0.0, jnp.abs(full))
    scales = jnp.max(off, axis=-1) / largest
    safe = jnp.where(scales > 0, scales, 1.0)
    scaled = packed / safe[:, rows]
    if key is None:
      values = jnp.round(scaled)
    else:
      values = jnp.floor(scaled + jax.random.uniform(key, scaled.shape, jnp.float32))
    values = jnp.clip(values, -largest, largest)
    values = jnp.where(jnp.asarray(on_diagonal)[None], 0, values).astype(int_dtype)
    return ScaledIntMatrices(values, scales, diag)

  def accumulate(self, stored, new, decay, weight, d: int, key=None):
    """``decay * stored + weight * new`` in stored form.

    ``new``: ``[n, d, d]``, or for paired storage also already paired
    (:class:`SymmetricPairs`, e.g. by :func:`pair_encode_split`, so that no
    ``[n, d, d]`` array need be assembled). The paired layout is linear in the
    matrices, so this is one elementwise pass over it; the other forms decode,
    add and encode.
    """
    if self.paired:
      pairs = new if isinstance(new, SymmetricPairs) else _pair_encode(new)
      return jax.tree.map(lambda s, n: decay * s + weight * n, stored, pairs)
    return self.encode(decay * self.decode(stored, d) + weight * new, key)

  def decode_range(self, stored, start: int, size: int, d: int, slot: int) -> jax.Array:
    """float32 ``[size, d, d]``: the top-left ``d x d`` corners of matrices
    ``[start, start + size)`` of ``slot x slot`` ones, read as slices."""
    if self.paired:
      first, last = start // 2, -(-(start + size) // 2)
      part = SymmetricPairs(stored.triangles[first:last, :d, :d], stored.diagonals[first:last, :d])
      skip = start - 2 * first
      return _pair_decode(part)[skip:skip + size]
    part = jax.tree.map(lambda x: x[start:start + size], stored)
    return self.decode(part, slot)[:, :d, :d]

  def take_rows(self, stored, rows: jax.Array, d: int) -> jax.Array:
    """float32 ``[len(rows), d, d]``: the matrices at ``rows`` (out of range: zeros).

    Paired storage reads whole pairs: ``rows`` must be pairs ``2j, 2j + 1``
    one after the other, as ``factor_matrices.due_rows`` gives them.
    """
    if self.paired:
      return _pair_decode(take_rows(stored, rows[0::2] // 2))
    return self.decode(take_rows(stored, rows), d)

  def put_rows(self, stored, rows: jax.Array, full: jax.Array):
    """``stored`` with the matrices at ``rows`` replaced (out of range: dropped).

    Paired storage writes whole pairs: ``rows`` as for :meth:`take_rows`.
    """
    if not self.paired:
      return put_rows(stored, rows, self.encode(full))
    pairs = rows[0::2] // 2
    index = jnp.where(pairs < stored.triangles.shape[0], pairs, stored.triangles.shape[0])
    return put_rows(stored, index, _pair_encode(full))

  def rounding_noise(self, stored, full: jax.Array) -> jax.Array:
    """``[n]``: a high-probability bound on the spectral norm of the storage error.

    ``full`` is ``decode(stored)``. The rounding errors of the entries are
    independent with standard deviation at most half a unit in the last place,
    so the error matrix's norm is about ``2 sqrt(sum_j sigma_ij^2)`` (for the
    worst row i); this returns twice that. Adding it as a ridge makes a decoded
    PSD matrix PSD again, so its inverse roots are consistent.
    """
    if self.dtype == "float32":
      return jnp.zeros(full.shape[:1], jnp.float32)
    if isinstance(stored, ScaledIntMatrices):
      d = full.shape[-1]
      return 2.0 * jnp.sqrt(float(d)) * jnp.max(stored.scales, axis=-1)
    # bfloat16: a unit in the last place is at most 2^-7 of the entry.
    row_norms = jnp.linalg.norm(full, axis=-1)
    return 2.0 * 2.0**-7 * jnp.max(row_norms, axis=-1)

  def decode(self, stored, d: int) -> jax.Array:
    """Stored form -> float32 ``[n, d, d]``."""
    if self.paired:
      return _pair_decode(stored)
    if not isinstance(stored, ScaledIntMatrices) and stored.ndim == 3:
      return stored.astype(jnp.float32)  # unsymmetric, whole
    if self.symmetric:
      _, packed_of, rows, _ = _layout(d)
    else:
      rows = np.repeat(np.arange(d), d)
    if isinstance(stored, ScaledIntMatrices):
      packed = stored.values.astype(jnp.float32) * stored.scales[:, rows]
    else:
      packed = stored.astype(jnp.float32)
    n = packed.shape[0]
    full = packed[:, packed_of] if self.symmetric else packed.reshape(n, d, d)
    if isinstance(stored, ScaledIntMatrices):
      eye = jnp.eye(d, dtype=bool)[None]
      full = jnp.where(eye, stored.diagonal[:, :, None], full)
    return full


class QuantizedArray(NamedTuple):
  """An array as int8 values and one float32 scale per row of its last axis.

  The compact first moment (``mu_dtype='int8'``). ``values`` has the array's
  shape, so it shards like the parameter it belongs to; ``scales`` has shape
  ``shape[:-1] + (1,)``: the row's largest magnitude over 127.
  """

  values: jax.Array
  scales: jax.Array


def quantize_rows(x: jax.Array, key: jax.Array | None = None) -> QuantizedArray:
  """float ``x`` (rank >= 1) -> :class:`QuantizedArray`, rounding stochastically with ``key``.

  Stochastic rounding keeps a running average unbiased: rounded to nearest, an
  entry far below its row's largest would stay where it is whenever
  ``(1 - b1) g`` is under half a step of 1/127 of that largest entry.
  """
  x = x.astype(jnp.float32)
  scales = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127.0
  scaled = x / jnp.where(scales > 0, scales, 1.0)
  if key is None:
    values = jnp.round(scaled)
  else:
    noise = jax.random.uniform(key, x.shape, jnp.float32, out_sharding=jax.typeof(x).sharding)
    values = jnp.floor(scaled + noise)
  return QuantizedArray(jnp.clip(values, -127, 127).astype(jnp.int8), scales)


def dequantize_rows(q: QuantizedArray, dtype=jnp.float32) -> jax.Array:
  return (q.values.astype(jnp.float32) * q.scales).astype(dtype)


def take_rows(stored, rows: jax.Array):
  """The stored matrices at ``rows`` (out of range: zeros)."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0, mode="fill", fill_value=0), stored)


def put_rows(stored, rows: jax.Array, new):
  """``stored`` with the matrices at ``rows`` replaced (out of range: dropped)."""
  return jax.tree.map(lambda x, y: x.at[rows].set(y, mode="drop"), stored, new)


def packed_size(d: int) -> int:
  """Numbers stored for one symmetric d x d matrix."""
  return d * (d + 1) // 2
