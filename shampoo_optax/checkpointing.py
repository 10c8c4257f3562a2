# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The optimizer state on a mesh: its shardings, and orbax restore targets.

Above both optimizers: it knows their state types, and how each field is laid
out (``sharding.py`` places the statistics' blocks; the moments follow the
parameters).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shampoo_optax import blocking, moments, quantization, soap_transform
from shampoo_optax.shampoo_transform import ShampooState
from shampoo_optax.sharding import BlockSharding
from shampoo_optax.soap_transform import SoapState


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
  sharding; replicated where a leaf has none), the statistics, roots or
  bases, and the moments kept in block stacks are split over ``block_axis``
  (pass the same value as to ``shampoo`` or ``soap``), and everything else
  is replicated.

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
          empty = isinstance(value, tuple) and not value  # a graft without nu
          if empty:
            fields[name] = ()
          elif isinstance(value, moments.BlockedMoment):  # stacks: split as the statistics
            fields[name] = moments.BlockedMoment(
                jax.tree.map(lambda sharding, m: None if moments.is_placeholder(m)
                             else _moment_sharding(sharding, m), like_params, value.tree),
                jax.tree.map(lambda _: blocks, value.stacks),
                jax.tree.map(lambda _: replicated, value.shapes))
          else:
            fields[name] = jax.tree.map(_moment_sharding, like_params, value)
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


def upgrade_state(old_state: Any, tx: optax.GradientTransformation, params: optax.Params,
                  **layout: Any) -> Any:
  """A state saved by an earlier shampoo_optax, as ``tx``'s state for ``params`` now.

  0.2 changed how float32 statistics and roots are stored (pairs of triangles,
  :class:`shampoo_optax.quantization.SymmetricPairs`, instead of packed upper
  triangles ``[n, d (d + 1) / 2]``), SOAP's float32 and bfloat16 bases
  (``[n, d, d]`` instead of ``[n, d * d]``), and pads each group's rows to an
  even number. 0.3.0 put SOAP's statistics in slots rounded up to a power of
  two, as Shampoo's are (``soap_transform.block_layout``): a SOAP state saved
  by 0.2 whose statistics are not all of such sizes has its statistics, bases
  and their errors and failure counts moved to the rows and slots of the new
  layout (its state as 0.2 saved it, not 0.1's). 0.4.0 keeps Shampoo's first
  moment and its graft's second moment of the preconditioned parameters in
  block layout (``moments.BlockedMoment``): a Shampoo state saved by 0.3 has
  them cut into blocks (exactly; an int8 first moment is re-rounded to
  nearest). 0.5.0 does the same for SOAP's first and second moments, and a
  SOAP state saved by 0.4 (or earlier) has them cut alike. Other field names
  are unchanged. ``old_state`` may be the state
  itself or what ``orbax.checkpoint`` restores without a target (dicts and
  lists): leaves are matched by key path. Values are carried over exactly
  (compact storage re-encoded).

  ``layout``: ``block_size``, ``max_merged_dim`` and
  ``skip_preconditioning_dim_size_gt`` as given to SOAP or Shampoo (and
  Shampoo's ``exponent_override``), needed only when a state's layout cannot
  be read back from its shapes (the defaults and every power-of-two block
  size are tried). A state made with ``param_specs`` (local blocks) with
  its moments in the parameters' layout (Shampoo before 0.4.0, SOAP before
  0.5.0) is not converted.

  Examples:
    >>> # raw = checkpointer.restore(path)["opt_state"]    # saved by 0.1
    >>> # opt_state = upgrade_state(raw, tx, params)
  """
  unknown = set(layout) - {"block_size", "max_merged_dim", "skip_preconditioning_dim_size_gt",
                           "exponent_override"}
  if unknown:
    raise TypeError(f"upgrade_state() got unexpected layout arguments {sorted(unknown)}: it "
                    "takes block_size, max_merged_dim, skip_preconditioning_dim_size_gt and "
                    "exponent_override")
  by_path = {_plain_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(old_state)[0]}
  template = jax.eval_shape(tx.init, params)
  for path, state in jax.tree_util.tree_flatten_with_path(
      template, is_leaf=lambda x: isinstance(x, (SoapState, ShampooState)))[0]:
    if isinstance(state, SoapState):
      _soap_to_power_of_two_slots(by_path, _plain_path(path), state, params, layout)
    _moments_to_blocks(by_path, _plain_path(path), state, params, layout)

  def lookup(names, path):
    if names not in by_path:
      raise ValueError(f"the saved state has no leaf {jax.tree_util.keystr(path)}: it is not "
                       "a state of this optimizer for these parameters")
    return np.asarray(by_path[names])

  def convert(path, new):
    names = _plain_path(path)
    if names[-1] in ("triangles", "diagonals") and names not in by_path:
      # A float32 symmetric group (statistics or roots) saved as packed upper triangles.
      packed = lookup(names[:-1], path[:-1])
      d = new.shape[-1]
      rows, cols = np.triu_indices(d)
      full = np.zeros((2 * new.shape[0], d, d), np.float32)
      full[:packed.shape[0], rows, cols] = packed
      full[:packed.shape[0], cols, rows] = packed
      if names[-3] == "roots":  # identities in the new padding rows, as init has
        full[packed.shape[0]:] = np.eye(d, dtype=np.float32)
      return getattr(quantization.Codec("float32").encode(jax.numpy.asarray(full)), names[-1])
    old = lookup(names, path)
    if old.ndim == 2 and len(new.shape) == 3:  # SOAP's bases, saved flat as [n, d * d]
      old = old.reshape(old.shape[0], *new.shape[1:])
    if old.ndim and old.shape[0] < new.shape[0]:  # a group's rows, padded to an even number now
      extra = np.zeros((new.shape[0] - old.shape[0], *old.shape[1:]), old.dtype)
      if "bases" in names:  # SOAP's bases, whole: identities, as init has
        extra[:] = np.eye(new.shape[-1], dtype=old.dtype)
      old = np.concatenate([old, extra])
    if old.shape != new.shape:
      raise ValueError(f"{jax.tree_util.keystr(path)} was saved with shape {old.shape}, which "
                       f"does not convert to {new.shape}")
    return jax.numpy.asarray(old, new.dtype)

  return jax.tree_util.tree_map_with_path(convert, template)


