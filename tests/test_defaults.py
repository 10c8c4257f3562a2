# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The defaults against an independent float64 reference (tests/reference.py).

The optimizers are built with their defaults and only the layout set
(``block_size``, a short ``precondition_every``); the reference is given the
documented default values. A changed default, a wrong refresh schedule, or a
mistake in the paths only the defaults take (staggered refreshes, the first
preconditioned steps before every root exists, Newton roots on accelerators)
shows up as a difference in the updates, step by step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shampoo_optax
from shampoo_optax import blocking, factor_matrices, moments, soap_transform
from tests import reference

# Documented defaults of shampoo() (what the reference is told; the optimizer is not).
DEFAULTS = dict(b1=0.9, b2=0.95, eps=1e-8, matrix_eps=1e-4, start_preconditioning_step=2,
                exponent_override=2)
LR = 0.1

# block_size 8. By default a tensor of rank 3 or more is preconditioned as the
# most nearly square matrix its dimensions make: t (4, 4, 8) as (16, 8), two
# 8 x 8 blocks. Statistics of size 4 (v's rows, w's columns) and of size 8
# (t's rows and columns, v's columns, w's rows of its two 8 x 4 blocks): two
# groups, each refreshed a few rows at a time. Each leaf's blocks have a shape
# of their own, as the reference assumes.
SHAPES = {"b": (8,), "t": (4, 4, 8), "v": (4, 8), "w": (16, 4)}
# What the reference is given: the shapes the default preconditions.
AS_MATRICES = {"t": (16, 8)}


def _tree(rng, shapes):
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _run(tx, params, grads_seq):
  """Every step's updates, and the state after the last."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    out.append(updates)
  return out, state


def _updates(tx, params, grads_seq):
  return _run(tx, params, grads_seq)[0]


def _reference_shapes(shapes):
  """The shapes the reference is given: each leaf as the default preconditions it."""
  return [AS_MATRICES.get(k, s) for k, s in shapes.items()]


def _compare(ours, ref, grads_seq, shapes, rtol=5e-4, atol=1e-5):
  names = list(shapes)  # sorted: the tree order
  assert names == sorted(names)
  views = _reference_shapes(shapes)
  for t, (grads, got) in enumerate(zip(grads_seq, ours), start=1):
    want = ref.step([np.reshape(grads[k], v) for k, v in zip(names, views)])
    for name, w in zip(names, want):
      np.testing.assert_allclose(got[name], np.reshape(w, shapes[name]), rtol=rtol, atol=atol,
                                 err_msg=f"step {t} {name}")


@pytest.mark.parametrize("k", [3, 4])
def test_default_shampoo_matches_staggered_reference(rng, k):
  """Staggered refreshes (the default) with k = 3, 4 and the default start 2:
  rows are refreshed from step max(1, 3 - k) on, and until a statistic's first
  refresh its root is the identity (with k = 4, some blocks start their
  preconditioned steps at step 3 with momentum rescaled to Adam's norm)."""
  params = _tree(rng, SHAPES)
  grads_seq = [_tree(rng, SHAPES) for _ in range(3 * k)]
  tx = shampoo_optax.shampoo(LR, block_size=8, precondition_every=k)
  ref = reference.NumpyShampoo(_reference_shapes(SHAPES), block_size=8, precondition_every=k,
                               learning_rate=LR, stagger=True, **DEFAULTS)
  _compare(_updates(tx, params, grads_seq), ref, grads_seq, SHAPES)


# Ten statistics of size 8 (a's five 8 x 8 blocks) and two of size 4 (b): two
# groups, whose due statistics share one root computation, b's zero-padded to 8.
SHARED_SHAPES = {"a": (8, 40), "b": (4, 4)}


@pytest.mark.parametrize("stagger", [True, False])
def test_groups_sharing_a_root_computation_match_reference(rng, stagger):
  """Roots of two sizes computed together (the smaller zero-padded, the result
  cut back) are each group's own roots, refreshed on each group's schedule."""
  plan = blocking.Layout(8, 8, 4096, 2, 1).plan_shapes(list(SHARED_SHAPES.values()))
  assert [(g.dim, g.padded_size) for g in plan.groups] == [(8, 10), (4, 2)]
  assert factor_matrices.shared_computations(plan.groups) == [[0, 1]]
  params = _tree(rng, SHARED_SHAPES)
  grads_seq = [_tree(rng, SHARED_SHAPES) for _ in range(9)]
  tx = shampoo_optax.shampoo(LR, block_size=8, precondition_every=3,
                             stagger_root_refresh=stagger)
  ref = reference.NumpyShampoo(_reference_shapes(SHARED_SHAPES), block_size=8, precondition_every=3,
                               learning_rate=LR, stagger=stagger, **DEFAULTS)
  _compare(_updates(tx, params, grads_seq), ref, grads_seq, SHARED_SHAPES)


def test_newton_roots_match_eigh_roots_in_the_optimizer(rng):
  """'newton' (the default on accelerators) and 'eigh' (on CPU) give the same
  updates, step after step, on statistics a ridge keeps well-conditioned."""
  params = _tree(rng, SHAPES)
  grads_seq = [_tree(rng, SHAPES) for _ in range(8)]
  kwargs = dict(block_size=8, precondition_every=2, matrix_eps=1e-2)
  newton = _updates(shampoo_optax.shampoo(LR, root_method="newton", **kwargs), params, grads_seq)
  eigh = _updates(shampoo_optax.shampoo(LR, root_method="eigh", **kwargs), params, grads_seq)
  for t, (a, b) in enumerate(zip(newton, eigh), start=1):
    for name in SHAPES:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6,
                                 err_msg=f"step {t} {name}")


