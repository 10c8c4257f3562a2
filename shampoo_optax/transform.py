# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""scale_by_shampoo: Distributed Shampoo as an optax gradient transformation.

One update, in the paper's terms (Anil et al., 2020, arXiv 2002.09018):

1. First moment ``mu`` (EMA of gradients, ``b1``, bias-corrected) and the
   grafting method's diagonal second moment ``nu`` (``b2``), in the
   parameters' own tree layout.
2. Statistics, per block ``G`` of the gradient and per preconditioned axis:
   ``L <- b2 L + (1 - b2) G G^T`` and ``R <- b2 R + (1 - b2) G^T G`` (for a
   k-dimensional block, one statistic per axis, contracting the others).
3. Inverse roots ``L^(-1/p)``, ``R^(-1/p)`` (``p = 2k``, so ``-1/4`` for
   matrices) with ridge ``matrix_eps * lambda_max``, refreshed every
   ``precondition_every`` steps; a root that fails (not finite, or error above
   ``max_root_error``) is not used: the previous one is kept and the failure
   counted.
4. The preconditioned direction ``L^(-1/p) mu_hat R^(-1/p)``, rescaled per
   block to the norm of the grafting method's step (layer-wise grafting,
   Section 3 of the paper), which is what lets a tuned Adam learning rate carry
   over.
5. Until ``start_preconditioning_step``, and for parameters that are not
   preconditioned (scalars, vectors), the grafting method's step itself.

The mechanics live elsewhere: the block plan in ``blocking.py``, the roots in
``matrix_functions.py``, the diagonal methods in ``grafting.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import blocking, grafting, matrix_functions
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
    "exponent_override",
    "max_merged_dim",
    "skip_preconditioning_dim_size_gt",
    "root_method",
    "stagger_root_refresh",
    "mu_dtype",
    "mesh",
    "block_axis",
)


class ShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`: arrays only, nothing static.

  The ``g``-th entry of ``stats``, ``roots``, ``root_errors`` and
  ``root_failures`` belongs to the ``g``-th group of the block plan (all
  statistics of one size ``d_g`` and one root exponent), which is rebuilt from
  the parameters' shapes whenever it is needed.

  Attributes:
    count: int32 ``[]``, the number of updates applied.
    mu: first moment, the parameters' tree and shapes, dtype ``mu_dtype`` or
      the parameters'.
    nu: the grafting method's second moment, the parameters' tree, shapes and
      dtypes; ``()`` for grafts without one (``'sgd'``, ``'none'``).
    stats: tuple of float32 ``[n_g, d_g, d_g]``, the statistics.
    roots: tuple of float32 ``[n_g, d_g, d_g]``, the inverse roots in use.
    root_errors: tuple of float32 ``[n_g]``, the error estimate of the last
      root computed for each statistic (0 until one is computed).
    root_failures: tuple of int32 ``[n_g]``, how many computed roots were
      rejected (not finite, or error above ``max_root_error``).
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates | tuple[()]
  stats: tuple[jax.Array, ...]
  roots: tuple[jax.Array, ...]
  root_errors: tuple[jax.Array, ...]
  root_failures: tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The static, shape-setting settings: they pick the block plan."""

  block_size: int
  max_merged_dim: int
  skip_preconditioning_dim_size_gt: int
  exponent_override: int | None
  shard_multiple: int

  def plan(self, leaves) -> blocking.Plan:
    return blocking.make_plan(
        tuple(tuple(x.shape) for x in leaves),
        block_size=self.block_size,
        max_merged_dim=self.max_merged_dim,
        skip_preconditioning_dim_size_gt=self.skip_preconditioning_dim_size_gt,
        exponent_override=self.exponent_override,
        shard_multiple=self.shard_multiple,
    )


def scale_by_shampoo(
    block_size: int = 128,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    matrix_eps: jax.typing.ArrayLike = 1e-6,
    precondition_every: int = 10,
    start_preconditioning_step: int = 10,
    graft: str = "adam",
    nesterov: bool = False,
    exponent_override: int | None = None,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int = 4096,
    root_method: str = "auto",
    stagger_root_refresh: bool = True,
    max_root_error: jax.typing.ArrayLike = 0.25,
    mu_dtype: Any | None = None,
    mesh: jax.sharding.Mesh | None = None,
    block_axis: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates with Distributed Shampoo, grafted to a diagonal method.

  Shampoo (`Anil et al., 2020 <https://arxiv.org/abs/2002.09018>`_) keeps, for
  each block ``G`` of a parameter, one statistic per axis (``L = sum G G^T``,
  ``R = sum G^T G`` for a matrix) and preconditions with their inverse roots,
  ``L^(-1/4) G R^(-1/4)``. The direction is grafted: rescaled per block to the
  norm of the step of a diagonal method (Adam by default), so that the diagonal
  method's learning rate carries over. Scalars, vectors and the first
  ``start_preconditioning_step`` steps use the diagonal method alone; with
  ``graft='adam'`` that is exactly ``optax.adam(b1=b1, b2=b2, eps=eps)``.

  The arguments named in ``shampoo_optax.STATIC_ARGS`` (``block_size``,
  ``precondition_every``, ``start_preconditioning_step``, ``graft``, ...) set
  shapes or code paths and must be Python values: with
  ``optax.inject_hyperparams`` pass ``static_args=shampoo_optax.STATIC_ARGS``.
  ``b1``, ``b2``, ``eps``, ``matrix_eps`` and ``max_root_error`` may be arrays.

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
      method alone.
    graft: ``'adam'``, ``'rmsprop'``, ``'rmsprop_normalized'``, ``'adagrad'``,
      ``'sgd'`` or ``'none'`` (see ``shampoo_optax.grafting``).
    nesterov: Nesterov momentum, as ``optax.adam(nesterov=True)``.
    exponent_override: use ``-1/exponent_override`` for every root instead of
      ``-1/(2k)`` for blocks with ``k`` preconditioned axes.
    max_merged_dim: adjacent dimensions of a parameter are merged while their
      product is at most this (default: ``block_size``); size-1 dimensions are
      always dropped. Tensors that merge into a vector use the diagonal method.
    skip_preconditioning_dim_size_gt: dimensions larger than this get no
      statistic (preconditioned on the other side only).
    root_method: ``'newton'`` (coupled Newton, matrix products only),
      ``'eigh'``, or ``'auto'``: eigh on CPU, where it is faster, Newton on
      accelerators.
    stagger_root_refresh: refresh ``1/precondition_every`` of the roots on
      every step, so that no step pays for all of them; with ``False`` all
      roots are refreshed together on every ``precondition_every``-th step
      (under ``jax.lax.cond``). Either way each root is at most
      ``precondition_every`` steps old, and all roots are ready on the first
      preconditioned step when ``start_preconditioning_step >=
      precondition_every``.
    max_root_error: a computed root whose error estimate exceeds this is
      rejected and the previous root kept.
    mu_dtype: dtype of the first moment; ``None`` keeps the parameters'.
    mesh: a ``jax.sharding.Mesh`` to spread the statistics and roots over.
    block_axis: the mesh axis name (or tuple of names) that the statistics'
      block axis is split over: each device holds and computes the roots of
      ``1/N`` of the blocks. ``None`` keeps them replicated. Parameters may be
      sharded any way (FSDP, tensor parallel); updates come back with the
      gradients' shardings. See ``shampoo_optax.sharding``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ShampooState`.

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
  _validate_static(
      block_size=block_size,
      precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step,
      graft=graft,
      exponent_override=exponent_override,
      max_merged_dim=max_merged_dim,
      skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
      root_method=root_method,
  )
  _validate_number("b1", b1, 0.0, 1.0, upper_open=True)
  _validate_number("b2", b2, 0.0, 1.0)
  _validate_number("eps", eps, 0.0, None)
  _validate_number("matrix_eps", matrix_eps, 0.0, None)
  _validate_number("max_root_error", max_root_error, 0.0, None, lower_open=True)
  block_sharding = sharding_lib.BlockSharding.create(mesh, block_axis)
  layout = _Layout(
      block_size,
      max_merged_dim or block_size,
      skip_preconditioning_dim_size_gt,
      exponent_override,
      block_sharding.size,
  )
  mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype) if mu_dtype is not None else None
  core = functools.partial(
      _shampoo_core,
      b2=b2,
      graft=graft,
      block_sharding=block_sharding,
      refresh=functools.partial(
          _refresh_group,
          precondition_every=precondition_every,
          start=start_preconditioning_step,
          stagger=stagger_root_refresh,
          method=root_method,
          matrix_eps=matrix_eps,
          max_root_error=max_root_error,
      ),
  )

  def init_fn(params: optax.Params) -> ShampooState:
    _check_float_leaves(params, "params")
    plan = layout.plan(jax.tree.leaves(params))
    place = block_sharding.place
    return ShampooState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=optax.tree.zeros_like(params) if grafting.keeps_second_moment(graft) else (),
        stats=tuple(
            place(jnp.zeros((g.padded_size, g.dim, g.dim), jnp.float32)) for g in plan.groups
        ),
        roots=tuple(
            place(jnp.broadcast_to(jnp.eye(g.dim, dtype=jnp.float32),
                                   (g.padded_size, g.dim, g.dim)))
            for g in plan.groups
        ),
        root_errors=tuple(
            place(jnp.zeros((g.padded_size,), jnp.float32)) for g in plan.groups
        ),
        root_failures=tuple(
            place(jnp.zeros((g.padded_size,), jnp.int32)) for g in plan.groups
        ),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    check_updates_match(updates, state.mu)
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = grafting.update_second_moment(graft, updates, state.nu, b2)
    mu_hat = _debiased_first_moment(mu, updates, b1, count, nesterov)
    step = grafting.direction(graft, mu_hat, nu, count, b2, eps)

    grad_leaves, treedef = jax.tree.flatten(updates)
    plan = layout.plan(grad_leaves)
    groups = (state.stats, state.roots, state.root_errors, state.root_failures)
    if plan.stacks:
      step_leaves = jax.tree.leaves(step)
      run = functools.partial(core, plan)
      explicit = sharding_lib.explicit_axes_in_context()
      if explicit:
        # Cutting sharded arrays into blocks needs the compiler to pick the
        # intermediate shardings: run the block-layout code on Auto axes.
        out_specs = (
            [sharding_lib.spec_of(step_leaves[i])
             for i, leaf in enumerate(plan.leaves) if leaf.is_preconditioned],
            jax.tree.map(lambda _: block_sharding.spec, groups),
        )
        run = jax.sharding.auto_axes(run, axes=explicit, out_sharding=out_specs)
      preconditioned, groups = run(
          grad_leaves, jax.tree.leaves(mu_hat), step_leaves, groups, count
      )
      preconditioned = iter(preconditioned)
      use_shampoo = count > start_preconditioning_step
      step = jax.tree.unflatten(treedef, [
          jnp.where(use_shampoo, next(preconditioned).astype(s.dtype), s)
          if leaf.is_preconditioned else s
          for s, leaf in zip(step_leaves, plan.leaves)
      ])
    updates = jax.tree.map(lambda s, g: s.astype(g.dtype), step, updates)
    mu = optax.tree.cast(mu, mu_dtype)
    return updates, ShampooState(count, mu, nu, *groups)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _debiased_first_moment(mu, grads, b1, count, nesterov):
  """Adam's mu_hat, with optax.adam's Nesterov variant."""
  if nesterov:
    return jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        grafting.bias_correction(mu, b1, optax.safe_increment(count)),
        grafting.bias_correction(grads, b1, count),
    )
  return grafting.bias_correction(mu, b1, count)


