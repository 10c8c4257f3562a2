# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A state saved by 0.1 (packed float32 triangles, flat SOAP bases) upgrades exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shampoo_optax
from shampoo_optax import blocking, factor_matrices, moments, quantization, soap_transform

# 3 + 3 statistics of w's 4 x 4 blocks and 1 of e's one-sided blocks: an odd
# group, which 0.2 pads to an even number of rows.
SHAPES = {"w": (12, 4), "e": (100, 4)}
KW = dict(block_size=4, skip_preconditioning_dim_size_gt=50, precondition_every=1)


def packed(full):
  rows, cols = np.triu_indices(full.shape[-1])
  return np.asarray(full)[:, rows, cols]


def tree_layout(moment, plan=None, shapes_of=None, treedef=None):
  """A moment as saved before 0.4.0: in the parameters' layout (Shampoo's
  preconditioned leaves cut back out of its block stacks). ``treedef``: the
  parameters', when they hold None subtrees."""
  if not isinstance(moment, moments.BlockedMoment):
    return jax.tree.map(np.asarray, moment)
  is_node = lambda x: x is None or isinstance(x, quantization.QuantizedArray)  # noqa: E731
  if treedef is None:
    leaves, treedef = jax.tree.flatten(moment.tree, is_leaf=is_node)
  else:
    leaves = treedef.flatten_up_to(moment.tree)
  shapes = iter((shapes_of or moment).shapes)
  shapes = [next(shapes).shape if moments.is_placeholder(x) else np.shape(x) for x in leaves]
  plan = plan or blocking.Layout(4, None, 50, 2).plan_shapes(shapes)
  int8 = isinstance(moment.stacks[0], quantization.QuantizedArray)
  stacks = [quantization.dequantize_rows(x) if int8 else x for x in moment.stacks]
  blocked = blocking.from_stacks(plan, [x[:st.size] for x, st in zip(stacks, plan.stacks)])

  def saved(b):  # as 0.3 stored it: int8 per row of the leaf's last axis
    b = quantization.quantize_rows(b) if int8 else b.astype(stacks[0].dtype)
    return jax.tree.map(np.asarray, b)

  def saved_tree_leaf(x):  # 0.3 kept int8 first moments of every matrix, preconditioned or not
    if int8 and np.ndim(x) >= 2:
      return saved(jnp.asarray(x, jnp.float32))
    return jax.tree.map(np.asarray, x)
  return jax.tree.unflatten(treedef, [
      saved(b) if moments.is_placeholder(x) else saved_tree_leaf(x)
      for x, b in zip(leaves, blocked)])


def as_saved_by_0_1(state, sizes):
  """The state in 0.1's layout, as orbax restores it without a target (dicts, lists):
  each group's rows its number of statistics (rounded to the mesh size, 1)."""
  inner = state[0]

  def group(x, field, n):
    if field in ("stats", "roots"):
      return packed(quantization.Codec().decode(x, x.triangles.shape[-1])[:n])
    if field == "bases":
      return np.asarray(x)[:n].reshape(n, -1)
    return np.asarray(x)[:n]

  saved = {"count": np.asarray(inner.count), "mu": tree_layout(inner.mu),
           "nu": tree_layout(inner.nu, shapes_of=inner.mu)}
  for field, value in inner._asdict().items():
    if field not in saved:
      saved[field] = [group(x, field, n) for x, n in zip(value, sizes)]
  return [saved] + [jax.tree.map(np.asarray, s) for s in state[1:]]


