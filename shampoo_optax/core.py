# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The core both optimizers are built on: one update, in one pass in block layout.

Shampoo and SOAP differ only in what they do with a stack of blocks once its
preconditioners are known (:class:`Variant`): Shampoo multiplies by inverse
roots and grafts; SOAP rotates into the eigenbasis, takes Adam's step there
and rotates back. Everything else is here:

    update(grads, state)
      leaves not preconditioned   the diagonal method (grafting.py), in the parameters' layout
      block layout:           the gradient cut into stacks, once
        accumulate            factor matrices  b2 L + (1 - b2) G G^T
        refresh               the due preconditioners (Shampoo: before use)
        apply                 the variant's direction, stack by stack, with its moments,
                              which are kept in block layout (moments.BlockedMoment)
        refresh               (SOAP: after use, then its second moment carried)
      back to tree layout, once

The block plan (``blocking.py``) is static: Python loops below run over it at
trace time and compile to one batched computation per stack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from shampoo_optax import (
  blocking,
  factor_matrices,
  matrix_functions,
  moments,
  quantization,
  validation,
)
from shampoo_optax import sharding as sharding_lib

# apply(plan, blocks {name: [stack]}, preconditioners [per stack, [(axis, [size, d, d])]],
#       scalars) -> {output name: [stack] or ([stack], [per-block scale])}
Apply = Callable[[blocking.Plan, dict, list, dict], dict]
# after_refresh(plan, outputs, per group factor_matrices.Changes, count) -> outputs
AfterRefresh = Callable[[blocking.Plan, dict, tuple, jax.Array], dict]


@dataclasses.dataclass(frozen=True)
class Variant:
  """What Shampoo and SOAP do differently, given the shared core."""

  compute: factor_matrices.Compute  # a preconditioner from a factor matrix
  apply: Apply
  outputs: tuple[str, ...]  # names of apply's outputs
  refresh_first: bool  # refresh before apply (Shampoo) or after it (SOAP)
  # The moments, kept in block layout: stacks apply reads from ``blocks``
  # under these names (``'mu'``, and ``'nu'`` if kept) and returns, updated,
  # under the same names.
  carried: tuple[str, ...]
  # SOAP: what each refreshed row's change is (computed in the refresh), and
  # what is done with it after the refresh.
  change: factor_matrices.Change | None = None
  after_refresh: AfterRefresh | None = None


