# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Spreading Shampoo's statistics and roots over a device mesh.

Each group of statistics is one array ``[n, d, d]`` (see ``blocking.py``). With
a mesh and a block axis, its leading axis is split over that mesh axis (padded
to a multiple of the axis size), so every device holds ``1/N`` of the
statistics and roots and computes the inverse roots of the blocks it holds,
under ``jax.shard_map``. Everything else (cutting gradients into blocks,
putting the preconditioned blocks back into the parameters' layout and
shardings) is left to XLA's sharding propagation.

With FSDP, that propagation gathers every gradient to cut it into blocks;
given the parameters' PartitionSpecs, :class:`LocalBlocks` instead cuts each
device's own shards under one ``shard_map``, so nothing moves at all.

The shardings of a whole optimizer state (for ``jax.jit``'s out_shardings and
orbax restore targets) are in ``checkpointing.py``.

Both mesh axis types work. With ``Explicit`` axes (``jax.make_mesh``'s default)
the block-layout code runs under ``jax.sharding.auto_axes``, since it reshapes
sharded arrays in ways whose output sharding only the compiler can choose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class BlockSharding:
  """Where the leading (block) axis of each group of statistics lives."""

  mesh: Mesh | None = None
  axes: tuple[str, ...] = ()

  @classmethod
  def create(cls, mesh: Mesh | None, block_axis: str | tuple[str, ...] | None):
    if mesh is None:
      if block_axis is not None:
        raise ValueError("block_axis needs a mesh: pass mesh=jax.make_mesh(...) as well")
      return cls()
    if not isinstance(mesh, Mesh):
      raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    axes = () if block_axis is None else (
        (block_axis,) if isinstance(block_axis, str) else tuple(block_axis))
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"block_axis {unknown} not in the mesh's axes {mesh.axis_names}")
    return cls(mesh, axes)

  @property
  def size(self) -> int:
    """Number of devices the block axis is split over."""
    return math.prod(self.mesh.shape[a] for a in self.axes) if self.axes else 1

  @property
  def spec(self) -> PartitionSpec:
    if not self.axes:
      return PartitionSpec()
    return PartitionSpec(self.axes[0] if len(self.axes) == 1 else self.axes)

  def place(self, x: jax.Array) -> jax.Array:
    """Splits the leading axis of ``x`` over the block axis (eager or traced)."""
    if self.mesh is None:
      return x
    return constrain(x, self.mesh, self.spec)

  def replicate(self, x: jax.Array) -> jax.Array:
    """``x`` replicated over the mesh (eager or traced)."""
    if self.mesh is None:
      return x
    return constrain(x, self.mesh, PartitionSpec())

  def map_blocks(self, f: Callable, blocked: tuple, replicated: tuple) -> Any:
    """f(*blocked, *replicated, device), each device on its own rows.

    ``device`` is the index of the device along the block axis (0 without a
    mesh): its rows of an array of ``n`` local rows start at global row
    ``device * n``.
    """
    if self.size == 1:
      return f(*blocked, *replicated, 0)

    def local(*args):
      return f(*args, jax.lax.axis_index(self.axes))

    in_specs = (self.spec,) * len(blocked) + (PartitionSpec(),) * len(replicated)
    # check_vma=False: f is purely per device (no collectives), and its loops
    # start from constants, which the varying-axes check would reject.
    return jax.shard_map(
        local, mesh=_context_or(self.mesh), in_specs=in_specs, out_specs=self.spec,
        check_vma=False,
    )(*blocked, *replicated)


def _context_or(mesh: Mesh):
  """The mesh in context (abstract inside auto_axes), else the given one."""
  context = jax.sharding.get_abstract_mesh()
  if not context.empty and set(context.axis_names) == set(mesh.axis_names):
    return context
  return mesh


