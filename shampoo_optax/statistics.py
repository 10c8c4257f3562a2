# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Kronecker-factor statistics and the matrices refreshed from them.

Shared by Shampoo (inverse roots) and SOAP (eigenbases): per block ``G`` and
preconditioned axis, a statistic ``L <- b2 L + (1 - b2) G G^T`` (contracting
every other axis for higher-rank blocks), kept in groups (see ``blocking.py``)
in a compact stored form (see ``quantization.py``); and, refreshed from each
statistic every ``precondition_every`` steps, a derived matrix (its ``factor``).

The refresh schedule: with ``stagger``, row ``i`` of a group is refreshed on
the steps ``t`` with ``(t - t0) % k == i % k``: ``1/k`` of the rows on every
step, so no step pays for all of them, and the same rows whatever the mesh, so
that sharded and single-device runs agree. Without it, every row on every
``k``-th step, under ``jax.lax.cond``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from shampoo_optax import blocking, grafting, quantization

# compute(stats [r, d, d], old factors [r, d, d], exponent, count) ->
#   (new factors [r, d, d], error [r], ok [r]); float32 throughout.
Compute = Callable[[jax.Array, jax.Array, int, jax.Array],
                   tuple[jax.Array, jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When each factor is recomputed."""

  every: int  # precondition_every
  start: int  # start_preconditioning_step: factors are used from step start + 1
  stagger: bool

  def first_step(self) -> int:
    """Staggered refreshes start k steps early: all factors ready at start + 1."""
    return max(1, self.start - self.every + 1)


# What init puts in each per-group field when it is handed optax.tree.map_params'
# stand-in for the parameters (a pytree without leaves or shapes, so no plan):
# a leaf, which map_params matches with the whole field of the real state and
# treats as a non-parameter part.
STAND_IN_GROUPS = "statistics groups"


def is_params_stand_in(params) -> bool:
  """Whether ``params`` is the leafless stand-in of ``optax.tree.map_params``."""
  return not jax.tree.leaves(params) and type(params).__name__ == "_ParamsPlaceholder"


def init_groups(plan: blocking.Plan, codec: quantization.Codec,
                factor_codec: quantization.Codec, block_sharding, params=None) -> tuple:
  """Per group: zero statistics, identity factors, zero errors and failures."""
  if is_params_stand_in(params):
    return (STAND_IN_GROUPS,) * 4
  place = lambda tree: jax.tree.map(block_sharding.place, tree)  # noqa: E731
  groups = plan.groups
  return (
      tuple(place(codec.empty(g.padded_size, g.dim)) for g in groups),
      tuple(place(factor_codec.empty(g.padded_size, g.dim, identity=True)) for g in groups),
      tuple(place(jnp.zeros((g.padded_size,), jnp.float32)) for g in groups),
      tuple(place(jnp.zeros((g.padded_size,), jnp.int32)) for g in groups),
  )


def accumulate(plan: blocking.Plan, stats: tuple, grad_stacks: list[jax.Array],
               b2: jax.typing.ArrayLike, codec: quantization.Codec,
               count: jax.Array | None = None) -> tuple:
  """stats <- b2 stats + (1 - b2) G G^T for every group, in stored form.

  Compact storage rounds stochastically, with a key derived from ``count``
  (the same on every run).
  """
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
  out = []
  for group, old, new in zip(plan.groups, stats, parts):
    new = jnp.concatenate(new, axis=0) if len(new) > 1 else new[0]
    # The state may carry more padding than the plan asks for (a state saved
    # on a larger mesh and restored on a smaller one): pad to what it has.
    rows = quantization.num_matrices(old)
    if rows > new.shape[0]:
      new = jnp.pad(new, ((0, rows - new.shape[0]), (0, 0), (0, 0)))
    key = None
    if count is not None and codec.dtype != "float32":
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), count), len(out))
    out.append(codec.encode(b2 * codec.decode(old, group.dim) + weight * new, key))
  return tuple(out)


def refresh(plan: blocking.Plan, stats: tuple, factors: tuple, errors: tuple,
            failures: tuple, count: jax.Array, *, compute: Compute, schedule: Schedule,
            block_sharding, codec: quantization.Codec,
            factor_codec: quantization.Codec) -> tuple[tuple, tuple, tuple]:
  """Recomputes the factors that are due at step ``count``, group by group."""
  if block_sharding.size > 1:
    compute = _one_matrix_at_a_time_on_cpu(compute)
  out = []
  for group, s, f, e, n in zip(plan.groups, stats, factors, errors, failures):
    refresh_group = functools.partial(
        _refresh_group, dim=group.dim, exponent=group.exponent, compute=compute,
        schedule=schedule, codec=codec, factor_codec=factor_codec)
    out.append(block_sharding.map_blocks(refresh_group, (s, f, e, n), (count,)))
  if not out:
    return (), (), ()
  place = lambda tree: jax.tree.map(block_sharding.place, tree)  # noqa: E731
  factors, errors, failures = (tuple(place(x) for x in xs) for xs in zip(*out))
  return factors, errors, failures


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
  """The rows of a group (of ``n``) whose factors are refreshed at step ``count``.

  Returns ``(rows, due)``: a fixed number of row indices (local to a device
  whose first row is global row ``row_offset``; some may be ``>= n``) and
  whether each is refreshed now.
  """
  if schedule.stagger:
    t0, k = schedule.first_step(), schedule.every
    first = (count - t0 - row_offset) % k  # the first due row
    rows = first + k * jnp.arange(-(-n // k))
    return rows, (count >= t0) & (rows < n)
  due = (count > schedule.start) & ((count - schedule.start - 1) % schedule.every == 0)
  return jnp.arange(n), jnp.broadcast_to(due, (n,))


def _refresh_group(stats, factors, errors, failures, count, row_offset, *, dim, exponent,
                   compute, schedule, codec, factor_codec):
  """One group (or one device's rows of it): refresh the rows that are due."""
  n = quantization.num_matrices(stats)
  update = functools.partial(_update_rows, dim=dim, exponent=exponent, count=count,
                             compute=compute, codec=codec, factor_codec=factor_codec)
  rows, due = due_rows(schedule, count, n, row_offset)  # rows past n: dropped
  return jax.lax.cond(jnp.any(due), update, _keep, stats, factors, errors, failures, rows)


def _keep(stats, factors, errors, failures, rows):
  del stats, rows
  return factors, errors, failures


def _update_rows(stats, factors, errors, failures, rows, *, dim, exponent, count, compute,
                 codec, factor_codec):
  """New factors where they are good; the old ones (and a failure) elsewhere."""
  stored = quantization.take_rows(stats, rows)
  s = codec.decode(stored, dim)
  if codec.dtype != "float32":
    # Compact statistics carry rounding noise that can make them indefinite;
    # a ridge of its size keeps them PSD (see Codec.rounding_noise).
    noise = codec.rounding_noise(stored, s)
    s = s + noise[:, None, None] * jnp.eye(dim, dtype=s.dtype)[None]
  old = factor_codec.decode(quantization.take_rows(factors, rows), dim)
  new, error, ok = compute(s, old, exponent, count)
  # A statistic that is still zero (no gradient reached it) keeps its factor
  # without counting a failure.
  seen = jnp.any(s != 0, axis=(-2, -1))
  ok = seen & ok & jnp.all(jnp.isfinite(new), axis=(-2, -1))
  new = jnp.where(ok[:, None, None], new, old)
  e = jnp.where(seen, error, jnp.take(errors, rows, mode="fill", fill_value=0))
  f = jnp.take(failures, rows, mode="fill", fill_value=0) + (seen & ~ok).astype(failures.dtype)
  return (
      quantization.put_rows(factors, rows, factor_codec.encode(new)),
      errors.at[rows].set(e, mode="drop"),
      failures.at[rows].set(f, mode="drop"),
  )
