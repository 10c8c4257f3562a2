# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""scale_by_shampoo: Distributed Shampoo as an optax gradient transformation.

One update, in the paper's terms (Anil et al., 2020, arXiv 2002.09018):

1. First moment ``mu`` (EMA of gradients, ``b1``, bias-corrected) and the
   grafting method's diagonal second moment ``nu`` (``b2``): kept in block
   layout for the preconditioned parameters (where the steps below use
   them), in the parameters' own layout for the others.
2. Statistics, per block ``G`` of the gradient and per preconditioned axis:
   ``L <- b2 L + (1 - b2) G G^T`` and ``R <- b2 R + (1 - b2) G^T G`` (for a
   k-dimensional block, one statistic per axis, contracting the others).
3. Inverse roots ``L^(-1/p)``, ``R^(-1/p)`` (``p = exponent_override``, 2 by
   default; the paper's ``p = 2k`` for a block with ``k`` preconditioned axes
   with ``exponent_override=None``) with ridge ``matrix_eps * lambda_max``, refreshed every
   ``precondition_every`` steps; a root that fails (not finite, or error above
   ``max_root_error``) is not used: the previous one is kept and the failure
   counted.
4. The preconditioned direction ``L^(-1/p) mu_hat R^(-1/p)``, rescaled per
   block to the norm of the grafting method's step (layer-wise grafting,
   Section 3 of the paper), which is what lets a tuned Adam learning rate carry
   over.
5. Until ``start_preconditioning_step``, and for parameters that are not
   preconditioned (scalars, vectors), the grafting method's step itself.

The mechanics live elsewhere: the shared update in ``core.py`` (the block
plan in ``blocking.py``, the statistics and their refresh in
``factor_matrices.py``), the roots in ``matrix_functions.py``, the diagonal
methods in ``grafting.py``.
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

ROOT_METHODS = ("auto", "newton", "eigh")

# Arguments that set shapes or code paths. With optax.inject_hyperparams:
#   optax.inject_hyperparams(shampoo, static_args=shampoo_optax.STATIC_ARGS)
STATIC_ARGS = (
    "block_size",
    "precondition_every",
    "start_preconditioning_step",
    "graft",
    "nesterov",
    "orthogonalize",
    "exponent_override",
    "max_merged_dim",
    "skip_preconditioning_dim_size_gt",
    "root_method",
    "stagger_root_refresh",
    "mu_dtype",
    "statistics_dtype",
    "pseudo_inverse_rtol",
    "mesh",
    "block_axis",
    "param_specs",
)


class ShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`: arrays only, nothing static.

  The ``g``-th entry of ``stats``, ``roots``, ``root_errors`` and
  ``root_failures`` belongs to the ``g``-th group of the block plan (the
  statistics of one slot size ``d_g`` and one root exponent, see
  ``shampoo_optax.blocking``), which is rebuilt from the parameters' shapes
  whenever it is needed.

  Attributes:
    count: int32 ``[]``, the number of updates applied.
    mu: first moment, a :class:`shampoo_optax.BlockedMoment`: in the parameters' tree and
      shapes for the leaves that are not preconditioned, in stacks of blocks
      ``[rows, *block_shape]`` for the others; dtype ``mu_dtype`` or the
      parameters' (the widest of a stack's; with int8,
      ``quantization.QuantizedArray`` with a scale per row of each block).
    nu: the grafting method's second moment, laid out as ``mu`` (bfloat16 with
      a compact ``statistics_dtype``); ``()`` for grafts without one
      (``'sgd'``, ``'none'``).
    stats: per group, the statistics of ``n_g`` blocks in stored form: float32
      ``[n_g, d_g (d_g + 1) / 2]`` (upper triangles), or, with a compact
      ``statistics_dtype``, ``quantization.ScaledIntMatrices`` with int16
      values.
    roots: per group, the inverse roots in use: float32 or bfloat16
      ``[n_g, d_g (d_g + 1) / 2]``, or ``ScaledIntMatrices`` with int8 values.
    root_errors: per group, float32 ``[n_g]``: error estimate of the last root
      computed for each statistic (0 until one is computed).
    root_failures: per group, int32 ``[n_g]``: how many computed roots were
      rejected (not finite, or error above ``max_root_error``).
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates | tuple[()]
  stats: tuple[Any, ...]
  roots: tuple[Any, ...]
  root_errors: tuple[jax.Array, ...]
  root_failures: tuple[jax.Array, ...]


def scale_by_shampoo(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
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
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates with Distributed Shampoo, grafted to a diagonal method.

  Shampoo (`Anil et al., 2020 <https://arxiv.org/abs/2002.09018>`_) keeps, for
  each block ``G`` of a parameter, one statistic per axis (``L = sum G G^T``,
  ``R = sum G^T G`` for a matrix) and preconditions with their inverse roots,
  ``L^(-1/2) G R^(-1/2)`` by default (the paper's ``L^(-1/4) G R^(-1/4)`` with
  ``exponent_override=None``). The direction is grafted: rescaled per block to the
  norm of the step of a diagonal method (Adam by default), so that the diagonal
  method's learning rate carries over. Scalars, vectors and the first
  ``start_preconditioning_step`` steps use the diagonal method alone; with
  ``graft='adam'`` that is exactly ``optax.adam(b1=b1, b2=b2, eps=eps)``.

  The arguments named in ``shampoo_optax.STATIC_ARGS`` (``block_size``,
  ``precondition_every``, ``start_preconditioning_step``, ``graft``, ...) set
  shapes or code paths and must be Python values: with
  ``optax.inject_hyperparams`` pass ``static_args=shampoo_optax.STATIC_ARGS``.
  ``b1``, ``b2``, ``eps``, ``matrix_eps`` and ``max_root_error`` may be arrays.

  Bad input is reported, not propagated silently: a gradient tree that differs
  from the one the state was initialized with raises an error naming the leaf;
  a non-finite gradient gives non-finite updates, as in every optax optimizer
  (wrap with ``optax.apply_if_finite`` to skip such steps and keep the state);
  a non-finite or inaccurate inverse root is never used.

  Args:
    block_size: largest side of a preconditioned block; larger dimensions are
      split into blocks of this size.
    b1: decay of the first moment (momentum), in ``[0, 1)``.
    b2: decay of the statistics and of the grafting method's second moment, in
      ``[0, 1]``; ``1.0`` keeps plain sums, as AdaGrad does.
    eps: epsilon of the grafting method (as in ``optax.adam``).
    matrix_eps: ridge added to each statistic before its root, relative to the
      statistic's largest eigenvalue.
    precondition_every: each inverse root is recomputed every this many steps.
    start_preconditioning_step: the first this many steps use the grafting
      method alone. The default 2 starts preconditioning while the first
      roots are still being computed (staggered, they all exist after
      ``precondition_every`` steps); until its first root a block takes its
      momentum rescaled to the grafting method's step norm. On the LM
      benchmark this reached AdamW's loss in 190 steps instead of 210-220 with
      10 (seeds 0 and 1, lr 4e-3), and a lower loss (1.576 vs 1.626, seed 0).
    graft: ``'adam'``, ``'rmsprop'``, ``'rmsprop_normalized'``, ``'adagrad'``,
      ``'sgd'`` or ``'none'`` (see ``shampoo_optax.grafting``).
    nesterov: Nesterov momentum, as ``optax.adam(nesterov=True)``.
    orthogonalize: replace each preconditioned matrix block by its approximate
      polar factor (Muon's Newton-Schulz iteration,
      :func:`shampoo_optax.matrix_functions.orthogonalize`) before grafting:
      Shampoo's whitened direction, orthogonalized, at the graft's norm. Blocks
      of other ranks are unchanged. See ``benchmarks/README.md`` (issue 13).
    exponent_override: every root is ``-1/exponent_override``. The default 2
      preconditions a matrix with ``L^(-1/2) G R^(-1/2)``, the square of the
      paper's preconditioner (Morwani et al., 2024, "A New Perspective on
      Shampoo's Preconditioner", relate it to the best Kronecker approximation;
      with grafting only the direction changes), which beat the paper's choice on
      both benchmarks (``benchmarks/README.md``). ``None`` or ``0`` (as in
      Google's implementation): the paper's ``-1/(2k)`` for blocks with ``k``
      preconditioned axes.
    max_merged_dim: adjacent dimensions of a parameter are merged while their
      product is at most this; size-1 dimensions are always dropped. Tensors
      that merge into a vector use the diagonal method. The default
      (``None``): merged while at most ``block_size``, then what still has more
      than two dimensions is cut into its most nearly square matrix
      (``blocking.merge_small_dims`` with ``as_matrix``).
    skip_preconditioning_dim_size_gt: dimensions larger than this get no
      statistic (preconditioned on the other side only).
    root_method: ``'newton'`` (coupled Newton, matrix products only),
      ``'eigh'``, or ``'auto'``: Newton on TPUs, eigh on CPUs and GPUs, where
      it is faster (measured on one H200 for the 25M-parameter LM of
      ``benchmarks/accelerator.py``: the refresh took ~9 ms per step with
      Newton and ~1 ms with eigh, at equal accuracy for the conditions the
      ``matrix_eps`` ridge allows; ``benchmarks/roots.py``).
    stagger_root_refresh: refresh ``1/precondition_every`` of the roots on
      every step, so that no step pays for all of them (on GPUs with no
      ``jax.lax.cond``, which makes the host wait for the device there);
      with ``False`` all roots are refreshed together on every
      ``precondition_every``-th step, under a ``cond``. Either way each root is at most
      ``precondition_every`` steps old, and all roots are ready on the first
      preconditioned step when ``start_preconditioning_step >=
      precondition_every``.
    max_root_error: a computed root whose error estimate exceeds this is
      rejected and the previous root kept.
    mu_dtype: dtype of the first moment; ``None`` keeps the parameters'
      (int8 with ``statistics_dtype='int8'``). ``'int8'``: the preconditioned
      parameters keep it as int8 with a float32 scale per row of each block,
      rounded stochastically (``quantization.QuantizedArray``), the others as
      bfloat16.
    statistics_dtype: storage of the inverse roots, ``'float32'``,
      ``'bfloat16'``, or ``'int8'`` (per-row scales, exact diagonal); with
      either compact choice the statistics take 16-bit integers (per-row
      scales, exact diagonal: fewer bits lose their small eigenvalues) and the
      grafting second moment bfloat16. Symmetric matrices are stored as their
      upper triangle. Computation is float32 either way. See
      ``shampoo_optax.quantization``.
    pseudo_inverse_rtol: if set, inverse roots are pseudo-inverse roots:
      eigenvalues below this fraction of the largest are dropped rather than
      lifted by ``matrix_eps`` (uses eigh).
    mesh: a ``jax.sharding.Mesh`` to spread the statistics and roots over.
    block_axis: the mesh axis name (or tuple of names) that the statistics'
      block axis is split over: each device holds and computes the roots of
      ``1/N`` of the blocks. ``None`` keeps them replicated. Parameters may be
      sharded any way (FSDP, tensor parallel); updates come back with the
      gradients' shardings. See ``shampoo_optax.sharding``.
    param_specs: FSDP: the parameters' ``PartitionSpec``\ s (a tree like the
      parameters, ``None`` for replicated leaves; e.g. flax's
      ``nn.get_partition_spec``), with ``mesh`` and ``block_axis`` (every
      mesh axis the parameters are sharded over). Each device then cuts
      blocks from its own shard of each parameter and keeps their statistics
      and roots: no gradient, statistic or root crosses devices. Blocks end at
      shard boundaries (a ``[1024, 512]`` weight sharded ``P("data")`` over 8
      devices is preconditioned as 8 ``[128, 512]`` weights). Gradients
      sharded otherwise are resharded to these specs first. A state made so
      restores only onto the same number of devices. See
      ``shampoo_optax.sharding.LocalBlocks``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ShampooState`.

  References:
    Gupta et al., `Shampoo: Preconditioned Stochastic Tensor Optimization
    <https://arxiv.org/abs/1802.09568>`_, 2018

    Anil et al., `Scalable Second Order Optimization for Deep Learning
    <https://arxiv.org/abs/2002.09018>`_, 2020

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import shampoo_optax
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> tx = optax.chain(shampoo_optax.scale_by_shampoo(block_size=4),
    ...                  optax.scale(-1e-2))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  exponent_override = validation.canonical_exponent_override(exponent_override)
  validation.validate_layout(
      block_size=block_size,
      precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step,
      skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
      max_merged_dim=max_merged_dim,
      exponent_override=exponent_override,
  )
  validation.validate_choice("graft", graft, grafting.GRAFTS)
  validation.validate_bool("nesterov", nesterov)
  validation.validate_bool("orthogonalize", orthogonalize)
  validation.validate_choice("root_method", root_method, ROOT_METHODS)
  validation.validate_number("b1", b1, 0.0, 1.0, upper_open=True)
  validation.validate_number("b2", b2, 0.0, 1.0)
  validation.validate_number("eps", eps, 0.0, None)
  validation.validate_number("matrix_eps", matrix_eps, 0.0, None)
  validation.validate_number("max_root_error", max_root_error, 0.0, None, lower_open=True)
  if pseudo_inverse_rtol is not None:
    validation.validate_number("pseudo_inverse_rtol", pseudo_inverse_rtol, 0.0, 1.0,
                               lower_open=True, upper_open=True)
  if graft == "rmsprop_normalized" and param_specs is not None:
    raise ValueError(
        "graft='rmsprop_normalized' normalizes each parameter's gradient and first moment by "
        "its norm over the whole parameter, which each device's local blocks (param_specs) do "
        "not see: use another graft, or mesh and block_axis without param_specs")
  codec, root_codec = quantization.codecs(statistics_dtype)
  block_sharding = sharding_lib.BlockSharding.create(mesh, block_axis)
  local = sharding_lib.LocalBlocks.create(block_sharding, param_specs)
  shampoo_core = core.Core(
      layout=blocking.Layout(block_size, max_merged_dim,
                             skip_preconditioning_dim_size_gt, exponent_override,
                             block_sharding.size if local is None else 1),
      codec=codec, precond_codec=root_codec, block_sharding=block_sharding, local=local,
      schedule=factor_matrices.Schedule(precondition_every, start_preconditioning_step,
                                        stagger_root_refresh),
      moments=moments.BlockedMoments(moments.MomentDtypes.create(
          mu_dtype, quantization.canonical_dtype(statistics_dtype),
          grafting.keeps_second_moment(graft))),
  )
  keeps_nu = grafting.keeps_second_moment(graft)
  variant = core.Variant(
      compute=functools.partial(
          _inverse_roots, method=root_method, matrix_eps=matrix_eps,
          max_root_error=max_root_error, pseudo_inverse_rtol=pseudo_inverse_rtol),
      apply=functools.partial(_precondition_and_graft, graft=graft, nesterov=nesterov,
                              orthogonalize=orthogonalize),
      outputs=("step", "diagonal"), refresh_first=True,
      carried=("mu", "nu") if keeps_nu else ("mu",))

  def step_fn(grads, mu, nu, groups, count):
    scalars = {"b1": b1, "b2": b2, "eps": eps, "count": count,
               # Until start_preconditioning_step the step is the grafting
               # method's. The switch is arithmetic, not jnp.where: exact for
               # finite values, and XLA:CPU unswitches every loop on a scalar
               # where (benchmarks/README.md, "the per-leaf switch").
               "on": (count > start_preconditioning_step).astype(jnp.float32)}
    # The leaves that are not preconditioned: the grafting method alone.
    tree_step = functools.partial(grafting.step, graft, count=count, b1=b1, b2=b2, eps=eps,
                                  nesterov=nesterov)
    return shampoo_core.step_with_blocked_moments(grads, mu, nu, groups, count,
                                                  tree_step=tree_step, scalars=scalars,
                                                  variant=variant)

  return shampoo_core.transformation(ShampooState, step_fn)


