# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""SOAP: Adam in the eigenbasis of Shampoo's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import shampoo_optax
from shampoo_optax import factor_matrices, quantization
from tests.test_transform import assert_trees_close, random_tree, run_updates

SHAPES = {"w": (12, 8), "v": (8, 6), "b": (6,)}


def test_identity_basis_is_adam(rng):
  """Before any basis is computed, SOAP is optax.adam step for step."""
  params = random_tree(rng, SHAPES)
  grads_seq = [random_tree(rng, SHAPES) for _ in range(6)]
  ours, _ = run_updates(
      shampoo_optax.soap(0.01, b1=0.9, b2=0.99, start_preconditioning_step=1000),
      params, grads_seq)
  theirs, _ = run_updates(optax.adam(0.01, b1=0.9, b2=0.99), params, grads_seq, strict=False)
  for a, b in zip(ours, theirs):
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


def numpy_soap(grads_seq, b1, b2, eps, lr):
  """One (m, n) matrix, one block; after each step its bases are recomputed
  (eigh) from the statistics so far, for the next step, as SOAP does, and the
  second moment is carried into them."""
  out = []
  g0 = np.asarray(grads_seq[0], np.float64)
  m, v = np.zeros_like(g0), np.zeros_like(g0)
  left, right = np.zeros((g0.shape[0],) * 2), np.zeros((g0.shape[1],) * 2)
  ql, qr = np.eye(g0.shape[0]), np.eye(g0.shape[1])
  for t, g in enumerate(grads_seq, start=1):
    g = np.asarray(g, np.float64)
    left = b2 * left + (1 - b2) * g @ g.T
    right = b2 * right + (1 - b2) * g.T @ g
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (ql.T @ g @ qr) ** 2
    step = (ql.T @ m @ qr) / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
    out.append(-lr * ql @ step @ qr.T)
    new_l, new_r = np.linalg.eigh(left)[1], np.linalg.eigh(right)[1]
    # The second moment carried into the new bases (uncorrelated old coordinates).
    v = (new_l.T @ ql) ** 2 @ v @ ((new_r.T @ qr) ** 2).T
    ql, qr = new_l, new_r
  return out


# Under a cond (this CPU's default) and as on a GPU (the cond compiled away).
@pytest.mark.parametrize("platforms", [(), ("cpu",)], ids=["cond", "no-cond"])
def test_matches_numpy_reference(rng, platforms, monkeypatch):
  # (6, 5): after one gradient L has a 1-D null space, whose eigenvector is
  # unique up to sign (a larger null space would have an arbitrary basis, and
  # Adam's elementwise step is not invariant to it).
  monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", platforms)
  shape = {"w": (6, 5)}
  params = random_tree(rng, shape)
  grads_seq = [random_tree(rng, shape) for _ in range(7)]
  tx = shampoo_optax.soap(0.01, b1=0.9, b2=0.95, eps=1e-8, block_size=16,
                          precondition_every=1, basis_method="eigh")
  ours, state = run_updates(tx, params, grads_seq)
  want = numpy_soap([g["w"] for g in grads_seq], 0.9, 0.95, 1e-8, 0.01)
  for t, (got, ref) in enumerate(zip(ours, want)):
    np.testing.assert_allclose(got["w"], ref, rtol=2e-3, atol=2e-6, err_msg=f"step {t + 1}")
  inner = state[0]
  assert all(int(f.sum()) == 0 for f in inner.basis_failures)
  assert all(float(e.max()) < 1e-4 for e in inner.basis_errors)


def test_qr_refinement_keeps_orthonormal_bases(rng):
  params = random_tree(rng, SHAPES)
  grads_seq = [random_tree(rng, SHAPES) for _ in range(12)]
  tx = shampoo_optax.scale_by_soap(block_size=8, precondition_every=2, basis_method="qr")
  ups, state = run_updates(tx, params, grads_seq)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(ups))
  for bases in state.bases:
    d = bases.shape[-1]
    q = quantization.Codec(symmetric=False).decode(bases, d)
    gram = jnp.einsum("nij,nik->njk", q, q)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(d), gram.shape), atol=1e-4)


