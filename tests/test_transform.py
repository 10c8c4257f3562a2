# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""scale_by_shampoo and shampoo: reference steps, grafting, reliability."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import shampoo_optax
from shampoo_optax import blocking, core, factor_matrices, quantization
from tests import reference
from tests.reference import NumpyShampoo

SHAPES = {"w1": (8, 6), "w2": (6, 4), "w3": (3, 4, 5), "b": (4,)}


def random_tree(rng, shapes=SHAPES, dtype=jnp.float32):
  return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


def run_updates(tx, params, grads_seq, strict=True):
  """Applies tx to a sequence of gradients; returns the list of updates.

  optax's own optimizers mix int and float (decay**count), so they run with
  standard promotion (strict=False); ours must pass strict promotion.
  """
  update = jax.jit(tx.update)
  promotion = "strict" if strict else "standard"
  with jax.numpy_dtype_promotion(promotion):
    state = tx.init(params)
    out = []
    for grads in grads_seq:
      updates, state = update(grads, state, params)
      out.append(updates)
  return out, state


def assert_trees_close(a, b, rtol, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# --- Against a hand-written float64 reference ------------------------------


@pytest.mark.parametrize("stagger,k,exponent", [(False, 3, 2), (True, 1, 2), (False, 1, None),
                                                (False, 3, None)])
def test_matches_numpy_reference(rng, stagger, k, exponent):
  hp = dict(block_size=4, b1=0.9, b2=0.95, eps=1e-8, matrix_eps=1e-4,
            precondition_every=k, start_preconditioning_step=2, exponent_override=exponent)
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(9)]
  # max_merged_dim=4: w3 stays a 3 x 4 x 5 tensor (a root per side), which the
  # reference preconditions as it is (the default would make it a 12 x 5 matrix).
  tx = shampoo_optax.shampoo(learning_rate=0.1, stagger_root_refresh=stagger, max_merged_dim=4,
                             **hp)
  ours, _ = run_updates(tx, params, grads_seq)
  ref = NumpyShampoo(list(SHAPES.values()), learning_rate=0.1, **hp)
  for t, (grads, got) in enumerate(zip(grads_seq, ours)):
    want = ref.step(list(grads.values()))
    for name, w in zip(SHAPES, want):
      np.testing.assert_allclose(got[name], w, rtol=2e-4, atol=2e-6, err_msg=f"step {t + 1} {name}")


def test_pseudo_inverse_matches_numpy_reference(rng):
  """Rank-deficient statistics (3 gradients for 8 x 8 blocks): drop, not ridge."""
  shapes = {"w": (16, 8)}
  hp = dict(block_size=8, b1=0.0, b2=0.99, eps=1e-8, matrix_eps=0.0,
            precondition_every=1, start_preconditioning_step=0)
  params = random_tree(rng, shapes)
  grads_seq = [random_tree(rng, shapes) for _ in range(3)]
  tx = shampoo_optax.shampoo(learning_rate=0.1, pseudo_inverse_rtol=1e-5, **hp)
  ours, state = run_updates(tx, params, grads_seq)
  ref = NumpyShampoo(list(shapes.values()), learning_rate=0.1, pseudo_inverse_rtol=1e-5, **hp)
  for grads, got in zip(grads_seq, ours):
    (want,) = ref.step(list(grads.values()))
    np.testing.assert_allclose(got["w"], want, rtol=1e-3, atol=1e-5)
  assert all(int(f.sum()) == 0 for f in state[0].root_failures)


# --- Grafting-only mode equals the optax optimizer -------------------------

GRAFT_EQUIVALENTS = [
    ("adam", dict(b1=0.9, b2=0.999, eps=1e-8), optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8)),
    ("adam", dict(b1=0.8, b2=0.99, eps=1e-6, nesterov=True),
     optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6, nesterov=True)),
    ("adam", dict(b1=0.0, b2=0.9, eps=1e-8), optax.adam(0.01, b1=0.0, b2=0.9)),
    ("rmsprop", dict(b1=0.0, b2=0.9, eps=1e-8), optax.rmsprop(0.01, decay=0.9, eps=1e-8)),
    ("adagrad", dict(b1=0.0, eps=1e-7),
     optax.adagrad(0.01, initial_accumulator_value=0.0, eps=1e-7)),
    ("sgd", dict(b1=0.0), optax.sgd(0.01)),
]


@pytest.mark.parametrize("graft,kwargs,reference", GRAFT_EQUIVALENTS)
def test_grafting_only_equals_optax(rng, graft, kwargs, reference):
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(6)]
  tx = shampoo_optax.shampoo(
      0.01, block_size=4, graft=graft, start_preconditioning_step=100, **kwargs
  )
  ours, _ = run_updates(tx, params, grads_seq)
  theirs, _ = run_updates(reference, params, grads_seq, strict=False)
  for a, b in zip(ours, theirs):
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("exponent", [None, 2])
def test_graft_none_is_raw_shampoo_direction(rng, exponent):
  params = random_tree(rng, {"w": (4, 4)})
  grads = random_tree(rng, {"w": (4, 4)})
  tx = shampoo_optax.scale_by_shampoo(
      block_size=4, graft="none", b1=0.0, b2=1.0, matrix_eps=0.0,
      start_preconditioning_step=0, precondition_every=1, exponent_override=exponent,
  )
  (update,), _ = run_updates(tx, params, [grads])
  # One full-rank gradient G = U S V^T and plain sums: L = G G^T, R = G^T G,
  # so L^(-1/4) G R^(-1/4) = U V^T (the paper) and L^(-1/2) G R^(-1/2) = U S^-1 V^T.
  u, s, vt = np.linalg.svd(np.asarray(grads["w"], np.float64))
  want = u @ vt if exponent is None else (u / s) @ vt
  np.testing.assert_allclose(update["w"], want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("nesterov", [False, True])
def test_graft_none_uses_debiased_momentum(rng, nesterov):
  """Without a graft nothing rescales the direction, so mu_hat's bias
  correction (optax.adam's, Nesterov's too) must be in it: two steps with
  b1 = 0.9 against float64 by hand."""
  params = random_tree(rng, {"w": (4, 4)})
  grads_seq = [random_tree(rng, {"w": (4, 4)}) for _ in range(2)]
  b1 = 0.9
  tx = shampoo_optax.scale_by_shampoo(
      block_size=4, graft="none", b1=b1, b2=1.0, matrix_eps=0.0, nesterov=nesterov,
      start_preconditioning_step=0, precondition_every=1)
  ours, _ = run_updates(tx, params, grads_seq)
  g1, g2 = (np.asarray(g["w"], np.float64) for g in grads_seq)
  mu = (1 - b1) * (b1 * g1 + g2)
  if nesterov:
    mu_hat = b1 * mu / (1 - b1**3) + (1 - b1) * g2 / (1 - b1**2)
  else:
    mu_hat = mu / (1 - b1**2)

  def inv_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v / np.sqrt(w)) @ v.T

  left = inv_sqrt(g1 @ g1.T + g2 @ g2.T)
  right = inv_sqrt(g1.T @ g1 + g2.T @ g2)
  np.testing.assert_allclose(ours[1]["w"], left @ mu_hat @ right, rtol=2e-3, atol=1e-4)