def _precondition_and_graft(plan, blocks, roots, scalars, *, graft, nesterov,
                            orthogonalize=False):
  """Per stack: the moments, the grafting method's step, and
  ``L^(-1/p) mu_hat R^(-1/p)`` rescaled per block to that step's norm.

  The two steps (``"step"`` from ``start_preconditioning_step`` on, the
  grafting method's ``"diagonal"`` before it) come back with a factor per
  block, 1 or 0, applied as each parameter's slice is put back
  (``blocking.from_stacks``), and are added there. The moments and the
  grafting method's step are ``grafting.py``'s and ``moments.py``'s, the
  same functions as in the parameters' layout, here on lists of stacks: zero
  padding stays zero.
  """
  b1, b2, eps, count, on = (scalars[k] for k in ("b1", "b2", "eps", "count", "on"))
  diagonal, mu, nu = grafting.step(
      graft, blocks["grads"], list(blocks["mu"]), list(blocks.get("nu", ())), count,
      b1=b1, b2=b2, eps=eps, nesterov=nesterov,
      norms=functools.partial(_leaf_norms_per_block, plan))
  # Grafting rescales each block, so without Nesterov mu_hat's common factor
  # 1 / (1 - b1^t) is needed only without a graft: mu is preconditioned.
  directions = (moments.debiased_first_moment(mu, blocks["grads"], b1, count, nesterov)
                if nesterov or graft == "none" else mu)
  out = {"step": ([], []), "diagonal": (diagonal, []), "mu": mu}
  if nu:
    out["nu"] = nu
  for s, (d, x) in enumerate(zip(diagonal, directions)):
    x = core.along_axes(x, roots[s], transpose=True)
    if orthogonalize:
      x = core.orthogonalize_blocks(x)
    ones = jnp.ones(d.shape[:1], jnp.float32)
    scale = ones if graft == "none" else _graft_scale(x, _norms(d))
    out["step"][0].append(x)
    out["step"][1].append(scale * on)
    out["diagonal"][1].append(ones * (1 - on))
  return out