def _shampoo_core(plan, grad_leaves, mu_hat_leaves, step_leaves, groups, count, *,
                  b2, graft, block_sharding, refresh):
  """Statistics, due root refreshes and preconditioned steps, in block layout.

  Returns the preconditioned step of each preconditioned leaf (in tree order)
  and the new (stats, roots, root_errors, root_failures).
  """
  stats, roots, errors, failures = groups
  grad_stacks = blocking.to_stacks(plan, grad_leaves, jnp.float32)
  stats = tuple(map(block_sharding.place, _accumulate_statistics(plan, stats, grad_stacks, b2)))
  refreshed = [
      block_sharding.map_blocks(
          functools.partial(refresh, exponent=group.exponent), (s, r, e, f), (count,))
      for group, s, r, e, f in zip(plan.groups, stats, roots, errors, failures)
  ]
  roots, errors, failures = (tuple(block_sharding.place(x) for x in xs)
                             for xs in zip(*refreshed)) if refreshed else ((), (), ())
  preconditioned = _preconditioned_step(plan, roots, mu_hat_leaves, step_leaves, graft)
  return [p for p in preconditioned if p is not None], (stats, roots, errors, failures)


def _accumulate_statistics(plan, stats, grad_stacks, b2):
  """stats <- b2 stats + (1 - b2) G G^T, per axis, all blocks of a group at once."""
  parts: list[list[jax.Array]] = [[] for _ in plan.groups]
  for stack, grads in zip(plan.stacks, grad_stacks):
    rank = len(stack.block_shape)
    for axis, group, _ in stack.statistics:
      contribution = jnp.einsum(
          blocking.statistic_einsum(rank, axis), grads, grads,
          precision=jax.lax.Precision.HIGHEST,
      )
      pad = plan.groups[group].dim - stack.block_shape[axis]
      parts[group].append(jnp.pad(contribution, ((0, 0), (0, pad), (0, pad))))
  weight = grafting.moment_weight(b2)
  new_stats = []
  for old, new in zip(stats, parts):
    new = jnp.concatenate(new, axis=0) if len(new) > 1 else new[0]
    # The state may carry more padding than the plan asks for (a state saved
    # on a larger mesh and restored on a smaller one): pad to what it has.
    if old.shape[0] > new.shape[0]:
      new = jnp.pad(new, ((0, old.shape[0] - new.shape[0]), (0, 0), (0, 0)))
    new_stats.append(b2 * old + weight * new)
  return tuple(new_stats)


