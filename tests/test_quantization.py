# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Compact storage of statistics and roots: accuracy and memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import shampoo_optax
from shampoo_optax import blocking, factor_matrices, moments, quantization


def random_psd(rng, n, d):
  g = rng.standard_normal((n, d, 2 * d))
  return jnp.asarray(g @ g.transpose(0, 2, 1) / d, jnp.float32)


@pytest.mark.parametrize("symmetric", [True, False])
def test_float32_round_trip_is_exact(rng, symmetric):
  x = random_psd(rng, 4, 7)
  if not symmetric:
    x = x + jnp.asarray(rng.standard_normal((4, 7, 7)), jnp.float32)
  codec = quantization.Codec("float32", symmetric)
  stored = codec.encode(x)
  # Symmetric: two matrices per 7 x 7 array and 7-vector (half of the full storage).
  shapes = [x.shape for x in jax.tree.leaves(stored)]
  assert shapes == ([(2, 7, 7), (2, 7)] if symmetric else [(4, 7, 7)])
  assert codec.num_matrices(stored) == 4
  np.testing.assert_array_equal(codec.decode(stored, 7), x)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_take_and_put_rows_touch_only_those_rows(rng, dtype):
  """Rows read and written by pairs (2j, 2j + 1), as the refresh schedule
  gives them; the other pairs keep every entry, their diagonals included."""
  d = 5
  x = random_psd(rng, 8, d)
  codec = quantization.Codec(dtype)
  stored = codec.encode(x)
  exact = codec.decode(stored, d)
  rows = jnp.asarray([2, 3, 6, 7, 10, 11])  # 10, 11 are out of range: dropped, read as zeros
  taken = codec.take_rows(stored, rows, d)
  np.testing.assert_array_equal(taken[:4], exact[jnp.asarray([2, 3, 6, 7])])
  np.testing.assert_array_equal(taken[4:], np.zeros((2, d, d)))
  new = random_psd(rng, 6, d)
  back = codec.decode(codec.put_rows(stored, rows, new), d)
  tol = 0 if dtype == "float32" else 1e-2 * float(jnp.max(jnp.abs(new)))
  np.testing.assert_allclose(back[jnp.asarray([2, 3, 6, 7])], new[:4], atol=tol)
  for r in (0, 1, 4, 5):
    np.testing.assert_array_equal(back[r], exact[r])