def _norms(x: jax.Array) -> jax.Array:
  """``[n]``: the Frobenius norm of each block of ``x``."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))))


def _leaf_norms_per_block(plan, stacks: list[jax.Array]) -> list[jax.Array]:
  """Per stack, ``[n, 1, ...]`` (broadcast against its blocks): the norm of
  the whole parameter each block belongs to (0 for padding rows). Static
  slices and sums of the blocks' norms: a parameter's blocks may lie in
  several stacks."""
  squares = [jnp.square(_norms(x)) for x in stacks]
  slices = plan.block_slices()
  totals: dict[int, jax.Array] = {}
  for s, first, leaf, piece in slices:
    n = plan.leaves[leaf].pieces[piece].num_blocks
    part = jnp.sum(squares[s][first:first + n])
    totals[leaf] = part if leaf not in totals else totals[leaf] + part
  out = []
  for s, x in enumerate(stacks):
    parts = [jnp.broadcast_to(jnp.sqrt(totals[leaf]),
                              (plan.leaves[leaf].pieces[piece].num_blocks,))
             for t, _, leaf, piece in slices if t == s]
    padding = x.shape[0] - plan.stacks[s].size  # rows for the block axis
    parts += [jnp.zeros((padding,), jnp.float32)] if padding else []
    norms = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    out.append(norms.reshape(norms.shape + (1,) * (x.ndim - 1)))
  return out


def _graft_scale(direction: jax.Array, target_norm: jax.Array) -> jax.Array:
  """``[n]``: what rescales each block of ``direction`` to ``target_norm``."""
  return grafting.safe_divide(target_norm, _norms(direction))


def _inverse_roots(stats, old_roots, own, p, count, *, method, matrix_eps, max_root_error,
                   pseudo_inverse_rtol):
  """factor_matrices.Compute for Shampoo: (roots, error, ok). A zero-padded
  statistic's root is its own root, padded (block diagonal), so ``own`` is not
  needed."""
  del old_roots, own, count
  root = functools.partial(
      matrix_functions.matrix_inverse_pth_root, stats, p,
      relative_ridge_epsilon=matrix_eps, fallback_threshold=max_root_error,
      pseudo_inverse_rtol=pseudo_inverse_rtol,
  )
  if method == "auto":
    new, error = core.on_tpu_else(
        tpu=lambda: root(method="newton"), other=lambda: root(method="eigh"))
  else:
    new, error = root(method=method)
  return new, error, error <= max_root_error
