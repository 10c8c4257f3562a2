# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The core both optimizers are built on: one update, in one pass in block layout.

Shampoo and SOAP differ only in what they do with a stack of blocks once its
preconditioners are known (:class:`Variant`): Shampoo multiplies by inverse
roots and grafts; SOAP rotates into the eigenbasis, takes Adam's step there
and rotates back. Everything else is here:

    update(grads, state)
      moments                 the optimizer's own, in the parameters' tree layout
      block layout, once:     cut the gradient and the variant's inputs into stacks
        accumulate            factor matrices  b2 L + (1 - b2) G G^T
        refresh               the due preconditioners (Shampoo: before use)
        apply                 the variant's direction, stack by stack
        refresh               (SOAP: after use, then its second moment carried)
      back to tree layout, once

The block plan (``blocking.py``) is static: Python loops below run over it at
trace time and compile to one batched computation per stack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from shampoo_optax import blocking, factor_matrices, moments, quantization, validation
from shampoo_optax import sharding as sharding_lib

# apply(plan, blocks {name: [stack]}, preconditioners [per factor, [size, d, d]],
#       scalars) -> {output name: [stack] or ([stack], [per-block scale])}
Apply = Callable[[blocking.Plan, dict, list, dict], dict]
# after_refresh(plan, outputs, old preconditioners, new ones, count) -> outputs
AfterRefresh = Callable[[blocking.Plan, dict, tuple, tuple, jax.Array], dict]


@dataclasses.dataclass(frozen=True)
class Variant:
  """What Shampoo and SOAP do differently, given the shared core."""

  compute: factor_matrices.Compute  # a preconditioner from a factor matrix
  apply: Apply
  outputs: tuple[str, ...]  # names of apply's outputs
  refresh_first: bool  # refresh before apply (Shampoo) or after it (SOAP)
  after_refresh: AfterRefresh | None = None


@dataclasses.dataclass(frozen=True)
class Core:
  """The static settings of an optimizer built on this core."""

  layout: blocking.Layout
  codec: quantization.Codec  # how factor matrices are stored
  precond_codec: quantization.Codec  # how preconditioners are stored
  block_sharding: sharding_lib.BlockSharding
  schedule: factor_matrices.Schedule
  moments: moments.MomentDtypes

  def plan(self, tree) -> blocking.Plan:
    return self.layout.plan(jax.tree.leaves(tree))

  def transformation(self, state_cls, step_fn) -> optax.GradientTransformationExtraArgs:
    """init and update around ``step_fn(grads, mu, nu, groups, count) -> (step, mu, nu,
    groups)``, ``mu`` and ``nu`` loaded in the gradients' dtypes, ``groups`` the
    state's per-factor fields (statistics, preconditioners, errors, failures)."""

    def init_fn(params):
      validation.check_float_leaves(params, "params")
      mu, nu = self.moments.init(params)
      groups = factor_matrices.init(self.plan(params), self.codec, self.precond_codec,
                                    self.block_sharding, params)
      return state_cls(jnp.zeros([], jnp.int32), mu, nu, *groups)

    def update_fn(updates, state, params=None, **extra_args):
      del params, extra_args
      validation.check_updates_match(updates, self.moments.shapes(state.mu))
      count = optax.safe_increment(state.count)
      mu, nu = self.moments.load(state.mu, state.nu, updates)
      step, mu, nu, groups = step_fn(updates, mu, nu, tuple(state[3:]), count)
      updates = jax.tree.map(lambda s, g: s.astype(g.dtype), step, updates)
      mu, nu = self.moments.store(mu, nu, state.mu, state.nu, count)
      return updates, state_cls(count, mu, nu, *groups)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def block_step(self, plan: blocking.Plan, inputs: dict[str, list], groups: tuple,
                 count: jax.Array, scalars: dict[str, Any], variant: Variant):
    """The variant's outputs for each preconditioned leaf, and the new groups.

    ``inputs`` are leaf lists in tree order (``'grads'`` among them); the
    outputs come back as leaf lists of the preconditioned leaves only, with
    the gradients' shardings.
    """
    step = functools.partial(self._step_in_block_layout, plan, variant=variant)
    grads = preconditioned_only(plan, inputs["grads"])
    like = {name: grads for name in variant.outputs}
    return sharding_lib.call_in_block_layout(
        step, (inputs, groups, count, scalars), like, groups, self.block_sharding)

  def _step_in_block_layout(self, plan, inputs, groups, count, scalars, *, variant):
    blocks = cut_into_blocks(plan, inputs)
    stats, precond, errors, failures = groups
    stats = self._place(factor_matrices.accumulate(
        plan, stats, blocks["grads"], scalars["b2"], self.codec, count))
    refresh = functools.partial(
        factor_matrices.refresh, plan, stats, count=count, compute=variant.compute,
        schedule=self.schedule, block_sharding=self.block_sharding, codec=self.codec,
        precond_codec=self.precond_codec)
    if variant.refresh_first:
      precond, errors, failures = refresh(precond, errors, failures)
    preconditioners = factor_matrices.decode_factors(plan, precond, self.precond_codec)
    outputs = variant.apply(plan, blocks, preconditioners, scalars)
    if not variant.refresh_first:
      new, errors, failures = refresh(precond, errors, failures)
      outputs = variant.after_refresh(plan, outputs, precond, new, count)
      precond = new
    leaves = {name: preconditioned_only(plan, _from_stacks(plan, outputs[name]))
              for name in variant.outputs}
    return leaves, (stats, precond, errors, failures)

  def _place(self, groups):
    return tuple(jax.tree.map(self.block_sharding.place, g) for g in groups)


def _from_stacks(plan, output):
  """An output of ``Variant.apply``: stacks, or (stacks, per-block scales)."""
  if isinstance(output, tuple):
    return blocking.from_stacks(plan, *output)
  return blocking.from_stacks(plan, output)


def cut_into_blocks(plan: blocking.Plan, inputs: dict[str, list]) -> dict[str, list]:
  """Each input's preconditioned leaves as float32 stacks of blocks: one cut each."""
  return {name: blocking.to_stacks(plan, leaves, jnp.float32) for name, leaves in inputs.items()}


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


def on_tpu_else(tpu: Callable, other: Callable):
  """``tpu()`` when compiled for a TPU, ``other()`` on CPUs and GPUs."""
  return jax.lax.platform_dependent(tpu=tpu, default=other)
