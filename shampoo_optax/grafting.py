# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The diagonal methods Shampoo grafts its step size from (and SOAP's Adam).

Each is written once, with optax's formulas, for any list or tree of arrays:
the parameters' own leaves (for the parameters Shampoo does not precondition,
and the steps before preconditioning starts, where Shampoo *is* that
optimizer) and the stacks of blocks the preconditioned parameters' moments are
kept in (``shampoo_transform``):

* ``'adam'``: ``mu_hat / (sqrt(nu_hat) + eps)``, as ``optax.adam``.
* ``'rmsprop'``: ``mu_hat / sqrt(nu + eps)``, as ``optax.rmsprop``.
* ``'rmsprop_normalized'``: RMSProp on gradients normalized per parameter
  (Google's ``RMSPROP_NORMALIZED``): the second moment accumulates
  ``(g / ||g||)**2`` and the direction is ``mu_hat / ||mu_hat||`` scaled by it.
  On blocks, ``||.||`` is the whole parameter's norm (passed as ``norms``).
* ``'adagrad'``: ``mu_hat / sqrt(sum g**2 + eps)``, as ``optax.adagrad`` with
  ``initial_accumulator_value=0`` (the sum is not decayed, whatever ``b2``).
* ``'sgd'``: ``mu_hat``, as ``optax.sgd`` when ``b1 = 0``.
* ``'none'``: no grafting; ``mu_hat`` for the parameters Shampoo does not
  precondition, and Shampoo's own scale for the others.

``mu_hat`` is the bias-corrected first moment (the gradient when ``b1 = 0``).
A zero denominator gives a zero step (``safe_divide``), not a NaN: with
``eps = 0`` that is a coordinate, or a zero padding block, that has had no
gradient yet.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import moments

GRAFTS = ("adam", "rmsprop", "rmsprop_normalized", "adagrad", "sgd", "none")


def keeps_second_moment(graft: str) -> bool:
  """Whether ``graft`` keeps a diagonal second moment (``nu``)."""
  return graft in ("adam", "rmsprop", "rmsprop_normalized", "adagrad")


def safe_divide(x: jax.typing.ArrayLike, den: jax.typing.ArrayLike) -> jax.Array:
  """``x / den``, and 0 where ``den`` is 0.

  Wherever a denominator here is 0, the numerator is 0 too: a coordinate (or
  a zero padding block) that has had no gradient yet, with ``eps = 0``.
  """
  return x / jnp.where(den > 0, den, 1)


def leaf_norms(tree: optax.Updates) -> optax.Updates:
  """Each leaf's Frobenius norm: what ``'rmsprop_normalized'`` normalizes a
  parameter by (the default ``norms`` of the functions below)."""
  return jax.tree.map(jnp.linalg.norm, tree)


Norms = Callable[[optax.Updates], optax.Updates]


def update_second_moment(
    graft: str,
    grads: optax.Updates,
    nu: optax.Updates,
    b2: jax.typing.ArrayLike,
    norms: Norms = leaf_norms,
) -> optax.Updates:
  """The grafting method's second moment, updated with ``grads``.

  ``norms``: for ``'rmsprop_normalized'``, what each leaf is normalized by,
  broadcastable against it: the leaf's own norm by default; for stacks of
  blocks, the norm of the whole parameter each block belongs to.
  """
  if not keeps_second_moment(graft):
    return nu
  if graft == "adagrad":
    return jax.tree.map(lambda g, n: n + jnp.square(g).astype(n.dtype), grads, nu)
  if graft == "rmsprop_normalized":
    grads = jax.tree.map(safe_divide, grads, norms(grads))
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
    norms: Norms = leaf_norms,
) -> optax.Updates:
  """The grafting method's step for the (bias-corrected) first moment
  (``norms``: as for :func:`update_second_moment`)."""
  if graft == "adam":
    # No correction is due for b2 = 1 (plain sums), where 1 - b2**t is 0.
    nu_hat = moments.bias_correction(nu, jnp.where(b2 == 1, 0.0, b2), count)
    return jax.tree.map(lambda m, n: safe_divide(m, jnp.sqrt(n) + eps), mu_hat, nu_hat)
  if graft == "rmsprop_normalized":
    mu_hat = jax.tree.map(safe_divide, mu_hat, norms(mu_hat))
  if graft in ("rmsprop", "rmsprop_normalized", "adagrad"):
    return jax.tree.map(lambda m, n: safe_divide(m, jnp.sqrt(n + eps)), mu_hat, nu)
  return mu_hat


def step(
    graft: str,
    grads: optax.Updates,
    mu: optax.Updates,
    nu: optax.Updates,
    count: jax.Array,
    *,
    b1: jax.typing.ArrayLike,
    b2: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    nesterov: bool,
    norms: Norms = leaf_norms,
) -> tuple[optax.Updates, optax.Updates, optax.Updates]:
  """One step of the grafting method: ``(direction, mu, nu)``, the moments
  updated with ``grads`` (``nu`` as given for grafts without one). With
  ``'adam'`` this is ``optax.adam``'s step before its learning rate."""
  mu = optax.tree.update_moment(grads, mu, b1, 1)
  nu = update_second_moment(graft, grads, nu, b2, norms)
  mu_hat = moments.debiased_first_moment(mu, grads, b1, count, nesterov)
  return direction(graft, mu_hat, nu, count, b2, eps, norms), mu, nu
