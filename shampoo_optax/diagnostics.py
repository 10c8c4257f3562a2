# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Per-parameter health of Shampoo's (or SOAP's) preconditioners.

``diagnostics(opt_state, params)`` reads, for every preconditioned parameter:
the error estimate of the last inverse root (or eigenbasis) computed for its
statistics (the largest over its blocks and axes), how many computed roots were
rejected, and an estimate of the statistics' condition number. It is a handful
of batched array operations (24 Lanczos steps per statistic for the
condition), compiled once per layout (about a tenth of a training step after that; see
benchmarks/diagnostics_cost.py), cheap enough to log every few steps.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from shampoo_optax import (
  blocking,
  factor_matrices,
  matrix_functions,
  quantization,
  soap_transform,
)
from shampoo_optax.shampoo_transform import ShampooState
from shampoo_optax.soap_transform import SoapState


def diagnostics(
    opt_state: Any,
    params: optax.Params,
    *,
    block_size: int | None = None,
    max_merged_dim: int | None = None,
    skip_preconditioning_dim_size_gt: int | None = None,
    exponent_override: int | None | str = "infer",
) -> dict[str, dict[str, jax.Array]]:
  """Root errors, failures and condition estimates, per preconditioned parameter.

  The block layout is read back from the state: the layouts that the
  optimizer's defaults and every power-of-two ``block_size`` give for
  ``params`` are tried against the state's shapes. Pass the layout arguments
  you gave the optimizer when that is ambiguous or finds nothing (a
  non-default ``max_merged_dim`` or ``skip_preconditioning_dim_size_gt``,
  say); a mismatch with the state is reported as an error.

  Args:
    opt_state: the optimizer state; the first ``ShampooState`` or
      ``SoapState`` in it is read (e.g. inside ``optax.chain``).
    params: the parameters (or anything of their tree and shapes).
    block_size: as given to the optimizer (default: read from the state).
    max_merged_dim: as given to the optimizer (default: the optimizer's).
    skip_preconditioning_dim_size_gt: as given to the optimizer (default:
      4096, the optimizer's).
    exponent_override: as given to the optimizer (default: read from the
      state).

  Returns:
    A dict with an entry per preconditioned parameter, keyed by its path as
    ``jax.tree_util.keystr`` writes it, each
    ``{"root_error": float32, "root_failures": int32, "condition": float32}``.
    ``condition`` is
    ``lambda_max / lambda_min`` of the worst statistic (a lower bound from
    Lanczos; ``inf`` when singular), before the ``matrix_eps`` ridge.

  Examples:
    >>> import jax.numpy as jnp, shampoo_optax
    >>> params = {"w": jnp.ones((8, 8))}
    >>> tx = shampoo_optax.shampoo(1e-3, block_size=8)
    >>> state = tx.init(params)
    >>> report = shampoo_optax.diagnostics(state, params)
    >>> sorted(report["['w']"])
    ['condition', 'root_error', 'root_failures']
  """
  state = _find_state(opt_state)
  soap = isinstance(state, SoapState)
  stats, errors, failures = (
      (state.stats, state.basis_errors, state.basis_failures) if soap
      else (state.stats, state.root_errors, state.root_failures))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  codec = quantization.Codec(quantization.stored_dtype(stats[0]) if stats else "float32")
  plan = _layout_of(stats, codec, [leaf for _, leaf in leaves], soap, block_size,
                    max_merged_dim, skip_preconditioning_dim_size_gt, exponent_override)
  named_rows = [(jax.tree_util.keystr(path), _rows_of_leaf(plan, i))
                for i, (path, _) in enumerate(leaves)]
  named_rows = [(name, rows) for name, rows in named_rows if rows]
  # Each row's statistic size in its slot (the rest is padding; see _report).
  own = tuple(factor_matrices.own_sizes(plan, g, jnp.arange(codec.num_matrices(s)))
              for g, s in enumerate(stats))
  values = _report(
      stats, errors, failures, own, dims=tuple(g.dim for g in plan.groups), dtype=codec.dtype,
      leaf_rows=tuple(tuple((g, tuple(int(x) for x in r)) for g, r in rows)
                      for _, rows in named_rows))
  report = {}
  for (name, _), (error, failure, condition) in zip(named_rows, values):
    report[name] = {"root_error": error, "root_failures": failure, "condition": condition}
  return report