def test_rmsprop_normalized_by_hand(rng):
  params = random_tree(rng, {"b": (5,)})
  grads_seq = [random_tree(rng, {"b": (5,)}) for _ in range(3)]
  tx = shampoo_optax.scale_by_shampoo(graft="rmsprop_normalized", b1=0.0, b2=0.9, eps=1e-8)
  ours, _ = run_updates(tx, params, grads_seq)
  nu = np.zeros(5)
  for grads, got in zip(grads_seq, ours):
    g = np.asarray(grads["b"], np.float64)
    unit = g / np.linalg.norm(g)
    nu = 0.9 * nu + 0.1 * unit**2
    np.testing.assert_allclose(got["b"], unit / np.sqrt(nu + 1e-8), rtol=1e-5)


# --- The block plan --------------------------------------------------------


def test_plan_merges_blocks_and_skips():
  plan = blocking.make_plan(
      ((3, 3, 64, 128), (50000, 64), (300,), (1, 200, 1)),
      block_size=128, max_merged_dim=1024, skip_preconditioning_dim_size_gt=4096,
      exponent_override=None,
  )
  conv, embed, vector, squeezed = plan.leaves
  assert conv.merged_shape == (576, 128) and conv.exponent == 4
  assert [p.block_shape for p in conv.pieces] == [(128, 128), (64, 128)]
  assert embed.preconditioned == (False, True) and embed.exponent == 2
  assert [p.block_shape for p in embed.pieces] == [(50000, 64)]
  assert not vector.is_preconditioned and not squeezed.is_preconditioned
  # Statistic slots: 64 x 64 (p = 4) is merged into the 128 group (a cheap
  # pad); the one-sided 64 (p = 2) has an exponent of its own.
  dims = sorted((g.dim, g.exponent, g.size) for g in plan.groups)
  assert dims == [(64, 2, 1), (128, 4, 4 + 4 + 1 + 1)]


def test_default_plan_preconditions_every_tensor_as_a_matrix():
  """max_merged_dim=None (the default): dimensions merge within block_size,
  then what still has more than two is cut into its most nearly square
  matrix; a shard is cut along the whole parameter's axes."""
  def merged(shape, max_merged_dim=None, global_shape=None):
    return blocking.plan_leaf(shape, block_size=128, max_merged_dim=max_merged_dim,
                              skip_preconditioning_dim_size_gt=4096, exponent_override=None,
                              global_shape=global_shape).merged_shape

  assert merged((512, 8, 64)) == (512, 512)  # [d_model, heads, head_dim]
  assert merged((8, 64, 512)) == (512, 512)  # the output projection
  assert merged((3, 3, 64, 128)) == (576, 128)  # a convolution: [kh kw c_in, c_out]
  assert merged((7, 7, 3, 64)) == (147, 64)
  assert merged((4, 32, 128)) == (128, 128)  # merged within block_size already
  assert merged((96, 512)) == (96, 512) and merged((1, 300, 1)) == (300,)
  # An explicit max_merged_dim merges greedily and leaves higher ranks as they are.
  assert merged((512, 8, 64), max_merged_dim=128) == (512, 8, 64)
  assert merged((512, 8, 64), max_merged_dim=4096) == (4096, 64)
  # Shards of (512, 8, 64), cut along the whole's axes: over 8 devices on the
  # first axis (64, 512), then folded into whole 128-row blocks (_fold_shard);
  # over 2 on the last, (512, 256).
  assert merged((64, 8, 64), global_shape=(512, 8, 64)) == (256, 128)
  assert merged((512, 8, 32), global_shape=(512, 8, 64)) == (512, 256)


def test_default_rank3_leaf_is_the_matrix_it_reshapes_to(rng):
  """Shampoo with the defaults on a (4, 4, 8) leaf is Shampoo on its (16, 8)
  reshape, step after step."""
  tensor = {"t": jnp.asarray(rng.standard_normal((4, 4, 8)), jnp.float32)}
  grads_seq = [{"t": jnp.asarray(rng.standard_normal((4, 4, 8)), jnp.float32)}
               for _ in range(5)]
  kwargs = dict(block_size=8, precondition_every=2, start_preconditioning_step=1)
  ours, _ = run_updates(shampoo_optax.shampoo(0.1, **kwargs), tensor, grads_seq)
  as_matrix, _ = run_updates(shampoo_optax.shampoo(0.1, **kwargs),
                             {"t": tensor["t"].reshape(16, 8)},
                             [{"t": g["t"].reshape(16, 8)} for g in grads_seq])
  for x, y in zip(ours, as_matrix):
    np.testing.assert_allclose(x["t"].reshape(16, 8), y["t"], rtol=1e-5, atol=1e-7)
  # Not the rank-3 preconditioner (a root per side), which the old default gave.
  rank3, _ = run_updates(shampoo_optax.shampoo(0.1, max_merged_dim=8, **kwargs), tensor,
                         grads_seq)
  assert np.abs(np.asarray(rank3[-1]["t"]) - np.asarray(ours[-1]["t"])).max() > 1e-3


