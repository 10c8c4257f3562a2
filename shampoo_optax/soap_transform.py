# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""SOAP: Adam in the eigenbasis of Shampoo's statistics.

Eigenvalue-corrected Shampoo (George et al., 2018, EKFAC; Vyas et al., 2024,
SOAP, arXiv 2409.11321). Per block ``G`` of a parameter, with Shampoo's
statistics ``L``, ``R`` and their eigenbases ``Q_L``, ``Q_R`` (refreshed every
``precondition_every`` steps, staggered like Shampoo's roots):

    G' = Q_L^T G Q_R                   # the gradient in the eigenbasis
    m  = b1 m + (1 - b1) G             # first moment, kept in the original basis
    v  = b2 v + (1 - b2) G'^2          # second moment, in the eigenbasis
    update = Q_L (m'_hat / (sqrt(v_hat) + eps)) Q_R^T,   m' = Q_L^T m Q_R

so each step is Adam's, taken in coordinates where the statistics are
diagonal. When a basis is refreshed, ``v`` is carried into the new one (see
:func:`scale_by_soap`). Until a block's basis is first computed it is the identity, and SOAP
*is* Adam. Parameters Shampoo does not precondition (vectors, scalars) take
Adam as is. No grafting: the step size is Adam's own.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import (
  blocking,
  core,
  factor_matrices,
  grafting,
  matrix_functions,
  moments,
  quantization,
  validation,
)
from shampoo_optax import sharding as sharding_lib

BASIS_METHODS = ("auto", "eigh", "qr")

STATIC_ARGS = (
    "block_size", "precondition_every", "start_preconditioning_step", "max_merged_dim",
    "skip_preconditioning_dim_size_gt", "basis_method", "stagger_basis_refresh", "mu_dtype",
    "statistics_dtype", "nesterov", "orthogonalize", "mesh", "block_axis", "param_specs",
)


class SoapState(NamedTuple):
  """State of :func:`scale_by_soap`: arrays only.

  Attributes:
    count: int32 ``[]``.
    mu: first moment in the original basis, a
      :class:`shampoo_optax.BlockedMoment`: in the parameters' tree and shapes
      for the leaves SOAP does not rotate, in stacks of blocks
      ``[rows, *block_shape]`` for the others (as :class:`ShampooState`'s).
    nu: second moment, laid out as ``mu``; each rotated block's entries in
      that block's eigenbasis coordinates.
    stats: per group, the statistics, stored as in :class:`ShampooState`.
    bases: per group, the eigenbases ``[n_g, d_g * d_g]``, float32 or
      bfloat16 (or ``quantization.ScaledIntMatrices`` with int8 values).
    basis_errors: per group, float32 ``[n_g]``: ``||Q^T Q - I||`` of the last
      basis computed.
    basis_failures: per group, int32 ``[n_g]``: bases rejected (not finite).
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  stats: tuple[Any, ...]
  bases: tuple[Any, ...]
  basis_errors: tuple[jax.Array, ...]
  basis_failures: tuple[jax.Array, ...]


def scale_by_soap(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
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
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates with SOAP: Adam in the eigenbasis of Shampoo's statistics.

  `Vyas et al., 2024 <https://arxiv.org/abs/2409.11321>`_. Blocks, merging,
  sharding and compact storage work as in :func:`scale_by_shampoo`; the
  statistics decay with ``b2``, like the second moment (as in SOAP). The
  arguments in ``shampoo_optax.SOAP_STATIC_ARGS`` are static (with
  ``optax.inject_hyperparams``, pass them as ``static_args``).

  When a block's basis is refreshed, its second moment is carried into the
  new basis (``v <- (P * P) v`` along each refreshed axis, ``P = Q_new^T
  Q_old``): exact when the old coordinates were uncorrelated, and it keeps
  ``v`` matched to its directions when eigenvectors reorder or rotate within
  clusters of close eigenvalues. On the LM benchmark (seed 0, b2 0.95) SOAP at
  4e-3 reached 1.730 with it against 1.855 without it, and the same loss at
  its best learning rate.

  Args:
    block_size: largest side of a preconditioned block.
    b1: decay of the first moment.
    b2: decay of the second moment and of the statistics. The default 0.9
      (SOAP's paper: 0.95) did better on both benchmarks here: LM seed 0 at
      lr 3e-3/4e-3/5e-3 1.716/1.718/1.704 against 1.730/1.730/1.741; CNN
      0.0180 against 0.0198 (``benchmarks/README.md``).
    eps: Adam's epsilon.
    precondition_every: each eigenbasis is recomputed every this many steps.
    start_preconditioning_step: eigenbases are computed from step
      ``start_preconditioning_step - precondition_every + 1`` on (staggered),
      so all are in use by ``start_preconditioning_step + 1``; a basis is
      used from the step after it is computed, and before a block's first
      basis its step is Adam's.
    max_merged_dim: adjacent dimensions are merged up to this product; the
      default (``None``) as :func:`scale_by_shampoo`'s: up to ``block_size``,
      then into the most nearly square matrix.
    skip_preconditioning_dim_size_gt: dimensions larger than this are not
      rotated.
    basis_method: ``'eigh'``; ``'qr'``, one power-iteration step with a QR
      from the previous basis (after a first cycle with eigh), as in SOAP; or
      ``'auto'``: eigh on GPUs (on an H200 SOAP with qr had not finished its
      first step in 60 s), qr on CPUs (from 0.5.1: on 2 cores, the LM
      benchmark's step 1.177x AdamW's instead of 1.217x, the CNN's update
      6% faster, the same loss; ``benchmarks/README.md``) and TPUs.
    stagger_basis_refresh: refresh ``1/precondition_every`` of the bases on
      every step (on GPUs with no ``jax.lax.cond``); with ``False`` all of them on every
      ``precondition_every``-th step, under a ``cond`` (see
      ``stagger_root_refresh`` of :func:`shampoo_optax.scale_by_shampoo`).
    mu_dtype: dtype of the first moment (``'int8'``: row-scaled int8, see
      :func:`shampoo_optax.scale_by_shampoo`; the default with
      ``statistics_dtype='int8'``).
    statistics_dtype: storage of the bases (``'float32'``, ``'bfloat16'``,
      ``'int8'``); compact choices store the statistics as 16-bit integers
      (see ``shampoo_optax.quantization``).
    nesterov: Nesterov momentum, as ``optax.adam(nesterov=True)``, in the
      eigenbasis and for the leaves SOAP does not rotate alike.
    orthogonalize: replace each rotated matrix block's step by its approximate
      polar factor (Muon's Newton-Schulz iteration) at the step's own norm:
      SOAP's direction, orthogonalized. Blocks of other ranks are unchanged.
    mesh: a mesh to spread the statistics and bases over.
    block_axis: the mesh axis (or axes) to split them over.
    param_specs: FSDP: the parameters' ``PartitionSpec``\ s; each device
      keeps the blocks of its own shards (see
      :func:`shampoo_optax.scale_by_shampoo`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`SoapState`.

  References:
    Vyas et al., `SOAP: Improving and Stabilizing Shampoo using Adam
    <https://arxiv.org/abs/2409.11321>`_, 2024

    George et al., `Fast Approximate Natural Gradient Descent in a Kronecker
    Factored Eigenbasis <https://arxiv.org/abs/1806.03884>`_, 2018

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import shampoo_optax
    >>> tx = shampoo_optax.soap(learning_rate=3e-3)
    >>> params = {"w": jnp.ones((8, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((8, 4))}, state, params)
  """
  validation.validate_layout(
      block_size=block_size, precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step,
      skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
      max_merged_dim=max_merged_dim, static_args_name="SOAP_STATIC_ARGS")
  validation.validate_choice("basis_method", basis_method, BASIS_METHODS)
  validation.validate_bool("nesterov", nesterov)
  validation.validate_bool("orthogonalize", orthogonalize)
  validation.validate_number("b1", b1, 0.0, 1.0, upper_open=True)
  validation.validate_number("b2", b2, 0.0, 1.0, upper_open=True)
  validation.validate_number("eps", eps, 0.0, None)
  codec, basis_codec = quantization.codecs(statistics_dtype, factor_symmetric=False)
  block_sharding = sharding_lib.BlockSharding.create(mesh, block_axis)
  local = sharding_lib.LocalBlocks.create(block_sharding, param_specs)
  # A basis refreshed at step t is used from step t + 1 (see _carry_second_moment).
  schedule = factor_matrices.Schedule(precondition_every, start_preconditioning_step,
                                      stagger_basis_refresh)
  soap_core = core.Core(
      layout=block_layout(block_size, max_merged_dim, skip_preconditioning_dim_size_gt,
                          shard_multiple=block_sharding.size if local is None else 1),
      codec=codec, precond_codec=basis_codec, block_sharding=block_sharding, local=local,
      schedule=schedule,
      moments=moments.BlockedMoments(moments.MomentDtypes.create(
          mu_dtype, quantization.canonical_dtype(statistics_dtype), keeps_nu=True)),
  )
  variant = core.Variant(
      # The first cycle of refreshes computes every basis with eigh; 'qr'
      # refines them after that.
      compute=functools.partial(_eigenbasis, method=basis_method,
                                qr_from=schedule.first_step() + precondition_every),
      apply=functools.partial(_adam_in_eigenbasis, nesterov=nesterov,
                              orthogonalize=orthogonalize),
      outputs=("step",), refresh_first=False, change=_rotation_map,
      after_refresh=functools.partial(_carry_second_moment,
                                      staggered=stagger_basis_refresh),
      carried=("mu", "nu"))

  def step_fn(grads, mu, nu, groups, count):
    # The leaves SOAP does not rotate: Adam as is.
    tree_step = functools.partial(grafting.step, "adam", count=count, b1=b1, b2=b2, eps=eps,
                                  nesterov=nesterov)
    scalars = {"b1": b1, "b2": b2, "eps": eps, "count": count}
    return soap_core.step_with_blocked_moments(grads, mu, nu, groups, count,
                                               tree_step=tree_step, scalars=scalars,
                                               variant=variant)

  return soap_core.transformation(SoapState, step_fn)


def block_layout(block_size: int, max_merged_dim: int | None,
                 skip_preconditioning_dim_size_gt: int, shard_multiple: int = 1, *,
                 own_slots: bool = False) -> blocking.Layout:
  """SOAP's block layout.

  As Shampoo's, each statistic sits in a slot rounded up to a power of two,
  and blocks are padded with zeros into the stack of their slots' shape where
  that is cheap (``blocking.py``): fewer, larger batched products. Unlike
  Shampoo's, slots are not merged into larger ones beyond that rounding: a
  basis is stored whole, so SOAP's state, at its float32 floor (five floats
  per preconditioned parameter), would pay for it. The padding is kept apart
  from each statistic's eigenbasis (:func:`_separated`). The rows of a joined
  stack's factors are consecutive (``stack_rows``), so its bases are read as
  one slice per axis.

  ``own_slots``: the layout before 0.3.0, a slot of each statistic's own size
  and a stack per block shape, which ``shampoo_optax.upgrade_state`` reads.
  """
  if own_slots:
    return blocking.Layout(block_size, max_merged_dim, skip_preconditioning_dim_size_gt,
                           shard_multiple=shard_multiple, pad_slots=False)
  return blocking.Layout(block_size, max_merged_dim, skip_preconditioning_dim_size_gt,
                         shard_multiple=shard_multiple, merge_slots=False, stack_rows=True)


def _adam_in_eigenbasis(plan, blocks, bases, scalars, *, nesterov=False, orthogonalize=False):
  """Per stack: G and m into the eigenbasis, Adam's step there, the step back.

  As SOAP does, the bases are the ones computed before this step: a basis is
  never computed from the gradient it rotates, which in its own eigenbasis
  would be diagonal, and Adam's m / sqrt(v) would blow the float32 noise of
  its zeros up to +-1.
  """
  b1, b2, eps, count = (scalars[k] for k in ("b1", "b2", "eps", "count"))
  grads = blocks["grads"]
  mu = optax.tree.update_moment(grads, list(blocks["mu"]), b1, 1)
  into = lambda xs: [core.along_axes(x, mats, transpose=True)  # noqa: E731
                     for x, mats in zip(xs, bases)]
  g, m = into(grads), into(mu)
  nu = grafting.update_second_moment("adam", g, list(blocks["nu"]), b2)
  steps = grafting.direction(
      "adam", moments.debiased_first_moment(m, g, b1, count, nesterov), nu, count, b2, eps)
  steps = [core.along_axes(x, mats, transpose=False) for x, mats in zip(steps, bases)]
  if orthogonalize:
    steps = [core.orthogonalize_blocks(x) for x in steps]
  return {"step": steps, "mu": mu, "nu": nu}


def _rotation_map(q_old: jax.Array, q_new: jax.Array) -> jax.Array:
  """``(Q_new^T Q_old)^2`` elementwise, per row: how a refreshed basis moves a
  diagonal second moment (see :func:`_carry_second_moment`)."""
  p = jnp.einsum("zka,zki->zai", q_new, q_old, precision=jax.lax.Precision.HIGHEST)
  return jnp.square(p)


def _carry_second_moment(plan, outputs, changes, count, *, staggered):
  """The second moment of each block whose basis was just refreshed, moved to the new basis.

  With ``P = Q_new^T Q_old``, coordinate ``a`` of a block in the new basis is
  ``sum_i P[a, i] x_i``; if the old coordinates are uncorrelated (what Adam's
  diagonal second moment assumes), its second moment is ``sum_i P[a, i]^2
  v_i``. Without this, a refresh that rotates eigenvectors within a cluster
  of close eigenvalues, or reorders them, leaves each coordinate with the
  second moment of another direction (measured on the LM benchmark: without
  it SOAP lost 0.13 nats at 4/3 of its best learning rate; with it, nothing).
  Only the rows refreshed at this step whose basis changed are touched
  (``1/precondition_every`` of them when staggered). ``changes``
  (``factor_matrices.Changes`` per group) come from the refresh itself, which
  computed each map from the rows it read and wrote.

  Under ``jax.lax.cond`` on whether any basis changed, except for staggered
  refreshes (``staggered``) on GPUs, which copy a ``cond``'s predicate to the
  host and wait for it (see factor_matrices.py); staggered refreshes change
  some bases on most steps.
  """
  del count
  carry = functools.partial(_carry_changed, plan, changes=changes)
  any_changed = jnp.any(jnp.stack([jnp.any(c.changed) for c in changes]))
  cond = factor_matrices.cond_unless_waiting if staggered else jax.lax.cond
  return dict(outputs, nu=cond(any_changed, carry, lambda nu: nu, outputs["nu"]))


def _carry_changed(plan, nu_stacks, *, changes):
  out = []
  for s, (stack, blocks) in enumerate(zip(plan.stacks, nu_stacks)):
    for axis, runs in plan.stack_axes(s):
      # The statistic's corner of its slot (the stack's blocks may be smaller
      # than the slot; a basis is block diagonal, see _eigenbasis).
      d = stack.block_shape[axis]
      for run in runs:
        rows, changed, maps = changes[run.group]
        local = rows - run.offset  # the run's blocks among the group's rows
        inside = changed & (local >= 0) & (local < run.size)
        # Its blocks in the stack; elsewhere: not gathered, dropped.
        local = jnp.where(inside, local + run.start, blocks.shape[0])
        sub = jnp.take(blocks, local, axis=0, mode="fill", fill_value=0)
        sub = core.along_axis(sub, maps[:, :d, :d], axis, transpose=False)
        blocks = blocks.at[local].set(sub, mode="drop")
    out.append(blocks)
  return out


def _separated(stats: jax.Array, old: jax.Array, own: jax.Array):
  """Statistics and bases ``[r, d, d]`` whose rows' own corners are ``own``
  ``[r]`` (the rest zero padding, see ``factor_matrices.Compute``), made
  block diagonal with the padding separated: statistics ``-c I`` and bases
  ``I`` there, ``c`` above the statistic's spectral radius. Also returns
  ``tidy``, which makes a computed basis exactly that block diagonal.

  Zero padding would give the padded coordinates eigenvalue 0, tied with a
  rank-deficient statistic's own null space, so that eigh could mix the two.
  Separated below every eigenvalue, the padded coordinates are eigenvectors of
  their own: the matrix decomposes into the statistic's basis (its own
  coordinates, with the eigenvalues in descending order, as
  :func:`_eigenbasis` returns them) and unit vectors, and the QR refresh, whose
  columns are sorted by their estimated eigenvalues, keeps them last too.
  """
  bound = 1 + jnp.sum(jnp.abs(stats), axis=(-2, -1))  # >= the spectral radius
  tidy = lambda x: factor_matrices.with_padding(x, own, 1.0)  # noqa: E731
  return factor_matrices.with_padding(stats, own, -bound), tidy(old), tidy


def _eigenbasis(stats, old, own, exponent, count, *, method, qr_from):
  """factor_matrices.Compute for SOAP: (basis, orthogonality error, ok).

  The basis's columns are in descending order of their eigenvalues (eigh's
  reversed): the order the QR refresh keeps, and the one that puts the
  statistic's own basis first when it is padded (:func:`_separated`), with
  unit vectors in the padding.
  """
  del exponent
  hi = jax.lax.Precision.HIGHEST
  stats, old, tidy = _separated(stats, old, own)

  def eigh():
    return matrix_functions.eigh(stats)[1][..., ::-1]

  def refine():
    # One step of subspace iteration from the previous basis, re-orthonormalized
    # (SOAP's cheap refresh); the first cycle has no previous basis: eigh. As
    # in SOAP, the previous basis is first sorted by its estimated eigenvalues,
    # largest first: QR keeps the first columns' directions, so the iteration
    # converges without reshuffling them (the second moment follows any
    # reordering, see _carry_second_moment).
    estimates = jnp.einsum("zki,zkl,zli->zi", old, stats, old, precision=hi)
    order = jnp.argsort(-estimates, axis=-1)
    start = jnp.take_along_axis(old, order[:, None, :], axis=-1)
    q = matrix_functions.qr(jnp.matmul(stats, start, precision=hi))
    return jax.lax.cond(count < qr_from, eigh, lambda: q)

  if method == "auto":  # eigh on GPUs; qr on CPUs and TPUs (see scale_by_soap)
    basis = jax.lax.platform_dependent(cuda=eigh, rocm=eigh, default=refine)
  else:
    basis = eigh() if method == "eigh" else refine()
  basis = tidy(basis)
  d = stats.shape[-1]
  gram = jnp.matmul(jnp.swapaxes(basis, -1, -2), basis, precision=hi)
  error = jnp.linalg.norm(gram - jnp.eye(d, dtype=gram.dtype)[None], axis=(-2, -1))
  return basis, error, error < 1e-2
