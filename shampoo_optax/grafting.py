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

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import moments

GRAFTS = ("adam", "rmsprop", "rmsprop_normalized", "adagrad", "sgd", "none")


def keeps_second_moment(graft: str) -> bool:
  """Whether ``graft`` keeps a diagonal second moment (``nu``)."""
  return graft in ("adam", "rmsprop", "rmsprop_normalized", "adagrad")


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
  weight = moments.moment_weight(b2)
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
    nu_hat = moments.bias_correction(nu, jnp.where(b2 == 1, 0.0, b2), count)
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