@pytest.mark.parametrize("shape", [(7, 5), (9, 4, 6), (130, 3, 70), (2, 3, 4, 5)])
def test_blocking_round_trip(rng, shape):
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  plan = blocking.make_plan((shape,), block_size=4, max_merged_dim=4,
                            skip_preconditioning_dim_size_gt=100, exponent_override=None)
  stacks = blocking.to_stacks(plan, [x])
  assert sum(s.shape[0] for s in stacks) == sum(p.num_blocks for p in plan.leaves[0].pieces)
  (back,) = blocking.from_stacks(plan, stacks)
  np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 3, 4, 5)])
def test_block_statistics_and_products_along_every_axis(rng, shape):
  """``blocking.statistic`` (each of its layouts: an outer axis, an inner axis
  batched over the axes before it, an inner axis larger than the axes after
  it) and ``core.along_axes`` (each axis rotated to the front and out last),
  against float64 tensor contractions; a factor missing on one axis falls
  back to one product per factor."""
  blocks = rng.standard_normal((3, *shape))
  x = jnp.asarray(blocks, jnp.float32)
  for axis in range(len(shape)):
    others = [a for a in range(len(shape)) if a != axis]
    want = np.stack([np.tensordot(b, b, (others, others)) for b in blocks])
    np.testing.assert_allclose(blocking.statistic(x, axis), want, rtol=1e-5, atol=1e-5,
                               err_msg=f"axis {axis}")
  mats = [rng.standard_normal((3, d, d)) for d in shape]
  factors = [(a, jnp.asarray(m, jnp.float32)) for a, m in enumerate(mats)]
  for transpose in (True, False):
    for used in (len(shape), len(shape) - 1):  # every axis; the last without a factor
      want = blocks
      for axis, m in enumerate(mats[:used]):  # M^T x (transpose) or M x along the axis
        want = np.stack([reference._along(b, mm, axis, columns=not transpose)
                         for b, mm in zip(want, m)])
      np.testing.assert_allclose(core.along_axes(x, factors[:used], transpose), want,
                                 rtol=1e-4, atol=1e-4,
                                 err_msg=f"transpose={transpose}, factors={used}")


def test_leaf_norms_and_scaled_blocks_without_cutting(rng):
  """Each block's whole-parameter norm summed from the stacks (a parameter's
  remainder pieces lie in other stacks; padding rows get 0), and per-block
  scales applied while putting blocks back, agree with the parameters
  (remainder pieces, 3-D and 4-D blocks, two leaves of one shape sharing a
  stack)."""
  from shampoo_optax.shampoo_transform import _leaf_norms_per_block  # noqa: PLC0415

  shapes = ((7, 5), (9, 4, 6), (130, 3, 70), (2, 3, 4, 5), (7, 5))
  xs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  plan = blocking.make_plan(shapes, block_size=4, max_merged_dim=4,
                            skip_preconditioning_dim_size_gt=100, exponent_override=None)
  stacks = blocking.to_stacks(plan, xs)
  padded = [jnp.concatenate([x, jnp.zeros((1, *x.shape[1:]), x.dtype)]) for x in stacks]
  assert len(stacks) > 1
  for s, norms in enumerate(_leaf_norms_per_block(plan, padded)):
    assert norms.shape == padded[s].shape[:1] + (1,) * (padded[s].ndim - 1)  # broadcasts
    norms = norms.reshape(-1)
    want = np.zeros(padded[s].shape[0], np.float32)
    for t, first, leaf, piece in plan.block_slices():
      n = plan.leaves[leaf].pieces[piece].num_blocks
      if t == s:
        want[first:first + n] = np.linalg.norm(np.asarray(xs[leaf]))
    np.testing.assert_allclose(norms, want, rtol=1e-5)
  scales = [jnp.asarray(rng.uniform(size=b.shape[0]), jnp.float32) for b in stacks]
  got = blocking.from_stacks(plan, stacks, scales)
  want = blocking.from_stacks(plan, [b * s.reshape((-1,) + (1,) * (b.ndim - 1))
                                     for b, s in zip(stacks, scales)])
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-6)
  # Read at offsets computed at run time (as the optimizer does), the same.
  at_runtime = jax.jit(lambda st, sc, c: blocking.from_stacks(plan, st, sc, count=c))
  for count in (0, 9):
    for x, y in zip(at_runtime(stacks, scales, jnp.int32(count)), got):
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("count", [0, 1, 9, -5, np.iinfo(np.int32).max, np.iinfo(np.int32).min])
def test_runtime_offsets_are_the_offsets_for_any_count(count):
  offsets = [0, 3, 17, 1000, 0] + list(range(5, 200, 5))  # several reductions' worth
  got = jax.jit(lambda c: blocking.runtime_offsets(offsets, c))(jnp.int32(count))
  assert [int(x) for x in got] == offsets


def test_conv_kernel_is_preconditioned_as_a_matrix(rng):
  # (3, 3, 8, 16) merges to (72, 16): rows in blocks 4 x 16 + 8, columns 16;
  # the one 8 x 8 statistic shares the 16 x 16 group.
  tx = shampoo_optax.scale_by_shampoo(block_size=16, max_merged_dim=72)
  params = random_tree(rng, {"kernel": (3, 3, 8, 16)})
  state = tx.init(params)
  # One group of 16 x 16 slots: rows and columns of the four 16 x 16 blocks
  # and of the 8 x 16 one, 10 statistics stored in pairs.
  assert [s.triangles.shape for s in state.stats] == [(5, 16, 16)]
  plan = blocking.Layout(16, 72, 4096, 2).plan(jax.tree.leaves(params))
  assert [(g.dim, g.size, len(g.factors)) for g in plan.groups] == [(16, 4 + 4 + 1 + 1, 4)]


# --- Reliability -----------------------------------------------------------