@pytest.mark.parametrize("make", [shampoo_optax.shampoo, shampoo_optax.soap])
def test_state_saved_by_0_1_upgrades_exactly(rng, make):
  soap = make is shampoo_optax.soap
  tx = make(1e-2, **(KW if soap else dict(KW, start_preconditioning_step=0)))
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    grads = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
    _, state = update(grads, state, params)
  layout = (blocking.Layout(4, 4, 50, None, pad_slots=False) if soap
            else blocking.Layout(4, 4, 50, 2))
  sizes = [g.size for g in layout.plan(jax.tree.leaves(params)).groups]
  assert any(n % 2 for n in sizes)  # a group that 0.2 pads by a row
  upgraded = shampoo_optax.upgrade_state(as_saved_by_0_1(state, sizes), tx, params)
  assert jax.tree.structure(upgraded) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(upgraded), jax.tree.leaves(state)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  # And it trains on from there exactly as the state it came from.
  grads = {k: jnp.ones(s, jnp.float32) for k, s in SHAPES.items()}
  a, _ = update(grads, upgraded, params)
  b, _ = update(grads, state, params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_a_state_of_another_optimizer_is_an_error(rng):
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  saved = [{"count": np.zeros((), np.int32)}]
  with pytest.raises(ValueError, match="no leaf"):
    shampoo_optax.upgrade_state(saved, shampoo_optax.shampoo(1e-2, **KW), params)
  with pytest.raises(TypeError, match="unexpected layout arguments.*'blocksize'"):
    shampoo_optax.upgrade_state(saved, shampoo_optax.soap(1e-2, **KW), params, blocksize=4)


@pytest.mark.parametrize("make", [shampoo_optax.shampoo, shampoo_optax.soap])
def test_a_state_of_another_block_plan_is_an_error(make):
  """A state laid out for another plan (0.2's rank-3 layout, another block size)
  is refused with an error that says what to pass, not an indexing error."""
  params = {"w": jnp.ones((16, 4, 4)), "b": jnp.ones((4, 4))}
  default = make(1e-2, block_size=8)
  default.update(params, default.init(params), params)  # its own state is fine
  saved_by_0_2 = make(1e-2, block_size=8, max_merged_dim=8).init(params)
  with pytest.raises(ValueError, match=r"do not fit these parameters' block plan.*"
                     r"max_merged_dim=block_size"):
    default.update(params, saved_by_0_2, params)
  with pytest.raises(ValueError, match="do not fit these parameters' block plan"):
    default.update(params, make(1e-2, block_size=4).init(params), params)


def test_a_state_of_the_other_optimizer_is_an_error():
  params = {"w": jnp.ones((8, 4))}
  shampoo = shampoo_optax.shampoo(1e-2, block_size=4)
  soap = shampoo_optax.soap(1e-2, block_size=4)
  with pytest.raises(TypeError, match="takes a ShampooState, got a SoapState"):
    shampoo.update(params, soap.init(params), params)
  with pytest.raises(TypeError, match="takes a SoapState, got a ShampooState"):
    soap.update(params, shampoo.init(params), params)


# Statistics of 12, 6 and 5 (in slots of 16 and 8 since 0.3.0, of their own size before),
# and a 16 x 12 block that 0.3.0 pads into the stack of the 16 x 16 ones.
SOAP_SHAPES = {"a": (16, 32), "h": (16, 12), "r": (12, 6), "w": (6, 5)}


@pytest.mark.parametrize("statistics_dtype", ["float32", "bfloat16"])
def test_soap_state_in_its_own_size_slots_upgrades(rng, monkeypatch, statistics_dtype):
  """A SOAP state saved in SOAP's layout before 0.3.0 (a slot of each statistic's own size,
  a stack per block shape; rows in another order) is moved to the current layout: every
  block's statistics, bases, errors and failure counts, exactly (compact storage to its
  rounding, re-encoded; read per parameter through diagnostics' own map of rows). With
  float32 storage, training on from it also gives the
  updates of a state that had the current layout all along (compact storage rounds
  stochastically with keys per group, so two such runs differ by its rounding)."""
  import functools  # noqa: PLC0415

  from shampoo_optax import soap_transform  # noqa: PLC0415
  from shampoo_optax.diagnostics import _rows_of_leaf  # noqa: PLC0415

  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SOAP_SHAPES.items()}
  grads = [{k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SOAP_SHAPES.items()}
           for _ in range(4)]
  kw = dict(block_size=16, precondition_every=1, statistics_dtype=statistics_dtype)

  def run(tx, state, steps):
    update = jax.jit(tx.update)
    for g in steps:
      u, state = update(g, state, params)
    return u, state

  tx = shampoo_optax.soap(1e-2, **kw)
  own_slots = functools.partial(soap_transform.block_layout, own_slots=True)
  with monkeypatch.context() as m:
    m.setattr(soap_transform, "block_layout", own_slots)
    old_tx = shampoo_optax.soap(1e-2, **kw)
    _, old_state = run(old_tx, old_tx.init(params), grads[:3])
  _, new_state = run(tx, tx.init(params), grads[:3])
  with pytest.raises(ValueError, match="do not fit these parameters' block plan"):
    tx.update(grads[3], old_state, params)
  # As 0.2 saved it: the moments in the parameters' layout.
  old_plan = own_slots(16, None, 4096).plan(jax.tree.leaves(params))
  inner = old_state[0]
  old_state = (inner._replace(mu=tree_layout(inner.mu, old_plan),
                              nu=tree_layout(inner.nu, old_plan, inner.mu)), *old_state[1:])
  upgraded = shampoo_optax.upgrade_state(jax.tree.map(np.asarray, old_state), tx, params)
  assert jax.tree.structure(upgraded) == jax.tree.structure(new_state)
  for got, want in zip(jax.tree.leaves(upgraded), jax.tree.leaves(new_state)):
    assert got.shape == want.shape and got.dtype == want.dtype

  leaves = jax.tree.leaves(params)
  plans = [layout(16, None, 4096).plan(leaves)
           for layout in (own_slots, soap_transform.block_layout)]
  assert [g.dim for g in plans[0].groups] != [g.dim for g in plans[1].groups]
  stats_codec = quantization.Codec(quantization.stored_dtype(new_state[0].stats[0]))
  bases_codec = quantization.Codec(quantization.stored_dtype(new_state[0].bases[0]),
                                   symmetric=False)
  for i in range(len(leaves)):
    if not plans[0].leaves[i].is_preconditioned:
      continue
    per_state = []
    for state, plan in zip((old_state, upgraded), plans):
      inner, blocks = state[0], []
      for g, rows in _rows_of_leaf(plan, i):
        factor_dim = int(factor_matrices.own_sizes(plan, g, jnp.asarray(rows[:1]))[0])
        d = plan.groups[g].dim
        blocks.append((
            np.asarray(stats_codec.decode(inner.stats[g], d))[rows, :factor_dim, :factor_dim],
            np.asarray(bases_codec.decode(inner.bases[g], d))[rows, :factor_dim, :factor_dim],
            np.asarray(inner.basis_errors[g])[rows], np.asarray(inner.basis_failures[g])[rows]))
      per_state.append(blocks)
    assert len(per_state[0]) == len(per_state[1]) > 0
    for old_parts, new_parts in zip(*per_state):
      for x, y in zip(old_parts, new_parts):
        if statistics_dtype == "float32" or x.ndim == 1:
          np.testing.assert_array_equal(x, y, err_msg=f"leaf {i}")
        else:  # re-encoded: to compact storage's rounding
          np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * np.abs(x).max(),
                                     err_msg=f"leaf {i}")

  if statistics_dtype == "float32":
    for got, want in zip(jax.tree.leaves(upgraded), jax.tree.leaves(new_state)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    a, _ = run(tx, upgraded, grads[3:])
    b, _ = run(tx, new_state, grads[3:])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
  # A state already in the current layout comes back as it was.
  again = shampoo_optax.upgrade_state(jax.tree.map(np.asarray, new_state), tx, params)
  for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(new_state)):
    np.testing.assert_array_equal(got, want)



