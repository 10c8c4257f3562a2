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
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from shampoo_optax import quantization


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
    """f(*blocked, *replicated, row_offset), each device on its own rows.

    ``row_offset`` is the global index of the first of the device's rows.
    """
    if self.size == 1:
      return f(*blocked, *replicated, 0)

    def local(*args):
      rows = jax.tree.leaves(args[0])[0].shape[0]
      return f(*args, jax.lax.axis_index(self.axes) * rows)

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


def state_shardings(
    tx: optax.GradientTransformation,
    params: optax.Params,
    mesh: Mesh,
    block_axis: str | tuple[str, ...] | None = None,
) -> Any:
  r"""The shardings of ``tx``'s state for ``params``, as a tree of NamedSharding.

  Use them as ``out_shardings`` of ``jax.jit(tx.init)``, or with orbax to
  restore a checkpoint onto a mesh: first moments and every other
  parameter-shaped part of the state follow the parameters' shardings (taken
  from ``params``' leaves, arrays or ``jax.ShapeDtypeStruct``\ s with a
  sharding; replicated where a leaf has none), Shampoo's statistics and roots
  are split over ``block_axis`` (pass the same value as to ``shampoo``), and
  everything else is replicated.

  Args:
    tx: the optimizer, e.g. ``shampoo_optax.shampoo(..., mesh=mesh,
      block_axis="data")`` or any chain containing ``scale_by_shampoo``.
    params: the parameters, or ``jax.ShapeDtypeStruct``\ s of them.
    mesh: the mesh the state will live on (may differ from the one it was
      saved from).
    block_axis: the mesh axis (or axes) the statistics are split over.

  Returns:
    A tree with the structure of ``tx.init(params)`` and a ``NamedSharding``
    at each leaf.
  """
  from shampoo_optax.soap import SoapState  # noqa: PLC0415  (import cycle)
  from shampoo_optax.transform import ShampooState  # noqa: PLC0415

  replicated = NamedSharding(mesh, PartitionSpec())
  blocks = NamedSharding(mesh, BlockSharding.create(mesh, block_axis).spec)

  def param_sharding(p):
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return NamedSharding(mesh, sharding.spec)
    return replicated

  like_params = jax.tree.map(param_sharding, params)
  params_def = jax.tree.structure(params)
  shapes = [jax.numpy.shape(p) for p in jax.tree.leaves(params)]

  def is_params_like(node):
    if jax.tree.structure(node) != params_def:
      return False
    return [getattr(x, "shape", None) for x in jax.tree.leaves(node)] == shapes

  def is_state(node):
    return isinstance(node, (ShampooState, SoapState))

  def assign(node):
    if is_state(node):
      # count: replicated; mu, nu: like the parameters; every per-group field
      # (statistics, roots or bases, errors, failures): split over the blocks.
      fields = {}
      for name, value in node._asdict().items():
        if name == "count":
          fields[name] = replicated
        elif name in ("mu", "nu"):
          fields[name] = () if isinstance(value, tuple) and not value else jax.tree.map(_moment_sharding, like_params, value)
        else:
          fields[name] = jax.tree.map(lambda _: blocks, value)
      return type(node)(**fields)
    if is_params_like(node):
      return like_params
    return replicated

  # Parameter-shaped parts of other transforms (optax.MultiSteps' gradient
  # accumulator, a chained Adam's moments) are found by tree structure and
  # leaf shapes, as optax.tree_map_params would; it cannot be used directly
  # because the number of Shampoo's statistic groups depends on the shapes.
  return jax.tree.map(
      assign, jax.eval_shape(tx.init, params),
      is_leaf=lambda n: is_state(n) or is_params_like(n),
  )


def _moment_sharding(sharding: NamedSharding, moment) -> Any:
  """A first or second moment shards like its parameter; an int8 one's row
  scales (``shape[:-1] + (1,)``) like the parameter without its last axis."""
  if not isinstance(moment, quantization.QuantizedArray):
    return sharding
  spec = tuple(sharding.spec)[: moment.values.ndim - 1]
  return quantization.QuantizedArray(sharding, NamedSharding(sharding.mesh, PartitionSpec(*spec)))


def abstract_state(
    tx: optax.GradientTransformation,
    params: optax.Params,
    mesh: Mesh,
    block_axis: str | tuple[str, ...] | None = None,
    *,
    like: Any = None,
) -> Any:
  """``jax.ShapeDtypeStruct``\\ s of ``tx``'s state, with shardings on ``mesh``.

  The restore target for orbax. A state saved on a mesh of another size may
  carry more padding of the statistics than one initialized on this mesh; pass
  the checkpoint's metadata as ``like`` (any tree whose leaves, in order, have
  ``.shape`` and ``.dtype``) to take the shapes from it. Statistics saved on
  ``N`` devices restore onto any mesh whose block axis size divides the padded
  size, e.g. from 8 devices onto 4, 2 or 1.

  Examples:
    >>> # meta = checkpointer.metadata(path).item_metadata.tree["opt_state"]
    >>> # target = abstract_state(tx, params, mesh, "data", like=meta)
    >>> # opt_state = checkpointer.restore(path, target)  # with orbax
  """
  shardings = state_shardings(tx, params, mesh, block_axis)
  source = jax.eval_shape(tx.init, params) if like is None else like
  # Match by key path with attribute, dict and sequence keys alike: orbax
  # stores NamedTuples as dicts (sorted by field name) and tuples as lists.
  by_path = {_plain_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}

  def target(path, sharding):
    key = _plain_path(path)
    if key not in by_path:
      raise ValueError(
          f"`like` has no leaf {jax.tree_util.keystr(path)}: it is not a checkpoint of "
          "this optimizer's state"
      )
    m = by_path[key]
    return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)

  return jax.tree_util.tree_map_with_path(target, shardings)


def _plain_path(path) -> tuple:
  out = []
  for k in path:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)
