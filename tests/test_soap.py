# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""SOAP: Adam in the eigenbasis of Shampoo's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import shampoo_optax
from shampoo_optax import quantization
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
  (eigh) from the statistics so far, for the next step, as SOAP does."""
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
    ql, qr = np.linalg.eigh(left)[1], np.linalg.eigh(right)[1]
  return out


def test_matches_numpy_reference(rng):
  # (6, 5): after one gradient L has a 1-D null space, whose eigenvector is
  # unique up to sign (a larger null space would have an arbitrary basis, and
  # Adam's elementwise step is not invariant to it).
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
  for group, bases in zip(state.stats, state.bases):
    del group
    d = int(np.sqrt(bases.shape[1]))
    q = quantization.Codec(symmetric=False).decode(bases, d)
    gram = jnp.einsum("nij,nik->njk", q, q)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(d), gram.shape), atol=1e-4)


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


def test_soap_trains_a_quadratic():
  def loss(p):
    return jnp.sum(jnp.square(p["w"] @ jnp.arange(1.0, 5.0) - 1.0))

  params = {"w": jnp.zeros((6, 4))}
  tx = shampoo_optax.soap(0.05, block_size=8)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(400):
    params, state = step(params, state)
  assert float(loss(params)) < 1e-3


def test_invalid_arguments():
  with pytest.raises(ValueError):
    shampoo_optax.soap(1e-3, basis_method="svd")
  with pytest.raises(ValueError):
    shampoo_optax.soap(1e-3, b2=1.0)