def test_failed_root_keeps_previous_and_is_counted(rng):
  params = random_tree(rng, {"w": (4, 4)})
  tx = shampoo_optax.scale_by_shampoo(
      block_size=4, precondition_every=1, start_preconditioning_step=0
  )
  update = jax.jit(tx.update)
  state = tx.init(params)
  _, state = update(random_tree(rng, {"w": (4, 4)}), state)
  good_roots = quantization.Codec().decode(state.roots[0], 4)
  # One group of 4 x 4 statistics, L and R stored as a pair: L (the upper
  # triangle) made NaN, R still fine.
  (stats,) = state.stats
  assert stats.triangles.shape == (1, 4, 4)
  broken = stats._replace(triangles=stats.triangles.at[0, 0, 0].set(jnp.nan))
  state = state._replace(stats=(broken,))
  updates, state = update(random_tree(rng, {"w": (4, 4)}), state)
  assert np.all(np.isfinite(updates["w"]))
  new_roots = quantization.Codec().decode(state.roots[0], 4)
  np.testing.assert_array_equal(good_roots[0], new_roots[0])
  assert not np.array_equal(good_roots[1], new_roots[1])
  np.testing.assert_array_equal(state.root_failures[0], [1, 0])


def test_root_error_threshold_rejects(rng):
  params = random_tree(rng, {"w": (6, 6)})
  tx = shampoo_optax.scale_by_shampoo(
      block_size=6, precondition_every=1, start_preconditioning_step=0, max_root_error=1e-30
  )
  grads_seq = [random_tree(rng, {"w": (6, 6)}) for _ in range(3)]
  _, state = run_updates(tx, params, grads_seq)
  for roots, failures, errors in zip(state.roots, state.root_failures, state.root_errors):
    roots = quantization.Codec().decode(roots, 6)
    np.testing.assert_array_equal(roots, np.broadcast_to(np.eye(6), roots.shape))
    assert np.all(failures == 3) and np.all(errors > 0)


def test_zero_gradients_give_finite_updates():
  params = {"w": jnp.ones((5, 7)), "b": jnp.ones(7)}
  tx = shampoo_optax.shampoo(1e-3, block_size=4, precondition_every=1, start_preconditioning_step=0)
  ups, (state, *_) = run_updates(tx, params, [jax.tree.map(jnp.zeros_like, params)] * 3)
  for u in ups:
    for leaf in jax.tree.leaves(u):
      np.testing.assert_array_equal(leaf, 0.0)
  assert all(int(f.sum()) == 0 for f in state.root_failures)


@pytest.mark.parametrize("graft", ["adam", "rmsprop", "rmsprop_normalized", "adagrad"])
def test_eps_zero_gives_a_zero_step_where_no_gradient_came(rng, graft):
  """With ``eps=0`` a coordinate that has had no gradient divides 0 by 0: its
  step is 0, not NaN, in the parameters' layout (the vector, and every leaf
  before preconditioning starts) and in block layout (the matrix's column)."""
  mask = {"w": np.ones((6, 5), np.float32), "b": np.ones(7, np.float32)}
  mask["w"][:, 2] = 0
  mask["b"][3] = 0
  grads_seq = [{k: jnp.asarray(rng.standard_normal(m.shape) * m, jnp.float32)
                for k, m in mask.items()} for _ in range(4)]
  tx = shampoo_optax.scale_by_shampoo(block_size=4, eps=0.0, graft=graft,
                                      precondition_every=1, start_preconditioning_step=2)
  ups, _ = run_updates(tx, jax.tree.map(jnp.ones_like, grads_seq[0]), grads_seq)
  for t, u in enumerate(ups):
    for k, m in mask.items():
      assert np.all(np.isfinite(u[k])), (t, k)
      if t < 2 or k == "b":  # the grafting method's own step
        np.testing.assert_array_equal(u[k][m == 0], 0.0)
        assert np.all(u[k][m == 1] != 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_size=0), dict(block_size=-3), dict(block_size=2.5),
        dict(precondition_every=0), dict(start_preconditioning_step=-1),
        dict(b1=-0.1), dict(b1=1.0), dict(b2=1.5), dict(b2=-0.5), dict(eps=-1e-8),
        dict(matrix_eps=-1.0), dict(graft="lion"), dict(root_method="svd"),
        dict(exponent_override=-1), dict(max_root_error=0.0), dict(b1=float("nan")),
        dict(mu_dtype="int32"), dict(statistics_dtype="float16"), dict(orthogonalize=1),
        dict(nesterov="yes"),
    ],
)
def test_invalid_hyperparameters(kwargs):
  with pytest.raises(ValueError):
    shampoo_optax.shampoo(1e-3, **kwargs)


@pytest.mark.parametrize("mu_dtype", [None, "int8"])
def test_mismatched_tree_names_the_leaf(rng, mu_dtype):
  tx = shampoo_optax.shampoo(1e-3, mu_dtype=mu_dtype)
  state = tx.init({"a": jnp.ones((3, 3)), "b": {"c": jnp.ones(2)}})
  with pytest.raises(ValueError, match=r"\['b'\]\['c'\]"):
    tx.update({"a": jnp.ones((3, 3)), "b": {"d": jnp.ones(2)}}, state)
  with pytest.raises(ValueError, match=r"updates\['a'\] has shape \(3, 4\)"):
    tx.update({"a": jnp.ones((3, 4)), "b": {"c": jnp.ones(2)}}, state)
  with pytest.raises(TypeError, match=r"updates\['b'\]\['c'\] has dtype int32"):
    tx.update({"a": jnp.ones((3, 3)), "b": {"c": jnp.ones(2, jnp.int32)}}, state)
  with pytest.raises(TypeError, match=r"params\['n'\]"):
    tx.init({"n": jnp.arange(3)})
  # A leaf where the state has a subtree.
  with pytest.raises(ValueError, match=r"missing leaves \[\"\['b'\]\['c'\]\"\]; "
                     r"unexpected leaves \[\"\['b'\]\"\]"):
    tx.update({"a": jnp.ones((3, 3)), "b": jnp.ones(2)}, state)


def test_a_shape_that_fits_the_same_stacks_names_the_leaf():
  """The moments of preconditioned leaves are kept in padded block stacks, which a
  leaf of another shape can fit: (30, 30) and (30, 32) both take one [32, 32]
  block. The state still records each leaf's shape, and the error names it."""
  tx = shampoo_optax.shampoo(1e-3, block_size=32)
  params = {"a": jnp.ones((30, 30)), "b": jnp.ones((32, 32))}
  state = tx.init(params)
  assert [x.shape for x in state[0].mu.stacks] == [(2, 32, 32)]
  with pytest.raises(ValueError, match=r"updates\['a'\] has shape \(30, 32\) but the "
                     r"optimizer state was initialized for shape \(30, 30\)"):
    tx.update({"a": jnp.ones((30, 32)), "b": jnp.ones((32, 32))}, state)
  with pytest.raises(ValueError, match=r"updates\['a'\] has shape \(32, 30\)"):
    tx.update({"a": jnp.ones((32, 30)), "b": jnp.ones((32, 32))}, state)


