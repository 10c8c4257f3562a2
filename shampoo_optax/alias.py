# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""shampoo() and soap(): the complete optimizers, built as optax's aliases are.

Their signatures follow ``optax.adamw``: ``learning_rate, b1, b2, eps,
mu_dtype, weight_decay, mask`` may be given by position, everything else is
keyword-only.
"""

import warnings
from collections.abc import Callable
from typing import Any

import jax
import optax

from shampoo_optax import shampoo_transform as transform
from shampoo_optax import soap_transform as soap_lib
from shampoo_optax import validation

MaskOrFn = Any | Callable[[optax.Params], Any] | None


def _weight_decay_mask(optimizer: str, mask: MaskOrFn, weight_decay_mask: MaskOrFn) -> MaskOrFn:
  """``mask``, or the deprecated ``weight_decay_mask`` (its name before 0.2.0)."""
  if weight_decay_mask is None:
    return mask
  if mask is not None:
    raise TypeError(f"{optimizer}() got both mask and weight_decay_mask; pass mask only")
  warnings.warn(
      f"{optimizer}(weight_decay_mask=...) is deprecated; pass mask=..., as to optax.adamw",
      DeprecationWarning, stacklevel=3)
  return weight_decay_mask


def _check_b1(optimizer: str, b1: Any) -> None:
  """Before 0.2.0 the second positional argument was ``block_size``: an old
  ``shampoo(1e-3, 128)`` now binds 128 to ``b1`` and is told what to write."""
  if isinstance(b1, int) and not isinstance(b1, bool) and b1 >= 1:
    raise ValueError(
        f"b1 must be in [0, 1), got {b1!r}. Since shampoo_optax 0.2.0 the arguments after "
        f"learning_rate follow optax.adamw (b1, b2, eps, mu_dtype, weight_decay, mask) and "
        f"block_size is keyword-only: {optimizer}(learning_rate, block_size={b1})")


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    block_size: int = 128,
    matrix_eps: jax.typing.ArrayLike = 1e-4,
    precondition_every: int = 10,
    start_preconditioning_step: int = 2,
    graft: str = "adam",
    nesterov: bool = False,
    orthogonalize: bool = False,
    exponent_override: int | None = 2,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int = 4096,
    root_method: str = "auto",
    stagger_root_refresh: bool = True,
    max_root_error: jax.typing.ArrayLike = 0.25,
    statistics_dtype: Any = "float32",
    pseudo_inverse_rtol: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    block_axis: str | tuple[str, ...] | None = None,
    param_specs: Any = None,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Distributed Shampoo with grafting and decoupled weight decay.

  Shampoo (`Anil et al., 2020 <https://arxiv.org/abs/2002.09018>`_)
  preconditions each block ``G`` of a parameter with inverse roots of its
  gradient statistics, ``L^(-1/2) G R^(-1/2)`` for a matrix (the paper's
  ``L^(-1/4) G R^(-1/4)`` with ``exponent_override=None``), and takes its step
  size per block from a diagonal method (Adam by default). Start from the
  learning rate and weight decay that work for ``optax.adamw`` on the same
  model: with the default Adam grafting they carry over, and until
  ``start_preconditioning_step`` this *is* ``optax.adamw``.

  This is ``optax.chain(scale_by_shampoo(...), optax.add_decayed_weights(
  weight_decay, mask), optax.scale_by_learning_rate(learning_rate))``. The
  arguments up to ``mask`` are those of ``optax.adamw`` and may be passed by
  position; the others are keyword-only. The arguments in
  ``shampoo_optax.STATIC_ARGS`` set shapes or code paths: with
  ``optax.inject_hyperparams`` pass ``static_args=shampoo_optax.STATIC_ARGS``.

  Args:
    learning_rate: a float or an optax schedule.
    b1: decay of the first moment (momentum), in ``[0, 1)``.
    b2: decay of the statistics and of the grafting method's second moment,
      in ``[0, 1]``.
    eps: epsilon of the grafting method (as in ``optax.adam``).
    mu_dtype: dtype of the first moment; ``None`` keeps the parameters'.
      ``'int8'``: row-scaled int8 (see :func:`shampoo_optax.scale_by_shampoo`;
      the default with ``statistics_dtype='int8'``).
    weight_decay: decoupled weight decay, multiplied by the learning rate as in
      ``optax.adamw`` (default 0, as in ``optax.contrib.muon``).
    mask: a tree of booleans with the parameters' structure, or a function of
      the params that returns one, selecting the parameters to decay (as in
      ``optax.adamw``).
    block_size: largest side of a preconditioned block; larger dimensions are
      split into blocks of this size.
    matrix_eps: ridge added to each statistic before its root, relative to the
      statistic's largest eigenvalue.
    precondition_every: each inverse root is recomputed every this many steps.
    start_preconditioning_step: the first this many steps use the grafting
      method alone.
    graft: the diagonal method Shampoo grafts from: ``'adam'``, ``'rmsprop'``,
      ``'rmsprop_normalized'``, ``'adagrad'``, ``'sgd'`` or ``'none'``.
    nesterov: Nesterov momentum, as ``optax.adam(nesterov=True)``.
    orthogonalize: orthogonalize each preconditioned matrix block (Muon's
      Newton-Schulz iteration) before grafting; see :func:`scale_by_shampoo`.
    exponent_override: every root is ``-1/exponent_override``; the default 2
      gives ``L^(-1/2) G R^(-1/2)``. ``None`` or ``0`` (the spelling of Google's
      ``distributed_shampoo``, whose default it is): the paper's ``-1/(2k)``
      for a block with ``k`` preconditioned axes.
    max_merged_dim: merge adjacent dimensions while their product is at most
      this. The default (``None``): merge them while it is at most
      ``block_size``, then cut what still has more than two dimensions into
      its most nearly square matrix (an attention kernel ``[d, heads,
      head_dim]`` is preconditioned as ``[d, heads * head_dim]``, a ``(3, 3,
      c_in, c_out)`` convolution as ``(9 c_in, c_out)``). A number keeps
      higher ranks (a root per side); ``block_size`` is 0.2's default, whose
      checkpoints of such tensors need it.
    skip_preconditioning_dim_size_gt: dimensions larger than this get no
      statistic (the block is preconditioned on its other sides only).
    root_method: ``'newton'``, ``'eigh'``, or ``'auto'`` (Newton on TPUs,
      eigh on CPUs and GPUs, where it was faster).
    stagger_root_refresh: refresh ``1/precondition_every`` of the roots on
      every step instead of all of them together.
    max_root_error: a computed root with a larger error estimate is rejected
      and the previous one kept.
    statistics_dtype: storage of the roots: ``'float32'``, ``'bfloat16'`` or
      ``'int8'``; the compact choices store the statistics in 16 bits (see
      :func:`shampoo_optax.scale_by_shampoo`).
    pseudo_inverse_rtol: use pseudo-inverse roots, dropping eigenvalues below
      this fraction of the largest.
    mesh: a ``jax.sharding.Mesh`` to spread the statistics and roots over.
    block_axis: the mesh axis (or axes) the statistics' blocks are split over.
    param_specs: FSDP: the parameters' ``PartitionSpec``\ s; each device
      keeps the blocks of its own shards (see
      :func:`shampoo_optax.scale_by_shampoo`).
    weight_decay_mask: deprecated name of ``mask`` (warns).

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

  References:
    Gupta et al., `Shampoo: Preconditioned Stochastic Tensor Optimization
    <https://arxiv.org/abs/1802.09568>`_, 2018

    Anil et al., `Scalable Second Order Optimization for Deep Learning
    <https://arxiv.org/abs/2002.09018>`_, 2020

    Morwani et al., `A New Perspective on Shampoo's Preconditioner
    <https://arxiv.org/abs/2406.17748>`_, 2024
  """
  _check_b1("shampoo", b1)
  validation.validate_step_size("learning_rate", learning_rate)
  validation.validate_step_size("weight_decay", weight_decay)
  mask = _weight_decay_mask("shampoo", mask, weight_decay_mask)
  kwargs = dict(
      block_size=block_size, b1=b1, b2=b2, eps=eps, matrix_eps=matrix_eps,
      precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step, graft=graft, nesterov=nesterov,
      orthogonalize=orthogonalize,
      exponent_override=validation.canonical_exponent_override(exponent_override),
      max_merged_dim=max_merged_dim,
      skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
      root_method=root_method, stagger_root_refresh=stagger_root_refresh,
      max_root_error=max_root_error, mu_dtype=mu_dtype, statistics_dtype=statistics_dtype,
      pseudo_inverse_rtol=pseudo_inverse_rtol, mesh=mesh, block_axis=block_axis,
      param_specs=param_specs)
  validation.check_static_args(kwargs, transform.STATIC_ARGS, "STATIC_ARGS")
  return optax.chain(
      transform.scale_by_shampoo(**kwargs),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def soap(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    block_size: int = 128,
    precondition_every: int = 10,
    start_preconditioning_step: int = 0,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int = 4096,
    basis_method: str = "auto",
    stagger_basis_refresh: bool = True,
    statistics_dtype: Any = "float32",
    nesterov: bool = False,
    orthogonalize: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    block_axis: str | tuple[str, ...] | None = None,
    param_specs: Any = None,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SOAP (Adam in Shampoo's eigenbasis) with decoupled weight decay.

  SOAP (`Vyas et al., 2024 <https://arxiv.org/abs/2409.11321>`_) runs Adam in
  the eigenbasis of Shampoo's statistics, refreshed every
  ``precondition_every`` steps; blocks whose basis has not been computed yet,
  and parameters Shampoo does not precondition (vectors, scalars), take Adam's
  step. Start from an AdamW learning rate (SOAP's paper uses about 3e-3 for
  small language models).

  This is ``optax.chain(scale_by_soap(...), optax.add_decayed_weights(
  weight_decay, mask), optax.scale_by_learning_rate(learning_rate))``. The
  arguments up to ``mask`` are those of ``optax.adamw`` and may be passed by
  position; the others are keyword-only. The arguments in
  ``shampoo_optax.SOAP_STATIC_ARGS`` set shapes or code paths: with
  ``optax.inject_hyperparams`` pass
  ``static_args=shampoo_optax.SOAP_STATIC_ARGS``.

  Args:
    learning_rate: a float or an optax schedule.
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the second moment and of the statistics, in ``[0, 1)``.
    eps: Adam's epsilon.
    mu_dtype: dtype of the first moment; ``None`` keeps the parameters'.
      ``'int8'``: row-scaled int8 (see :func:`shampoo_optax.scale_by_shampoo`;
      the default with ``statistics_dtype='int8'``).
    weight_decay: decoupled weight decay (times the learning rate, as in
      ``optax.adamw``).
    mask: a tree of booleans, or a function of the params that returns one,
      selecting the parameters to decay (as in ``optax.adamw``).
    block_size: largest side of a rotated block.
    precondition_every: each eigenbasis is recomputed every this many steps.
    start_preconditioning_step: all eigenbases in use after this step (they
      are computed, staggered, over the ``precondition_every`` steps before).
    max_merged_dim: as :func:`shampoo`'s (default: merged within
      ``block_size``, then every tensor of higher rank cut into its most
      nearly square matrix, with a basis per side).
    skip_preconditioning_dim_size_gt: larger dimensions are not rotated.
    basis_method: ``'eigh'``; ``'qr'``, one power-iteration step with a QR
      from the previous basis (after a first cycle with eigh), as in SOAP; or
      ``'auto'``: eigh on GPUs, qr on CPUs and TPUs.
    stagger_basis_refresh: refresh ``1/precondition_every`` of the bases on
      every step instead of all of them together.
    statistics_dtype: storage of the bases (``'float32'``, ``'bfloat16'``,
      ``'int8'``); the compact choices store the statistics in 16 bits.
    nesterov: Nesterov momentum, as ``optax.adam(nesterov=True)``.
    orthogonalize: orthogonalize each rotated matrix block's step (Muon's
      Newton-Schulz iteration) at its own norm; see :func:`scale_by_soap`.
    mesh: a ``jax.sharding.Mesh`` to spread the statistics and bases over.
    block_axis: the mesh axis (or axes) to split them over.
    param_specs: FSDP: the parameters' ``PartitionSpec``\ s; each device
      keeps the blocks of its own shards (see
      :func:`shampoo_optax.scale_by_shampoo`).
    weight_decay_mask: deprecated name of ``mask`` (warns).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import shampoo_optax
    >>> x = jax.random.normal(jax.random.key(0), (64, 32))
    >>> y = x @ jnp.linspace(-1.0, 1.0, 32 * 8).reshape(32, 8)
    >>> def loss(params):
    ...   return jnp.mean((x @ params["w"] - y) ** 2)
    >>> params = {"w": jnp.zeros((32, 8))}  # 256 entries: rotated, not merged
    >>> tx = shampoo_optax.soap(learning_rate=3e-2, precondition_every=5)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def train_step(params, state):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> initial = loss(params)
    >>> for _ in range(10):
    ...   params, state = train_step(params, state)
    >>> bool(loss(params) < 0.9 * initial)
    True

  References:
    Vyas et al., `SOAP: Improving and Stabilizing Shampoo using Adam
    <https://arxiv.org/abs/2409.11321>`_, 2024

    George et al., `Fast Approximate Natural Gradient Descent in a Kronecker
    Factored Eigenbasis <https://arxiv.org/abs/1806.03884>`_, 2018
  """
  _check_b1("soap", b1)
  validation.validate_step_size("learning_rate", learning_rate)
  validation.validate_step_size("weight_decay", weight_decay)
  mask = _weight_decay_mask("soap", mask, weight_decay_mask)
  kwargs = dict(
      block_size=block_size, b1=b1, b2=b2, eps=eps, precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step, max_merged_dim=max_merged_dim,
      skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
      basis_method=basis_method, stagger_basis_refresh=stagger_basis_refresh,
      mu_dtype=mu_dtype, statistics_dtype=statistics_dtype, nesterov=nesterov,
      orthogonalize=orthogonalize, mesh=mesh, block_axis=block_axis, param_specs=param_specs)
  validation.check_static_args(kwargs, soap_lib.STATIC_ARGS, "SOAP_STATIC_ARGS")
  return optax.chain(
      soap_lib.scale_by_soap(**kwargs),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