@dataclasses.dataclass(frozen=True)
class Core:
  """The static settings of an optimizer built on this core."""

  layout: blocking.Layout
  codec: quantization.Codec  # how factor matrices are stored
  precond_codec: quantization.Codec  # how preconditioners are stored
  block_sharding: sharding_lib.BlockSharding
  schedule: factor_matrices.Schedule
  moments: moments.BlockedMoments
  # FSDP: blocks cut from each device's own shards (see sharding.LocalBlocks).
  local: sharding_lib.LocalBlocks | None = None

  def plan(self, tree) -> blocking.Plan:
    """The block plan of ``tree``'s leaves: of their local shapes with ``local``."""
    if self.local is None:
      return self.layout.plan_shapes([x.shape for x in jax.tree.leaves(tree)])
    return self.layout.plan_shapes(self.local.local_shapes(tree),
                                   [x.shape for x in jax.tree.leaves(tree)])

  def transformation(self, state_cls, step_fn) -> optax.GradientTransformationExtraArgs:
    """init and update around ``step_fn(grads, mu, nu, groups, count) -> (step, mu, nu,
    groups)``, ``mu`` and ``nu`` loaded in the gradients' dtypes, ``groups`` the
    state's per-factor fields (statistics, preconditioners, errors, failures)."""

    def init_fn(params):
      validation.check_float_leaves(params, "params")
      plan = self.plan(params)
      mu, nu = self.moments.init(params, plan, self.moment_rows(plan), self.block_sharding.place)
      groups = factor_matrices.init(plan, self.codec, self.precond_codec,
                                    self.block_sharding, params,
                                    replicas=1 if self.local is None else self.local.replicas)
      return state_cls(jnp.zeros([], jnp.int32), mu, nu, *groups)

    def update_fn(updates, state, params=None, **extra_args):
      del params, extra_args
      if not isinstance(state, state_cls):
        raise TypeError(
            f"this optimizer's update takes a {state_cls.__name__}, got a "
            f"{type(state).__name__}: the state of another optimizer, or a checkpoint "
            "restored without a target (see shampoo_optax.upgrade_state)")
      shapes = self.moments.shapes(state.mu, updates)
      if shapes is None:
        validation.raise_tree_mismatch(updates, state.mu.tree)
      validation.check_updates_match(updates, shapes)
      self._check_groups(updates, state)
      count = optax.safe_increment(state.count)
      mu, nu = self.moments.load(state.mu, state.nu, updates)
      step, mu, nu, groups = step_fn(updates, mu, nu, tuple(state[3:]), count)
      updates = jax.tree.map(lambda s, g: s.astype(g.dtype), step, updates)
      mu, nu = self.moments.store(mu, nu, state.mu, state.nu, count, updates)
      return updates, state_cls(count, mu, nu, *groups)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def step_with_blocked_moments(self, grads, mu, nu, groups: tuple, count: jax.Array, *,
                                tree_step: Callable, scalars: dict[str, Any],
                                variant: Variant):
    """One step with the moments in block layout (``moments.BlockedMoment``):
    ``(step, mu, nu, groups)``.

    The leaves the plan does not precondition take ``tree_step(grads, mu, nu)
    -> (step, mu, nu)`` on lists of leaves in the parameters' layout (``nu``
    is ``()`` when ``'nu'`` is not in ``variant.carried``). The others take
    ``variant`` in one :meth:`block_step`, with the moments' stacks carried;
    their step is the sum of the variant's outputs.
    """
    plan = self.plan(grads)
    leaves, treedef = jax.tree.flatten(grads)
    keeps_nu = "nu" in variant.carried
    # None stands for a leaf whose moments are in the stacks; the moments'
    # trees are read up to the gradients' structure, which keeps the
    # parameters' own None nodes (no leaves) apart from it.
    mu_leaves = treedef.flatten_up_to(mu.tree)
    nu_leaves = treedef.flatten_up_to(nu.tree) if keeps_nu else None
    diagonal = [i for i, lp in enumerate(plan.leaves) if not lp.is_preconditioned]
    take = lambda xs: [xs[i] for i in diagonal]  # noqa: E731
    step, m, n = tree_step(take(leaves), take(mu_leaves), take(nu_leaves) if keeps_nu else ())
    step_leaves = [None] * len(leaves)
    for i, step_i, m_i in zip(diagonal, step, m):
      step_leaves[i], mu_leaves[i] = step_i, m_i
    for i, n_i in zip(diagonal, n):
      nu_leaves[i] = n_i
    out = {}
    if plan.stacks:
      carried = {"mu": mu.stacks, "nu": nu.stacks} if keeps_nu else {"mu": mu.stacks}
      out, groups = self.block_step(plan, leaves, groups, count, scalars, variant,
                                    like=grads, carried=carried)
      summed = [functools.reduce(jnp.add, parts)
                for parts in zip(*(out[name] for name in variant.outputs))]
      step_leaves = merge_preconditioned(plan, step_leaves, summed)
    mu = mu._replace(tree=jax.tree.unflatten(treedef, mu_leaves), stacks=out.get("mu", mu.stacks))
    if keeps_nu:
      nu = nu._replace(tree=jax.tree.unflatten(treedef, nu_leaves),
                       stacks=out.get("nu", nu.stacks))
    return jax.tree.unflatten(treedef, step_leaves), mu, nu, groups

  def moment_rows(self, plan: blocking.Plan) -> list[int]:
    """Rows of each stack of moments kept in block layout: its blocks, rounded
    up to a multiple of the block axis' devices, or, with local blocks, every
    device's blocks one after the other."""
    if self.local is not None:
      return [self.local.replicas * st.size for st in plan.stacks]
    n = self.block_sharding.size
    return [-(-st.size // n) * n for st in plan.stacks]

  def _check_groups(self, grads, state) -> None:
    """Raises an error when the state's per-group fields (statistics,
    preconditioners, errors, failures) are not shaped as ``grads``' block plan
    needs: a state made with other layout settings, by 0.2 for tensors of rank
    > 2, or (local blocks) for other shards. A state may hold more padding rows
    than this mesh's (saved on a larger mesh, see ``abstract_state``), not
    fewer. Shapes only, at trace time."""
    if self.local is None:  # the fewest rows a state can have: no mesh's padding
      layout = dataclasses.replace(self.layout, shard_multiple=1)
      plan, replicas = layout.plan_shapes([x.shape for x in jax.tree.leaves(grads)]), 1
    else:
      plan, replicas = self.plan(grads), self.local.replicas
    want = jax.eval_shape(functools.partial(
        factor_matrices.init, plan, self.codec, self.precond_codec,
        sharding_lib.BlockSharding(), replicas=replicas))

    def fits(got, want):
      return ((want.dtype is None or str(got.dtype) == str(want.dtype))
              and got.shape[1:] == want.shape[1:]
              and (got.shape[0] >= want.shape[0] if self.local is None
                   else got.shape[0] == want.shape[0]))

    fields = list(zip(type(state)._fields[3:], state[3:], want))
    for name in ("mu", "nu") if self.moments.keeps_nu else ("mu",):  # stacks, checked alike
      stacks = getattr(state, name).stacks
      want_stacks = []
      for st, x in zip(plan.stacks, stacks):  # shapes only: dtypes are the parameters'
        shape = (replicas * st.size, *st.block_shape)
        want_stacks.append([_Shape(shape)] if not isinstance(x, quantization.QuantizedArray)
                           else [_Shape(shape), _Shape(shape[:-1] + (1,))])
      fields.append((name, stacks, want_stacks))
    for name, got_field, want_field in fields:
      got_groups = [jax.tree.leaves(g) for g in got_field]
      want_groups = [jax.tree.leaves(g) for g in want_field]
      if len(got_groups) == len(want_groups) and all(
          len(g) == len(w) and all(map(fits, g, w)) for g, w in zip(got_groups, want_groups)):
        continue
      local = ("A state made with local blocks (param_specs) restores only onto a mesh that "
               "cuts the parameters into the same shards (same param_specs, same block-axis "
               "size). " if self.local is not None else "")
      raise ValueError(
          f"the optimizer state's {name} do not fit these parameters' block plan: "
          f"the state holds {len(got_groups)} group(s) shaped {_shapes(got_groups)}, the plan "
          f"needs {len(want_groups)} shaped {_shapes(want_groups)}"
          f"{' (or more rows)' if self.local is None else ''}. {local}The state was made with "
          "other layout settings (block_size, max_merged_dim, skip_preconditioning_dim_size_gt, "
          "exponent_override, statistics_dtype). A state saved by shampoo_optax 0.2 for "
          "parameters of rank > 2 restores with max_merged_dim=block_size (0.2's layout); a "
          "SOAP state saved by 0.2 converts with shampoo_optax.upgrade_state; see the README's "
          "'Changed in 0.3.0'")

  def block_step(self, plan: blocking.Plan, grads: list, groups: tuple,
                 count: jax.Array, scalars: dict[str, Any], variant: Variant, *, like: Any,
                 carried: dict[str, tuple]):
    """The variant's outputs for each preconditioned leaf, and the new groups.

    ``grads``: the leaves of ``like`` (the gradients), in tree order; they are
    cut into blocks once. The outputs come back as leaf lists of the
    preconditioned leaves only, with the gradients' shardings.
    ``scalars``: numbers and scalar arrays. ``carried``: the variant's state
    in block layout (its moments), per name of
    ``variant.carried`` one array per stack (``moment_rows`` rows); it comes
    back updated among the outputs, split over the block axis as the groups.
    """
    carried = {name: tuple(carried[name]) for name in variant.carried}
    if self.local is not None:
      out, (groups, carried) = self._local_block_step(plan, grads, (groups, carried), count,
                                                      scalars, variant, like)
      return {**out, **carried}, groups
    step = functools.partial(self._step_in_block_layout, plan, variant=variant,
                             block_sharding=self.block_sharding)
    out_like = {name: preconditioned_only(plan, grads) for name in variant.outputs}
    out, (groups, carried) = sharding_lib.call_in_block_layout(
        step, (grads, (groups, carried), count, scalars), out_like, (groups, carried),
        self.block_sharding)
    return {**out, **carried}, groups

  def _local_block_step(self, plan, grads, groups, count, scalars, variant, like):
    """block_step under FSDP: every device on its own shards, in one shard_map."""
    specs = self.local.leaf_specs(like)
    # The state's groups were checked against this plan (_check_groups).
    # Gradients sharded otherwise (not as param_specs say) are resharded first:
    # correct, at the cost of the communication this mode exists to avoid.
    mesh = self.block_sharding.mesh
    grads = [sharding_lib.constrain(x, mesh, spec) for x, spec in zip(grads, specs)]
    groups = tuple(jax.tree.map(self.block_sharding.place, g) for g in groups)
    # Python numbers stay constants (as without a mesh); arrays are passed in.
    passed = {k: v for k, v in scalars.items() if isinstance(v, jax.Array)}
    constants = {k: v for k, v in scalars.items() if k not in passed}
    group_spec = jax.tree.map(lambda _: self.block_sharding.spec, groups)
    in_specs = (specs, group_spec, PartitionSpec(), {k: PartitionSpec() for k in passed})
    out_specs = ({name: preconditioned_only(plan, specs) for name in variant.outputs}, group_spec)

    def local(grads, groups, count, passed):
      return self._step_in_block_layout(
          plan, grads, groups, count, {**passed, **constants}, variant=variant,
          block_sharding=sharding_lib.BlockSharding())

    return self.local.call(local, (grads, groups, count, passed), in_specs, out_specs)

  def _step_in_block_layout(self, plan, grads, groups, count, scalars, *, variant,
                            block_sharding):
    groups, carried = groups
    # The preconditioned gradients as float32 stacks of blocks: the one cut of the step.
    stacks = blocking.to_stacks(plan, grads, jnp.float32)
    stats, precond, errors, failures = groups
    place = lambda tree: tuple(jax.tree.map(block_sharding.place, g) for g in tree)  # noqa: E731
    stats = place(factor_matrices.accumulate(
        plan, stats, stacks, scalars["b2"], self.codec, count))
    refresh = functools.partial(
        factor_matrices.refresh, plan, stats, count=count, compute=variant.compute,
        schedule=self.schedule, block_sharding=block_sharding, codec=self.codec,
        precond_codec=self.precond_codec,
        # Per-device work on simulated CPU devices: see factor_matrices.
        per_device=self.block_sharding.size > 1)
    if variant.refresh_first:
      precond, errors, failures, _ = refresh(precond, errors, failures)
    preconditioners = factor_matrices.decode_stacks(plan, precond, self.precond_codec)
    # Stored stacks have padding rows for the block axis (moment_rows): apply
    # runs on stacks of that many rows, split over the block axis as they
    # are, the padding blocks zero.
    # A stack of blocks the block axis does not divide is replicated before
    # it is padded: split unevenly, XLA's partitioner would replicate it
    # anyway, with a warning (benchmarks/README.md, "moments in block
    # layout, landed").
    rows = [x.shape[0] for x in next(iter(carried.values()))]
    uneven = lambda x, n: block_sharding.replicate(x) if x.shape[0] != n else x  # noqa: E731
    blocks = {"grads": [block_sharding.place(_pad_rows(uneven(x, n), n))
                        for x, n in zip(stacks, rows)], **carried}
    preconditioners = [[(axis, _pad_rows(m, n)) for axis, m in per_axis]
                       for per_axis, n in zip(preconditioners, rows)]
    outputs = variant.apply(plan, blocks, preconditioners, scalars)
    if not variant.refresh_first:
      precond, errors, failures, changes = refresh(precond, errors, failures,
                                                   change=variant.change)
      outputs = variant.after_refresh(plan, outputs, changes, count)
    # Unsharded stacks are read at offsets computed at run time, so that the
    # leaves of one shape are put back by one kernel (blocking.from_stacks).
    put_back = functools.partial(_from_stacks, plan,
                                 count=count if block_sharding.size == 1 else None)
    leaves = {name: preconditioned_only(plan, put_back(outputs[name]))
              for name in variant.outputs}
    carried = {name: tuple(map(block_sharding.place, outputs[name])) for name in variant.carried}
    return leaves, ((stats, precond, errors, failures), carried)


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  """``x`` with zero rows appended up to ``rows``."""
  if x.shape[0] == rows:
    return x
  return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class _Shape:
  """A shape the state must have, of any dtype."""

  shape: tuple[int, ...]
  dtype: Any = None


def _shapes(groups: list[list]) -> list:
  """Shapes and dtypes of each group's arrays, for an error message."""
  return [[(tuple(x.shape), str(x.dtype)) for x in group] for group in groups]


def _from_stacks(plan, output, *, count):
  """An output of ``Variant.apply``: stacks, or (stacks, per-block scales)."""
  stacks, scales = output if isinstance(output, tuple) else (output, None)
  return blocking.from_stacks(plan, stacks, scales, count=count)


def preconditioned_only(plan: blocking.Plan, leaves: list) -> list:
  return [x for x, leaf in zip(leaves, plan.leaves) if leaf.is_preconditioned]


def merge_preconditioned(plan: blocking.Plan, leaves: list, preconditioned: list) -> list:
  """``leaves`` with the preconditioned ones replaced, in order, by ``preconditioned``."""
  it = iter(preconditioned)
  return [next(it) if leaf.is_preconditioned else x for x, leaf in zip(leaves, plan.leaves)]


def along_axis(blocks: jax.Array, mats: jax.Array, axis: int, transpose: bool) -> jax.Array:
  """Block ``z`` times ``mats[z]`` along ``axis``.

  ``transpose``: ``x ×_axis M^T`` (contracts x's axis with M's rows: into an
  eigenbasis, or by a symmetric root); otherwise ``x ×_axis M`` (with M's
  columns).
  """
  rank = blocks.ndim - 1
  lower, upper = blocking.einsum_letters(rank)
  pair = f"{lower[axis]}{upper[axis]}" if transpose else f"{upper[axis]}{lower[axis]}"
  result = lower[:axis] + upper[axis] + lower[axis + 1:]
  return jnp.einsum(f"z{lower},z{pair}->z{result}", blocks, mats,
                    precision=jax.lax.Precision.HIGHEST)


def along_axes(blocks: jax.Array, factors: Sequence[tuple[int, jax.Array]],
               transpose: bool) -> jax.Array:
  """``along_axis`` for every ``(axis, mats)`` of ``factors``, in axis order.

  When every axis of the blocks has a matrix, each product takes the axis in
  front, ``[z, d, rest]``, and leaves it last, ``[z, rest, d]``: that is the
  order a batched matrix product produces, so after the last axis the blocks
  are back in their own layout and no product needed a transpose (rank-3
  blocks otherwise transpose twice per pass). Other blocks take one
  ``along_axis`` per matrix.
  """
  by_axis = dict(factors)
  rank = blocks.ndim - 1
  if sorted(by_axis) != list(range(rank)):
    for axis, mats in factors:
      blocks = along_axis(blocks, mats, axis, transpose)
    return blocks
  x = blocks
  for axis in range(rank):
    rest = x.shape[2:]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    pair = "aA" if transpose else "Aa"
    flat = jnp.einsum(f"zar,z{pair}->zrA", flat, by_axis[axis],
                      precision=jax.lax.Precision.HIGHEST)
    x = flat.reshape(x.shape[0], *rest, flat.shape[-1])
  return x


def orthogonalize_blocks(blocks: jax.Array) -> jax.Array:
  """Each matrix block of ``[z, m, n]`` replaced by its approximate polar factor
  (``matrix_functions.orthogonalize``), rescaled to the block's own Frobenius
  norm; blocks of any other rank are returned as they are."""
  if blocks.ndim != 3:
    return blocks
  polar = matrix_functions.orthogonalize(blocks)
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))  # noqa: E731
  polar_norm = norm(polar)
  return polar * (norm(blocks) / jnp.where(polar_norm > 0, polar_norm, 1))


def on_tpu_else(tpu: Callable, other: Callable):
  """``tpu()`` when compiled for a TPU, ``other()`` on CPUs and GPUs."""
  return jax.lax.platform_dependent(tpu=tpu, default=other)