@pytest.mark.parametrize("method", ["eigh", "qr"])
def test_basis_keeps_padded_coordinates_apart(rng, method):
  """A statistic in a larger slot (zero padding beyond its own size, which a
  compact codec's ridge puts on the whole diagonal) gets a block-diagonal
  basis: an orthonormal basis of its own corner, which with eigh diagonalizes
  the statistic with eigenvalues in descending order, and the identity on the
  padding. The statistics are rank deficient, so that their null space ties
  with the padding (the ridge gives both the same eigenvalue)."""
  from shampoo_optax import soap_transform  # noqa: PLC0415

  slot, own = 16, np.array([16, 12, 12, 9, 6, 5, 5, 1])
  stats, olds = [], []
  for d in own:
    x = rng.standard_normal((d, max(1, d // 2)))
    s = np.zeros((slot, slot))
    s[:d, :d] = x @ x.T
    stats.append(s + 1e-3 * np.eye(slot))  # the ridge, on the padding too
    q = np.eye(slot)
    q[:d, :d] = np.linalg.qr(rng.standard_normal((d, d)))[0]  # an earlier basis
    olds.append(q)
  basis, error, ok = soap_transform._eigenbasis(
      jnp.asarray(np.stack(stats), jnp.float32), jnp.asarray(np.stack(olds), jnp.float32),
      jnp.asarray(own, jnp.int32), 2, jnp.asarray(5), method=method, qr_from=0)
  assert np.all(np.asarray(ok)) and np.all(np.asarray(error) < 1e-4)
  for q, s, d in zip(np.asarray(basis, np.float64), stats, own):
    np.testing.assert_array_equal(q[:d, d:], 0)
    np.testing.assert_array_equal(q[d:, :d], 0)
    np.testing.assert_array_equal(q[d:, d:], np.eye(slot - d))
    corner = q[:d, :d]
    np.testing.assert_allclose(corner.T @ corner, np.eye(d), atol=1e-5)
    if method == "eigh":
      rotated = corner.T @ s[:d, :d] @ corner
      scale = np.abs(s).max()
      np.testing.assert_allclose(rotated - np.diag(np.diag(rotated)), 0, atol=1e-5 * scale)
      assert np.all(np.diff(np.diag(rotated)) <= 1e-5 * scale)  # descending


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_compact_storage_runs(rng, dtype):
  params = random_tree(rng, SHAPES)
  grads_seq = [random_tree(rng, SHAPES) for _ in range(5)]
  ups, _ = run_updates(shampoo_optax.soap(0.01, block_size=8, precondition_every=1,
                                          statistics_dtype=dtype), params, grads_seq)
  ref, _ = run_updates(shampoo_optax.soap(0.01, block_size=8, precondition_every=1),
                       params, grads_seq)
  for k in SHAPES:
    rel = np.linalg.norm(ups[-1][k] - ref[-1][k]) / np.linalg.norm(ref[-1][k])
    assert rel < (0.15 if dtype == "bfloat16" else 0.25), (k, rel)


def _cosine_decay(lr, steps):
  """optax.cosine_decay_schedule(lr, steps), without its int/float mixing."""
  return lambda count: lr * 0.5 * (
      1.0 + jnp.cos(jnp.pi * jnp.minimum(jnp.asarray(count, jnp.float32), steps) / steps))


def test_soap_trains_a_quadratic(rng):
  """Least squares on correlated inputs (their mixing matrix rotated, of
  condition 300): SOAP's eigenbasis decorrelates them, Adam's diagonal cannot
  (plain optax.adam at the best learning rate of a grid misses the threshold)."""
  q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
  x = jnp.asarray((q * np.logspace(0, -np.log10(300), 4)) @ q.T @ rng.standard_normal((4, 32)),
                  jnp.float32)
  y = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32) @ x

  def loss(p):
    return jnp.mean(jnp.square(p["w"] @ x - y))

  steps, threshold = 300, 1e-6
  decay = lambda lr: _cosine_decay(lr, steps)  # noqa: E731

  def minimize(tx):
    params, state = {"w": jnp.zeros((6, 4))}, tx.init({"w": jnp.zeros((6, 4))})

    @jax.jit
    def step(params, state):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
      params, state = step(params, state)
    return float(loss(params))

  ours = minimize(shampoo_optax.soap(decay(0.1), block_size=8))
  with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes int and float
    adam = min(minimize(optax.adam(decay(lr))) for lr in (1e-2, 3e-2, 1e-1, 3e-1, 1.0))
  assert ours < threshold < adam, (ours, adam)


def test_invalid_arguments():
  with pytest.raises(ValueError):
    shampoo_optax.soap(1e-3, basis_method="svd")
  with pytest.raises(ValueError):
    shampoo_optax.soap(1e-3, b2=1.0)
  with pytest.raises(ValueError, match="orthogonalize must be True or False"):
    shampoo_optax.soap(1e-3, orthogonalize="yes")


# A staggered refresh under a cond (CPUs, TPUs) and as on a GPU (the cond
# compiled away); every row every k steps always has its cond.
@pytest.mark.parametrize("stagger, platforms", [(True, ()), (True, ("cpu",)), (False, ("cpu",))])
def test_second_moment_carried_into_refreshed_bases_only(rng, stagger, platforms, monkeypatch):
  """The refresh's per-row rotation maps and the gather/scatter of the
  refreshed blocks' second moments, against a plain loop over every block:
  blocks whose basis is due and changed get ``(P * P) v`` along that axis
  (``P = Q_new^T Q_old``), all others keep ``v`` exactly."""
  from shampoo_optax import blocking, soap_transform  # noqa: PLC0415
  from shampoo_optax import sharding as sharding_lib  # noqa: PLC0415

  monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", platforms)

  leaves = [jnp.zeros(s) for s in [(12, 8), (8, 8), (3, 8, 4), (20, 6)]]
  plan = soap_transform.block_layout(4, 4, 4096).plan(leaves)
  # A block side of 3, with its statistics in slots of 4: its maps are cut to
  # the block's corner.
  assert any(f.dim < plan.groups[f.group].dim for f in plan.factors)
  schedule = factor_matrices.Schedule(every=3, start=0, stagger=stagger)
  codec, stats_codec = quantization.Codec(symmetric=False), quantization.Codec()

  def orthogonal(n, d):
    return np.linalg.qr(rng.standard_normal((n, d, d)))[0]

  # The new basis of a row is its old one turned by a fixed rotation R (not
  # symmetric, so a transposed map would be caught); rows whose statistics are
  # still zero keep theirs (no gradient has reached them).
  turn = {g.dim: orthogonal(1, g.dim)[0] for g in plan.groups}
  old, stats, seen = [], [], []
  for g in plan.groups:
    old.append(codec.encode(jnp.asarray(orthogonal(g.padded_size, g.dim), jnp.float32)))
    x = rng.standard_normal((g.padded_size, g.dim, g.dim))
    nonzero = rng.uniform(size=g.padded_size) < 0.7
    seen.append(nonzero)
    stats.append(stats_codec.encode(jnp.asarray(
        (x @ np.swapaxes(x, -1, -2)) * nonzero[:, None, None], jnp.float32)))

  slot_of = {f.dim: plan.groups[f.group].dim for f in plan.factors}

  def compute(s, q, own, exponent, count):
    # Each row's slot turned by its group's rotation; a group padded into a larger one's
    # computation keeps its slot apart, as factor_matrices.Compute asks.
    del s, exponent, count
    size = q.shape[-1]
    turns = 0
    for d, slot in slot_of.items():
      padded = np.eye(size)
      padded[:slot, :slot] = turn[slot]
      turns = turns + jnp.where((own == d)[:, None, None], jnp.asarray(padded, jnp.float32), 0.0)
    new = jnp.einsum("zij,zjk->zik", q, turns, precision=jax.lax.Precision.HIGHEST)
    return new, jnp.zeros(q.shape[:1]), jnp.ones(q.shape[:1], bool)

  nu = [jnp.asarray(rng.uniform(size=x.shape), jnp.float32) for x in leaves]
  stacks = blocking.to_stacks(plan, nu, jnp.float32)
  carried = kept = 0
  for count in range(1, 5):
    groups = (tuple(jnp.zeros(codec.num_matrices(o)) for o in old),
              tuple(jnp.zeros(codec.num_matrices(o), jnp.int32) for o in old))
    *_, changes = factor_matrices.refresh(
        plan, tuple(stats), tuple(old), *groups, jnp.asarray(count), compute=compute,
        schedule=schedule, block_sharding=sharding_lib.BlockSharding(), codec=stats_codec,
        precond_codec=codec, change=soap_transform._rotation_map)
    got = soap_transform._carry_second_moment(plan, {"nu": stacks}, changes,
                                              jnp.asarray(count), staggered=stagger)["nu"]
    for stack, before, after in zip(plan.stacks, stacks, got):
      want = np.array(before)
      for axis, index in stack.factors:
        f = plan.factors[index]
        g = plan.groups[f.group]
        rows, due = factor_matrices.due_rows(schedule, jnp.asarray(count), g.padded_size)
        due_rows = {int(r) for r, d in zip(rows, due) if d}
        q_old = np.asarray(codec.decode(old[f.group], g.dim), np.float64)
        for z in range(f.size):  # the factor's blocks, from block f.start of the stack
          r = f.offset + z
          if r in due_rows and seen[f.group][r]:
            d = stack.block_shape[axis]
            p2 = (((q_old[r] @ turn[g.dim]).T @ q_old[r]) ** 2)[:d, :d]
            want[f.start + z] = np.moveaxis(
                np.tensordot(p2, want[f.start + z], axes=([1], [axis])), 0, axis)
      np.testing.assert_allclose(np.asarray(after), want, rtol=1e-5, atol=1e-6)
      moved = np.any(np.asarray(after) != np.asarray(before), axis=tuple(range(1, want.ndim)))
      carried += int(moved.sum())
      kept += int((~moved).sum())
  assert carried > 0 and kept > 0, (carried, kept)  # both cases were exercised


def test_carried_second_moment_keeps_small_values():
  """A refresh that swaps two eigenvectors swaps their second moments, exactly,
  even when one is 1e-12 of the other (a cancellation there would leave a zero
  second moment and a step of m / eps)."""
  tx = shampoo_optax.scale_by_soap(block_size=2, b2=0.9, precondition_every=1,
                                   basis_method="eigh")
  params = {"w": jnp.zeros((2, 2))}
  state = tx.init(params)
  assert [s.triangles.shape for s in state.stats] == [(1, 2, 2)]  # L and R as a pair
  swap = jnp.asarray([[[0.0, 1.0], [1.0, 0.0]]] * 2)  # the current bases of L and R
  nu = jnp.asarray([[1e-12, 1e-12], [1.0, 1.0]])
  stats = quantization.Codec().encode(
      jnp.asarray([np.diag([2.0, 1.0])] * 2, jnp.float32))  # the basis, descending, is I
  assert state.nu.stacks[0].shape == (1, 2, 2)  # w's one block
  state = state._replace(count=jnp.asarray(5, jnp.int32), nu=state.nu._replace(stacks=(nu[None],)),
                         stats=(stats,), bases=(swap,))
  _, state = jax.jit(tx.update)({"w": jnp.zeros((2, 2))}, state)
  np.testing.assert_array_equal(state.bases[0], np.broadcast_to(np.eye(2), (2, 2, 2)))
  want = 0.9 * np.asarray([[1.0, 1.0], [1e-12, 1e-12]], np.float32)
  np.testing.assert_allclose(state.nu.stacks[0][0], want, rtol=1e-6)


def test_staggered_refresh_with_and_without_cond_agree(rng, monkeypatch):
  """SOAP's staggered refresh and second-moment carry give the same updates
  under ``jax.lax.cond`` (CPUs, TPUs) and without it (GPUs), through the steps
  before the first refresh, the first cycle (eigh) and later ones."""
  shapes = {"b": (6,), "m": (12, 8), "t": (3, 8, 4)}
  params = random_tree(rng, shapes)
  grads_seq = [random_tree(rng, shapes) for _ in range(12)]
  runs = []
  for platforms in ((), ("cpu",)):  # a CPU's cond, a GPU's none
    monkeypatch.setattr(factor_matrices, "UNCONDITIONAL_PLATFORMS", platforms)
    tx = shampoo_optax.soap(0.01, block_size=4, precondition_every=3,
                            start_preconditioning_step=5)
    runs.append(run_updates(tx, params, grads_seq)[0])
  for t, (a, b) in enumerate(zip(*runs), start=1):
    for k in shapes:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=f"step {t} {k}")
