# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""diagnostics(): per-parameter root errors, failures and condition estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shampoo_optax
from shampoo_optax import quantization
from tests.test_transform import random_tree, run_updates

SHAPES = {"w": (16, 8), "v": (8, 8), "b": (8,)}
KW = dict(block_size=8, precondition_every=1, start_preconditioning_step=0)


def test_report_per_preconditioned_parameter(rng):
  params = random_tree(rng, SHAPES)
  _, state = run_updates(shampoo_optax.shampoo(0.01, **KW), params,
                         [random_tree(rng, SHAPES) for _ in range(4)])
  report = jax.jit(shampoo_optax.diagnostics, static_argnames="block_size")(
      state, params, block_size=8)
  assert sorted(report) == ["['v']", "['w']"]  # 'b' is a vector: diagonal only
  for entry in report.values():
    assert 0 < float(entry["root_error"]) < 1e-3
    assert int(entry["root_failures"]) == 0
    assert 1 <= float(entry["condition"]) < np.inf


def test_condition_matches_numpy(rng):
  params = random_tree(rng, {"v": (8, 8)})
  grads = [random_tree(rng, {"v": (8, 8)}) for _ in range(3)]
  _, state = run_updates(shampoo_optax.scale_by_shampoo(b2=1.0, **KW), params, grads)
  g = [np.asarray(x["v"], np.float64) for x in grads]
  want = max(np.linalg.cond(sum(x @ x.T for x in g)), np.linalg.cond(sum(x.T @ x for x in g)))
  got = float(shampoo_optax.diagnostics(state, params, block_size=8)["['v']"]["condition"])
  assert got == pytest.approx(want, rel=1e-2)


@pytest.mark.parametrize("make", [shampoo_optax.scale_by_shampoo, shampoo_optax.scale_by_soap])
def test_condition_of_a_statistic_in_a_larger_slot(rng, make):
  """A 6 x 6 statistic sits in an 8 x 8 slot (the 8 x 6 block's right side): its condition is
  its own, not that of its zero padding (which read as singular, ``inf``)."""
  params = random_tree(rng, {"v": (8, 6)})
  grads = [random_tree(rng, {"v": (8, 6)}) for _ in range(4)]
  b2 = 1.0 if make is shampoo_optax.scale_by_shampoo else 0.5
  _, state = run_updates(make(b2=b2, **KW), params, grads)
  g = [np.asarray(x["v"], np.float64) for x in grads]
  weights = [1.0] * len(g) if b2 == 1.0 else [(1 - b2) * b2 ** (len(g) - 1 - k)
                                               for k in range(len(g))]
  want = max(np.linalg.cond(sum(w * x @ x.T for w, x in zip(weights, g))),
             np.linalg.cond(sum(w * x.T @ x for w, x in zip(weights, g))))
  got = float(shampoo_optax.diagnostics(state, params, block_size=8)["['v']"]["condition"])
  assert got == pytest.approx(want, rel=1e-2)


def test_failures_are_reported_for_the_parameter(rng):
  params = random_tree(rng, SHAPES)
  tx = shampoo_optax.scale_by_shampoo(**KW)
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update(random_tree(rng, SHAPES), state)
  # Break every statistic: 'w' has 2 blocks x 2 axes, 'v' 1 block x 2 axes.
  stats = jax.tree.map(lambda s: s.at[:].set(jnp.nan), state.stats)
  _, state = update(random_tree(rng, SHAPES), state._replace(stats=stats))
  report = shampoo_optax.diagnostics(state, params, block_size=8)
  assert int(report["['w']"]["root_failures"]) == 4
  assert int(report["['v']"]["root_failures"]) == 2


def test_soap_and_compact_states(rng):
  params = random_tree(rng, SHAPES)
  for tx in (shampoo_optax.soap(0.01, block_size=8, precondition_every=1),
             shampoo_optax.shampoo(0.01, statistics_dtype="int8", **KW)):
    _, state = run_updates(tx, params, [random_tree(rng, SHAPES) for _ in range(3)])
    report = shampoo_optax.diagnostics(state, params, block_size=8)
    assert sorted(report) == ["['v']", "['w']"]
    assert all(np.isfinite(float(e["root_error"])) for e in report.values())
  assert isinstance(state[0].stats[0], quantization.ScaledIntMatrices)


@pytest.mark.parametrize("make", [shampoo_optax.soap, shampoo_optax.shampoo])
def test_one_and_two_sided_blocks(make):
  """A one-sided block (a skipped dimension) next to a two-sided one of the same size."""
  params = {"w": jnp.ones((8, 8)), "e": jnp.ones((200, 8))}
  layout = dict(block_size=8, skip_preconditioning_dim_size_gt=100)
  state = make(1e-3, **layout).init(params)
  assert sorted(shampoo_optax.diagnostics(state, params, **layout)) == ["['e']", "['w']"]


def test_wrong_layout_arguments_are_an_error(rng):
  params = random_tree(rng, SHAPES)
  state = shampoo_optax.shampoo(0.01, block_size=8).init(params)
  with pytest.raises(ValueError, match="block_size"):
    shampoo_optax.diagnostics(state, params, block_size=4)
  with pytest.raises(ValueError, match="no ShampooState"):
    shampoo_optax.diagnostics({"not": "a state"}, params)


@pytest.mark.parametrize("make", [shampoo_optax.shampoo, shampoo_optax.soap])
def test_layout_is_read_back_from_the_state(rng, make):
  """Without layout arguments, the report is the one for the arguments the
  optimizer was built with (block_size 8 here, not the default 128)."""
  params = random_tree(rng, SHAPES)
  grads_seq = [random_tree(rng, SHAPES) for _ in range(2)]
  _, state = run_updates(make(0.01, **KW), params, grads_seq)
  inferred = shampoo_optax.diagnostics(state, params)
  given = shampoo_optax.diagnostics(state, params, block_size=8)
  assert sorted(inferred) == sorted(given) == ["['v']", "['w']"]
  for name in given:
    for key in ("root_error", "root_failures", "condition"):
      np.testing.assert_array_equal(inferred[name][key], given[name][key])


def test_a_layout_that_cannot_be_read_back_asks_for_the_arguments():
  params = {"w": jnp.ones((8, 8)), "e": jnp.ones((200, 8))}
  state = shampoo_optax.shampoo(1e-3, block_size=8, skip_preconditioning_dim_size_gt=100).init(
      params)
  with pytest.raises(ValueError, match="pass the layout arguments"):
    shampoo_optax.diagnostics(state, params)