_GROUP_FIELDS = ("stats", "bases", "basis_errors", "basis_failures")


def _moments_to_blocks(by_path: dict, prefix: tuple, template: ShampooState | SoapState,
                       params: Any, given: dict) -> None:
  """``by_path`` with a state's moments saved in the parameters' layout (Shampoo
  before 0.4.0, SOAP before 0.5.0) moved, in place, to ``template``'s block
  layout (``moments.BlockedMoment``); nothing changes when they are in it
  already."""
  param_paths = [_plain_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  leaves = jax.tree.leaves(params)
  fields = [f for f in ("mu", "nu") if isinstance(getattr(template, f), moments.BlockedMoment)]
  if not fields or any(k[:len(prefix) + 2] in {prefix + (fields[0], "tree"),
                                               prefix + (fields[0], "stacks")} for k in by_path):
    return  # block layout already (or nothing saved in it)

  def saved_keys(field, i):
    """The saved leaf's sub-paths: () for an array, values and scales for int8."""
    key = prefix + (field,) + param_paths[i]
    for subs in ((), (("values",), ("scales",))):
      if all(key + sub in by_path for sub in (subs or ((),))):
        return key, subs
    raise ValueError(f"the saved state has no leaf {'/'.join(key)} (the {field} of a "
                     "parameter): it is not a state of this optimizer for these parameters")

  def saved_float(key, subs):
    if not subs:
      return np.asarray(by_path.pop(key), np.float32)
    values, scales = (np.asarray(by_path.pop(key + sub), np.float32) for sub in subs)
    return values * scales

  plan = _moment_plan(leaves, template, given)
  for field in fields:
    moment = getattr(template, field)
    found = [saved_keys(field, i) for i in range(len(leaves))]
    old = []  # the preconditioned leaves' moments, as float32 (None: not cut)
    for j, shape in enumerate(moment.shapes):
      for d, dim in enumerate(shape.dims):
        by_path[prefix + (field, "shapes", str(j), "dims", str(d))] = np.zeros(
            dim.shape, dim.dtype)
    likes = jax.tree.structure(params).flatten_up_to(moment.tree)
    for i, (lp, (key, subs), like) in enumerate(zip(plan.leaves, found, likes)):
      new_key = prefix + (field, "tree") + param_paths[i]
      if lp.is_preconditioned:  # None in the tree: nothing saved
        old.append(saved_float(key, subs))
        continue
      old.append(None)
      if subs and not isinstance(like, quantization.QuantizedArray):
        # 0.3's int8 first moment of a matrix not preconditioned: bfloat16 now
        by_path[new_key] = saved_float(key, subs).astype(like.dtype)
      else:  # kept as saved
        for sub in (subs or ((),)):
          by_path[new_key + sub] = by_path.pop(key + sub)
    stacks = blocking.to_stacks(plan, [None if x is None else jax.numpy.asarray(x)
                                       for x in old], np.float32)
    for s, (x, like) in enumerate(zip(stacks, moment.stacks)):
      key = prefix + (field, "stacks", str(s))
      rows = jax.tree.leaves(like)[0].shape[0]
      x = np.concatenate([np.asarray(x), np.zeros((rows - x.shape[0], *x.shape[1:]),
                                                  np.float32)])
      if isinstance(like, quantization.QuantizedArray):  # rounded to nearest
        q = quantization.quantize_rows(jax.numpy.asarray(x))
        by_path[key + ("values",)], by_path[key + ("scales",)] = map(np.asarray, q)
      else:
        by_path[key] = x.astype(like.dtype)


def _moment_plan(leaves, template: ShampooState | SoapState, given: dict) -> blocking.Plan:
  """The block plan ``template``'s moments were made with, read back from its
  shapes (the layout arguments in ``given`` are taken as they are)."""
  stacks = template.mu.stacks
  want = [jax.tree.leaves(x)[0].shape for x in stacks]
  soap = isinstance(template, SoapState)
  sizes = [given["block_size"]] if "block_size" in given else [2**k for k in range(1, 13)]
  exponents = ([given.get("exponent_override")] if soap or "exponent_override" in given
               else [2, None])
  # Every skip_preconditioning_dim_size_gt between two of the parameters'
  # dimensions gives the same plan.
  skips = ([given["skip_preconditioning_dim_size_gt"]]
           if "skip_preconditioning_dim_size_gt" in given
           else sorted({4096, *(d for x in leaves for d in x.shape)}))
  found = {}
  for size, skip, exponent in itertools.product(sizes, skips, exponents):
    for merged in ([given["max_merged_dim"]] if "max_merged_dim" in given
                   else list(dict.fromkeys([None, size]))):
      layout = (soap_transform.block_layout(size, merged, skip) if soap
                else blocking.Layout(size, merged, skip, exponent))
      plan = layout.plan(leaves)
      if len(plan.stacks) == len(want) and all(
          st.block_shape == w[1:] and st.size <= w[0] for st, w in zip(plan.stacks, want)):
        found.setdefault((plan.block_slices(), tuple(st.block_shape for st in plan.stacks)),
                         plan)
  if len(found) != 1:
    name, exponent = ("SOAP", "") if soap else ("Shampoo", " and exponent_override")
    raise ValueError(
        f"upgrade_state could not read {name}'s block layout back from the state's shapes "
        f"({'no' if not found else 'several different'} layouts fit): pass the block_size, "
        f"max_merged_dim, skip_preconditioning_dim_size_gt{exponent} {name} was built with. "
        "A state made with param_specs (local blocks) is not converted")
  return next(iter(found.values()))


def _soap_to_power_of_two_slots(by_path: dict, prefix: tuple, template: SoapState,
                                params: Any, given: dict) -> None:
  """``by_path`` with a SOAP state saved in its layout before 0.3.0 (a slot of
  each statistic's own size) moved, in place, to the layout of ``template``;
  nothing changes when the saved groups already have ``template``'s shapes."""
  saved: dict[str, list] = {}
  for field in _GROUP_FIELDS:
    groups: dict[int, dict] = {}
    for key, x in by_path.items():
      if key[:len(prefix) + 1] == prefix + (field,) and len(key) > len(prefix) + 1:
        groups.setdefault(int(key[len(prefix) + 1]), {})[key[len(prefix) + 2:]] = x
    saved[field] = [groups[i] for i in sorted(groups)]
  stats_codec = quantization.Codec(quantization.stored_dtype(template.stats[0]))
  bases_codec = quantization.Codec(quantization.stored_dtype(template.bases[0]), symmetric=False)
  try:
    stats = [_as_stored(g, template.stats[0]) for g in saved["stats"]]
    bases = [_as_stored(g, template.bases[0]) for g in saved["bases"]]
  except KeyError:
    return  # not 0.2's storage (0.1's, or another optimizer's): left to convert
  trailing = lambda groups: [[x.shape[1:] for x in jax.tree.leaves(g)] for g in groups]  # noqa: E731
  if trailing(stats) == trailing(template.stats):
    return  # the template's layout (rows may differ: see convert)
  old_plan, new_plan = _soap_plans(jax.tree.leaves(params), stats, template, stats_codec, given)
  olds = {
      "stats": [np.asarray(stats_codec.decode(x, g.dim)) for x, g in zip(stats, old_plan.groups)],
      "bases": [np.asarray(bases_codec.decode(x, g.dim)) for x, g in zip(bases, old_plan.groups)],
      "basis_errors": [np.asarray(g[()]) for g in saved["basis_errors"]],
      "basis_failures": [np.asarray(g[()]) for g in saved["basis_failures"]],
  }
  news = {
      "stats": [np.zeros((stats_codec.num_matrices(t), g.dim, g.dim), np.float32)
                for t, g in zip(template.stats, new_plan.groups)],
      "bases": [np.broadcast_to(np.eye(g.dim, dtype=np.float32),
                                (bases_codec.num_matrices(t), g.dim, g.dim)).copy()
                for t, g in zip(template.bases, new_plan.groups)],
      "basis_errors": [np.zeros(t.shape, t.dtype) for t in template.basis_errors],
      "basis_failures": [np.zeros(t.shape, t.dtype) for t in template.basis_failures],
  }
  old_factors = {(f.key, f.axis): f for f in old_plan.factors}
  for f in new_plan.factors:
    o = old_factors[(f.key, f.axis)]
    for field in _GROUP_FIELDS:
      part = olds[field][o.group][o.offset:o.offset + o.size]
      if part.ndim == 3:  # a statistic or basis, in its slot's top-left corner
        news[field][f.group][f.offset:f.offset + f.size, :f.dim, :f.dim] = part
      else:
        news[field][f.group][f.offset:f.offset + f.size] = part
  fields = {prefix + (field,) for field in _GROUP_FIELDS}
  for key in [k for k in by_path if k[:len(prefix) + 1] in fields]:
    del by_path[key]
  for field, codec in (("stats", stats_codec), ("bases", bases_codec)):
    for i, full in enumerate(news[field]):
      stored = codec.encode(jax.numpy.asarray(full))
      for sub, x in jax.tree_util.tree_flatten_with_path(stored)[0]:
        by_path[prefix + (field, str(i)) + _plain_path(sub)] = np.asarray(x)
  for field in ("basis_errors", "basis_failures"):
    for i, x in enumerate(news[field]):
      by_path[prefix + (field, str(i))] = x


def _as_stored(group: dict, like: Any) -> Any:
  """A saved group (leaves by sub-path) in the stored form of ``like``."""
  if isinstance(like, tuple):  # SymmetricPairs, ScaledIntMatrices
    return type(like)(*(jax.numpy.asarray(group[(name,)]) for name in like._fields))
  return jax.numpy.asarray(group[()])


def _soap_plans(leaves, saved_stats, template, codec, given):
  """(the plan of the saved state's layout before 0.3.0, the plan of ``template``'s)."""

  def fits(plan, groups):
    return len(plan.groups) == len(groups) and all(
        codec.num_matrices(x) >= g.padded_size
        and [y.shape[1:] for y in jax.tree.leaves(x)] == [
            y.shape[1:] for y in jax.tree.leaves(
                jax.eval_shape(functools.partial(codec.empty, 2, g.dim)))]
        for g, x in zip(plan.groups, groups))

  sizes = ([given["block_size"]] if "block_size" in given
           else [2**k for k in range(1, 13)])
  skip = given.get("skip_preconditioning_dim_size_gt", 4096)
  found = []
  for size in sizes:
    for merged in ([given["max_merged_dim"]] if "max_merged_dim" in given
                   else list(dict.fromkeys([None, size]))):
      old = soap_transform.block_layout(size, merged, skip, own_slots=True).plan(leaves)
      new = soap_transform.block_layout(size, merged, skip).plan(leaves)
      if fits(old, saved_stats) and fits(new, template.stats):
        found.append((old, new))
  if len({(tuple(old.factors), tuple(new.factors)) for old, new in found}) != 1:
    raise ValueError(
        "upgrade_state could not read SOAP's block layout back from the saved state "
        f"({'no' if not found else 'several different'} layouts fit): pass the block_size, "
        "max_merged_dim and skip_preconditioning_dim_size_gt SOAP was built with")
  return found[0]