def _preconditioned_step(plan, roots, mu_hat_leaves, step_leaves, graft):
  """L^(-1/p) mu_hat R^(-1/p) per block, grafted to the diagonal step's norm."""
  mu_stacks = blocking.to_stacks(plan, mu_hat_leaves, jnp.float32)
  step_stacks = (
      blocking.to_stacks(plan, step_leaves, jnp.float32) if graft != "none" else mu_stacks
  )
  out = []
  for stack, blocks, diag in zip(plan.stacks, mu_stacks, step_stacks):
    rank = len(stack.block_shape)
    for axis, group, offset in stack.statistics:
      dim = stack.block_shape[axis]
      root = roots[group][offset : offset + stack.size, :dim, :dim]
      blocks = jnp.einsum(
          blocking.precondition_einsum(rank, axis), blocks, root,
          precision=jax.lax.Precision.HIGHEST,
      )
    if graft != "none":
      blocks = _graft(blocks, diag)
    out.append(blocks)
  return blocking.from_stacks(plan, out)


def _graft(direction: jax.Array, diagonal_step: jax.Array) -> jax.Array:
  """Rescales each block of ``direction`` to the norm of ``diagonal_step``'s."""
  axes = tuple(range(1, direction.ndim))
  norm = jnp.sqrt(jnp.sum(jnp.square(direction), axis=axes, keepdims=True))
  target = jnp.sqrt(jnp.sum(jnp.square(diagonal_step), axis=axes, keepdims=True))
  return direction * jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1), 0)