def test_nan_step_under_apply_if_finite_keeps_state_usable(rng):
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(6)]
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads_seq[0])
  inner = lambda: shampoo_optax.shampoo(  # noqa: E731
      0.01, block_size=4, precondition_every=2, start_preconditioning_step=1
  )
  clean, _ = run_updates(optax.apply_if_finite(inner(), 5), params, grads_seq)
  with_nan, state = run_updates(optax.apply_if_finite(inner(), 5), params,
                                grads_seq[:3] + [bad] + grads_seq[3:])
  assert int(state.total_notfinite) == 1
  for leaf in jax.tree.leaves(with_nan[3]):
    np.testing.assert_array_equal(leaf, 0.0)
  for a, b in zip(clean, with_nan[:3] + with_nan[4:]):
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


# --- Working with optax, dtypes, compilation -------------------------------


@pytest.mark.parametrize("alias, static_args", [
    (shampoo_optax.shampoo, shampoo_optax.STATIC_ARGS),
    (shampoo_optax.soap, shampoo_optax.SOAP_STATIC_ARGS),
])
def test_inject_hyperparams_matches(rng, alias, static_args):
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(5)]
  # max_merged_dim=4 keeps w3 (3, 4, 5) whole: as the default's 12 x 5 matrix it
  # has 4 x 1 blocks, whose rank-one statistics leave SOAP's eigenbasis free to
  # differ with rounding.
  kwargs = dict(block_size=4, precondition_every=2, start_preconditioning_step=1, b1=0.9,
                b2=0.9, weight_decay=1e-2, max_merged_dim=4)
  injected = optax.inject_hyperparams(alias, static_args=static_args)(
      learning_rate=0.01, **kwargs)
  a, state = run_updates(injected, params, grads_seq)
  b, _ = run_updates(alias(0.01, **kwargs), params, grads_seq)
  for x, y in zip(a, b):
    assert_trees_close(x, y, rtol=1e-6, atol=1e-7)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.01)
  assert float(state.hyperparams["b2"]) == pytest.approx(0.9)


def test_inject_hyperparams_without_static_args_says_what_to_do():
  injected = optax.inject_hyperparams(shampoo_optax.shampoo)(learning_rate=0.01)
  with pytest.raises(ValueError, match="STATIC_ARGS"):
    injected.init({"w": jnp.ones((3, 3))})


def test_schedule_scales_steps(rng):
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(4)]
  schedule = lambda count: 0.1 / (1.0 + jnp.asarray(count, jnp.float32))  # noqa: E731
  a, _ = run_updates(shampoo_optax.shampoo(schedule, block_size=4), params, grads_seq)
  b, _ = run_updates(shampoo_optax.shampoo(1.0, block_size=4), params, grads_seq)
  for t, (x, y) in enumerate(zip(a, b)):
    scaled = optax.tree.scale(schedule(t), y)
    assert_trees_close(x, scaled, rtol=1e-5, atol=1e-8)


def test_weight_decay_is_decoupled_and_masked(rng):
  params = random_tree(rng)
  grads = jax.tree.map(jnp.zeros_like, params)
  mask = {k: k != "b" for k in params}
  tx = shampoo_optax.shampoo(0.1, weight_decay=0.5, mask=mask)
  (updates,), _ = run_updates(tx, params, [grads])
  for k in params:
    want = 0.0 if k == "b" else -0.1 * 0.5 * params[k]
    np.testing.assert_allclose(updates[k], want, rtol=1e-6)


def test_multi_steps_accumulates(rng):
  params = random_tree(rng)
  g1, g2 = random_tree(rng), random_tree(rng)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  # A well-conditioned ridge, so that float rounding in the mean is not amplified.
  make = lambda: shampoo_optax.shampoo(0.01, block_size=4, start_preconditioning_step=0,  # noqa: E731
                                       precondition_every=1, matrix_eps=1e-2)
  # MultiSteps itself mixes int and float, hence strict=False.
  multi, _ = run_updates(optax.MultiSteps(make(), every_k_schedule=2), params, [g1, g2],
                         strict=False)
  single, _ = run_updates(make(), params, [mean])
  assert_trees_close(multi[1], single[0], rtol=1e-5, atol=1e-7)


def test_masked_and_chained(rng):
  params = random_tree(rng)
  grads_seq = [random_tree(rng) for _ in range(3)]
  mask = {k: k in ("w1", "w3") for k in params}
  tx = optax.chain(optax.clip_by_global_norm(1e3), optax.masked(
      shampoo_optax.shampoo(0.01, block_size=4, start_preconditioning_step=1), mask))
  ups, _ = run_updates(tx, params, grads_seq)
  sub = {k: params[k] for k in ("w1", "w3")}
  ref, _ = run_updates(shampoo_optax.shampoo(0.01, block_size=4, start_preconditioning_step=1),
                       sub, [{k: g[k] for k in sub} for g in grads_seq])
  for u, r, g in zip(ups, ref, grads_seq):
    assert_trees_close({k: u[k] for k in sub}, r, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(u["b"], g["b"])  # masked out: passed through


def test_bfloat16_params_keep_dtype(rng):
  params = random_tree(rng, dtype=jnp.bfloat16)
  grads_seq = [random_tree(rng, dtype=jnp.bfloat16) for _ in range(4)]
  tx = shampoo_optax.shampoo(0.01, block_size=4, start_preconditioning_step=1,
                             precondition_every=1)
  ups, state = run_updates(tx, params, grads_seq)
  for leaf in jax.tree.leaves(ups[-1]):
    assert leaf.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(leaf, np.float32)))
  inner = state[0]
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves((inner.stats, inner.roots)))
  new_params = optax.apply_updates(params, ups[-1])
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(new_params))