@functools.partial(jax.jit, static_argnames=("dims", "dtype", "leaf_rows"))
def _report(stats, errors, failures, own, *, dims, dtype, leaf_rows):
  """(worst root error, failures, worst condition) per leaf, in one compiled call.

  A statistic smaller than its slot (``own``) has the mean of its own diagonal
  on the padding's diagonal: a value within its spectrum (a Rayleigh quotient),
  so that the padding's zeros do not read as a singular statistic."""
  codec = quantization.Codec(dtype)
  condition = []
  for dim, s, n in zip(dims, stats, own):
    m = codec.decode(s, dim)
    diagonal = jnp.diagonal(m, axis1=-2, axis2=-1)
    mean = (jnp.sum(jnp.where(jnp.arange(dim)[None, :] < n[:, None], diagonal, 0), -1)
            / jnp.maximum(n, 1).astype(diagonal.dtype))
    lo, hi = matrix_functions.extreme_eigenvalues(factor_matrices.with_padding(m, n, mean))
    condition.append(jnp.where(lo > 0, hi / jnp.where(lo > 0, lo, 1), jnp.inf))
  take = lambda arrays, g, r: jnp.take(arrays[g], jnp.asarray(r), axis=0)  # noqa: E731
  return [
      (jnp.max(jnp.stack([jnp.max(take(errors, g, r)) for g, r in rows])),
       jnp.sum(jnp.stack([jnp.sum(take(failures, g, r)) for g, r in rows])),
       jnp.max(jnp.stack([jnp.max(take(condition, g, r)) for g, r in rows])))
      for rows in leaf_rows
  ]


def _find_state(opt_state):
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(s)]
  if not found:
    raise ValueError("no ShampooState or SoapState in opt_state")
  return found[0]


def _is_state(x) -> bool:
  return isinstance(x, (ShampooState, SoapState))


def _layout_of(stats, codec, leaves, soap, block_size, max_merged_dim, skip, exponent_override):
  """The plan of the layout the state was made with: the one given, or the
  candidates that fit the state's shapes (all giving the same plan)."""
  given = (block_size, max_merged_dim, skip, exponent_override)
  sizes = [block_size] if block_size else sorted({2**k for k in range(2, 13)} | {
      int(jax.tree.leaves(s)[0].shape[1]) for s in stats})
  exponents = ([exponent_override] if exponent_override != "infer"
               else [None] if soap else [2, None])
  plans = []
  for size in sizes:
    for exponent in exponents:
      # SOAP has no roots: its layout is the paper's 2k grouping whatever the
      # exponent argument says.
      layout = (soap_transform.block_layout(size, max_merged_dim, skip or 4096) if soap
                else blocking.Layout(size, max_merged_dim, skip or 4096, exponent))
      plan = layout.plan(leaves)
      try:
        _check_layout(plan, stats, codec)
      except ValueError:
        if len(sizes) * len(exponents) == 1:
          raise
        continue
      plans.append(plan)
  rows = {(tuple(g.dim for g in p.groups), tuple(_all_rows(p))) for p in plans}
  if len(rows) == 1:
    return plans[0]
  raise ValueError(
      "diagnostics() could not read the block layout back from the state "
      f"({'no' if not plans else 'several different'} layouts fit; given: block_size, "
      f"max_merged_dim, skip_preconditioning_dim_size_gt, exponent_override = {given}): pass "
      "the layout arguments the optimizer was built with")


def _all_rows(plan):
  return [(g, tuple(int(x) for x in r))
          for i in range(len(plan.leaves)) for g, r in _rows_of_leaf(plan, i)]


def _check_layout(plan, stats, codec):
  got = [(codec.num_matrices(s), jax.tree.leaves(s)[0].shape[1]) for s in stats]
  want = [(g.padded_size, g.dim if codec.paired else quantization.packed_size(g.dim))
          for g in plan.groups]
  if len(got) != len(want) or any(
      n < w_n or m != w_m for (n, m), (w_n, w_m) in zip(got, want)):
    raise ValueError(
        "The layout arguments do not match the optimizer state: pass diagnostics() the "
        "block_size, max_merged_dim, skip_preconditioning_dim_size_gt and exponent_override "
        f"the optimizer was built with (state groups {got}, these arguments give {want})"
    )


def _rows_of_leaf(plan: blocking.Plan, leaf: int) -> list[tuple[int, np.ndarray]]:
  """(group, rows) holding the statistics of one parameter's blocks."""
  out = []
  for stack_index, first, count in plan.block_location(leaf):
    for _, index in plan.stacks[stack_index].factors:
      factor = plan.factors[index]
      if factor.start <= first < factor.start + factor.size:  # the leaf's block shape
        out.append((factor.group, factor.offset + first - factor.start + np.arange(count)))
  return out