def test_one_sided_blocks_match_reference(rng):
  """A dimension above skip_preconditioning_dim_size_gt is not split and gets
  no statistic: (16, 40) is two (8, 40) blocks preconditioned on the left only,
  each grafted to its own Adam norm; (40, 8) one block, on the right only."""
  shapes = {"a": (16, 40), "c": (40, 8)}
  params = _tree(rng, shapes)
  grads_seq = [_tree(rng, shapes) for _ in range(9)]
  tx = shampoo_optax.shampoo(LR, block_size=8, precondition_every=3,
                             skip_preconditioning_dim_size_gt=32)
  ref = reference.NumpyShampoo(_reference_shapes(shapes), block_size=8, precondition_every=3,
                               learning_rate=LR, stagger=True,
                               skip_preconditioning_dim_size_gt=32, **DEFAULTS)
  _compare(_updates(tx, params, grads_seq), ref, grads_seq, shapes)


def test_nesterov_after_preconditioning_starts_matches_reference(rng):
  """optax.adam's Nesterov momentum, in the graft and in the preconditioned
  direction alike."""
  params = _tree(rng, SHAPES)
  grads_seq = [_tree(rng, SHAPES) for _ in range(9)]
  tx = shampoo_optax.shampoo(LR, block_size=8, precondition_every=3, nesterov=True)
  ref = reference.NumpyShampoo(_reference_shapes(SHAPES), block_size=8, precondition_every=3,
                               learning_rate=LR, stagger=True, nesterov=True, **DEFAULTS)
  _compare(_updates(tx, params, grads_seq), ref, grads_seq, SHAPES, atol=3e-5)