def test_second_update_does_not_retrace(rng):
  params = random_tree(rng)
  tx = shampoo_optax.shampoo(0.01, block_size=4)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state, random_tree(rng))
  assert len(traces) == 1


def _count_primitives(jaxpr, names):
  """Occurrences of the named primitives in a jaxpr and its sub-jaxprs."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name in names
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(item, "jaxpr", item)
        if hasattr(sub, "eqns"):
          count += _count_primitives(sub, names)
  return count


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_update_is_batched_over_layers(root_method):
  """A deeper model adds no root computations or matmul kernels to the program."""

  def counts(layers):
    params = {f"layer{i}": jnp.ones((16, 16)) for i in range(layers)}
    tx = shampoo_optax.scale_by_shampoo(block_size=16, root_method=root_method)
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(params, state).jaxpr
    return _count_primitives(jaxpr, {"eigh", "while", "dot_general"})

  assert counts(4) == counts(64)


# --- Convergence -----------------------------------------------------------


def _minimize(tx, loss, params, steps):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return loss(params)


def _cosine_decay(lr, steps):
  """optax.cosine_decay_schedule(lr, steps), without its int/float mixing."""
  return lambda count: lr * 0.5 * (
      1.0 + jnp.cos(jnp.pi * jnp.minimum(jnp.asarray(count, jnp.float32), steps) / steps))


def _best_adam(loss, params, steps, lrs, schedule):
  """The lowest final loss of plain optax.adam over a grid of learning rates."""
  with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes int and float
    return min(float(_minimize(optax.adam(schedule(lr)), loss, params, steps)) for lr in lrs)


def test_parabola_converges(rng):
  """A parabola whose Hessian is a Kronecker product of two rotated matrices
  of condition 30: Shampoo's two statistics fit it, Adam's diagonal does not
  (plain optax.adam at the best learning rate of a grid misses the threshold)."""
  n, steps, threshold = 8, 300, 2e-5

  def rotated(cond):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return jnp.asarray((q * np.logspace(0, -np.log10(cond), n)) @ q.T, jnp.float32)

  a, b = rotated(30), rotated(30)
  target = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)

  def loss(p):
    return jnp.sum(jnp.square(a @ (p["w"] - target) @ b)) + jnp.sum(jnp.square(p["b"] + 1.0))

  params = {"w": jnp.zeros((n, n)), "b": jnp.zeros(n)}
  decay = lambda lr: _cosine_decay(lr, steps)  # noqa: E731
  tx = shampoo_optax.shampoo(decay(0.3), block_size=n, start_preconditioning_step=5,
                             precondition_every=5)
  ours = float(_minimize(tx, loss, params, steps))
  adam = _best_adam(loss, params, steps, (1e-2, 3e-2, 1e-1, 3e-1, 1.0), decay)
  assert ours < threshold < adam, (ours, adam)


def test_rosenbrock_converges():
  """Three Rosenbrock valleys, the rows of a (3, 2) parameter: its (2, 2)
  statistic couples x and y along the valley, which Adam's diagonal cannot."""
  def loss(p):
    x, y = p["w"][:, 0], p["w"][:, 1]
    return jnp.sum(jnp.square(1.0 - x) + 100.0 * jnp.square(y - x**2))

  params = {"w": jnp.zeros((3, 2))}
  steps, threshold = 400, 1e-6
  decay = lambda lr: _cosine_decay(lr, steps)  # noqa: E731
  tx = shampoo_optax.shampoo(decay(0.03), block_size=4, start_preconditioning_step=10)
  ours = float(_minimize(tx, loss, params, steps))
  adam = _best_adam(loss, params, steps, (3e-3, 1e-2, 3e-2, 1e-1, 3e-1), decay)
  assert ours < threshold < adam, (ours, adam)


def test_beats_adam_on_kronecker_quadratic(rng):
  """loss = 0.5 tr(E^T A E B), E = W - W*: Shampoo's preconditioner fits it."""
  n = 24
  def ill_conditioned(cond):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return jnp.asarray((q * np.logspace(0, -np.log10(cond), n)) @ q.T, jnp.float32)

  a, b = ill_conditioned(1e3), ill_conditioned(1e3)
  target = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)

  def loss(p):
    e = p["w"] - target
    return 0.5 * jnp.trace(e.T @ a @ e @ b)

  params = {"w": jnp.zeros((n, n))}
  lrs = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
  with jax.numpy_dtype_promotion("standard"):
    adam = min(float(_minimize(optax.adam(lr), loss, params, 300)) for lr in lrs)
  ours = min(
      float(_minimize(
          shampoo_optax.shampoo(lr, block_size=n, b2=0.99, start_preconditioning_step=10,
                                precondition_every=10), loss, params, 300))
      for lr in lrs
  )
  initial = float(loss(params))
  assert ours < 0.1 * adam, (ours, adam, initial)


def test_sharing_a_padded_group_changes_nothing(rng):
  """94 x 94 statistics in 128 x 128 slots, grouped with another leaf's.

  (The padding itself is checked against the NumPy reference, whose 3 x 3
  statistics sit in 4 x 4 slots.)
  """
  shapes = {"a": (94, 128), "b": (128, 128)}
  params = random_tree(rng, shapes)
  grads_seq = [random_tree(rng, shapes) for _ in range(4)]
  kwargs = dict(block_size=128, precondition_every=1, start_preconditioning_step=1)
  together, state = run_updates(shampoo_optax.scale_by_shampoo(**kwargs), params, grads_seq)
  assert [s.triangles.shape for s in state.stats] == [(2, 128, 128)]  # 4 statistics in pairs
  plan = blocking.Layout(128, 128, 4096, 2).plan(jax.tree.leaves(params))
  assert [(g.dim, len(g.factors)) for g in plan.groups] == [(128, 4)]  # one root computation
  for name in shapes:  # each alone, in a group of its own
    alone, _ = run_updates(shampoo_optax.scale_by_shampoo(**kwargs), {name: params[name]},
                           [{name: g[name]} for g in grads_seq])
    # Rounding only: the statistics agree to an ulp (XLA may order each
    # layout's G G^T sums differently), updates of size ~1 to ~4e-6.
    for x, y in zip(together, alone):
      np.testing.assert_allclose(x[name], y[name], rtol=2e-4, atol=1e-5)