def constrain(x: jax.Array, mesh: Mesh, spec: PartitionSpec) -> jax.Array:
  """Puts ``x`` on ``spec``: reshard for Explicit axes, a constraint for Auto."""
  target = _context_or(mesh)
  names = [n for entry in spec if entry is not None
           for n in ((entry,) if isinstance(entry, str) else entry)]
  types = dict(zip(target.axis_names, target.axis_types))
  if names and all(types[n] == AxisType.Explicit for n in names):
    return jax.sharding.reshard(x, NamedSharding(target, spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(target, spec))


def explicit_axes_in_context() -> tuple[str, ...]:
  """Explicit axes of the mesh set with jax.set_mesh (empty when none)."""
  context = jax.sharding.get_abstract_mesh()
  if context.empty:
    return ()
  return tuple(n for n, t in zip(context.axis_names, context.axis_types)
               if t == AxisType.Explicit)


def call_in_block_layout(fn: Callable, args: tuple, leaves_like: Any, groups: Any,
                         block_sharding: BlockSharding) -> Any:
  """fn(*args) -> (leaves, groups), on Auto axes when the mesh in context is Explicit.

  Cutting sharded arrays into blocks and back needs the compiler to choose the
  intermediate shardings, which Explicit axes do not allow; so the block-layout
  code runs under ``jax.sharding.auto_axes``, with outputs placed like
  ``leaves_like`` (the gradients' shardings) and the groups split over the
  block axis.
  """
  explicit = explicit_axes_in_context()
  if not explicit:
    return fn(*args)
  out_specs = (jax.tree.map(spec_of, leaves_like),
               jax.tree.map(lambda _: block_sharding.spec, groups))
  return jax.sharding.auto_axes(fn, axes=explicit, out_sharding=out_specs)(*args)


def spec_of(x) -> PartitionSpec:
  """The PartitionSpec in a traced value's type (Explicit axes only)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  return PartitionSpec() if spec is None else spec


@dataclasses.dataclass(frozen=True, eq=False)
class LocalBlocks:
  """FSDP: every device cuts the blocks of its own shard of each parameter.

  Given the parameters' PartitionSpecs, the block plan is made from each
  device's *local* shapes (a ``[4096, 1024]`` weight sharded ``P("data")``
  over 8 devices is a ``[512, 1024]`` parameter to each of them), and the
  whole block step (statistics, roots, the preconditioned direction) runs
  under one ``jax.shard_map``: gradients are never gathered, statistics and
  roots never move. Each group's rows are the devices' local rows one after
  the other (device ``i`` holds rows ``[i R, (i + 1) R)``), split over the
  block axes.

  A parameter not sharded over a block axis (``P()``, a replicated one) is
  preconditioned on every device alike: its statistics are held by each of
  them (no communication; memory ``N`` times its share). Every axis a
  parameter is sharded over must be a block axis, so that the devices that
  hold different shards hold different rows.
  """

  block_sharding: BlockSharding
  specs: Any  # the parameters' tree, a PartitionSpec (or None) per leaf

  @classmethod
  def create(cls, block_sharding: BlockSharding, param_specs: Any) -> LocalBlocks | None:
    if param_specs is None:
      return None
    if not block_sharding.axes:
      raise ValueError("param_specs needs mesh= and block_axis= (the mesh axis the parameters "
                       "are sharded over, FSDP's data axis)")
    for spec in jax.tree.leaves(param_specs, is_leaf=lambda x: x is None):
      if spec is not None and not isinstance(spec, PartitionSpec):
        raise TypeError("param_specs must hold a jax.sharding.PartitionSpec (or None) per "
                        f"parameter, got a {type(spec).__name__}")
    return cls(block_sharding, param_specs)

  @property
  def replicas(self) -> int:
    """Devices with rows of their own: each group holds this many local plans' rows."""
    return self.block_sharding.size

  def leaf_specs(self, tree) -> list[PartitionSpec]:
    """One PartitionSpec per leaf of ``tree`` (the parameters' structure)."""
    treedef = jax.tree.structure(tree)
    try:
      specs = treedef.flatten_up_to(self.specs)
    except (ValueError, TypeError) as e:
      raise ValueError(
          f"param_specs must have the parameters' tree structure, {treedef}; got "
          f"{jax.tree.structure(self.specs, is_leaf=lambda x: x is None)}") from e
    return [PartitionSpec() if s is None else s for s in specs]

  def local_shapes(self, tree) -> list[tuple[int, ...]]:
    """Each leaf's shape on one device, checked against its spec."""
    mesh = self.block_sharding.mesh
    out = []
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, leaf), spec in zip(paths, self.leaf_specs(tree)):
      name = f"param_specs{jax.tree_util.keystr(path)}"
      shape = tuple(leaf.shape)
      if len(spec) > len(shape):
        raise ValueError(f"{name} = {spec} has more entries than the parameter's {len(shape)} "
                         f"dimensions (shape {shape})")
      local = list(shape)
      for dim, entry in enumerate(spec):
        names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        for n in names:
          if n not in self.block_sharding.axes:
            raise ValueError(
                f"{name} = {spec} shards over {n!r}, which is not a block axis "
                f"{self.block_sharding.axes}: pass block_axis={(*self.block_sharding.axes, n)} "
                "so that every device's shard has statistics of its own")
        size = math.prod(mesh.shape[n] for n in names)
        if shape[dim] % size:
          raise ValueError(f"{name} = {spec}: dimension {dim} of shape {shape} is not divisible "
                           f"by the {size} devices it is sharded over")
        local[dim] //= size
      out.append(tuple(local))
    return out

  def call(self, fn: Callable, args: tuple, in_specs: tuple, out_specs: Any) -> Any:
    """fn(*args) on every device's own shards: ``jax.shard_map`` over the whole mesh."""
    # check_vma=False: fn is purely per device (no collectives), and its loops
    # start from constants, which the varying-axes check would reject.
    return jax.shard_map(fn, mesh=_context_or(self.block_sharding.mesh), in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)(*args)