def test_soap_qr_refresh_matches_reference(rng):
  """basis_method='qr': after the first refresh (eigh), each refresh is one
  power step from the previous basis, sorted, then QR. A refresh that returned
  its input (or skipped the sort, or the power step) gives other updates.

  (6, 5): after one gradient the left statistic has a one-dimensional null
  space, whose eigenvector is unique up to sign (the updates do not depend on
  signs)."""
  shape = {"w": (6, 5)}
  params = _tree(rng, shape)
  grads_seq = [_tree(rng, shape) for _ in range(8)]
  tx = shampoo_optax.soap(0.01, b2=0.95, block_size=16, precondition_every=1,
                          basis_method="qr")
  ours = _updates(tx, params, grads_seq)
  want = reference.numpy_soap([g["w"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                              learning_rate=0.01, basis_method="qr")
  for t, (got, ref) in enumerate(zip(ours, want), start=1):
    np.testing.assert_allclose(got["w"], ref, rtol=2e-3, atol=2e-6, err_msg=f"step {t}")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's default basis method")
def test_soap_default_basis_on_cpu_is_qr(rng):
  """basis_method='auto' (the default) refreshes with the QR power step on CPUs
  (eigh only on GPUs): with the default staggered refresh its updates are
  basis_method='qr''s, bit for bit, and after the first cycle no longer
  eigh's."""
  shapes = {"w": (12, 10), "v": (6, 5), "b": (5,)}
  params = _tree(rng, shapes)
  grads_seq = [_tree(rng, shapes) for _ in range(10)]
  make = functools.partial(shampoo_optax.soap, 0.01, block_size=16, precondition_every=3)
  auto, qr, eigh = (_updates(make(**kw), params, grads_seq)
                    for kw in ({}, {"basis_method": "qr"}, {"basis_method": "eigh"}))
  for a, q in zip(auto, qr):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(q)):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(auto[-1]["w"], eigh[-1]["w"])


def test_orthogonalized_shampoo_matches_reference(rng):
  """orthogonalize=True with the default staggered refresh: each matrix block's
  preconditioned direction replaced by its Newton-Schulz polar factor, then
  grafted; the rank-3 leaf ``t`` keeps its direction."""
  params = _tree(rng, SHAPES)
  grads_seq = [_tree(rng, SHAPES) for _ in range(9)]
  tx = shampoo_optax.shampoo(LR, block_size=8, precondition_every=3, orthogonalize=True)
  ref = reference.NumpyShampoo(_reference_shapes(SHAPES), block_size=8, precondition_every=3,
                               learning_rate=LR, stagger=True, orthogonalize=True, **DEFAULTS)
  # Newton-Schulz in float32 amplifies rounding along small singular values:
  # a few 1e-5 of steps of ~1e-2 (a missing or ungrafted polar factor is ~1e-2 off).
  _compare(_updates(tx, params, grads_seq), ref, grads_seq, SHAPES, atol=5e-5)
  plain = reference.NumpyShampoo(_reference_shapes(SHAPES), block_size=8, precondition_every=3,
                                 learning_rate=LR, stagger=True, **DEFAULTS)
  with pytest.raises(AssertionError):  # the option changes the steps
    _compare(_updates(tx, params, grads_seq), plain, grads_seq, SHAPES, atol=5e-5)


@pytest.mark.parametrize("shape", [(6, 5), (5, 6)])
def test_orthogonalized_soap_matches_reference(rng, shape):
  """SOAP's step per matrix block, orthogonalized at its own norm (tall and wide;
  one gradient leaves one statistic a one-dimensional null space, whose
  eigenvector is unique up to sign, as in the qr test above)."""
  params = _tree(rng, {"w": shape})
  grads_seq = [_tree(rng, {"w": shape}) for _ in range(6)]
  tx = shampoo_optax.soap(0.01, b2=0.95, block_size=16, precondition_every=1,
                          basis_method="eigh", orthogonalize=True)
  want = reference.numpy_soap([g["w"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                              learning_rate=0.01, orthogonalize=True)
  for t, (got, ref) in enumerate(zip(_updates(tx, params, grads_seq), want), start=1):
    np.testing.assert_allclose(got["w"], ref, rtol=2e-3, atol=2e-6, err_msg=f"step {t}")
  plain = reference.numpy_soap([g["w"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                               learning_rate=0.01)
  assert max(np.abs(a - b).max() for a, b in zip(want[1:], plain[1:])) > 1e-3


def test_nesterov_soap_matches_reference(rng):
  """soap(nesterov=True): optax.adam's Nesterov first moment in the eigenbasis;
  a leaf SOAP does not rotate gets optax.adam(nesterov=True)'s step."""
  params = {"b": jnp.zeros(5), "w": jnp.zeros((6, 5))}
  grads_seq = [_tree(rng, {"b": (5,), "w": (6, 5)}) for _ in range(6)]
  tx = shampoo_optax.soap(0.01, b2=0.95, block_size=16, precondition_every=1,
                          basis_method="eigh", nesterov=True)
  want = reference.numpy_soap([g["w"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                              learning_rate=0.01, nesterov=True)
  mu = nu = np.zeros(5)
  for t, (got, ref, grads) in enumerate(zip(_updates(tx, params, grads_seq), want, grads_seq),
                                        start=1):
    np.testing.assert_allclose(got["w"], ref, rtol=2e-3, atol=2e-6, err_msg=f"step {t}")
    g = np.asarray(grads["b"], np.float64)
    mu, nu = 0.9 * mu + 0.1 * g, 0.95 * nu + 0.05 * g * g
    mu_hat = 0.9 * mu / (1 - 0.9 ** (t + 1)) + 0.1 * g / (1 - 0.9**t)
    adam = -0.01 * mu_hat / (np.sqrt(nu / (1 - 0.95**t)) + 1e-8)
    np.testing.assert_allclose(got["b"], adam, rtol=1e-4, atol=1e-7, err_msg=f"step {t}")
  plain = reference.numpy_soap([g["w"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                               learning_rate=0.01)
  assert max(np.abs(a - b).max() for a, b in zip(want, plain)) > 1e-3


# SOAP: ten statistics of size 16 (a's five 16 x 16 blocks), w's 6 and 5, both
# in a group of 8 x 8 slots whose bases are computed with the 16-group's,
# padded (see soap_transform._separated).
SOAP_SHARED_SHAPES = {"a": (16, 80), "w": (6, 5)}


@pytest.mark.parametrize("basis_method", ["eigh", "qr"])
def test_soap_groups_sharing_a_basis_computation_match_reference(rng, basis_method):
  """Eigenbases of two sizes computed together are each block's own: every
  block's updates match SOAP's float64 reference on that block alone. After
  the first step w's 6 x 6 statistic has a null space, which padding with
  zeros would tie with the padded coordinates."""
  plan = soap_transform.block_layout(16, None, 4096).plan_shapes(
      list(SOAP_SHARED_SHAPES.values()))
  assert [g.dim for g in plan.groups] == [16, 8]
  assert factor_matrices.shared_computations(plan.groups) == [[0, 1]]
  params = _tree(rng, SOAP_SHARED_SHAPES)
  grads_seq = [_tree(rng, SOAP_SHARED_SHAPES) for _ in range(6)]
  tx = shampoo_optax.soap(0.01, b2=0.95, block_size=16, precondition_every=1,
                          basis_method=basis_method)
  ours = _updates(tx, params, grads_seq)
  blocks = {"w": lambda x: x} | {f"a{j}": (lambda x, j=j: x[:, 16 * j:16 * (j + 1)])
                                 for j in range(5)}
  for name, cut in blocks.items():
    leaf = name[0]
    want = reference.numpy_soap([cut(np.asarray(g[leaf])) for g in grads_seq], b1=0.9,
                                b2=0.95, eps=1e-8, learning_rate=0.01,
                                basis_method=basis_method)
    for t, (got, ref) in enumerate(zip(ours, want), start=1):
      np.testing.assert_allclose(cut(np.asarray(got[leaf])), ref, rtol=2e-3, atol=2e-6,
                                 err_msg=f"step {t} {name}")


def test_soap_shared_basis_computation_changes_no_result(rng, monkeypatch):
  """With the default staggered refresh, sharing the computation (as above) or
  computing each group apart gives the same updates and second moments."""
  params = _tree(rng, SOAP_SHARED_SHAPES)
  grads_seq = [_tree(rng, SOAP_SHARED_SHAPES) for _ in range(9)]
  runs = []
  for apart in (False, True):
    if apart:
      monkeypatch.setattr(factor_matrices, "shared_computations",
                          lambda groups: [[g] for g in range(len(groups))])
    steps, state = _run(shampoo_optax.soap(0.01, block_size=16, precondition_every=3),
                        params, grads_seq)
    runs.append((steps, _in_parameters_layout(state[0].nu, params, 16)))
  _assert_same_runs(*runs)


def _in_parameters_layout(moment, params, block_size):
  """A SOAP moment (``moments.BlockedMoment``) with its stacks put back into the
  parameters' layout, by SOAP's block layout as it is now (maybe patched)."""
  plan = soap_transform.block_layout(block_size, None, 4096).plan(jax.tree.leaves(params))
  leaves, treedef = jax.tree.flatten(moment.tree, is_leaf=moments.is_placeholder)
  blocked = blocking.from_stacks(plan, [x[:st.size] for x, st in zip(moment.stacks,
                                                                       plan.stacks)])
  return jax.tree.unflatten(treedef, [b if moments.is_placeholder(x) else x
                                      for x, b in zip(leaves, blocked)])


def _assert_same_runs(a, b):
  """Two runs' (updates of every step, final second moment) agree to float32 rounding."""
  (steps_a, nu_a), (steps_b, nu_b) = a, b
  for t, (x, y) in enumerate(zip(steps_a, steps_b, strict=True), start=1):
    for k in x:
      np.testing.assert_allclose(x[k], y[k], rtol=1e-4, atol=1e-7, err_msg=f"step {t} {k}")
  for k in nu_a:
    np.testing.assert_allclose(nu_a[k], nu_b[k], rtol=1e-4, atol=1e-12)


# SOAP's blocks padded into shared slots and stacks: a's 16 x 16 blocks, with e's
# 12 x 16 and h's 16 x 12 padded into their stack (12 in a slot of 16); r's 12 x 6
# and w's 6 x 5 blocks in stacks of their own, with statistics of 12 in slots of
# 16 and of 6 and 5 in slots of 8.
SOAP_PADDED_SHAPES = {"a": (16, 128), "e": (12, 16), "h": (16, 12), "r": (12, 6), "w": (6, 5)}


@pytest.mark.parametrize("basis_method", ["eigh", "qr"])
def test_soap_padded_slots_change_no_result(rng, monkeypatch, basis_method):
  """SOAP's statistics in slots larger than themselves, and blocks padded into
  a stack of larger ones, give the updates and second moments of a slot of
  each statistic's own size and a stack per block shape (SOAP's layout before
  0.3.0). r's 12 x 12 statistic has rank 6 and w's 6 x 6 rank 5 after the first
  step: null spaces that zero padding would tie with the padded coordinates.
  Every basis is refreshed on every step (``precondition_every=1``): a
  staggered refresh would refresh other rows on other steps, since the rows'
  order in their groups differs between the two layouts."""
  plan = soap_transform.block_layout(16, None, 4096).plan_shapes(
      list(SOAP_PADDED_SHAPES.values()))
  assert [(s.block_shape, s.size) for s in plan.stacks] == [
      ((16, 16), 10), ((12, 6), 1), ((6, 5), 1)]
  assert [g.dim for g in plan.groups] == [16, 8]
  params = _tree(rng, SOAP_PADDED_SHAPES)
  grads_seq = [_tree(rng, SOAP_PADDED_SHAPES) for _ in range(6)]
  runs, shapes = [], []
  for own_slots in (False, True):
    if own_slots:
      monkeypatch.setattr(soap_transform, "block_layout",
                          functools.partial(soap_transform.block_layout, own_slots=True))
    tx = shampoo_optax.soap(0.01, block_size=16, precondition_every=1,
                            basis_method=basis_method)
    steps, state = _run(tx, params, grads_seq)
    runs.append((steps, _in_parameters_layout(state[0].nu, params, 16)))
    shapes.append([g.shape for g in jax.tree.leaves(state[0].stats)])
  assert shapes[0] != shapes[1]  # the two layouts did differ
  _assert_same_runs(*runs)


def test_rank3_soap_matches_reference(rng):
  """SOAP on a rank-3 leaf kept one ``6 x 5 x 4`` block (``max_merged_dim=8``,
  within which no two sides merge; the default would make it a matrix): a
  basis per side, Adam in the eigenbasis, the second moment carried into each
  refreshed basis."""
  shape = {"t": (6, 5, 4)}
  params = _tree(rng, shape)
  grads_seq = [_tree(rng, shape) for _ in range(6)]
  tx = shampoo_optax.soap(0.01, b2=0.95, block_size=8, precondition_every=1,
                          basis_method="eigh", max_merged_dim=8)
  want = reference.numpy_soap([g["t"] for g in grads_seq], b1=0.9, b2=0.95, eps=1e-8,
                              learning_rate=0.01)
  for t, (got, ref) in enumerate(zip(_updates(tx, params, grads_seq), want), start=1):
    np.testing.assert_allclose(got["t"], ref, rtol=2e-3, atol=2e-6, err_msg=f"step {t}")