JOIN_SHAPES = {"a": (8, 6), "b": (6, 8), "c": (8, 16), "d": (20, 12), "e": (5,)}


def _without_joined_stacks(monkeypatch):
  """Each block shape in a stack of its own (as before stacks were joined)."""
  monkeypatch.setattr(blocking, "_joined_stacks", lambda members, *_: {k: k for k in members})
  blocking.make_plan.cache_clear()


def test_joined_stacks_keep_the_state_layout(rng, monkeypatch):
  """Block shapes whose statistics share slots share one stack of blocks
  padded to the slots' shape; the statistics keep the rows they had with a
  stack per shape, so a saved state means the same."""
  layout = blocking.Layout(8, None, 4096, 2)
  shapes = list(JOIN_SHAPES.values())
  joined = layout.plan_shapes(shapes)
  leaves = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  back = blocking.from_stacks(joined, blocking.to_stacks(joined, leaves))
  for x, y in zip(leaves, back):
    assert y is None or np.array_equal(x, y)
  _without_joined_stacks(monkeypatch)
  apart = layout.plan_shapes(shapes)
  blocking.make_plan.cache_clear()
  # a's 8 x 6 and b's 6 x 8 blocks padded into the 8 x 8 stack (6 x 6 statistics
  # sit in 8 x 8 slots); d's blocks with a side of 4 keep theirs (4 x 4 slots).
  assert [s.block_shape for s in apart.stacks] == [(8, 6), (6, 8), (8, 8), (8, 4), (4, 8),
                                                   (4, 4)]
  assert [s.block_shape for s in joined.stacks] == [(8, 8), (8, 4), (4, 8), (4, 4)]
  assert joined.groups == apart.groups
  fields = lambda f: (f.axis, f.dim, f.size, f.group, f.offset)  # noqa: E731
  assert [fields(f) for f in joined.factors] == [fields(f) for f in apart.factors]


@pytest.mark.parametrize("make", [functools.partial(shampoo_optax.shampoo, 0.1),
                                  shampoo_optax.scale_by_shampoo])
def test_joined_stacks_change_no_result(rng, monkeypatch, make):
  """The same updates and the same state with and without joined stacks, over
  steps that refresh every root (the default staggered schedule). The
  statistics agree to rounding (a padded block's products are summed in
  another order); a ridge keeps roots from amplifying it, as the near-null
  directions of one or two gradients' statistics would."""
  params = random_tree(rng, JOIN_SHAPES)
  grads_seq = [random_tree(rng, JOIN_SHAPES) for _ in range(6)]
  kwargs = dict(block_size=8, precondition_every=2, start_preconditioning_step=3,
                matrix_eps=1e-2)
  blocking.make_plan.cache_clear()
  joined, joined_state = run_updates(make(**kwargs), params, grads_seq)
  _without_joined_stacks(monkeypatch)
  apart, apart_state = run_updates(make(**kwargs), params, grads_seq)
  blocking.make_plan.cache_clear()
  for x, y in zip(joined, apart):
    assert_trees_close(x, y, rtol=1e-4, atol=1e-5)
  # Shampoo's moments are kept in stacks, which joining shapes differently:
  # the same values in another layout (padding holds zeros).
  inner = [s if isinstance(s, shampoo_optax.ShampooState) else s[0]
           for s in (joined_state, apart_state)]
  for field in ("mu", "nu"):
    sums = [sum(float(jnp.sum(jnp.square(x))) for x in getattr(s, field).stacks) for s in inner]
    np.testing.assert_allclose(*sums, rtol=1e-5)
  assert_trees_close(inner[0]._replace(mu=(), nu=()), inner[1]._replace(mu=(), nu=()),
                     rtol=1e-4, atol=1e-5)


def test_transformer_layer_is_one_stack():
  """Issue 12's LM at d_model 512 (flax attention kernels [512, 8, 64] and
  [8, 64, 512], [8, 64] biases, a 96-character vocabulary): the default plan
  has one stack of 128 x 128 blocks, so its update has one batched product per
  side (on a GPU each distinct product is autotuned when the step compiles)."""
  shapes = [(512, 8, 64)] * 3 + [(8, 64)] * 3 + [(8, 64, 512), (512,), (512, 2048), (2048,),
                                                 (2048, 512), (96, 512), (256, 512), (512, 96)]
  plan = blocking.Layout(128, None, 4096, 2).plan_shapes(shapes)
  assert [s.block_shape for s in plan.stacks] == [(128, 128)]
  assert [g.dim for g in plan.groups] == [128]


def _refresh_fields(state):
  """The refreshed part of a Shampoo or SOAP state: roots or bases, errors, failures."""
  inner = state[0]
  names = (("roots", "root_errors", "root_failures") if hasattr(inner, "roots")
           else ("bases", "basis_errors", "basis_failures"))
  return {n: getattr(inner, n) for n in names}


@pytest.mark.parametrize("make", [shampoo_optax.shampoo, shampoo_optax.soap])
@pytest.mark.parametrize("k", [1, 3])
def test_staggered_refresh_writes_nothing_before_its_first_step(rng, make, k, monkeypatch):
  """Without a cond (a GPU's refresh), before a staggered refresh's first step
  (start - k + 1) nothing is written, on it the due rows are: rows not due are
  moved out of range, or masked when every row is due. (Under a cond, a step
  with no row due skips the refresh.)"""
  monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", ("cpu",))
  start = 9
  first = start - k + 1
  tx = make(0.1, block_size=8, precondition_every=k, start_preconditioning_step=start)
  params = random_tree(rng)
  state = tx.init(params)
  update = jax.jit(tx.update)
  initial = _refresh_fields(state)
  for _ in range(first - 1):
    _, state = update(random_tree(rng), state, params)
  jax.tree.map(np.testing.assert_array_equal, _refresh_fields(state), initial)
  _, state = update(random_tree(rng), state, params)
  written = _refresh_fields(state)
  first_field = next(iter(written))
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         written[first_field], initial[first_field])
  assert any(jax.tree.leaves(changed)), f"no {first_field} refreshed at step {first}"