def _refresh_group(stats, roots, errors, failures, count, row_offset, *, exponent,
                   precondition_every, start, stagger, method, matrix_eps,
                   max_root_error):
  """Recomputes the inverse roots of one group (or one device's share of it)

  that are due at step ``count``.
  """
  k = precondition_every
  compute = functools.partial(
      _checked_roots, p=exponent, method=method,
      matrix_eps=matrix_eps, max_root_error=max_root_error,
  )
  if stagger:
    # Row i of the group is refreshed on steps t with (t - t0) % k == i % k:
    # 1/k of the rows per step, the same rows whatever the mesh. Starting k
    # steps before preconditioning does, all roots are ready by then.
    t0 = max(1, start - k + 1)
    n = stats.shape[0]  # this device's rows, global rows row_offset + [0, n)
    first = (count - t0 - row_offset) % k
    rows = first + k * jnp.arange(-(-n // k))  # past n: dropped
    refresh = functools.partial(_refresh_rows, compute=compute)
    return jax.lax.cond(count >= t0, refresh, _keep, stats, roots, errors, failures, rows)
  due = (count > start) & ((count - start - 1) % k == 0)
  return jax.lax.cond(due, compute, _keep, stats, roots, errors, failures, None)


def _keep(stats, roots, errors, failures, rows):
  del stats, rows
  return roots, errors, failures


def _refresh_rows(stats, roots, errors, failures, rows, *, compute):
  take = lambda x: jnp.take(x, rows, axis=0, mode="fill", fill_value=0)
  put = lambda x, y: x.at[rows].set(y, mode="drop")
  r, e, f = compute(take(stats), take(roots), take(errors), take(failures))
  return put(roots, r), put(errors, e), put(failures, f)


def _checked_roots(stats, roots, errors, failures, rows=None, *, p, method,
                   matrix_eps, max_root_error):
  """New roots where they are good; the old ones (and a failure) elsewhere."""
  del rows
  new, error = _inverse_roots(stats, p, method, matrix_eps, max_root_error)
  # A statistic that is still zero (no gradient reached it) has no root; it is
  # left at its previous one without counting a failure.
  seen = jnp.any(stats != 0, axis=(-2, -1))
  ok = seen & (error <= max_root_error) & jnp.all(jnp.isfinite(new), axis=(-2, -1))
  return (
      jnp.where(ok[:, None, None], new, roots),
      jnp.where(seen, error, errors),
      failures + (seen & ~ok).astype(failures.dtype),
  )


def _inverse_roots(stats, p, method, matrix_eps, max_root_error):
  root = functools.partial(
      matrix_functions.matrix_inverse_pth_root, stats, p,
      relative_ridge_epsilon=matrix_eps, fallback_threshold=max_root_error,
  )
  if method == "auto":
    return jax.lax.platform_dependent(
        cpu=lambda: root(method="eigh"), default=lambda: root(method="newton")
    )
  return root(method=method)


# ---------------------------------------------------------------------------
# Argument and input checks. They run at construction and trace time only.


def _validate_static(**kwargs):
  for name in ("block_size", "precondition_every", "skip_preconditioning_dim_size_gt"):
    _validate_int(name, kwargs[name], 1)
  _validate_int("start_preconditioning_step", kwargs["start_preconditioning_step"], 0)
  for name in ("exponent_override", "max_merged_dim"):
    if kwargs[name] is not None:
      _validate_int(name, kwargs[name], 1)
  if kwargs["graft"] not in grafting.GRAFTS:
    raise ValueError(f"graft must be one of {grafting.GRAFTS}, got {kwargs['graft']!r}")
  if kwargs["root_method"] not in ROOT_METHODS:
    raise ValueError(
        f"root_method must be one of {ROOT_METHODS}, got {kwargs['root_method']!r}"
    )


def _validate_int(name, value, minimum):
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    raise ValueError(
        f"{name} sets shapes and must be a Python int, got an array; with "
        "optax.inject_hyperparams pass static_args=shampoo_optax.STATIC_ARGS"
    )
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _validate_number(name, value, lower, upper, *, lower_open=False, upper_open=False):
  """Checks a hyperparameter's range when it is known (not a tracer)."""
  if isinstance(value, jax.core.Tracer):
    return
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}") from None
  ok = x == x  # not NaN
  ok &= (x > lower) if lower_open else (x >= lower)
  if upper is not None:
    ok &= (x < upper) if upper_open else (x <= upper)
  if not ok:
    lo = "(" if lower_open else "["
    hi = ")" if upper_open else "]"
    bounds = f"{lo}{lower}, {'inf)' if upper is None else f'{upper}{hi}'}"
    raise ValueError(f"{name} must be in {bounds}, got {value!r}")


def _check_float_leaves(tree, what):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"{what}{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
          "Shampoo needs real floating-point parameters and gradients"
      )


def check_updates_match(updates, reference):
  """Raises an error naming the leaf where ``updates`` and ``reference`` differ."""
  got = dict(jax.tree_util.tree_flatten_with_path(updates)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  if got.keys() != want.keys() or (
      jax.tree.structure(updates) != jax.tree.structure(reference)
  ):
    missing = [jax.tree_util.keystr(k) for k in want if k not in got]
    extra = [jax.tree_util.keystr(k) for k in got if k not in want]
    detail = "; ".join(
        s for s in (
            f"missing leaves {missing[:5]}" if missing else "",
            f"unexpected leaves {extra[:5]}" if extra else "",
        ) if s
    ) or (
        f"same leaves but different containers: {jax.tree.structure(updates)} "
        f"vs {jax.tree.structure(reference)}"
    )
    raise ValueError(
        "The gradient tree does not match the tree the optimizer state was "
        f"initialized with: {detail}."
    )
  for key, leaf in got.items():
    name = f"updates{jax.tree_util.keystr(key)}"
    if jnp.shape(leaf) != jnp.shape(want[key]):
      raise ValueError(
          f"{name} has shape {jnp.shape(leaf)} but the optimizer state was "
          f"initialized for shape {jnp.shape(want[key])}"
      )
  _check_float_leaves(updates, "updates")
