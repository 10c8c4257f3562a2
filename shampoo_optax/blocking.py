# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The static block plan: parameter shapes -> blocks -> stacks, and back.

The plan is plain Python data computed from the shapes of the parameters (it is
hashable, cached, never traced and never stored in the optimizer state):

1. Each parameter is reshaped: dimensions of size one are dropped and adjacent
   dimensions are merged while their product stays <= ``max_merged_dim``, so a
   ``(3, 3, 64, 128)`` convolution kernel becomes ``(576, 128)`` when
   ``max_merged_dim >= 576``. Tensors that end up with fewer than two
   dimensions (scalars, vectors, small matrices) take the diagonal method only.
2. Dimensions larger than ``skip_preconditioning_dim_size_gt`` get no statistic
   (a vocabulary axis, say): they are preconditioned on the other side only and
   are not split. The other dimensions are split into blocks of ``block_size``,
   with a smaller block for the remainder.
3. Blocks of equal shape, from any parameter, are stacked: one array
   ``[num_blocks, *block_shape]`` per stack. With padded slots (see 4.),
   blocks whose statistics share slots are padded with zeros to the slots'
   shape and share a stack, where that is cheap (``_joined_stacks``): a
   ``(128, 96)`` block joins the ``(128, 128)`` ones. Shampoo's statistics
   keep the rows a stack per shape would give them, so its state's layout
   does not depend on it; SOAP's are ordered by stack (``stack_rows``).
