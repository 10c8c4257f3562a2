# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Factor matrices (Kronecker-factor statistics) and the preconditioners refreshed from them.

Shared by Shampoo (inverse roots) and SOAP (eigenbases). Per block ``G`` of a
stack and preconditioned axis, a factor matrix ``L <- b2 L + (1 - b2) G G^T``
(contracting every other axis for higher-rank blocks), kept in groups (see
``blocking.py``) in a stored form (see ``quantization.py``); and,
refreshed from each every ``precondition_every`` steps, its preconditioner
(Shampoo: the inverse root; SOAP: the eigenbasis).

The refresh schedule: with ``stagger``, rows ``2j`` and ``2j + 1`` of a group
(see ``blocking.Group``) are refreshed on the steps ``t`` with ``(t - t0) % k ==
j % k``: ``1/k`` of the rows on every step, so no step pays for all of them;
by pairs, which paired storage (``quantization.SymmetricPairs``) reads and
writes whole; and the same rows whatever the mesh, so that sharded and
single-device runs agree.
Without it, every row on every ``k``-th step, under ``jax.lax.cond``.

On GPUs a staggered refresh runs without a ``jax.lax.cond``: XLA's GPU backend
copies a ``cond``'s predicate to the host and waits for it, so the host cannot
queue the next step while the device runs this one (measured on an H200: 2-4
ms of idle device before each step of a loop that does not block per step).
Rows that are not due are moved out of range: read as zeros, written nowhere.
CPUs run a ``cond`` in line and TPUs on the device, so there the refresh of a
group stays under one and is skipped on the steps when none of its rows is
due (a group of fewer than ``2k`` rows has such steps; computed anyway, their
zero rows made SOAP's CPU step 8% slower on the LM benchmark).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shampoo_optax import blocking, moments, quantization

# compute(stats [r, d, d], old preconditioners [r, d, d], own [r], exponent, count)
#   -> (new preconditioners [r, d, d], error [r], ok [r]); float32 throughout.
# Row i's statistic is its top-left own[i] x own[i] corner; the rest of the
# row is zero padding (its group's slot is larger than the statistic, or
# groups of several sizes share the computation, see refresh). What a variant
# puts in a preconditioner's padded rows and columns multiplies only the zeros
# that blocks are padded with.
Compute = Callable[[jax.Array, jax.Array, jax.Array, int, jax.Array],
                   tuple[jax.Array, jax.Array, jax.Array]]
# change(old preconditioners [r, d, d], new ones [r, d, d]) -> [r, d, d]: what a
# variant needs to know of each refreshed row (SOAP: how its basis turned).
Change = Callable[[jax.Array, jax.Array], jax.Array]


def zero_pad(x: jax.Array, size: int) -> jax.Array:
  """``[r, d, d]`` matrices padded with zeros to ``[r, size, size]``."""
  d = x.shape[-1]
  return x if d == size else jnp.pad(x, ((0, 0), (0, size - d), (0, size - d)))


def with_padding(x: jax.Array, own: jax.Array, diagonal: jax.typing.ArrayLike) -> jax.Array:
  """``[r, d, d]`` matrices with each row's own ``own[i] x own[i]`` corner
  kept and ``diagonal[i] I`` on the rest (``diagonal`` ``[r]`` or a scalar):
  block diagonal, so the corner's eigenvectors and eigenvalues are kept and
  the padding's are ``diagonal[i]`` on unit vectors."""
  d = x.shape[-1]
  inside = jnp.arange(d)[None, :] < own[:, None]
  block = inside[:, :, None] & inside[:, None, :]
  padding = jnp.eye(d, dtype=x.dtype)[None] * (~inside)[:, None, :].astype(x.dtype)
  return jnp.where(block, x, jnp.asarray(diagonal, x.dtype).reshape(-1, 1, 1) * padding)


def own_sizes(plan: blocking.Plan, group: int, rows: jax.Array) -> jax.Array:
  """int32 ``[len(rows)]``: the size of the statistic at each row of ``group``
  (its factor's ``dim``; 0 for rows that hold none, past the group's factors)."""
  own = jnp.zeros(rows.shape, jnp.int32)
  for index in plan.groups[group].factors:
    f = plan.factors[index]
    own = own + f.dim * ((rows >= f.offset) & (rows < f.offset + f.size)).astype(jnp.int32)
  return own


class Changes(NamedTuple):
  """Per group, the rows a refresh has just replaced, and how (``Change``).

  ``rows``: group row indices (some may be past the group: ignore them);
  ``changed``: whether each row's preconditioner was replaced by a different
  one at this step; ``values``: the ``Change`` of each row (any values where
  ``changed`` is false).
  """

  rows: jax.Array
  changed: jax.Array
  values: jax.Array


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When each preconditioner is recomputed."""

  every: int  # precondition_every
  start: int  # start_preconditioning_step: preconditioners are used from step start + 1
  stagger: bool

  def first_step(self) -> int:
    """Staggered refreshes start k steps early: all ready at start + 1."""
    return max(1, self.start - self.every + 1)

  @property
  def dense(self) -> bool:
    """Whether every row is refreshed together (so no gather of due rows is needed)."""
    return not self.stagger or self.every == 1


# What init puts in each per-factor field when it is handed optax.tree.map_params'
# stand-in for the parameters (a pytree without leaves or shapes, so no plan):
# a leaf, which map_params matches with the whole field of the real state and
# treats as a non-parameter part.
STAND_IN_GROUPS = "factor matrices"


def init(plan: blocking.Plan, codec: quantization.Codec, precond_codec: quantization.Codec,
         block_sharding, params=None, replicas: int = 1) -> tuple:
  """Per group: zero statistics, identity preconditioners, zero errors and failures.

  ``replicas``: how many devices' local plans each group holds, one after the
  other (``sharding.LocalBlocks``).
  """
  if moments.is_params_stand_in(params):
    return (STAND_IN_GROUPS,) * 4
  place = lambda tree: jax.tree.map(block_sharding.place, tree)  # noqa: E731
  sizes = [(replicas * g.padded_size, g.dim) for g in plan.groups]
  return (
      tuple(place(codec.empty(n, d)) for n, d in sizes),
      tuple(place(precond_codec.empty(n, d, identity=True)) for n, d in sizes),
      tuple(place(jnp.zeros((n,), jnp.float32)) for n, _ in sizes),
      tuple(place(jnp.zeros((n,), jnp.int32)) for n, _ in sizes),
  )


def accumulate(plan: blocking.Plan, stats: tuple, grad_stacks: list[jax.Array],
               b2: jax.typing.ArrayLike, codec: quantization.Codec, count: jax.Array) -> tuple:
  """stats <- b2 stats + (1 - b2) G G^T for every group, in stored form.

  Compact storage rounds stochastically, with a key derived from ``count``
  (the same on every run).
  """
  contributions = {}  # (stack, axis) -> [size, d, d]
  for s, (stack, grads) in enumerate(zip(plan.stacks, grad_stacks)):
    for axis, _ in stack.factors:
      if (s, axis) not in contributions:
        contributions[(s, axis)] = blocking.statistic(grads, axis)
  parts: list[list[jax.Array]] = [[] for _ in plan.groups]
  for factor in plan.factors:  # in each group's row order
    contribution = contributions[(factor.stack, factor.axis)]
    if factor.size != contribution.shape[0]:  # one block shape of a joined stack
      contribution = contribution[factor.start:factor.start + factor.size]
    pad = plan.groups[factor.group].dim - contribution.shape[-1]
    parts[factor.group].append(jnp.pad(contribution, ((0, 0), (0, pad), (0, pad))))
  weight = moments.moment_weight(b2)
  out = []
  for index, (group, old, new) in enumerate(zip(plan.groups, stats, parts)):
    # The state may carry more padding than the plan asks for (a state saved
    # on a larger mesh and restored on a smaller one): pad to what it has.
    rows = codec.num_matrices(old)
    if codec.paired:
      new = _split_pairs(new, rows)
    else:
      new = jnp.concatenate(new, axis=0) if len(new) > 1 else new[0]
      new = jnp.pad(new, ((0, rows - new.shape[0]), (0, 0), (0, 0)))
    key = None
    if codec.dtype != "float32":
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), count), index)
    out.append(codec.accumulate(old, new, b2, weight, group.dim, key))
  return tuple(out)


def _split_pairs(parts: list[jax.Array], rows: int) -> quantization.SymmetricPairs:
  """``concatenate(parts)``, zero-padded to ``rows`` matrices, in paired form
  (``quantization.SymmetricPairs``), combining row ``2j`` with row ``2j + 1``
  elementwise: even and odd rows are taken from each part by strided slices
  (and the odd ones' diagonals from each part), so the ``[rows, d, d]``
  concatenation is never assembled and every input is read once."""
  even, odd, odd_diagonal, offset = [], [], [], 0
  for part in parts:
    first = offset % 2  # the part's first even row (0) or odd row (1)
    even.append(part[first::2])
    odd.append(part[1 - first::2])
    odd_diagonal.append(quantization.diagonal(odd[-1]))
    offset += part.shape[0]

  def join(xs):
    x = jnp.concatenate([x for x in xs if x.shape[0]] or xs[:1], axis=0)
    return jnp.pad(x, ((0, rows // 2 - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))

  return quantization.pair_encode_split(join(even), join(odd), join(odd_diagonal))


def decode_stacks(plan: blocking.Plan, stored: tuple,
                  codec: quantization.Codec) -> list[list[tuple[int, jax.Array]]]:
  """Per stack, ``(axis, float32 [stack size, d, d])`` per preconditioned axis:
  ``d`` is the stack's block size on that axis (the factor's own ``dim``, or
  the slot's where the stack's blocks are padded to it). Read from the groups
  as slices, one per run of factors (``blocking.Plan.stack_axes``), joined
  where a stack has several."""
  out = []
  for s, stack in enumerate(plan.stacks):
    per_axis = []
    for axis, runs in plan.stack_axes(s):
      parts = [codec.decode_range(stored[f.group], f.offset, f.size, stack.block_shape[axis],
                                  plan.groups[f.group].dim) for f in runs]
      per_axis.append((axis, parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)))
    out.append(per_axis)
  return out


def refresh(plan: blocking.Plan, stats: tuple, precond: tuple, errors: tuple,
            failures: tuple, count: jax.Array, *, compute: Compute, schedule: Schedule,
            block_sharding, codec: quantization.Codec,
            precond_codec: quantization.Codec, per_device: bool = False,
            change: Change | None = None) -> tuple:
  """Recomputes the preconditioners that are due at step ``count``.

  The groups of one exponent that :func:`shared_computations` bundles take one
  ``compute`` together, their due statistics padded with zeros to the largest
  size: one computation to compile and launch instead of one per group.
  ``compute`` is told each row's own size (see ``Compute``), so that it can
  keep its result's own corner apart from the padding: zero padding alone
  does for Shampoo's roots, SOAP's eigenbases separate it.

  Returns ``(precond, errors, failures, changes)``: ``changes`` is, with
  ``change``, the :class:`Changes` of each group, computed in the refresh
  branch from the rows it reads and writes (so that nothing after the refresh
  reads the old preconditioners, nor gathers the refreshed rows again), and
  ``None`` without it.

  ``per_device``: this runs on each device of a mesh (under ``shard_map``,
  here through ``block_sharding`` or in the caller's).
  """
  if per_device:
    compute = _one_matrix_at_a_time_on_cpu(compute)
  # Autodiff through an update (meta-learning) treats the refreshed roots and bases as
  # constants: eigh's derivative is undefined (NaN) at the repeated eigenvalues that padded
  # and rank-deficient statistics have. The forward computation is unchanged.
  stats, precond = jax.lax.stop_gradient((stats, precond))
  out: list = [None] * len(plan.groups)
  for bundle in shared_computations(plan.groups):
    refresh_bundle = functools.partial(
        _refresh_bundle, dims=tuple(plan.groups[g].dim for g in bundle),
        own=tuple(functools.partial(own_sizes, plan, g) for g in bundle),
        exponent=plan.groups[bundle[0]].exponent, compute=compute, schedule=schedule,
        codec=codec, precond_codec=precond_codec, change=change)
    parts = tuple(tuple(x[g] for g in bundle) for x in (stats, precond, errors, failures))
    for g, o in zip(bundle, block_sharding.map_blocks(refresh_bundle, parts, (count,))):
      out[g] = o
  changes = None if change is None else tuple(Changes(*o[3:]) for o in out)
  if not out:
    return (), (), (), changes
  place = lambda tree: jax.tree.map(block_sharding.place, tree)  # noqa: E731
  precond, errors, failures = (tuple(place(x) for x in xs) for xs in list(zip(*out))[:3])
  return precond, errors, failures, changes


def _one_matrix_at_a_time_on_cpu(compute: Compute) -> Compute:
  """On CPU, under shard_map, one matrix per LAPACK call.

  Each simulated CPU device runs its share on a thread of XLA's CPU pool, and a
  batched eigh splits its batch over that same pool and waits for it: with
  every device waiting, the pool deadlocks. Single matrices run inline.
  """

  def sequential(stats, old, own, exponent, count):
    def one(args):
      new, error, ok = compute(*(x[None] for x in args), exponent, count)
      return new[0], error[0], ok[0]

    return jax.lax.map(one, (stats, old, own))

  def wrapped(stats, old, own, exponent, count):
    return jax.lax.platform_dependent(
        stats, old, own, count,
        cpu=lambda s, o, w, c: sequential(s, o, w, exponent, c),
        default=lambda s, o, w, c: compute(s, o, w, exponent, c))

  return wrapped


# Platforms where a staggered refresh's jax.lax.cond is compiled away (its
# predicate made a constant true): XLA's GPU backend copies a cond's predicate to
# the host and waits for it (see above). Tests change it to run either way here.
UNCONDITIONAL_PLATFORMS: tuple[str, ...] = ("cuda", "rocm")


def cond_unless_waiting(pred, true_fn: Callable, false_fn: Callable, *args):
  """``jax.lax.cond(pred, true_fn, false_fn, *args)``, except that compiled for
  one of ``UNCONDITIONAL_PLATFORMS`` the predicate is a constant true, which
  XLA folds away: ``true_fn`` always runs, so it must write nothing where
  ``pred`` is false. Both functions are traced once, whatever the platform."""
  always = lambda p: jnp.ones((), bool)  # noqa: E731
  pred = jax.lax.platform_dependent(jnp.asarray(pred), default=lambda p: p,
                                    **dict.fromkeys(UNCONDITIONAL_PLATFORMS, always))
  return jax.lax.cond(pred, true_fn, false_fn, *args)


def due_rows(schedule: Schedule, count: jax.Array, n: int,
             row_offset: jax.typing.ArrayLike = 0) -> tuple[jax.Array, jax.Array]:
  """The rows (of ``n``) whose preconditioners are refreshed at step ``count``.

  Returns ``(rows, due)``: a fixed number of row indices (local to an array
  whose first row is row ``row_offset`` of its refresh group; some may be
  ``>= n``) and whether each is refreshed now.
  """
  if not schedule.dense:
    # By pairs of rows (2j, 2j + 1), which paired storage keeps together.
    t0, k = schedule.first_step(), schedule.every
    first = (count - t0 - row_offset // 2) % k  # the first due pair
    pairs = first + k * jnp.arange(-(-n // (2 * k)))
    rows = (2 * pairs[:, None] + jnp.arange(2)[None, :]).reshape(-1)
    return rows, (count >= t0) & (rows < n)
  if schedule.stagger:  # every == 1: every row on every step from t0
    return jnp.arange(n), jnp.broadcast_to(count >= schedule.first_step(), (n,))
  due = (count > schedule.start) & ((count - schedule.start - 1) % schedule.every == 0)
  return jnp.arange(n), jnp.broadcast_to(due, (n,))


# A group joins the shared root computation of a larger size when computing
# its statistics at that size adds at most this fraction to the computation's
# cost (~ d^3 per statistic).
_SHARE_OVERHEAD = 0.25


def shared_computations(groups: tuple[blocking.Group, ...]) -> list[list[int]]:
  """Which groups' due statistics are computed together (see ``refresh``).

  Per exponent, from the largest size ``D`` down, a group of ``rows``
  statistics (its ``padded_size``) of size ``d`` joins the bundle while what
  padding adds, ``rows (D^3 - d^3)`` summed over the bundle, stays within
  ``_SHARE_OVERHEAD`` of what the bundle's groups cost apart (``rows d^3``
  summed); a group that does not fit starts the next bundle. Each bundle
  lists its largest group first. Decided from the plan alone, so a state
  restored with other padding is bundled alike.
  """
  rows = [g.padded_size for g in groups]
  bundles: list[list[int]] = []
  for exponent in sorted({g.exponent for g in groups}):
    order = sorted((i for i, g in enumerate(groups) if g.exponent == exponent),
                   key=lambda i: -groups[i].dim)
    bundle, added, apart = [], 0, 0
    for i in order:
      d = groups[i].dim
      extra = rows[i] * (groups[bundle[0]].dim ** 3 - d**3) if bundle else 0
      if bundle and added + extra > _SHARE_OVERHEAD * (apart + rows[i] * d**3):
        bundles.append(bundle)
        bundle, added, apart, extra = [], 0, 0, 0
      bundle.append(i)
      added += extra
      apart += rows[i] * d**3
    bundles.append(bundle)
  return sorted(bundles)


def _refresh_bundle(stats, precond, errors, failures, count, device, *, dims, own, exponent,
                    compute, schedule, codec, precond_codec, change=None):
  """Groups (or one device's rows of them) that share one ``compute``:
  refresh the rows that are due.

  Returns per group its new (precond, errors, failures); with ``change``,
  also the refreshed rows (as group rows: ``device * n`` added), whether each
  changed, and its ``change``. ``own``: per group, the own sizes of group rows
  (:func:`own_sizes`).
  """
  ns = [codec.num_matrices(s) for s in stats]  # this device's rows
  due = [due_rows(schedule, count, n, device * n) for n in ns]  # rows past n: dropped
  update = functools.partial(_update_rows, dims=dims, exponent=exponent, count=count,
                             compute=compute, dense=schedule.dense, codec=codec,
                             precond_codec=precond_codec, change=change)
  keep = functools.partial(_keep, dims=dims, change=change)
  any_due = functools.reduce(jnp.logical_or, [jnp.any(d) for _, d in due])
  if schedule.dense:  # every row on every step it is due: none written on others
    rows = tuple(r for r, _ in due)
    update = functools.partial(update, live=due[0][1][0])
  else:
    # Rows not due moved past the end (by 2n, which keeps pairs together): they
    # read as zeros and are written nowhere.
    rows = tuple(jnp.where(d, r, r + 2 * n) for (r, d), n in zip(due, ns))
  update = functools.partial(update, own=tuple(
      jnp.where(r < n, size_of(r + device * n), 0) for size_of, r, n in zip(own, rows, ns)))
  cond = cond_unless_waiting if schedule.stagger else jax.lax.cond
  out = cond(any_due, update, keep, stats, precond, errors, failures, rows)
  if change is None:
    return out
  return tuple((p, e, f, r + device * n, changed & (r < n), values)
               for (p, e, f, changed, values), r, n in zip(out, rows, ns))


def _keep(stats, precond, errors, failures, rows, *, dims, change=None):
  del stats
  if change is None:
    return tuple(zip(precond, errors, failures))
  return tuple((p, e, f, jnp.zeros(r.shape, bool), jnp.zeros((*r.shape, d, d), jnp.float32))
               for p, e, f, r, d in zip(precond, errors, failures, rows, dims))


def _read(codec, stored, rows, d, dense, ridge=False):
  """float32 ``[r, d, d]`` at ``rows`` (all of them if ``dense``); with ``ridge``,
  plus the storage's rounding noise on the diagonal."""
  if dense:
    part, full = stored, codec.decode(stored, d)
  elif codec.paired:
    part, full = None, codec.take_rows(stored, rows, d)
  else:
    part = quantization.take_rows(stored, rows)
    full = codec.decode(part, d)
  if ridge and codec.dtype != "float32":
    # Compact statistics carry rounding noise that can make them indefinite;
    # a ridge of its size keeps them PSD (see Codec.rounding_noise).
    noise = codec.rounding_noise(part, full)
    full = full + noise[:, None, None] * jnp.eye(d, dtype=full.dtype)[None]
  return full


def _update_rows(stats, precond, errors, failures, rows, *, own, dims, exponent, count,
                 compute, dense, codec, precond_codec, change=None, live=True):
  """Per group, new preconditioners where they are good; the old ones (and a
  failure) elsewhere; all of them old where ``live`` is false (a scalar). Groups
  smaller than the first are padded with zeros to its size for one
  ``compute``, and their results cut back. ``own``: per group, each row's own
  size (0 past the group)."""
  s = [_read(codec, x, r, d, dense, ridge=True) for x, r, d in zip(stats, rows, dims)]
  old = [_read(precond_codec, x, r, d, dense) for x, r, d in zip(precond, rows, dims)]
  if len(dims) == 1:
    results = [compute(s[0], old[0], own[0], exponent, count)]
  else:
    join = lambda xs: jnp.concatenate([zero_pad(x, dims[0]) for x in xs])  # noqa: E731
    new, error, ok = compute(join(s), join(old), jnp.concatenate(own), exponent, count)
    ends = np.cumsum([x.shape[0] for x in s])
    results = [(n[:, :d, :d], e, o) for n, e, o, d in
               zip(*(jnp.split(x, ends[:-1]) for x in (new, error, ok)), dims)]
  return tuple(
      _write_rows(*args, r, live, dim=d, dense=dense, precond_codec=precond_codec,
                  change=change)
      for args, r, d in zip(zip(s, old, results, precond, errors, failures), rows, dims))


def _write_rows(s, old, result, precond, errors, failures, rows, live, *, dim, dense,
                precond_codec, change):
  new, error, ok = result
  # A statistic that is still zero (no gradient reached it) keeps its
  # preconditioner without counting a failure.
  seen = jnp.any(s != 0, axis=(-2, -1)) & live
  ok = seen & ok & jnp.all(jnp.isfinite(new), axis=(-2, -1))
  new = jnp.where(ok[:, None, None], new, old)
  changes = ()
  if change is not None:
    # As stored: a new basis that rounds to the old one is no change.
    stored_new = precond_codec.decode(precond_codec.encode(new), dim)
    changes = (jnp.any(stored_new != old, axis=(-2, -1)), change(old, stored_new))
  if dense:
    return (precond_codec.encode(new), jnp.where(seen, error, errors),
            failures + (seen & ~ok).astype(failures.dtype), *changes)
  e = jnp.where(seen, error, jnp.take(errors, rows, mode="fill", fill_value=0))
  f = jnp.take(failures, rows, mode="fill", fill_value=0) + (seen & ~ok).astype(failures.dtype)
  return (
      precond_codec.put_rows(precond, rows, new),
      errors.at[rows].set(e, mode="drop"),
      failures.at[rows].set(f, mode="drop"),
      *changes,
  )