# A 40 x 24 weight in four blocks (two stacks), a convolution merged into a
# matrix, a bias (tree layout) and a dimension over skip_preconditioning_dim_size_gt.
SHAMPOO_SHAPES = {"w": (40, 24), "conv": (3, 3, 4, 8), "b": (24,), "e": (60, 6), "s": (1, 24)}


@pytest.mark.parametrize("name,kw", [
    ("shampoo", {}),
    ("shampoo", {"statistics_dtype": "int8", "graft": "rmsprop"}),
    ("shampoo", {"statistics_dtype": "bfloat16", "nesterov": True}),
    ("shampoo", {"graft": "sgd", "block_size": 8}),
    ("soap", {}),
    ("soap", {"statistics_dtype": "int8"}),
    ("soap", {"statistics_dtype": "bfloat16", "nesterov": True, "block_size": 8}),
], ids=["float32", "int8", "bfloat16", "sgd", "soap", "soap-int8", "soap-bfloat16"])
def test_state_with_moments_in_the_parameters_layout_upgrades(rng, name, kw):
  """Shampoo before 0.4 and SOAP before 0.5 kept their moments in the
  parameters' layout; now those of the preconditioned leaves are in block
  stacks. upgrade_state cuts them (read back from the shapes which block
  layout) exactly (an int8 first moment to its rounding), and training goes on
  as from the state itself. A None in the parameters (an empty subtree, as
  Equinox makes) is told apart from the stacks' placeholders."""
  kw = {"block_size": 16, "skip_preconditioning_dim_size_gt": 50, **kw}
  tx = getattr(shampoo_optax, name)(1e-2, **kw)
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
            for k, s in SHAMPOO_SHAPES.items()} | {"none": None}
  grads = [{k: jnp.asarray(rng.standard_normal(s), jnp.float32)
            for k, s in SHAMPOO_SHAPES.items()} | {"none": None} for _ in range(4)]
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads[:3]:
    _, state = update(g, state, params)
  inner = state[0]
  assert isinstance(inner.mu, moments.BlockedMoment) and len(inner.mu.stacks) >= 2
  layout = (soap_transform.block_layout(kw["block_size"], None, 50) if name == "soap"
            else blocking.Layout(kw["block_size"], None, 50, 2))
  plan = layout.plan(jax.tree.leaves(params))
  treedef = jax.tree.structure(params)
  old_inner = inner._replace(mu=tree_layout(inner.mu, plan, treedef=treedef),
                             nu=tree_layout(inner.nu, plan, inner.mu, treedef=treedef))
  with pytest.raises(ValueError, match="convert the state with shampoo_optax.upgrade_state"):
    update(grads[3], (old_inner, *state[1:]), params)
  saved = [jax.tree.map(np.asarray, old_inner)] + [
      jax.tree.map(np.asarray, s) for s in state[1:]]
  # as orbax restores it without a target: NamedTuples as dicts
  saved[0] = {k: v for k, v in saved[0]._asdict().items()}
  upgraded = shampoo_optax.upgrade_state(saved, tx, params)
  assert jax.tree.structure(upgraded) == jax.tree.structure(state)
  int8 = kw.get("statistics_dtype") == "int8"
  for got, want in zip(jax.tree.leaves(upgraded), jax.tree.leaves(state)):
    assert got.shape == want.shape and got.dtype == want.dtype
    if not int8:
      np.testing.assert_array_equal(got, want)
  if int8:  # the first moment's stacks re-rounded to nearest: within a step of 1/127
    got = quantization.dequantize_rows(upgraded[0].mu.stacks[0])
    want = quantization.dequantize_rows(inner.mu.stacks[0])
    np.testing.assert_allclose(got, want, atol=1.01 * float(jnp.max(jnp.abs(want))) / 127)
    # "s" (a matrix merged into a vector, not preconditioned): int8 before, bfloat16 now
    assert upgraded[0].mu.tree["s"].dtype == jnp.bfloat16
    np.testing.assert_allclose(upgraded[0].mu.tree["s"], inner.mu.tree["s"],
                               atol=float(jnp.max(jnp.abs(inner.mu.tree["s"]))) / 100)
    return
  a, _ = update(grads[3], upgraded, params)
  b, _ = update(grads[3], state, params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # A state already in block layout comes back as it was.
  again = shampoo_optax.upgrade_state(jax.tree.map(np.asarray, state), tx, params)
  for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_shampoo_state_without_stacks_upgrades():
  """Parameters Shampoo does not precondition (vectors) have no stacks: a 0.3
  state and a 0.4 one both come back as the 0.4 state."""
  params = {"b": jnp.arange(3.0), "c": jnp.ones(5)}
  tx = shampoo_optax.shampoo(1e-2)
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  assert state[0].mu.stacks == ()
  saved_0_3 = [state[0]._replace(mu=state[0].mu.tree, nu=state[0].nu.tree)] + list(state[1:])
  for saved in (saved_0_3, state):
    upgraded = shampoo_optax.upgrade_state(jax.tree.map(np.asarray, saved), tx, params)
    assert jax.tree.structure(upgraded) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(upgraded), jax.tree.leaves(state)):
      np.testing.assert_array_equal(got, want)


def test_shampoo_state_of_an_unknown_layout_is_an_error():
  """When no block layout (or several) fits, the error says what to pass."""
  params = {"w": jnp.ones((40, 24))}
  tx = shampoo_optax.shampoo(1e-2, block_size=16, max_merged_dim=3)
  state = tx.init(params)
  inner = state[0]
  saved = [inner._replace(mu={"w": np.zeros((40, 24), np.float32)},
                          nu={"w": np.zeros((40, 24), np.float32)})] + list(state[1:])
  with pytest.raises(ValueError, match="could not read Shampoo's block layout"):
    shampoo_optax.upgrade_state(saved, tx, params, block_size=8)
  upgraded = shampoo_optax.upgrade_state(saved, tx, params)
  assert jax.tree.structure(upgraded) == jax.tree.structure(state)
