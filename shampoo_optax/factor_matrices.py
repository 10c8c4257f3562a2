# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Factor matrices (Kronecker-factor statistics) and the preconditioners refreshed from them.

Shared by Shampoo (inverse roots) and SOAP (eigenbases). Per block ``G`` of a
stack and preconditioned axis, a factor matrix ``L <- b2 L + (1 - b2) G G^T``
(contracting every other axis for higher-rank blocks), one array per (stack,
axis) in a stored form (see ``blocking.py`` and ``quantization.py``); and,
refreshed from each every ``precondition_every`` steps, its preconditioner
(Shampoo: the inverse root; SOAP: the eigenbasis).

The refresh schedule: with ``stagger``, row ``i`` of a refresh group (see
``blocking.Group``) is refreshed on the steps ``t`` with ``(t - t0) % k == i %
k``: ``1/k`` of the rows on every step, so no step pays for all of them, and
the same rows whatever the mesh, so that sharded and single-device runs agree.
Without it, every row on every ``k``-th step. Either way under
``jax.lax.cond``: the gathers and scatters of the due rows happen only in the
refresh branch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from shampoo_optax import blocking, moments, quantization

# compute(stats [r, d, d], old preconditioners [r, d, d], exponent, count) ->
#   (new preconditioners [r, d, d], error [r], ok [r]); float32 throughout.
Compute = Callable[[jax.Array, jax.Array, int, jax.Array],
                   tuple[jax.Array, jax.Array, jax.Array]]


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


def is_params_stand_in(params) -> bool:
  """Whether ``params`` is the leafless stand-in of ``optax.tree.map_params``."""
  return not jax.tree.leaves(params) and type(params).__name__ == "_ParamsPlaceholder"


def init(plan: blocking.Plan, codec: quantization.Codec, precond_codec: quantization.Codec,
         block_sharding, params=None) -> tuple:
  """Per factor: zero statistics, identity preconditioners, zero errors and failures."""
  if is_params_stand_in(params):
    return (STAND_IN_GROUPS,) * 4
  place = lambda tree: jax.tree.map(block_sharding.place, tree)  # noqa: E731
  factors = plan.factors
  return (
      tuple(place(codec.empty(f.rows, f.dim)) for f in factors),
      tuple(place(precond_codec.empty(f.rows, f.dim, identity=True)) for f in factors),
      tuple(place(jnp.zeros((f.rows,), jnp.float32)) for f in factors),
      tuple(place(jnp.zeros((f.rows,), jnp.int32)) for f in factors),
  )


def accumulate(plan: blocking.Plan, stats: tuple, grad_stacks: list[jax.Array],
               b2: jax.typing.ArrayLike, codec: quantization.Codec, count: jax.Array) -> tuple:
  """stats <- b2 stats + (1 - b2) G G^T for every factor, in stored form.

  Compact storage rounds stochastically, with a key derived from ``count``
  (the same on every run).
  """
  weight = moments.moment_weight(b2)
  out = list(stats)
  for stack, grads in zip(plan.stacks, grad_stacks):
    rank = len(stack.block_shape)
    for axis, index in stack.factors:
      factor = plan.factors[index]
      contribution = jnp.einsum(
          blocking.statistic_einsum(rank, axis), grads, grads,
          precision=jax.lax.Precision.HIGHEST,
      )
      # The state may carry more rows than the plan asks for (a state saved on
      # a larger mesh and restored on a smaller one): pad to what it has.
      rows = codec.num_matrices(stats[index])
      contribution = jnp.pad(contribution, ((0, rows - factor.size), (0, 0), (0, 0)))
      key = None
      if codec.dtype != "float32":
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), count), index)
      out[index] = codec.accumulate(stats[index], contribution, b2, weight, factor.dim, key)
  return tuple(out)


def refresh(plan: blocking.Plan, stats: tuple, precond: tuple, errors: tuple,
            failures: tuple, count: jax.Array, *, compute: Compute, schedule: Schedule,
            block_sharding, codec: quantization.Codec,
            precond_codec: quantization.Codec) -> tuple[tuple, tuple, tuple]:
  """Recomputes the preconditioners that are due at step ``count``, group by group."""
  if block_sharding.size > 1:
    compute = _one_matrix_at_a_time_on_cpu(compute)
  precond, errors, failures = list(precond), list(errors), list(failures)
  for group in plan.groups:
    members = [plan.factors[i] for i in group.factors]
    refresh_group = functools.partial(
        _refresh_group, members=members, group=group, compute=compute, schedule=schedule,
        codec=codec, precond_codec=precond_codec)
    pick = lambda xs: tuple(xs[i] for i in group.factors)  # noqa: B023, E731
    new = block_sharding.map_blocks(
        refresh_group, (pick(stats), pick(precond), pick(errors), pick(failures)), (count,))
    for i, p, e, n in zip(group.factors, *new):
      precond[i], errors[i], failures[i] = (jax.tree.map(block_sharding.place, x)
                                            for x in (p, e, n))
  return tuple(precond), tuple(errors), tuple(failures)