4. Each preconditioned axis of a stack has one statistic per block (a
   "factor matrix" in Meta's DistributedShampoo's words). Factor matrices of
   equal root exponent are grouped by size, rounded up to a power of two (at
   most ``block_size``): one array ``[rows, dim, dim]`` per group, a ``d x d``
   statistic sitting in the top-left corner of its ``dim x dim`` slot, zeros
   elsewhere, each factor's blocks in a contiguous range of rows (which the
   per-step work reads as a slice). The inverse root of that padded matrix has
   the root of the statistic in the same corner (the padding is a separate,
   decoupled block), so the rounding changes no result (SOAP keeps its
   eigenbases' padding apart, see ``soap_transform.block_layout``; its slots
   are only rounded, not merged further). It bounds the number of
   groups, and each group is one batched root computation and one piece of
   compiled code: a model compiles to a handful of them however many odd
   remainder sizes its layers have. ``rows`` is rounded up to a multiple of
   ``2 x`` the number of devices the block axis is split over (pairs of
   symmetric matrices share storage, see ``quantization.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import string

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Piece:
  """A rectangular region of a reshaped parameter, cut into equal blocks."""

  start: tuple[int, ...]  # offset of the region along each axis
  grid: tuple[int, ...]  # number of blocks along each axis
  block_shape: tuple[int, ...]

  @property
  def num_blocks(self) -> int:
    return math.prod(self.grid)


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """How one parameter is preconditioned."""

  shape: tuple[int, ...]  # the parameter's shape
  merged_shape: tuple[int, ...]  # after dropping 1s and merging small dims
  preconditioned: tuple[bool, ...]  # per merged axis; () = diagonal only
  exponent: int  # p of the inverse p-th roots; 0 for diagonal-only leaves
  # Pieces in row-major order over the per-axis segments (at most two per
  # axis: the full blocks and the remainder), so they tile merged_shape.
  pieces: tuple[Piece, ...]
  segments: tuple[int, ...]  # number of segments along each axis

  @property
  def is_preconditioned(self) -> bool:
    return bool(self.pieces)


@dataclasses.dataclass(frozen=True)
class Stack:
  """Blocks of one shape, stacked along a new leading axis (some of them
  padded with zeros to it, see ``_joined_stacks``)."""

  block_shape: tuple[int, ...]
  preconditioned: tuple[bool, ...]
  exponent: int
  # (class index, piece index), in order: a class's piece contributes its
  # blocks for every leaf of the class, leaf after leaf.
  members: tuple[tuple[int, int], ...]
  size: int  # total number of blocks
  # (axis, index of a factor in Plan.factors), by axis and then by the
  # factor's first block: one factor per preconditioned axis, or, in a stack
  # joined from several block shapes, one per axis and shape, which together
  # cover the stack's blocks.
  factors: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Factor:
  """The statistics of one preconditioned axis of blocks ``[start, start +
  size)`` of one stack: rows ``[offset, offset + size)`` of its group, in the
  ``[:dim, :dim]`` corner (the stack's blocks may be padded beyond ``dim``)."""

  stack: int
  axis: int
  dim: int
  size: int  # number of blocks
  group: int
  offset: int  # its first row in the group
  start: int = 0  # its first block in the stack
  # (block shape, preconditioned axes, exponent) of its blocks before any
  # padding: what identifies it in every layout of the same parameters.
  key: tuple = ()


@dataclasses.dataclass(frozen=True)
class Group:
  """Factor matrices of one (rounded-up) size and one root exponent, stacked."""

  dim: int
  exponent: int
  factors: tuple[int, ...]  # indices into Plan.factors, in row order
  size: int  # number of matrices that hold statistics
  padded_size: int  # size rounded up for storage (extra matrices stay zero)


@dataclasses.dataclass(frozen=True)
class Plan:
  leaves: tuple[LeafPlan, ...]
  # Preconditioned leaves of identical shape, cut into blocks together: one
  # reshape and transpose per class instead of one per leaf, so a deeper
  # model (the same layer repeated) adds no per-leaf code.
  classes: tuple[tuple[int, ...], ...]
  stacks: tuple[Stack, ...]
  factors: tuple[Factor, ...]
  groups: tuple[Group, ...]

  def class_plan(self, c: int) -> LeafPlan:
    return self.leaves[self.classes[c][0]]

  def stack_axes(self, s: int) -> list[tuple[int, list[Factor]]]:
    """``(axis, runs)`` per preconditioned axis of stack ``s``: its factors in
    block order (a joined stack has one per axis and block shape), those that
    lie in consecutive rows of one group merged into one (with
    ``Layout.stack_rows``, all of them), so that each run's matrices are one
    slice of its group."""
    by_axis: dict[int, list[Factor]] = {}
    for axis, index in self.stacks[s].factors:
      runs = by_axis.setdefault(axis, [])
      f = self.factors[index]
      last = runs[-1] if runs else None
      if (last is not None and last.group == f.group and last.offset + last.size == f.offset
          and last.start + last.size == f.start):
        runs[-1] = dataclasses.replace(last, size=last.size + f.size)
      else:
        runs.append(f)
    return list(by_axis.items())

  def block_slices(self) -> tuple[tuple[int, int, int, int], ...]:
    """(stack index, first block, leaf, piece) of every piece of every
    preconditioned leaf, in the order of the stacks' blocks."""
    out = []
    for s, stack in enumerate(self.stacks):
      offset = 0
      for c, j in stack.members:
        for leaf in self.classes[c]:
          out.append((s, offset, leaf, j))
          offset += self.leaves[leaf].pieces[j].num_blocks
    return tuple(out)

  def block_location(self, leaf: int) -> tuple[tuple[int, int, int], ...]:
    """(stack index, first block, number of blocks) for each piece of a leaf."""
    return tuple((s, first, self.leaves[i].pieces[j].num_blocks)
                 for s, first, i, j in self.block_slices() if i == leaf)


def merge_small_dims(shape: tuple[int, ...], max_dim: int,
                     as_matrix: bool = False) -> tuple[int, ...]:
  """Drops size-1 dims and merges adjacent dims while the product is <= max_dim.

  ``as_matrix``: what is left with more than two dimensions is then merged
  into the most nearly square matrix its dimensions can make, a
  ``[d_model, heads, head_dim]`` attention kernel into
  ``[d_model, heads * head_dim]`` and a ``(3, 3, c_in, c_out)`` convolution
  into ``(9 c_in, c_out)``.

  >>> merge_small_dims((3, 3, 64, 128), 1024)
  (576, 128)
  >>> merge_small_dims((3, 3, 64, 128), 128)
  (9, 64, 128)
  >>> merge_small_dims((3, 3, 64, 128), 128, as_matrix=True)
  (576, 128)
  >>> merge_small_dims((512, 8, 64), 128, as_matrix=True)
  (512, 512)
  >>> merge_small_dims((1, 512, 1), 128)
  (512,)
  """
  return tuple(math.prod(shape[a] for a in axes)
               for axes in _merged_axes(shape, max_dim, as_matrix))


def _merged_axes(shape: tuple[int, ...], max_dim: int,
                 as_matrix: bool = False) -> list[list[int]]:
  """The axes of ``shape`` that make up each of merge_small_dims' dimensions."""
  groups: list[list[int]] = []
  current = 1
  for axis, d in enumerate(shape):
    if d == 1:
      continue
    if groups and current * d <= max_dim:
      current *= d
      groups[-1].append(axis)
    else:
      groups.append([axis])
      current = d
  if as_matrix and len(groups) > 2:
    sizes = [math.prod(shape[a] for a in axes) for axes in groups]
    total = math.prod(sizes)
    # The split k whose two sides are closest in size (the first of equals).
    k = min(range(1, len(groups)),
            key=lambda k: abs(math.log(math.prod(sizes[:k]) ** 2 / total)))
    groups = [[a for axes in groups[:k] for a in axes], [a for axes in groups[k:] for a in axes]]
  return groups


def group_dim(dim: int, block_size: int) -> int:
  """The size of the slot for a ``dim x dim`` statistic: next power of two."""
  return min(max(block_size, dim), 1 << max(dim - 1, 0).bit_length())


# A group of slots is merged into the next larger one when that adds at most
# this fraction to the memory of all statistics: one group fewer to compile.
_MERGE_OVERHEAD = 0.1


def _slot_sizes(members, blocks_of, block_size, pad_slots,
                merge_slots) -> dict[tuple[int, int], int]:
  """Slot size for each (statistic dim, exponent); see the module docstring.

  Without ``pad_slots`` every statistic gets a slot of its own size (SOAP's
  layout before 0.3.0). Without ``merge_slots`` the slots are only rounded up
  to a power of two, not merged into larger ones.
  """
  counts: dict[tuple[int, int], int] = {}  # (dim, exponent) -> number of statistics
  for (block_shape, pre, exponent), mem in members.items():
    size = sum(blocks_of(c, j) for c, j in mem)
    for dim, is_pre in zip(block_shape, pre):
      if is_pre:
        counts[(dim, exponent)] = counts.get((dim, exponent), 0) + size
  if not pad_slots:
    return {key: key[0] for key in counts}
  slot = {key: group_dim(key[0], block_size) for key in counts}
  if not merge_slots:
    return slot
  budget = _MERGE_OVERHEAD * sum(n * slot[k] ** 2 for k, n in counts.items())
  for exponent in {e for _, e in counts}:
    sizes = sorted({slot[k] for k in counts if k[1] == exponent})
    for small, big in zip(sizes, sizes[1:]):
      keys = [k for k in counts if k[1] == exponent and slot[k] == small]
      cost = sum(counts[k] for k in keys) * (big**2 - small**2)
      if cost <= budget:
        budget -= cost
        for k in keys:
          slot[k] = big
  return slot


def _joined_stacks(members, slot, blocks_of) -> dict[tuple, tuple]:
  """For each block shape's key ``(shape, preconditioned, exponent)``, the key
  of the stack its blocks go to: itself, or, padded with zeros to its
  statistics' slots, a stack shared with other block shapes whose slots
  match. One batched product per stack and side then serves several block
  shapes (on a GPU, each distinct product is autotuned when the step
  compiles). A zero row or column of a block adds nothing to its statistics,
  and the root of a padded slot is block diagonal (the module docstring), so
  the padding changes no result.

  Shapes are joined only where that makes fewer stacks, cheapest first, while
  the padding adds at most ``_MERGE_OVERHEAD`` to the elements of all blocks.
  """
  padded = {key: (tuple(slot[(d, key[2])] if is_pre else d for d, is_pre in zip(*key[:2])),
                  *key[1:]) for key in members}
  volume = lambda key, shape: sum(blocks_of(c, j) for c, j in members[key]) * math.prod(shape)  # noqa: E731
  cost = {key: volume(key, padded[key][0]) - volume(key, key[0]) for key in members}
  budget = _MERGE_OVERHEAD * sum(volume(key, key[0]) for key in members)
  out = {key: key for key in members}
  # Candidates: block shapes padded into another's stack (there is one of the
  # padded shape) or into a stack of their own with at least one other.
  candidates: dict[tuple, list[tuple]] = {}
  for key in sorted(members, key=cost.get):
    if key != padded[key]:
      candidates.setdefault(padded[key], []).append(key)
  for target, keys in sorted(candidates.items(), key=lambda kv: cost[kv[1][0]]):
    taken = []
    for key in keys:  # cheapest first
      if cost[key] <= budget:
        budget -= cost[key]
        taken.append(key)
    if target not in members and len(taken) == 1:  # a stack of one shape: no gain
      budget += cost[taken.pop()]
    out.update(dict.fromkeys(taken, target))
  return out


def _segments(dim: int, block: int) -> list[tuple[int, int, int]]:
  """(start, number of blocks, block size) covering [0, dim)."""
  full, rest = divmod(dim, block)
  out = []
  if full:
    out.append((0, full, block))
  if rest:
    out.append((full * block, 1, rest))
  return out


def _fold_shard(merged: tuple[int, ...], preconditioned: tuple[bool, ...], block_size: int,
                row_shards: int) -> tuple[int, ...]:
  """The shape a 2-D shard ``[r, c]`` is blocked as (a row-major reshape of it).

  FSDP cuts a parameter's rows over ``row_shards`` devices. Two cases would
  otherwise cost every device far more statistics than its share:

  - ``r < block_size`` (a 4096-row weight on 256 devices: 16 rows each):
    ``[r, b]`` blocks would carry a ``b x b`` statistic for ``r b`` entries,
    ``b / r`` times the state per parameter of whole blocks. Folded to
    ``[r c / b, b]``, the blocks are whole again.
  - Rows not preconditioned (a dimension over
    ``skip_preconditioning_dim_size_gt``): one device keeps one ``b x b``
    column statistic per column block, over all the rows; sharded, every
    device would keep them all, over its rows. Folded to ``[r t, c / t]``
    (``t = row_shards``, or the largest divisor of ``c / b`` below it), the
    devices together keep as many column statistics as one device would,
    each over as many rows (``t`` column blocks share one).

  Shampoo on a reshaped tensor, as for merged dimensions; only shards fold.
  """
  if len(merged) != 2:
    return merged
  r, c = merged
  if all(preconditioned) and min(r, c) < block_size and (r * c) % block_size == 0:
    folded = (r * c // block_size, block_size)
    return folded if folded[0] > min(r, c) else merged
  if preconditioned == (False, True) and row_shards > 1 and c % block_size == 0:
    blocks = c // block_size
    t = max(d for d in range(1, min(row_shards, blocks) + 1) if blocks % d == 0)
    return (r * t, c // t)
  return merged


def plan_leaf(
    shape: tuple[int, ...],
    *,
    block_size: int,
    max_merged_dim: int | None,
    skip_preconditioning_dim_size_gt: int,
    exponent_override: int | None,
    global_shape: tuple[int, ...] | None = None,
) -> LeafPlan:
  """``shape``: the leaf's (local) shape; ``global_shape``: the whole
  parameter's, when ``shape`` is one device's shard of it: a dimension too
  large to precondition is judged by its whole size, so a shard is
  preconditioned on the sides the whole parameter would be, and some shards
  are folded (``_fold_shard``)."""
  # The default (None): dimensions merged up to block_size, then into a matrix.
  as_matrix = max_merged_dim is None
  max_merged_dim = block_size if as_matrix else max_merged_dim
  # The default's axes are chosen from the whole parameter's shape, so that a
  # shard is cut into a matrix along the same axes as the whole would be.
  axes = _merged_axes(global_shape if as_matrix and global_shape is not None else shape,
                      max_merged_dim, as_matrix)
  merged = tuple(math.prod(shape[a] for a in group) for group in axes)
  preconditioned = tuple(d <= skip_preconditioning_dim_size_gt for d in merged)
  if global_shape is not None:
    preconditioned = tuple(
        pre and all(global_shape[a] <= skip_preconditioning_dim_size_gt for a in group)
        for pre, group in zip(preconditioned, axes))
    row_shards = math.prod(global_shape[a] // shape[a] for a in axes[0]) if axes else 1
    if tuple(global_shape) != tuple(shape):  # a shard (a replicated leaf is not folded)
      merged = _fold_shard(merged, preconditioned, block_size, row_shards)
  num_preconditioned = sum(preconditioned)
  if len(merged) < 2 or num_preconditioned == 0:
    return LeafPlan(shape, merged, (), 0, (), ())
  per_axis = [
      _segments(d, block_size if pre else d)
      for d, pre in zip(merged, preconditioned)
  ]
  pieces = tuple(
      Piece(
          start=tuple(s[0] for s in combo),
          grid=tuple(s[1] for s in combo),
          block_shape=tuple(s[2] for s in combo),
      )
      for combo in itertools.product(*per_axis)
  )
  exponent = exponent_override or 2 * num_preconditioned
  return LeafPlan(
      shape, merged, preconditioned, exponent, pieces,
      tuple(len(s) for s in per_axis),
  )


@functools.lru_cache(maxsize=256)
def make_plan(
    shapes: tuple[tuple[int, ...], ...],
    *,
    block_size: int,
    max_merged_dim: int | None,
    skip_preconditioning_dim_size_gt: int,
    exponent_override: int | None,
    shard_multiple: int = 1,
    pad_slots: bool = True,
    merge_slots: bool = True,
    stack_rows: bool = False,
    global_shapes: tuple[tuple[int, ...], ...] | None = None,
) -> Plan:
  """Builds the plan for parameters of the given shapes (in tree order).

  ``stack_rows``: the rows of each group in order of stack, then axis, then
  block, so that the factors of one axis of a joined stack are consecutive
  rows, read as one slice (SOAP). Otherwise in order of block shape, then
  axis: the rows of the layout before stacks were joined (Shampoo's state).
  ``global_shapes``: with ``shapes`` those of one device's shards, the whole
  parameters' (see ``plan_leaf``).
  """
  leaves = tuple(
      plan_leaf(
          s,
          block_size=block_size,
          max_merged_dim=max_merged_dim,
          skip_preconditioning_dim_size_gt=skip_preconditioning_dim_size_gt,
          exponent_override=exponent_override,
          global_shape=None if global_shapes is None else global_shapes[i],
      )
      for i, s in enumerate(shapes)
  )
  classes: dict[tuple[int, ...], list[int]] = {}
  for i, leaf in enumerate(leaves):
    if leaf.is_preconditioned:
      classes.setdefault(leaf.shape, []).append(i)
  class_list = tuple(tuple(c) for c in classes.values())
  # Stacks, in order of first appearance.
  members: dict[tuple, list[tuple[int, int]]] = {}
  for c, indices in enumerate(class_list):
    leaf = leaves[indices[0]]
    for j, piece in enumerate(leaf.pieces):
      key = (piece.block_shape, leaf.preconditioned, leaf.exponent)
      members.setdefault(key, []).append((c, j))
  blocks_of = lambda c, j: len(class_list[c]) * leaves[class_list[c][0]].pieces[j].num_blocks  # noqa: E731
  # Statistic slots: (block dim, exponent) -> slot size; groups in order of
  # appearance of their (slot size, exponent).
  slot = _slot_sizes(members, blocks_of, block_size, pad_slots, merge_slots)
  # Each block shape's blocks go to a stack of their own, or with pad_slots to
  # a stack joined with others (padded to it). Without stack_rows the
  # statistics' rows are laid out by block shape either way, so joining
  # changes no state.
  joined = _joined_stacks(members, slot, blocks_of) if pad_slots else {k: k for k in members}
  stack_keys = list(dict.fromkeys(joined.values()))
  stack_members: dict[tuple, list[tuple[int, int]]] = {k: [] for k in stack_keys}
  start = {}  # block shape key -> its first block in its stack
  for key, mem in members.items():
    start[key] = sum(blocks_of(c, j) for c, j in stack_members[joined[key]])
    stack_members[joined[key]].extend(mem)
  row_multiple = 2 * shard_multiple
  group_members: dict[tuple[int, int], list[int]] = {}
  group_sizes: dict[tuple[int, int], int] = {}
  factors = []
  if stack_rows:
    order = [(key, axis) for target in stack_keys for axis in range(len(target[0]))
             for key in members if joined[key] == target]
  else:
    order = [(key, axis) for key in members for axis in range(len(key[0]))]
  for (block_shape, pre, exponent), axis in order:
    mem = members[(block_shape, pre, exponent)]
    size = sum(blocks_of(c, j) for c, j in mem)
    stack = stack_keys.index(joined[(block_shape, pre, exponent)])
    dim, is_pre = block_shape[axis], pre[axis]
    if is_pre:
      key = (slot[(dim, exponent)], exponent)
      group_members.setdefault(key, [])
      offset = group_sizes.get(key, 0)
      group_sizes[key] = offset + size
      group_members[key].append(len(factors))
      shape_key = (block_shape, pre, exponent)
      factors.append(Factor(stack, axis, dim, size, list(group_members).index(key), offset,
                            start[shape_key], shape_key))
  stacks = []
  for s, (block_shape, pre, exponent) in enumerate(stack_keys):
    mem = stack_members[(block_shape, pre, exponent)]
    own = sorted((f.axis, f.start, i) for i, f in enumerate(factors) if f.stack == s)
    stacks.append(Stack(block_shape, pre, exponent, tuple(mem),
                        sum(blocks_of(c, j) for c, j in mem), tuple((a, i) for a, _, i in own)))
  groups = tuple(
      Group(dim, exponent, tuple(group_members[(dim, exponent)]), size,
            -(-size // row_multiple) * row_multiple)
      for (dim, exponent), size in group_sizes.items()
  )
  return Plan(leaves, class_list, tuple(stacks), tuple(factors), groups)


# ---------------------------------------------------------------------------
# Array layout conversions. Python loops here run over the static plan at trace
# time; each conversion compiles to reshapes, transposes and one concatenation
# per stack.


def _to_blocks(x: jax.Array, piece: Piece) -> jax.Array:
  """Cuts a region of x [L, *merged] into blocks: [L * num_blocks, *block_shape]."""
  k = x.ndim - 1
  start = (0, *piece.start)
  limit = [x.shape[0]] + [s + g * b for s, g, b in
                          zip(piece.start, piece.grid, piece.block_shape)]
  region = jax.lax.slice(x, start, limit)
  interleaved = [v for g, b in zip(piece.grid, piece.block_shape) for v in (g, b)]
  region = region.reshape((x.shape[0], *interleaved))
  perm = [0] + list(range(1, 2 * k + 1, 2)) + list(range(2, 2 * k + 1, 2))
  return region.transpose(perm).reshape((-1, *piece.block_shape))


def _from_blocks(blocks: jax.Array, piece: Piece, count: int) -> jax.Array:
  """Inverse of _to_blocks: [L * num_blocks, *block_shape] -> [L, region]."""
  k = len(piece.grid)
  x = blocks.reshape((count, *piece.grid, *piece.block_shape))
  perm = [0] + [v for i in range(k) for v in (1 + i, 1 + k + i)]
  return x.transpose(perm).reshape(
      [count] + [g * b for g, b in zip(piece.grid, piece.block_shape)]
  )


def to_stacks(plan: Plan, leaves: list[jax.Array], dtype=None) -> list[jax.Array]:
  """Parameter-shaped arrays (tree order) -> one array per stack."""
  classes = []
  for indices in plan.classes:
    merged = plan.leaves[indices[0]].merged_shape
    parts = [leaves[i].reshape(merged) for i in indices]
    x = parts[0][None] if len(parts) == 1 else jnp.stack(parts)
    classes.append(x if dtype is None else x.astype(dtype))
  out = []
  for stack in plan.stacks:
    parts = [_pad_to(_to_blocks(classes[c], plan.class_plan(c).pieces[j]), stack.block_shape)
             for c, j in stack.members]
    out.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0))
  return out


def _pad_to(blocks: jax.Array, block_shape: tuple[int, ...]) -> jax.Array:
  """``[n, *shape]`` blocks padded with zeros at the end of each axis to ``block_shape``."""
  if tuple(blocks.shape[1:]) == tuple(block_shape):
    return blocks
  return jnp.pad(blocks, [(0, 0)] + [(0, b - d) for d, b in zip(blocks.shape[1:], block_shape)])


def runtime_offsets(offsets: list[int], count: jax.Array) -> tuple[jax.Array, ...]:
  """``offsets`` as int32 scalars that XLA computes at run time, each in its own buffer.

  Each is exactly its offset, for any ``count``: the larger of ``offset`` and
  ``offset + min(count, 0)``. XLA cannot fold that into a constant, and a
  variadic reduction gives every offset its own output, so a kernel that
  reads a slice at one of them takes the offset as an argument. XLA compiles
  one kernel for fusions that are the same computation; with the offsets as
  constants in their code, no two slices' kernels would be. The reductions
  take ``_OFFSETS_PER_REDUCTION`` offsets each, which keeps each one kernel
  within a fusion's limit on outputs.
  """
  below = jnp.minimum(count.astype(jnp.int32), 0) * jnp.arange(2, dtype=jnp.int32)
  out = []
  for first in range(0, len(offsets), _OFFSETS_PER_REDUCTION):
    chunk = offsets[first:first + _OFFSETS_PER_REDUCTION]
    out.extend(jax.lax.reduce(
        tuple(jnp.int32(offset) + below for offset in chunk),
        tuple(jnp.int32(jnp.iinfo(jnp.int32).min) for _ in chunk),
        lambda xs, ys: tuple(jnp.maximum(x, y) for x, y in zip(xs, ys)), (0,)))
  return tuple(out)


_OFFSETS_PER_REDUCTION = 16


def from_stacks(plan: Plan, stacks: list[jax.Array],
                scales: list[jax.Array] | None = None, *,
                count: jax.Array | None = None) -> list[jax.Array | None]:
  """One array per stack -> parameter-shaped arrays (None: diagonal-only leaf).

  ``scales``: per stack, a factor per block ``[size]``, applied to each
  member's slice of the stack (so that the stack itself is read as slices,
  not scaled whole for every parameter cut from it).

  ``count``: an int32 scalar known only at run time (the step count). With it,
  each leaf's slice starts at an offset XLA computes at run time
  (:func:`runtime_offsets`) rather than a constant, so that the kernels that
  put back leaves of one shape are one kernel, not one per leaf (see
  benchmarks/README.md). Only for stacks that are not sharded: a dynamic slice
  of a sharded axis would gather the whole stack.
  """
  # Each leaf is put back from its own slice of the stack (not its class's
  # region as a whole, then sliced): every output then reads only its blocks.
  slices = plan.block_slices()
  starts = [first for _, first, _, _ in slices]
  if count is None:  # static slices: what a sharded stack needs
    take = lambda x, start, n: x[start:start + n]  # noqa: E731
  else:
    starts = runtime_offsets(starts, count)
    take = functools.partial(jax.lax.dynamic_slice_in_dim, axis=0)
  regions: dict[tuple[int, int], jax.Array] = {}  # (leaf, piece) -> [1, region]
  for (s, _, i, j), start in zip(slices, starts):
    piece = plan.leaves[i].pieces[j]
    part = take(stacks[s], start, piece.num_blocks)
    if part.shape[1:] != piece.block_shape:  # blocks padded to their stack's shape
      part = part[(slice(None), *(slice(0, d) for d in piece.block_shape))]
    if scales is not None:
      factor = take(scales[s], start, piece.num_blocks)
      part = part * factor.reshape(factor.shape + (1,) * (part.ndim - 1))
    regions[(i, j)] = _from_blocks(part, piece, 1)
  out: list[jax.Array | None] = [None] * len(plan.leaves)
  for indices in plan.classes:
    for i in indices:
      leaf = plan.leaves[i]
      parts = [regions[(i, j)] for j in range(len(leaf.pieces))]
      out[i] = _assemble(parts, leaf.segments)[0].reshape(leaf.shape)
  return out


def _assemble(parts: list[jax.Array], segments: tuple[int, ...]) -> jax.Array:
  """Joins row-major tiles [L, ...] (segments[a] tiles along axis a + 1)."""
  if len(parts) == 1:
    return parts[0]

  def nest(parts, axis):
    if axis == len(segments):
      return parts[0]
    stride = len(parts) // segments[axis]
    children = [nest(parts[s * stride : (s + 1) * stride], axis + 1)
                for s in range(segments[axis])]
    return children[0] if len(children) == 1 else jnp.concatenate(children, axis=axis + 1)

  return nest(parts, 0)


def einsum_letters(rank: int) -> tuple[str, str]:
  """Lower-case letters for a block's axes and upper-case partners."""
  lower = string.ascii_lowercase[:rank]
  return lower, lower.upper()


def statistic(blocks: jax.Array, axis: int) -> jax.Array:
  """``[z, d, d]``: each block times itself, every block axis but ``axis``
  contracted (the block's ``G G^T`` on that side).

  The block is viewed as ``[z, before, d, after]``. With nothing before or
  after, this is one batched product with no transpose; an inner axis is
  batched over ``before`` and summed after, which keeps its operands in place
  where a single contraction would transpose the whole block first, unless
  that batch's output would be larger than the block.
  """
  z, shape = blocks.shape[0], blocks.shape[1:]
  d = shape[axis]
  before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
  hi = jax.lax.Precision.HIGHEST
  if before == 1:
    x = blocks.reshape(z, d, after)
    return jnp.einsum("zar,zAr->zaA", x, x, precision=hi)
  if after == 1:
    x = blocks.reshape(z, before, d)
    return jnp.einsum("zra,zrA->zaA", x, x, precision=hi)
  if d <= after:
    x = blocks.reshape(z, before, d, after)
    return jnp.einsum("zpaq,zpAq->zpaA", x, x, precision=hi).sum(axis=1)
  return jnp.einsum(statistic_einsum(len(shape), axis), blocks, blocks, precision=hi)


def statistic_einsum(rank: int, axis: int) -> str:
  """'nab,nAb->naA'-style: contracts every block axis except ``axis``."""
  lower, upper = einsum_letters(rank)
  other = lower[:axis] + upper[axis] + lower[axis + 1 :]
  return f"z{lower},z{other}->z{lower[axis]}{upper[axis]}"


@dataclasses.dataclass(frozen=True)
class Layout:
  """The static, shape-setting settings of an optimizer: they pick the plan."""

  block_size: int
  max_merged_dim: int | None  # None: block_size, then into a matrix
  skip_preconditioning_dim_size_gt: int
  exponent_override: int | None = None
  shard_multiple: int = 1
  pad_slots: bool = True
  merge_slots: bool = True
  stack_rows: bool = False

  def plan(self, leaves) -> Plan:
    return self.plan_shapes([x.shape for x in leaves])

  def plan_shapes(self, shapes, global_shapes=None) -> Plan:
    return make_plan(
        tuple(tuple(s) for s in shapes),
        global_shapes=None if global_shapes is None else tuple(tuple(s) for s in global_shapes),
        block_size=self.block_size,
        max_merged_dim=self.max_merged_dim,
        skip_preconditioning_dim_size_gt=self.skip_preconditioning_dim_size_gt,
        exponent_override=self.exponent_override,
        shard_multiple=self.shard_multiple,
        pad_slots=self.pad_slots,
        merge_slots=self.merge_slots,
        stack_rows=self.stack_rows,
    )
