# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""First and second moments: bias correction, EMA weights, storage dtypes.

Shared by Shampoo (its first moment and its grafting method's second moment)
and SOAP (Adam's moments in the eigenbasis).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import quantization


def moment_weight(decay: jax.typing.ArrayLike) -> jax.Array:
  """Weight of a new term in an EMA with ``decay``; 1 makes it a plain sum."""
  decay = jnp.asarray(decay)
  return jnp.where(decay == 1, jnp.ones_like(decay), 1 - decay)


def bias_correction(moment: optax.Updates, decay, count: jax.Array) -> optax.Updates:
  """moment / (1 - decay**count), as optax's, without mixing int and float."""
  correction = 1 - jnp.power(decay, count.astype(jnp.float32))
  return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


def debiased_first_moment(mu: optax.Updates, grads: optax.Updates, b1, count: jax.Array,
                          nesterov: bool) -> optax.Updates:
  """Adam's ``mu_hat`` (``mu`` already updated with ``grads``), or optax.adam's
  Nesterov variant ``b1 mu / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``."""
  if nesterov:
    return jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        bias_correction(mu, b1, optax.safe_increment(count)),
        bias_correction(grads, b1, count),
    )
  return bias_correction(mu, b1, count)


def first_moment_coefficients(b1, count: jax.Array, nesterov: bool):
  """``(a, b)`` with :func:`debiased_first_moment` ``= a mu + b g``, float32
  scalars; ``b`` is ``None`` without Nesterov (``mu_hat = a mu``)."""
  b1 = jnp.asarray(b1, jnp.float32)
  t = count.astype(jnp.float32)
  if not nesterov:
    return 1 / (1 - jnp.power(b1, t)), None
  return b1 / (1 - jnp.power(b1, t + 1)), (1 - b1) / (1 - jnp.power(b1, t))


@dataclasses.dataclass(frozen=True)
class MomentDtypes:
  """Storage dtypes of the first moment and the grafting second moment.

  Computation happens in the gradients' dtype (as in optax.adam); the moments
  are stored in ``mu`` / ``nu`` (``None``: the parameters' dtype). ``mu`` int8
  stores each first moment of rank >= 2 as a ``quantization.QuantizedArray``
  (int8 values, a float32 scale per row of the last axis, stochastic rounding)
  and the others as bfloat16.
  """

  mu: Any | None
  nu: Any | None
  keeps_nu: bool

  @classmethod
  def create(cls, mu_dtype, statistics_dtype: str, keeps_nu: bool) -> MomentDtypes:
    compact = statistics_dtype != "float32"
    if mu_dtype is None and statistics_dtype == "int8":
      mu_dtype = jnp.int8
    if mu_dtype is not None:
      mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype)
      if not (jnp.issubdtype(mu_dtype, jnp.floating) or mu_dtype == jnp.int8):
        raise ValueError(f"mu_dtype must be a float dtype or int8, got {mu_dtype}")
    return cls(
        mu=mu_dtype,
        nu=jnp.dtype(jnp.bfloat16) if compact else None,
        keeps_nu=keeps_nu,
    )

  @property
  def quantized_mu(self) -> bool:
    return self.mu is not None and self.mu == jnp.int8

  def init(self, params):
    if self.quantized_mu:
      mu = jax.tree.map(
          lambda p: self._encode(jnp.zeros_like(p, jnp.float32), p, None), params)
    else:
      mu = optax.tree.zeros_like(params, dtype=self.mu)
    nu = optax.tree.zeros_like(params, dtype=self.nu) if self.keeps_nu else ()
    return mu, nu

  def load(self, mu, nu, grads):
    """The stored moments in the gradients' dtypes, for computing."""
    if self.quantized_mu:
      mu = jax.tree.map(lambda g, m: _decode(m, g.dtype), grads, mu)
    else:
      mu = optax.tree.cast_like(mu, grads)
    return mu, optax.tree.cast_like(nu, grads) if self.keeps_nu else ()

  def store(self, mu, nu, old_mu, old_nu, count: jax.Array):
    """The moments in their stored form; ``count`` seeds stochastic rounding."""
    if self.quantized_mu:
      leaves, treedef = jax.tree.flatten(mu)
      key = jax.random.fold_in(jax.random.key(1), count)
      mu = jax.tree.unflatten(treedef, [
          self._encode(m, m, jax.random.fold_in(key, i)) for i, m in enumerate(leaves)])
    else:
      mu = optax.tree.cast_like(mu, old_mu)
    return mu, optax.tree.cast_like(nu, old_nu) if self.keeps_nu else ()

  @staticmethod
  def _encode(x, like, key):
    if jnp.ndim(like) >= 2:
      return quantization.quantize_rows(x, key)
    return x.astype(jnp.bfloat16)

  def shapes(self, mu):
    """``mu`` as a tree of the parameters' structure (to check gradients against)."""
    return jax.tree.map(lambda m: m.values if isinstance(m, quantization.QuantizedArray) else m,
                        mu, is_leaf=lambda m: isinstance(m, quantization.QuantizedArray))


def _decode(m, dtype):
  if isinstance(m, quantization.QuantizedArray):
    return quantization.dequantize_rows(m, dtype)
  return m.astype(dtype)
