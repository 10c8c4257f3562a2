# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The diagonal methods Shampoo grafts its step size from.

Each is written in the parameters' tree layout and with optax's exact formulas,
so that before preconditioning starts, Shampoo *is* that optimizer:

* ``'adam'``: ``mu_hat / (sqrt(nu_hat) + eps)``, as ``optax.adam``.
* ``'rmsprop'``: ``mu_hat * rsqrt(nu + eps)``, as ``optax.rmsprop``.
* ``'rmsprop_normalized'``: RMSProp on gradients normalized per parameter
  (Google's ``RMSPROP_NORMALIZED``): the second moment accumulates
  ``(g / ||g||)**2`` and the direction is ``mu_hat / ||mu_hat||`` scaled by it.
* ``'adagrad'``: ``mu_hat * rsqrt(sum g**2 + eps)``, as ``optax.adagrad`` with
  ``initial_accumulator_value=0`` (the sum is not decayed, whatever ``b2``).
* ``'sgd'``: ``mu_hat``, as ``optax.sgd`` when ``b1 = 0``.
* ``'none'``: no grafting; ``mu_hat`` for the parameters Shampoo does not
  precondition, and Shampoo's own scale for the others.

``mu_hat`` is the bias-corrected first moment (the gradient when ``b1 = 0``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import quantization

GRAFTS = ("adam", "rmsprop", "rmsprop_normalized", "adagrad", "sgd", "none")


def keeps_second_moment(graft: str) -> bool:
  return graft in ("adam", "rmsprop", "rmsprop_normalized", "adagrad")


def moment_weight(decay: jax.typing.ArrayLike) -> jax.Array:
  """Weight of a new term in an EMA with ``decay``; 1 makes it a plain sum."""
  decay = jnp.asarray(decay)
  return jnp.where(decay == 1, jnp.ones_like(decay), 1 - decay)


def bias_correction(moment: optax.Updates, decay, count: jax.Array) -> optax.Updates:
  """moment / (1 - decay**count), as optax's, without mixing int and float."""
  correction = 1 - jnp.power(decay, count.astype(jnp.float32))
  return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


def _normalize(x: jax.Array) -> jax.Array:
  norm = jnp.linalg.norm(x)
  return x / jnp.where(norm > 0, norm, 1)


def update_second_moment(
    graft: str, grads: optax.Updates, nu: optax.Updates, b2: jax.typing.ArrayLike
) -> optax.Updates:
  if not keeps_second_moment(graft):
    return nu
  if graft == "adagrad":
    return jax.tree.map(lambda g, n: n + jnp.square(g).astype(n.dtype), grads, nu)
  if graft == "rmsprop_normalized":
    grads = jax.tree.map(_normalize, grads)
  weight = moment_weight(b2)
  return jax.tree.map(
      lambda g, n: (weight * jnp.square(g) + b2 * n).astype(n.dtype), grads, nu
  )


def direction(
    graft: str,
    mu_hat: optax.Updates,
    nu: optax.Updates,
    count: jax.Array,
    b2: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
) -> optax.Updates:
  """The grafting method's step for the (bias-corrected) first moment."""
  if graft == "adam":
    # No correction is due for b2 = 1 (plain sums), where 1 - b2**t is 0.
    nu_hat = bias_correction(nu, jnp.where(b2 == 1, 0.0, b2), count)
    return jax.tree.map(lambda m, n: m / (jnp.sqrt(n) + eps), mu_hat, nu_hat)
  if graft == "rmsprop":
    return jax.tree.map(lambda m, n: m * jax.lax.rsqrt(n + eps), mu_hat, nu)
  if graft == "rmsprop_normalized":
    return jax.tree.map(
        lambda m, n: _normalize(m) * jax.lax.rsqrt(n + eps), mu_hat, nu
    )
  if graft == "adagrad":
    return jax.tree.map(
        lambda m, n: m * jnp.where(n > 0, jax.lax.rsqrt(n + eps), 0.0), mu_hat, nu
    )
  return mu_hat


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
  def create(cls, mu_dtype, statistics_dtype: str, graft: str) -> MomentDtypes:
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
        keeps_nu=keeps_second_moment(graft),
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
