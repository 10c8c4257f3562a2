# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""First and second moments: bias correction, EMA weights, storage dtypes.

Shared by Shampoo (its first moment and its grafting method's second moment)
and SOAP (Adam's moments in the eigenbasis).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import quantization


def moment_weight(decay: jax.typing.ArrayLike) -> jax.Array:
  """Weight of a new term in an EMA with ``decay``; 1 makes it a plain sum."""
  decay = jnp.asarray(decay)
  return jnp.where(decay == 1, jnp.ones_like(decay), 1 - decay)


def bias_correction(moment: optax.Updates, decay, count: jax.Array) -> optax.Updates:
  """moment / (1 - decay**count), as optax's, without mixing int and float."""
  correction = 1 - jnp.power(decay, count.astype(jnp.float32))
  return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


def debiased_first_moment(mu: optax.Updates, grads: optax.Updates, b1, count: jax.Array,
                          nesterov: bool) -> optax.Updates:
  """Adam's ``mu_hat`` (``mu`` already updated with ``grads``), or optax.adam's
  Nesterov variant ``b1 mu / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``, in
  each leaf's dtype."""
  a, b = first_moment_coefficients(b1, count, nesterov)
  if b is None:
    return jax.tree.map(lambda m: a.astype(m.dtype) * m, mu)
  return jax.tree.map(lambda m, g: a.astype(m.dtype) * m + b.astype(g.dtype) * g, mu, grads)


def first_moment_coefficients(b1, count: jax.Array, nesterov: bool):
  """``(a, b)`` with :func:`debiased_first_moment` ``= a mu + b g``, float32
  scalars; ``b`` is ``None`` without Nesterov (``mu_hat = a mu``)."""
  b1 = jnp.asarray(b1, jnp.float32)
  t = count.astype(jnp.float32)
  if not nesterov:
    return 1 / (1 - jnp.power(b1, t)), None
  return b1 / (1 - jnp.power(b1, t + 1)), (1 - b1) / (1 - jnp.power(b1, t))


@dataclasses.dataclass(frozen=True)
class MomentDtypes:
  """Storage dtypes of the first moment and the second moment (``None``: the
  parameters'), as :class:`BlockedMoments` keeps them. ``mu`` int8: a
  ``quantization.QuantizedArray`` in the stacks (int8 values, a float32 scale
  per row of each block, stochastic rounding), bfloat16 in the tree.
  """

  mu: Any | None
  nu: Any | None
  keeps_nu: bool

  @classmethod
  def create(cls, mu_dtype, statistics_dtype: str, keeps_nu: bool) -> MomentDtypes:
    compact = statistics_dtype != "float32"
    if mu_dtype is None and statistics_dtype == "int8":
      mu_dtype = jnp.int8
    if mu_dtype is not None:
      mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype)
      if not (jnp.issubdtype(mu_dtype, jnp.floating) or mu_dtype == jnp.int8):
        raise ValueError(f"mu_dtype must be a float dtype or int8, got {mu_dtype}")
    return cls(
        mu=mu_dtype,
        nu=jnp.dtype(jnp.bfloat16) if compact else None,
        keeps_nu=keeps_nu,
    )

  @property
  def quantized_mu(self) -> bool:
    return self.mu is not None and self.mu == jnp.int8


def _decode(m, dtype):
  if isinstance(m, quantization.QuantizedArray):
    return quantization.dequantize_rows(m, dtype)
  return m.astype(dtype)


class LeafShape(NamedTuple):
  """The shape a leaf whose moment is kept in block stacks was initialized for.

  Its dimensions, as the lengths of 1-D int8 arrays of zeros (a few bytes
  per dimension), so that a gradient of another shape is refused by name even
  where it would fit the same stacks. (Zero-size arrays would do the same
  with no bytes, but orbax does not save them.)
  """

  dims: tuple[jax.Array, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(int(d.shape[0]) for d in self.dims)


class BlockedMoment(NamedTuple):
  """A moment kept in block layout for the leaves that are preconditioned.

  Attributes:
    tree: the parameters' tree: the moment of each leaf that is not
      preconditioned, in its shape, and ``None`` in place of each that is (no
      array: a jitted step that does not donate its state copies every array
      it passes through unchanged).
    stacks: per stack of the block plan, the moment of its blocks,
      ``[rows, *block_shape]`` (padded blocks hold zeros), float or, for an
      int8 first moment, ``quantization.QuantizedArray`` with a scale per row of
      each block's last axis. ``rows`` is the number of blocks, rounded up to
      a multiple of the devices the block axis is split over (with local
      blocks: the blocks of every device, one after the other).
    shapes: a :class:`LeafShape` per preconditioned leaf, in tree order (in
      the first moment; ``()`` in the second).
  """

  tree: Any
  stacks: Any
  shapes: Any


# What init puts in a moment's stacks when it is handed optax.tree.map_params'
# stand-in for the parameters (see factor_matrices.STAND_IN_GROUPS).
STAND_IN_STACKS = "moment stacks"


@dataclasses.dataclass(frozen=True)
class BlockedMoments:
  """Storage of moments in block layout (:class:`BlockedMoment`).

  The update reads and writes the moments of preconditioned leaves as stacks
  of blocks, where they are computed, instead of cutting them from the
  parameters' layout and putting them back on every step. ``dtypes`` are as
  for :class:`MomentDtypes`: a stack without ``mu_dtype`` takes the widest
  dtype of its parameters; an int8 first moment takes a scale per row of each
  block's last axis.
  """

  dtypes: MomentDtypes

  @property
  def keeps_nu(self) -> bool:
    return self.dtypes.keeps_nu

  def init(self, params, plan, rows: list[int], place):
    """Zero moments for ``params``: tree layout for the leaves ``plan`` does not
    precondition, stacks of ``rows[s]`` blocks (placed with ``place``) for the others."""
    leaves, treedef = jax.tree.flatten(params)
    if is_params_stand_in(params):
      # optax.tree.map_params' stand-in (no leaves): the tree is the parameters' part.
      stand_in = BlockedMoment(optax.tree.zeros_like(params), STAND_IN_STACKS, STAND_IN_STACKS)
      return stand_in, stand_in if self.keeps_nu else ()
    dtypes = stack_dtypes(plan, [x.dtype for x in leaves])
    shapes = tuple(LeafShape(tuple(jnp.zeros((d,), jnp.int8) for d in x.shape))
                   for x, lp in zip(leaves, plan.leaves) if lp.is_preconditioned)

    def moment(dtype, encode):
      tree = jax.tree.unflatten(treedef, [
          None if lp.is_preconditioned
          else encode(jnp.zeros_like(x, dtype or x.dtype), x)
          for x, lp in zip(leaves, plan.leaves)])
      stacks = tuple(
          jax.tree.map(place, encode(jnp.zeros((n, *st.block_shape), dtype or d), None))
          for n, st, d in zip(rows, plan.stacks, dtypes))
      return BlockedMoment(tree, stacks, shapes)

    mu_dtype = None if self.dtypes.quantized_mu else self.dtypes.mu
    mu = moment(mu_dtype, self._encode_mu)
    # The shapes are recorded once, in mu.
    nu = moment(self.dtypes.nu, lambda x, _: x)._replace(shapes=()) if self.keeps_nu else ()
    return mu, nu

  def _encode_mu(self, x, like):
    """``x`` in the first moment's stored form (``like``: its leaf; None: a stack).

    An int8 first moment is int8 in the stacks and bfloat16 in the tree: the
    parameters the tree holds are vectors, scalars and the rare matrix that
    is not preconditioned, and a ``QuantizedArray`` there does not survive
    Flax's ``nnx.Optimizer`` (it stores each parameter-shaped leaf of a state
    in a Variable, and gives a NamedTuple inside one back as a dict).
    """
    if not self.dtypes.quantized_mu:
      return x
    if like is None:
      return quantization.quantize_rows(x)
    return x.astype(jnp.bfloat16)

  def load(self, mu, nu, grads):
    """The moments for computing: tree leaves in the gradients' dtypes,
    stacks in float32 (the trees read up to the gradients' structure, see
    :meth:`shapes`)."""
    leaves, treedef = jax.tree.flatten(grads)

    def load_one(moment):
      tree = jax.tree.unflatten(treedef, [
          m if is_placeholder(m) else _decode(m, g.dtype)
          for g, m in zip(leaves, treedef.flatten_up_to(moment.tree))])
      stacks = tuple(_decode(s, jnp.float32) for s in moment.stacks)
      return moment._replace(tree=tree, stacks=stacks)
    return load_one(mu), load_one(nu) if self.keeps_nu else ()

  def store(self, mu, nu, old_mu, old_nu, count: jax.Array, like):
    """The moments in their stored form; ``count`` seeds stochastic rounding.

    ``like``: the gradients, whose structure the trees are read up to (see
    :meth:`shapes`): each parameter's rounding key is its index among them.
    """
    key = jax.random.fold_in(jax.random.key(1), count)
    treedef = jax.tree.structure(like)
    old_leaves = treedef.flatten_up_to(old_mu.tree)

    def store_mu(x, old, i):
      if isinstance(old, quantization.QuantizedArray):
        return quantization.quantize_rows(x, jax.random.fold_in(key, i))
      return old if is_placeholder(old) else x.astype(old.dtype)

    n = len(old_leaves)
    mu = old_mu._replace(
        tree=jax.tree.unflatten(treedef, [
            store_mu(x, old, i) for i, (x, old) in enumerate(
                zip(treedef.flatten_up_to(mu.tree), old_leaves))]),
        stacks=tuple(store_mu(x, old, n + s)
                     for s, (x, old) in enumerate(zip(mu.stacks, old_mu.stacks))))
    if not self.keeps_nu:
      return mu, ()
    nu = old_nu._replace(
        tree=jax.tree.map(lambda x, old: old if is_placeholder(old) else x.astype(old.dtype),
                          nu.tree, old_nu.tree),
        stacks=tuple(x.astype(old.dtype) for x, old in zip(nu.stacks, old_nu.stacks)))
    return mu, nu

  def shapes(self, mu, like):
    """``mu.tree`` with each leaf as the shape the state was initialized for;
    ``None`` when ``like`` (the gradients) does not have its structure.

    A ``None`` in the parameters (a subtree without leaves, as in Equinox's
    filtered models) is ``None`` in ``mu.tree`` as well, where a placeholder
    is too; ``mu.tree`` is read up to ``like``'s structure, which tells them
    apart.
    """
    if not isinstance(mu, BlockedMoment):
      raise ValueError(
          "the optimizer state's first moment is in the parameters' layout, as shampoo_optax "
          "kept it before 0.4 (Shampoo) and 0.5 (SOAP); now the preconditioned parameters' "
          "moments are kept in block layout: convert the state with "
          "shampoo_optax.upgrade_state(state, tx, params)")
    treedef = jax.tree.structure(like)
    leaves = leaves_up_to(treedef, mu.tree)
    if (leaves is None or sum(map(is_placeholder, leaves)) != len(mu.shapes)
        or not all(is_placeholder(m) or isinstance(m, quantization.QuantizedArray)
                   or hasattr(m, "shape") for m in leaves)):  # a subtree at a leaf
      return None
    shapes = iter(mu.shapes)

    def shape(m):
      if isinstance(m, quantization.QuantizedArray):
        m = m.values
      return jax.ShapeDtypeStruct(next(shapes).shape if is_placeholder(m) else jnp.shape(m),
                                  jnp.float32)
    return jax.tree.unflatten(treedef, [shape(m) for m in leaves])


def is_params_stand_in(params) -> bool:
  """Whether ``params`` is the leafless stand-in of ``optax.tree.map_params``."""
  return not jax.tree.leaves(params) and type(params).__name__ == "_ParamsPlaceholder"


def is_placeholder(x) -> bool:
  """Whether a leaf of a moment's tree stands for a leaf kept in the stacks."""
  return x is None


def leaves_up_to(treedef, tree) -> list | None:
  """``tree``'s subtrees at the leaves of ``treedef`` (the parameters'), so that
  a placeholder ``None`` is one entry and a ``None`` of the parameters' own
  (a node without leaves) none; ``None`` when ``tree`` does not have that
  structure."""
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError):
    return None


def stack_dtypes(plan, dtypes: list) -> list:
  """Per stack of ``plan``: the widest of its leaves' ``dtypes`` (without
  implicit promotion, which JAX's strict mode refuses between float types)."""
  members: dict[int, list] = {}
  for s, _, leaf, _ in plan.block_slices():
    members.setdefault(s, []).append(dtypes[leaf])
  out = []
  for s in range(len(plan.stacks)):
    kinds = {jnp.dtype(d) for d in members[s]}
    widest = max(kinds, key=lambda d: d.itemsize)
    # Two different floats of one width (float16, bfloat16): float32 holds both.
    tie = len({d for d in kinds if d.itemsize == widest.itemsize}) > 1
    out.append(jnp.dtype(jnp.float32) if tie else widest)
  return out