def test_due_rows_come_in_pairs_and_cover_every_row_once_per_cycle():
  """Staggered: each step's rows are whole pairs; over k steps every row is due
  exactly once, wherever a device's rows start (row_offset)."""
  schedule = factor_matrices.Schedule(every=3, start=5, stagger=True)
  n = 10
  for offset in (0, 10, 20):
    seen = []
    for t in range(schedule.first_step(), schedule.first_step() + 3):
      rows, due = factor_matrices.due_rows(schedule, jnp.asarray(t), n, offset)
      rows = [int(r) for r, d in zip(rows, due) if d]
      assert all(r % 2 == 0 and r + 1 in rows for r in rows[0::2]), rows
      # The pair index, global, is due at t - t0 (mod k).
      assert all(((offset + r) // 2 - (t - schedule.first_step())) % 3 == 0 for r in rows)
      seen += rows
    assert sorted(seen) == list(range(n)), (offset, seen)


def test_paired_accumulate_is_the_update_in_stored_form(rng):
  codec = quantization.Codec("float32")
  old, new = random_psd(rng, 4, 6), random_psd(rng, 4, 6)
  got = codec.decode(codec.accumulate(codec.encode(old), new, 0.9, 0.1, 6), 6)
  np.testing.assert_allclose(got, 0.9 * old + 0.1 * new, rtol=1e-6)


def test_bfloat16_round_trip(rng):
  x = random_psd(rng, 4, 16)
  back = quantization.Codec("bfloat16").decode(quantization.Codec("bfloat16").encode(x), 16)
  np.testing.assert_allclose(back, x, rtol=1e-2, atol=1e-2 * float(jnp.max(jnp.abs(x))))


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_round_trip(rng, symmetric):
  x = random_psd(rng, 4, 32)
  codec = quantization.Codec("int8", symmetric)
  stored = codec.encode(x)
  assert stored.values.dtype == jnp.int8
  back = codec.decode(stored, 32)
  np.testing.assert_array_equal(jnp.diagonal(back, axis1=1, axis2=2),
                                jnp.diagonal(x, axis1=1, axis2=2))  # exact diagonal
  off = np.where(np.eye(32, dtype=bool), 0, np.abs(np.asarray(x)))
  scale = off.max(axis=2) / 127  # [n, row]
  if symmetric:  # entry (i, j) is stored in row min(i, j) of the triangle
    rows = np.minimum(*np.indices((32, 32)))
    bound = 0.5 * scale[:, rows]
  else:
    bound = 0.5 * scale[:, :, None]
  assert np.all(np.abs(np.asarray(back) - np.asarray(x)) <= bound + 1e-6)
  if symmetric:
    np.testing.assert_array_equal(back, jnp.swapaxes(back, 1, 2))


def transformer_like_params(rng, d=128, layers=4, vocab=96):
  params = {"embed": (vocab, d), "head": (d, vocab), "ln_f": (d,)}
  for i in range(layers):
    params |= {f"l{i}_q": (d, 4, d // 4), f"l{i}_k": (d, 4, d // 4), f"l{i}_v": (d, 4, d // 4),
               f"l{i}_o": (4, d // 4, d), f"l{i}_up": (d, 4 * d), f"l{i}_down": (4 * d, d),
               f"l{i}_up_b": (4 * d,), f"l{i}_ln": (d,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in params.items()}


def state_bytes(tx, params):
  return sum(x.size * x.dtype.itemsize
             for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def test_state_memory_targets(rng):
  params = transformer_like_params(rng)
  adamw = state_bytes(optax.adamw(1e-3), params)
  f32 = state_bytes(shampoo_optax.shampoo(1e-3), params)
  bf16 = state_bytes(shampoo_optax.shampoo(1e-3, statistics_dtype="bfloat16"), params)
  int8 = state_bytes(shampoo_optax.shampoo(1e-3, statistics_dtype="int8"), params)
  assert f32 <= 2.5 * adamw, f32 / adamw
  assert bf16 <= 0.65 * f32, bf16 / f32
  # int8: 16-bit statistics (see shampoo_optax/quantization.py), int8 roots
  # and first moment, bfloat16 second moment: 0.394x here.
  assert int8 <= 0.4 * f32, int8 / f32


def ill_conditioned(rng, shape):
  """A gradient with singular values spread over three decades (statistics: six)."""
  if len(shape) == 1:
    return rng.standard_normal(shape)
  m, n = shape
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal((m, k)))[0]
  v = np.linalg.qr(rng.standard_normal((n, k)))[0]
  return (u * (np.logspace(0, -3, k) * rng.uniform(0.5, 1.5, k))) @ v.T


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_compact_statistics_stay_close_to_float32(rng, dtype):
  shapes = {"w": (64, 48), "v": (48, 32), "b": (32,)}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads_seq = [{k: jnp.asarray(ill_conditioned(rng, s), jnp.float32) for k, s in shapes.items()}
               for _ in range(24)]
  kwargs = dict(block_size=64, precondition_every=2, start_preconditioning_step=2, b2=0.95)

  def run(**extra):
    tx = shampoo_optax.scale_by_shampoo(**kwargs, **extra)
    state, update = tx.init(params), jax.jit(tx.update)
    for grads in grads_seq:
      updates, state = update(grads, state)
    return updates, state

  reference, _ = run()
  compact, state = run(statistics_dtype=dtype)
  # Quantized statistics are slightly indefinite; without the rounding-noise
  # ridge some of these roots are rejected.
  assert all(int(f.sum()) == 0 for f in state.root_failures)
  # int8 also stores the first moment in 8 bits (measured: 0.025 on "w"; bfloat16 0.006).
  tolerance = {"bfloat16": 0.02, "int8": 0.04}[dtype]
  for k in shapes:
    rel = np.linalg.norm(compact[k] - reference[k]) / np.linalg.norm(reference[k])
    assert rel < tolerance, (k, rel)
  assert all(quantization.stored_dtype(s) == "int16" for s in state.stats)
  assert all(quantization.stored_dtype(r) == dtype for r in state.roots)
  plan = blocking.Layout(64, None, 4096, 2).plan_shapes([shapes[k] for k in sorted(shapes)])
  if dtype == "int8":
    # The preconditioned leaves' first moments in stacks of blocks, int8 with a
    # scale per row of each block; the others' in the tree, as before.
    for m, st in zip(state.mu.stacks, plan.stacks):
      assert isinstance(m, quantization.QuantizedArray)
      assert m.values.dtype == jnp.int8 and m.values.shape == (st.size, *st.block_shape)
      assert m.scales.dtype == jnp.float32 and m.scales.shape == m.values.shape[:-1] + (1,)
    for (k, m), lp in zip(sorted(state.mu.tree.items()), plan.leaves):
      if lp.is_preconditioned:
        assert moments.is_placeholder(m), k
      else:
        assert m.dtype == jnp.bfloat16, k
  assert all(n.dtype == jnp.bfloat16 for n in state.nu.stacks)
  assert all(state.nu.tree[k].dtype == jnp.bfloat16
             for k, lp in zip(sorted(shapes), plan.leaves) if not lp.is_preconditioned)


def test_rounding_noise_bounds_the_storage_error(rng):
  for dtype in ("bfloat16", "int8", "int16"):
    codec = quantization.Codec(dtype)
    for d in (8, 64):
      a = jnp.asarray(np.stack([(lambda x: x @ x.T)(rng.standard_normal((d, d)) * rng.uniform(
          1e-3, 1e3)) for _ in range(4)]), jnp.float32)
      stored = codec.encode(a, jax.random.key(d))
      full = codec.decode(stored, d)
      error = np.linalg.norm(np.asarray(full, np.float64) - np.asarray(a, np.float64), ord=2,
                             axis=(-2, -1))
      bound = np.asarray(codec.rounding_noise(stored, full))
      assert np.all(error <= bound), (dtype, d, error, bound)
      assert np.all(bound <= 100 * error), (dtype, d, error, bound)  # not vacuous


def test_unknown_statistics_dtype():
  with pytest.raises(ValueError, match="statistics_dtype"):
    shampoo_optax.shampoo(1e-3, statistics_dtype="float16")


def test_quantize_rows_round_trip_and_unbiased(rng):
  # Rows of very different magnitudes, one all zero.
  x = rng.standard_normal((6, 40)) * np.logspace(-6, 3, 6)[:, None]
  x[2] = 0
  x = jnp.asarray(x, jnp.float32)
  q = quantization.quantize_rows(x)
  assert q.values.dtype == jnp.int8 and q.values.shape == x.shape
  assert q.scales.shape == (6, 1)
  scale = np.asarray(q.scales)
  error = np.abs(np.asarray(quantization.dequantize_rows(q)) - np.asarray(x))
  assert np.all(error <= 0.5 * scale * (1 + 1e-5)), (error / np.maximum(scale, 1e-30)).max()
  assert np.all(np.asarray(quantization.dequantize_rows(q))[2] == 0)
  # Stochastic rounding: within one step of the grid, and right on average.
  draws = jax.vmap(lambda k: quantization.dequantize_rows(quantization.quantize_rows(x, k)))(
      jax.random.split(jax.random.key(0), 2000))
  assert np.all(np.abs(np.asarray(draws) - np.asarray(x)) <= scale * (1 + 1e-5))
  bias = np.abs(np.asarray(draws).mean(0) - np.asarray(x))
  assert np.all(bias <= 0.1 * scale), (bias / np.maximum(scale, 1e-30)).max()


def test_int8_first_moment_keeps_small_entries():
  """A constant gradient whose entries are far below their row's largest: the
  stochastically rounded int8 first moment converges to it; rounded to nearest
  it would stay at zero (checked here too, so that the test can fail)."""
  g = np.full((4, 512), 1e-3, np.float32)
  g[:, 0] = 1.0  # the row's largest: one int8 step is 1/127
  params = {"w": jnp.zeros(g.shape)}
  tx = shampoo_optax.scale_by_shampoo(statistics_dtype="int8", start_preconditioning_step=1000,
                                      precondition_every=1000, b1=0.9)
  state, update = tx.init(params), jax.jit(tx.update)
  means, nearest = [], quantization.quantize_rows(jnp.zeros(g.shape))
  for t in range(80):
    _, state = update({"w": jnp.asarray(g)}, state)
    # "w" is preconditioned: its first moment is the stack of its four
    # [4, 128] blocks, put back here in the parameter's layout.
    stack = quantization.dequantize_rows(state.mu.stacks[0])
    m = np.asarray(jnp.concatenate(list(stack), axis=1))
    if t >= 40:
      means.append(m[:, 1:].mean())
    nearest = quantization.quantize_rows(
        0.9 * quantization.dequantize_rows(nearest) + 0.1 * jnp.asarray(g))
  assert abs(np.mean(means) - 1e-3) < 1e-4, np.mean(means)
  assert np.all(np.asarray(quantization.dequantize_rows(nearest))[:, 1:] == 0)
  assert np.allclose(m[:, 0], 1.0, rtol=1e-2)


def test_statistics_paired_from_parts_of_any_parity(rng):
  """The accumulation pairs row 2j with 2j + 1 from strided slices of each
  stack's contribution (no concatenation): parts of odd sizes start at odd
  rows, and the rows past the last part are zeros."""
  codec = quantization.Codec("float32")
  d = 6
  for sizes, rows in (((3, 1, 2, 5), 12), ((1,), 2), ((2, 3), 8), ((5, 1, 1), 8)):
    parts = []
    for n in sizes:
      x = rng.standard_normal((n, d, d)).astype(np.float32)
      parts.append(jnp.asarray(x + np.swapaxes(x, -1, -2)))
    paired = factor_matrices._split_pairs(parts, rows)
    expected = np.concatenate([np.asarray(p) for p in parts])
    expected = np.concatenate([expected, np.zeros((rows - len(expected), d, d), np.float32)])
    np.testing.assert_array_equal(np.asarray(codec.decode(paired, d)), expected)
    old = codec.encode(jnp.asarray(expected[::-1].copy()))
    np.testing.assert_allclose(
        np.asarray(codec.decode(codec.accumulate(old, paired, 0.9, 0.1, d), d)),
        0.9 * expected[::-1] + 0.1 * expected, rtol=1e-6, atol=1e-6)