@pytest.mark.parametrize("k, start", [(3, 2), (4, 7), (1, 3)])
def test_staggered_shampoo_with_and_without_cond_agree(rng, monkeypatch, k, start):
  """The staggered refresh under ``jax.lax.cond`` (CPUs, TPUs; checked against
  the float64 reference in test_defaults.py) and without one (GPUs) give the
  same updates: before the first refresh step, through the first cycle, after
  it; rows moved out of range (k > 1) or masked (k = 1)."""
  # Statistics of sizes 4 and 8 (two groups sharing a root computation).
  shapes = {"t": (4, 4, 8), "v": (4, 8)}
  params = random_tree(rng, shapes)
  grads_seq = [random_tree(rng, shapes) for _ in range(start + 2 * k + 1)]
  runs = []
  for platforms in ((), ("cpu",)):  # a CPU's cond, a GPU's none
    monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", platforms)
    tx = shampoo_optax.shampoo(0.1, block_size=8, precondition_every=k,
                               start_preconditioning_step=start)
    runs.append(run_updates(tx, params, grads_seq)[0])
  for t, (a, b) in enumerate(zip(*runs), start=1):
    for name in shapes:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7,
                                 err_msg=f"step {t} {name}")


@pytest.mark.parametrize("make, stagger_flag, on_gpu", [
    (shampoo_optax.shampoo, "stagger_root_refresh", {}),
    # What basis_method="auto" is on GPUs (QR on CPUs, whose first cycle is a cond).
    (shampoo_optax.soap, "stagger_basis_refresh", {"basis_method": "eigh"}),
])
def test_staggered_update_compiles_without_conditionals(rng, make, stagger_flag, on_gpu,
                                                        monkeypatch):
  """With the default (staggered) refresh as compiled for a GPU, the update has
  no ``conditional``: there XLA copies a conditional's predicate to the host
  and waits, so the host cannot queue the next step. On this CPU the refresh
  keeps its conditionals (skipping groups with no row due), and refreshing
  every row every k steps keeps them everywhere (skipping k - 1 steps of k)."""
  params = random_tree(rng, {"w1": (8, 6), "b": (4,)})  # statistics of sizes 4 and 6

  def conditionals(tx):
    compiled = jax.jit(tx.update).lower(params, tx.init(params), params).compile()
    return compiled.as_text().count(" conditional(")

  staggered = lambda: make(0.1, block_size=6, precondition_every=3, **on_gpu)  # noqa: E731
  assert conditionals(staggered()) > 0  # this CPU's choice
  monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", ("cpu",))  # a GPU's
  assert conditionals(staggered()) == 0
  assert conditionals(make(0.1, block_size=6, precondition_every=3,
                           **{stagger_flag: False}, **on_gpu)) > 0


def test_moment_stacks_take_the_widest_dtype_of_their_parameters():
  """A stack of blocks holds several parameters' moments: without mu_dtype it takes
  the widest of their dtypes (bfloat16 parameters alone keep bfloat16 moments, as
  in the parameters' layout); the vectors' moments stay in the tree, in theirs."""
  tx = shampoo_optax.scale_by_shampoo(block_size=8)
  mixed = {"a": jnp.ones((8, 8), jnp.bfloat16), "b": jnp.ones((8, 8)), "v": jnp.ones(8)}
  state = tx.init(mixed)
  assert [x.dtype for x in state.mu.stacks] == [jnp.float32]
  assert [x.dtype for x in state.nu.stacks] == [jnp.float32]
  assert state.mu.tree["v"].dtype == jnp.float32
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), mixed)
  state = tx.init(bf16)
  assert [x.dtype for x in state.mu.stacks] == [jnp.bfloat16]
  updates, new_state = jax.jit(tx.update)(bf16, state)
  assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert state.mu.shapes[0].shape == (8, 8)
  state = shampoo_optax.scale_by_shampoo(block_size=8, mu_dtype=jnp.bfloat16).init(mixed)
  assert [x.dtype for x in state.mu.stacks] == [jnp.bfloat16]


@pytest.mark.parametrize("alias, kw", [
    (shampoo_optax.shampoo, {}),
    (shampoo_optax.shampoo, {"statistics_dtype": "int8"}),
    (shampoo_optax.soap, {}),
], ids=["shampoo", "shampoo-int8", "soap"])
def test_none_in_the_parameters_is_an_empty_subtree(rng, alias, kw):
  """``None`` in the parameters (Equinox's ``eqx.filter(model, eqx.is_array)``
  puts one for each non-array field) is a subtree without leaves, as in optax:
  the steps are those of the same tree without it. The moments' trees hold
  ``None`` for the leaves kept in block stacks too, and the two must not be
  confused (0.5 read them as one: an update raised StopIteration)."""
  shapes = {"a": (6, 5), "b": [(4,), (3, 3)], "c": {"w": (7, 2)}}
  tx = alias(1e-2, block_size=4, precondition_every=2, **kw)
  with_none = lambda t: {"a": t["a"], "bias": None,  # noqa: E731
                         "b": [t["b"][0], None, t["b"][1]], "c": {"w": t["c"]["w"], "n": None}}
  draw = lambda: jax.tree.map(  # noqa: E731
      lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32), shapes,
      is_leaf=lambda x: isinstance(x, tuple))
  params = draw()
  grads_seq = [draw() for _ in range(4)]
  want, want_state = run_updates(tx, params, grads_seq)
  got, got_state = run_updates(tx, with_none(params), [with_none(g) for g in grads_seq])
  for a, b in zip(got, want):
    assert jax.tree.structure(a) == jax.tree.structure(with_none(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_array_equal(x, y)
  # An array where the parameters had None is a mismatch, named.
  bad = with_none(grads_seq[0])
  bad["bias"] = jnp.ones(3)
  with pytest.raises(ValueError, match=r"an array where the parameters had None.*'bias'"):
    tx.update(bad, got_state, with_none(params))
  bad = with_none(grads_seq[0])
  del bad["c"]["n"]
  with pytest.raises(ValueError, match=r"missing leaves \[\"\['c'\]\['n'\]\"\]"):
    tx.update(bad, got_state, with_none(params))