def _one_matrix_at_a_time_on_cpu(compute: Compute) -> Compute:
  """On CPU, under shard_map, one matrix per LAPACK call.

  Each simulated CPU device runs its share on a thread of XLA's CPU pool, and a
  batched eigh splits its batch over that same pool and waits for it: with
  every device waiting, the pool deadlocks. Single matrices run inline.
  """

  def sequential(stats, old, exponent, count):
    def one(args):
      new, error, ok = compute(args[0][None], args[1][None], exponent, count)
      return new[0], error[0], ok[0]

    return jax.lax.map(one, (stats, old))

  def wrapped(stats, old, exponent, count):
    return jax.lax.platform_dependent(
        stats, old, count,
        cpu=lambda s, o, c: sequential(s, o, exponent, c),
        default=lambda s, o, c: compute(s, o, exponent, c))

  return wrapped


def due_rows(schedule: Schedule, count: jax.Array, n: int,
             row_offset: jax.typing.ArrayLike = 0) -> tuple[jax.Array, jax.Array]:
  """The rows (of ``n``) whose preconditioners are refreshed at step ``count``.

  Returns ``(rows, due)``: a fixed number of row indices (local to an array
  whose first row is row ``row_offset`` of its refresh group; some may be
  ``>= n``) and whether each is refreshed now.
  """
  if not schedule.dense:
    t0, k = schedule.first_step(), schedule.every
    first = (count - t0 - row_offset) % k  # the first due row
    rows = first + k * jnp.arange(-(-n // k))
    return rows, (count >= t0) & (rows < n)
  if schedule.stagger:  # every == 1: every row on every step from t0
    return jnp.arange(n), jnp.broadcast_to(count >= schedule.first_step(), (n,))
  due = (count > schedule.start) & ((count - schedule.start - 1) % schedule.every == 0)
  return jnp.arange(n), jnp.broadcast_to(due, (n,))


def _refresh_group(stats, precond, errors, failures, count, device, *, members, group,
                   compute, schedule, codec, precond_codec):
  """One group (or one device's rows of it): refresh the rows that are due."""
  schedules = []
  for f, s in zip(members, stats):
    n = codec.num_matrices(s)  # this device's rows of the factor
    schedules.append(due_rows(schedule, count, n, f.offset + device * n))
  any_due = jnp.any(jnp.stack([jnp.any(due) for _, due in schedules]))
  update = functools.partial(_update_rows, members=members, group=group, count=count,
                             compute=compute, dense=schedule.dense, codec=codec,
                             precond_codec=precond_codec)
  return jax.lax.cond(any_due, update, _keep, stats, precond, errors, failures,
                      tuple(rows for rows, _ in schedules))


def _keep(stats, precond, errors, failures, rows):
  del stats, rows
  return precond, errors, failures


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


def _pad(x, dim):
  pad = dim - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, pad), (0, pad))) if pad else x


def _update_rows(stats, precond, errors, failures, rows, *, members, group, count, compute,
                 dense, codec, precond_codec):
  """New preconditioners where they are good; the old ones (and a failure) elsewhere."""
  s = [_pad(_read(codec, x, r, f.dim, dense, ridge=True), group.dim)
       for f, x, r in zip(members, stats, rows)]
  old = [_pad(_read(precond_codec, x, r, f.dim, dense), group.dim)
         for f, x, r in zip(members, precond, rows)]
  sizes = [x.shape[0] for x in s]
  joined = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)  # noqa: E731
  new, error, ok = compute(joined(s), joined(old), group.exponent, count)
  out = ([], [], [])
  start = 0
  for f, s_f, old_f, p, e, n, r, size in zip(members, s, old, precond, errors, failures, rows,
                                             sizes):
    new_f, error_f, ok_f = (x[start:start + size] for x in (new, error, ok))
    start += size
    # A statistic that is still zero (no gradient reached it) keeps its
    # preconditioner without counting a failure.
    seen = jnp.any(s_f != 0, axis=(-2, -1))
    ok_f = seen & ok_f & jnp.all(jnp.isfinite(new_f), axis=(-2, -1))
    new_f = jnp.where(ok_f[:, None, None], new_f, old_f)[:, :f.dim, :f.dim]
    if dense:
      e_old, n_old = e, n
    else:
      e_old = jnp.take(e, r, mode="fill", fill_value=0)
      n_old = jnp.take(n, r, mode="fill", fill_value=0)
    e_new = jnp.where(seen, error_f, e_old)
    n_new = n_old + (seen & ~ok_f).astype(n.dtype)
    if dense:
      out[0].append(precond_codec.encode(new_f))
      out[1].append(e_new)
      out[2].append(n_new)
    else:
      out[0].append(precond_codec.put_rows(p, r, new_f))
      out[1].append(e.at[r].set(e_new, mode="drop"))
      out[2].append(n.at[r].set(n_new, mode="drop"))
  return tuple(out[0]), tuple(out[1]), tuple(out[2])
