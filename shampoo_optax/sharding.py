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
