# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""shampoo(): the complete optimizer, as optax's aliases are built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from shampoo_optax import soap as soap_lib
from shampoo_optax import transform


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    block_size: int = 128,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    matrix_eps: jax.typing.ArrayLike = 1e-4,
    precondition_every: int = 10,
    start_preconditioning_step: int = 2,
    graft: str = "adam",
    nesterov: bool = False,
    exponent_override: int | None = 2,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int = 4096,
    root_method: str = "auto",
    stagger_root_refresh: bool = True,
    max_root_error: jax.typing.ArrayLike = 0.25,
    mu_dtype: Any | None = None,
    statistics_dtype: Any = "float32",
    pseudo_inverse_rtol: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    block_axis: str | tuple[str, ...] | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Distributed Shampoo with grafting and decoupled weight decay.

  Shampoo (`Anil et al., 2020 <https://arxiv.org/abs/2002.09018>`_)
  preconditions each block ``G`` of a parameter with inverse roots of its
  gradient statistics, ``L^(-1/2) G R^(-1/2)`` for a matrix (the paper's
  ``L^(-1/4) G R^(-1/4)`` with ``exponent_override=None``), and takes its step
  size per block from a diagonal method (Adam by default). Start from the
  learning rate and weight decay that work for ``optax.adamw`` on the same
  model: with the default Adam grafting they carry over.

  This is ``optax.chain(scale_by_shampoo(...),
  optax.add_decayed_weights(weight_decay, weight_decay_mask),
  optax.scale_by_learning_rate(learning_rate))``; see
  :func:`shampoo_optax.scale_by_shampoo` for the other arguments and for which
  ones are static under ``optax.inject_hyperparams``.

  Args:
    learning_rate: a float or an optax schedule.
    block_size: largest side of a preconditioned block.
    b1: decay of the first moment (momentum).
    b2: decay of the statistics and of the grafting second moment.
    eps: epsilon of the grafting method.
    matrix_eps: ridge relative to each statistic's largest eigenvalue.
    precondition_every: inverse roots are recomputed every this many steps.
    start_preconditioning_step: steps that use the grafting method alone.
    graft: the diagonal method Shampoo grafts from.
    nesterov: Nesterov momentum.
    exponent_override: every root is ``-1/exponent_override`` (default 2:
      ``L^(-1/2) G R^(-1/2)``); ``None`` for the paper's ``-1/(2k)``.
    max_merged_dim: merge adjacent dimensions up to this product.
    skip_preconditioning_dim_size_gt: dimensions larger than this get no
      statistic.
    root_method: ``'auto'``, ``'newton'`` or ``'eigh'``.
    stagger_root_refresh: spread root refreshes evenly over steps.
    max_root_error: roots with a larger error estimate are rejected.
    mu_dtype: dtype of the first moment (``'int8'``: row-scaled int8, see
      :func:`shampoo_optax.scale_by_shampoo`; the default with
      ``statistics_dtype='int8'``).
    statistics_dtype: storage of the roots: ``'float32'``, ``'bfloat16'`` or
      ``'int8'``; compact choices store the statistics in 16 bits (see
      :func:`shampoo_optax.scale_by_shampoo`).
    pseudo_inverse_rtol: use pseudo-inverse roots, dropping eigenvalues below
      this fraction of the largest.
    mesh: a mesh to spread the statistics and roots over.
    block_axis: the mesh axis (or axes) the statistics' blocks are split over.
    weight_decay: decoupled weight decay, multiplied by the learning rate as in
      ``optax.adamw``.
    weight_decay_mask: a tree of booleans, or a function of the params that
      returns one, selecting the parameters to decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import shampoo_optax
    >>> def loss(params):
    ...   return jnp.sum((params["w"] @ jnp.ones(3) - 1.0) ** 2)
    >>> params = {"w": jnp.full((4, 3), 0.5)}
    >>> tx = shampoo_optax.shampoo(learning_rate=1e-2, block_size=4)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 2.25)
    True
  """
  return optax.chain(
      transform.scale_by_shampoo(
          block_size=block_size,
          b1=b1,
          b2=b2,
          eps=eps,
          matrix_eps=matrix_eps,
          precondition_every=precondition_every,
          start_preconditioning_step=start_preconditioning_step,
          graft=graft,
          nesterov=nesterov,
          exponent_override=exponent_override,
          max_merged_dim=max_merged_dim,
          skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
          root_method=root_method,
          stagger_root_refresh=stagger_root_refresh,
          max_root_error=max_root_error,
          mu_dtype=mu_dtype,
          statistics_dtype=statistics_dtype,
          pseudo_inverse_rtol=pseudo_inverse_rtol,
          mesh=mesh,
          block_axis=block_axis,
      ),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def soap(
    learning_rate: optax.ScalarOrSchedule,
    block_size: int = 128,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    precondition_every: int = 10,
    start_preconditioning_step: int = 0,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int = 4096,
    basis_method: str = "auto",
    stagger_basis_refresh: bool = True,
    mu_dtype: Any | None = None,
    statistics_dtype: Any = "float32",
    mesh: jax.sharding.Mesh | None = None,
    block_axis: str | tuple[str, ...] | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SOAP (Adam in Shampoo's eigenbasis) with decoupled weight decay.

  `Vyas et al., 2024 <https://arxiv.org/abs/2409.11321>`_: ``optax.chain(
  scale_by_soap(...), optax.add_decayed_weights(weight_decay,
  weight_decay_mask), optax.scale_by_learning_rate(learning_rate))``. Same
  block, weight-decay, storage and mesh arguments as :func:`shampoo`; see
  :func:`shampoo_optax.scale_by_soap` for the others. Start from an AdamW
  learning rate (SOAP's paper uses about 3e-3 for small language models).

  Args:
    learning_rate: a float or an optax schedule.
    block_size: largest side of a rotated block.
    b1: decay of the first moment.
    b2: decay of the second moment and the statistics.
    eps: Adam's epsilon.
    precondition_every: eigenbases are recomputed every this many steps.
    start_preconditioning_step: all eigenbases in use after this step.
    max_merged_dim: merge adjacent dimensions up to this product.
    skip_preconditioning_dim_size_gt: larger dimensions are not rotated.
    basis_method: ``'auto'``, ``'eigh'`` or ``'qr'``.
    stagger_basis_refresh: spread basis refreshes evenly over steps.
    mu_dtype: dtype of the first moment (``'int8'``: row-scaled int8, see
      :func:`shampoo_optax.scale_by_shampoo`; the default with
      ``statistics_dtype='int8'``).
    statistics_dtype: storage of the bases (``'float32'``, ``'bfloat16'``,
      ``'int8'``); compact choices store the statistics in 16 bits.
    mesh: a mesh to spread the statistics and bases over.
    block_axis: the mesh axis (or axes) to split them over.
    weight_decay: decoupled weight decay (times the learning rate).
    weight_decay_mask: which parameters to decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  return optax.chain(
      soap_lib.scale_by_soap(
          block_size=block_size, b1=b1, b2=b2, eps=eps, precondition_every=precondition_every,
          start_preconditioning_step=start_preconditioning_step, max_merged_dim=max_merged_dim,
          skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
          basis_method=basis_method, stagger_basis_refresh=stagger_basis_refresh,
          mu_dtype=mu_dtype, statistics_dtype=statistics_dtype, mesh=mesh,
          block_axis=block_axis),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
