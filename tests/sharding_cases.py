# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Sharding checks that need several (simulated) devices.

Run as ``python -m tests.sharding_cases CASE`` by tests/test_sharding.py, in a
fresh process so that XLA_FLAGS can ask for 8 CPU devices before JAX starts.
Each case raises on failure and prints one JSON line of measurements.
"""

from __future__ import annotations

import json
import os
import re
import sys

if __name__ == "__main__" and sys.argv[1:2] != ["multiprocess"]:
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import shampoo_optax  # noqa: E402
from shampoo_optax import blocking  # noqa: E402

SHAPES = {"embed": (24, 16), "w1": (16, 40), "w2": (40, 16), "conv": (3, 3, 4, 8), "b": (16,)}
HP = dict(block_size=8, precondition_every=2, start_preconditioning_step=2, b2=0.95,
          matrix_eps=1e-3, weight_decay=1e-3)


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}


def make_grads(step):
  rng = np.random.default_rng(1000 + step)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}


def param_spec(name, shape, mesh, layout):
  """FSDP over 'data' on the first divisible dim; tensor parallel over 'model'."""
  if layout == "replicated":
    return P()
  spec = [None] * len(shape)
  if "model" in mesh.axis_names and len(shape) == 2 and shape[1] % mesh.shape["model"] == 0:
    spec[1] = "model"
  for d, size in enumerate(shape):
    if spec[d] is None and size % mesh.shape["data"] == 0:
      spec[d] = "data"
      break
  return P(*spec)


def train(tx, params, steps, mesh=None, block_axis=None):
  """Runs steps updates under jit; returns params, state and the traces count.

  With a mesh the state is initialized with ``state_shardings`` as
  out_shardings: with Auto axes, jit cannot know that first moments should
  follow the parameters' shardings (with Explicit axes it would follow them
  anyway, and the result is the same).
  """
  traces = []

  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step)
  out_shardings = None
  if mesh is not None:
    out_shardings = shampoo_optax.state_shardings(tx, params, mesh, block_axis)
  state = jax.jit(tx.init, out_shardings=out_shardings)(params)
  first_shardings = jax.tree.map(lambda x: x.sharding, state)
  for t in range(steps):
    grads = make_grads(t)
    if mesh is not None:
      grads = jax.tree.map(lambda g, p: jax.device_put(g, p.sharding), grads, params)
    params, state = step(params, state, grads)
  changed = [
      (jax.tree_util.keystr(path), str(first.spec), str(x.sharding.spec))
      for (path, x), first in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                  jax.tree.leaves(first_shardings))
      if not x.sharding.is_equivalent_to(first, x.ndim)
  ]
  return params, state, len(traces), changed


def reference(steps):
  params, state, _, _ = train(shampoo_optax.shampoo(0.05, **HP), make_params(), steps)
  return params, state


def case_equivalence():
  """Sharded runs equal one device, for both axis types and several layouts."""
  ref_params, _ = reference(6)
  results = {}
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    for shape, names, layout, block_axis in [
        ((8,), ("data",), "fsdp", "data"),
        ((8,), ("data",), "replicated", "data"),
        ((4, 2), ("data", "model"), "fsdp", "data"),
        ((4, 2), ("data", "model"), "fsdp", ("data", "model")),
    ]:
      mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))
      with jax.set_mesh(mesh):
        params = {k: jax.device_put(v, NamedSharding(mesh, param_spec(k, v.shape, mesh, layout)))
                  for k, v in make_params().items()}
        tx = shampoo_optax.shampoo(0.05, mesh=mesh, block_axis=block_axis, **HP)
        out, state, traces, stable = train(tx, params, 6, mesh, block_axis)  # stable: changed
      inner = state[0]
      n = int(np.prod([mesh.shape[a] for a in ((block_axis,) if isinstance(block_axis, str)
                                                   else block_axis)]))
      for stats in jax.tree.leaves((inner.stats, inner.roots)):
        assert stats.shape[0] % n == 0, stats.shape
        assert stats.sharding.spec[0] is not None, stats.sharding
        assert stats.addressable_shards[0].data.shape[0] == stats.shape[0] // n
      for k, v in out.items():
        assert v.sharding.is_equivalent_to(params[k].sharding, v.ndim), (k, v.sharding)
      err = max(float(jnp.max(jnp.abs(out[k] - ref_params[k]))) for k in out)
      assert err <= 1e-5, (axis_type, shape, layout, block_axis, err)
      assert traces == 1, traces
      assert not stable, f"state leaves changed sharding across update: {stable}"
      results[f"{axis_type.name}-{shape}-{layout}-{block_axis}"] = err
  return results


def local_reference(tx, index_maps, steps, block_size=8):
  """What FSDP with local blocks must give: the single-device optimizer run on
  each device's own shards, as a tree of their own (its plan is the device's
  local plan), put back together. ``index_maps``: per device, ``{name: index}``
  (as ``NamedSharding.devices_indices_map`` gives); returns global numpy params
  and, per device, the single-device run's state. ``block_size``: ``tx``'s.

  ``blocking`` decides which shards fold (its own tests pin the rule down);
  given that, this checks that the sharded optimizer computes exactly the
  single-device one on every shard."""
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))
  params = {k: np.asarray(v) for k, v in make_params().items()}
  grads = [{k: np.asarray(v) for k, v in make_grads(t).items()} for t in range(steps)]
  out = {k: np.full(v.shape, np.nan, np.float32) for k, v in params.items()}

  def shape_of(k, shard):
    """A shard thinner than a block is folded (blocking._fold_thin_shard):
    the single-device optimizer is handed it in that shape."""
    leaf = blocking.plan_leaf(shard.shape, global_shape=params[k].shape, block_size=block_size,
                              max_merged_dim=block_size, skip_preconditioning_dim_size_gt=4096,
                              exponent_override=2)
    folded = leaf.merged_shape != blocking.merge_small_dims(shard.shape, block_size)
    return leaf.merged_shape if folded else shard.shape

  states, done = [], {}
  for index in index_maps:
    key = repr(sorted((k, repr(i)) for k, i in index.items()))
    if key not in done:
      shapes = {k: shape_of(k, v[index[k]]) for k, v in params.items()}
      p = {k: jnp.asarray(v[index[k]].reshape(shapes[k])) for k, v in params.items()}
      s = tx.init(p)
      for t in range(steps):
        p, s = step(p, s, {k: jnp.asarray(g[index[k]].reshape(shapes[k]))
                           for k, g in grads[t].items()})
      done[key] = (p, s)
    p, s = done[key]
    for k in out:
      out[k][index[k]] = np.asarray(p[k]).reshape(out[k][index[k]].shape)
    states.append(s)
  return out, states


def case_fsdp_local():
  """FSDP with param_specs: every device preconditions its own shards.

  Shampoo (defaults: staggered refresh, eigh on CPU) and SOAP, each on an
  8-device data mesh and a 4 x 2 data x model mesh (tensor parallel over
  'model', both axes block axes), one with Explicit axes and the other with
  Auto (all four combinations take twice the time): the parameters equal the
  single-device optimizer's run on each device's shards (local_reference),
  and each device's rows of every statistic equal that run's statistics, at
  rows [i R, (i + 1) R) for device i along the block axes.
  """
  results = {}
  for name, make, hp, tol in [("shampoo", shampoo_optax.shampoo, HP, 1e-5),
                              ("soap", shampoo_optax.soap,
                               dict(block_size=8, precondition_every=2,
                                    start_preconditioning_step=2), 1e-4)]:
    types = (AxisType.Explicit, AxisType.Auto) if name == "shampoo" else (
        AxisType.Auto, AxisType.Explicit)
    for axis_type, (shape, names) in zip(types, [((8,), ("data",)), ((4, 2), ("data", "model"))]):
      if True:
        mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))
        specs = {k: param_spec(k, v.shape, mesh, "fsdp") for k, v in make_params().items()}
        shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
        with jax.set_mesh(mesh):
          params = {k: jax.device_put(v, shardings[k]) for k, v in make_params().items()}
          tx = make(0.05, mesh=mesh, block_axis=names, param_specs=specs, **hp)
          out, state, traces, changed = train(tx, params, 6, mesh, names)
        assert traces == 1 and not changed, (traces, changed)
        devices = list(mesh.devices.flat)  # row-major over the block axes: device i's rows
        index_maps = [{k: s.devices_indices_map(SHAPES[k])[d] for k, s in shardings.items()}
                      for d in devices]
        want, states = local_reference(make(0.05, **hp), index_maps, 6)
        err = max(float(np.max(np.abs(np.asarray(out[k]) - want[k]))) for k in out)
        assert err <= tol, (name, axis_type, shape, err)
        for field in ("stats",):
          for leaf, *refs in zip(jax.tree.leaves(getattr(state[0], field)),
                                 *[jax.tree.leaves(getattr(s[0], field)) for s in states]):
            rows = refs[0].shape[0]
            assert leaf.shape[0] == len(devices) * rows, (leaf.shape, rows)
            for i, shard in enumerate(sorted(leaf.addressable_shards,
                                             key=lambda sh: devices.index(sh.device))):
              assert shard.index[0] == slice(i * rows, (i + 1) * rows), shard.index
              np.testing.assert_allclose(np.asarray(shard.data), np.asarray(refs[i]),
                                         rtol=1e-4, atol=1e-6)
        results[f"{name}-{axis_type.name}-{shape}"] = err
  return results


def collectives(hlo: str) -> dict[str, int]:
  """Counts of cross-device ops in compiled HLO text (async pairs once)."""
  kinds = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter",
           "collective-broadcast", "ragged-all-to-all")
  out = {}
  for kind in kinds:
    n = len(re.findall(rf"\s{kind}(?:-start)?\(", hlo))
    if n:
      out[kind] = n
  return out


def case_fsdp_collectives():
  """Issue 15's FSDP layout (three weights sharded P('data') over 8 devices):
  with param_specs the compiled update has no collective at all, for Shampoo
  and SOAP; without (Shampoo's blocks spread over devices) it has them, which
  is what shows the count can fail."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  # The layout at half the width (512 x 2048 etc.: the same ops, a
  # faster compile).
  # On each device c's shard (32, 256), folded into one 64 x 128 block, joins
  # the 128 x 128 stack (blocking._joined_stacks; asserted below), whose roots
  # are then read from two row ranges of their group; "e", replicated, keeps
  # its 96 x 128 blocks apart (the padding budget is spent).
  shapes = {"a": (256, 1024), "b": (1024, 256), "c": (256, 256), "e": (96, 256),
            "scale": (256,)}
  specs = {"a": P("data"), "b": P("data"), "c": P("data"), "e": None, "scale": None}
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, specs[k] or P()))
            for k, s in shapes.items()}
  out = {}
  for name in ("shampoo", "soap", "adamw"):
    for local in (True, False):
      if name != "shampoo" and not local:  # Shampoo's global blocks show the count can fail
        continue
      if name == "adamw":
        tx = optax.adamw(1e-3)
      else:
        kw = {"param_specs": specs} if local else {}
        tx = getattr(shampoo_optax, name)(1e-3, mesh=mesh, block_axis="data", **kw)
      shardings = shampoo_optax.state_shardings(tx, params, mesh, "data")
      state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           jax.eval_shape(tx.init, params), shardings)
      with jax.set_mesh(mesh):
        update = jax.jit(tx.update, out_shardings=(
            jax.tree.map(lambda p: p.sharding, params), shardings))
        hlo = update.lower(params, state, params).compile().as_text()
      out[f"{name}-{'local' if local else 'global'}"] = collectives(hlo)
  local_plan = blocking.make_plan(
      ((32, 1024), (128, 256), (32, 256), (96, 256), (256,)),
      global_shapes=tuple(shapes.values()), block_size=128, max_merged_dim=None,
      skip_preconditioning_dim_size_gt=4096, exponent_override=2)
  assert [(st.block_shape, len(st.factors)) for st in local_plan.stacks] == [
      ((128, 128), 4), ((96, 128), 2)], local_plan.stacks
  assert out["shampoo-local"] == {} and out["soap-local"] == {} and out["adamw-local"] == {}, out
  assert out["shampoo-global"], out
  # Specs the mesh cannot honour are named with their leaf.
  odd = {"w": jax.ShapeDtypeStruct((12, 8), jnp.float32)}
  tx = shampoo_optax.shampoo(1e-3, mesh=mesh, block_axis="data", param_specs={"w": P("data")})
  try:
    tx.init(odd)
    raise AssertionError("a dimension not divisible by the block axis was accepted")
  except ValueError as e:
    assert "param_specs['w']" in str(e) and "not divisible" in str(e), e
  mesh2 = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  tx = shampoo_optax.shampoo(1e-3, mesh=mesh2, block_axis="data",
                             param_specs={"w": P("data", "model")})
  try:
    tx.init({"w": jax.ShapeDtypeStruct((16, 8), jnp.float32)})
    raise AssertionError("a parameter sharded over a non-block axis was accepted")
  except ValueError as e:
    assert "param_specs['w']" in str(e) and "'model'" in str(e), e
  return out


def case_soap_equivalence():
  """Sharded SOAP equals one device (FSDP params, statistics over 'data').

  ``max_merged_dim=8`` keeps the conv kernel a rank-4 tensor: the default's
  matrix view of it, ``(9, 32)``, has a ``1 x 8`` block whose right statistic
  has rank one, and an eigenbasis of its null space is arbitrary (each side may
  pick another), which SOAP's per-coordinate Adam does not forgive."""
  hp = dict(block_size=8, precondition_every=2, start_preconditioning_step=2, max_merged_dim=8)
  ref, _, _, _ = train(shampoo_optax.soap(0.02, **hp), make_params(), 6)
  results = {}
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
      params = {k: jax.device_put(v, NamedSharding(mesh, param_spec(k, v.shape, mesh, "fsdp")))
                for k, v in make_params().items()}
      tx = shampoo_optax.soap(0.02, mesh=mesh, block_axis="data", **hp)
      out, state, traces, changed = train(tx, params, 6, mesh, "data")
    err = max(float(jnp.max(jnp.abs(out[k] - ref[k]))) for k in out)
    # Eigenvectors amplify float reduction-order differences more than roots
    # do (close eigenvalues): SOAP is held to 1e-4, Shampoo to 1e-5.
    assert err <= 1e-4 and traces == 1 and not changed, (axis_type, err, traces, changed)
    results[axis_type.name] = err
  return results


def case_compact_state():
  """int8 state (int8 first moments, int16 statistics) sharded: the first
  moments' values shard like the parameters and their row scales like the
  parameters without the last axis, before and after updates; no retrace; the
  result equals one device's: stochastic rounding draws its bits with JAX's
  partitionable threefry, which gives the same bits whatever the sharding, so
  the runs differ by float32 reduction order only."""
  hp = dict(HP, statistics_dtype="int8")
  ref, _, _, _ = train(shampoo_optax.shampoo(0.05, **hp), make_params(), 6)
  ref32, _, _, _ = train(shampoo_optax.shampoo(0.05, **HP), make_params(), 6)
  results = {}
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
      params = {k: jax.device_put(v, NamedSharding(mesh, param_spec(k, v.shape, mesh, "fsdp")))
                for k, v in make_params().items()}
      tx = shampoo_optax.shampoo(0.05, mesh=mesh, block_axis="data", **hp)
      out, state, traces, changed = train(tx, params, 6, mesh, "data")
    assert traces == 1 and not changed, (axis_type, traces, changed)
    # The preconditioned leaves' moments: stacks of blocks, split over the
    # block axis (values and row scales alike); the others' like their parameters.
    for m in state[0].mu.stacks:
      for x in (m.values, m.scales):
        assert x.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), x.ndim), x.sharding
    assert state[0].mu.stacks
    for k, m in state[0].mu.tree.items():
      spec = tuple(params[k].sharding.spec) + (None,) * params[k].ndim
      if shampoo_optax.moments.is_placeholder(m):
        continue
      if params[k].ndim >= 2:
        assert m.values.dtype == jnp.int8 and m.values.sharding.is_equivalent_to(
            params[k].sharding, m.values.ndim), (k, m.values.sharding)
        want = NamedSharding(mesh, P(*spec[: params[k].ndim - 1], None))
        assert m.scales.sharding.is_equivalent_to(want, m.scales.ndim), (k, m.scales.sharding)
    err = max(float(jnp.max(jnp.abs(out[k] - ref[k]))) for k in out)
    # For scale: how far the int8 run is from the float32 one.
    gap = max(float(jnp.max(jnp.abs(ref32[k] - ref[k]))) for k in out)
    assert err <= 1e-4 and err <= 0.1 * gap, (axis_type, err, gap)
    results[axis_type.name] = {"err": err, "int8_vs_float32": gap}
  return results


def case_many_roots_per_device():
  """Several roots per device per step on 8 CPU devices: must not deadlock.

  (A batched LAPACK eigh under shard_map used to wait for XLA's CPU pool that
  every simulated device was already holding.)
  """
  mesh = jax.make_mesh((8,), ("data",))
  params = {f"w{i}": jnp.full((32, 32), 0.1) for i in range(12)}
  out = {}
  for method in ("eigh", "newton"):
    with jax.set_mesh(mesh):
      tx = shampoo_optax.shampoo(1e-3, block_size=32, mesh=mesh, block_axis="data",
                                 precondition_every=1, start_preconditioning_step=0,
                                 root_method=method)
      state, step = jax.jit(tx.init)(params), jax.jit(tx.update)
      for t in range(2):
        updates, state = step(jax.tree.map(lambda p, t=t: p * 0.01 + t, params), state, params)
    out[method] = bool(all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates)))
  assert all(out.values()), out
  return out


def case_memory():
  """Per-device bytes of statistics and roots for N = 1, 2, 4, 8."""
  params = {f"w{i}": jnp.ones((64, 48)) for i in range(5)}
  out = {}
  for n in (1, 2, 4, 8):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:n])
    with jax.set_mesh(mesh):
      tx = shampoo_optax.scale_by_shampoo(block_size=16, mesh=mesh, block_axis="data")
      state = jax.jit(tx.init)(params)
    arrays = jax.tree.leaves((state.stats, state.roots))
    per_device = sum(a.addressable_shards[0].data.nbytes for a in arrays)
    total_unpadded = 2 * sum(4 * d * d * s for d, s in  # float32 stats and roots
                             [(16, 5 * 4 * 3 * 2)])
    # Each group's rows are padded to a multiple of 2 N (pairs of matrices
    # share storage on a device): at most one pair of padding per device in
    # stats and in roots.
    padding = 2 * 2 * 4 * 16 * 17 // 2
    assert per_device <= total_unpadded / n + padding, (n, per_device, total_unpadded)
    out[n] = per_device
  return out


def case_restore_smaller_mesh(tmpdir):
  """Save on 8 devices, restore on 4 with state_shardings, continue exactly."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  def setup(n):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:n])
    tx = shampoo_optax.shampoo(0.05, mesh=mesh, block_axis="data", **HP)
    return mesh, tx

  mesh8, tx8 = setup(8)
  with jax.set_mesh(mesh8):
    params = {k: jax.device_put(v, NamedSharding(mesh8, param_spec(k, v.shape, mesh8, "fsdp")))
              for k, v in make_params().items()}
    params, state, _, _ = train(tx8, params, 3, mesh8, "data")
  ckpt = ocp.StandardCheckpointer()
  path = os.path.join(tmpdir, "ckpt")
  ckpt.save(path, {"params": params, "opt_state": state})
  ckpt.wait_until_finished()

  mesh4, tx4 = setup(4)
  with jax.set_mesh(mesh4):
    spec4 = lambda p: NamedSharding(mesh4, param_spec("", p.shape, mesh4, "fsdp"))  # noqa: E731
    abstract_params = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=spec4(p)), params)
    saved = ckpt.metadata(path).item_metadata.tree
    target = {"params": abstract_params,
              "opt_state": shampoo_optax.abstract_state(
                  tx4, abstract_params, mesh4, "data", like=saved["opt_state"])}
    restored = ckpt.restore(path, target)
    for group in jax.tree.leaves(restored["opt_state"][0].stats):
      assert len(group.sharding.device_set) == 4
    # Continue for 3 more steps on 4 devices; compare with 6 steps on one.
    traces = []

    @jax.jit
    def step(params, state, grads):
      traces.append(1)
      updates, state = tx4.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    p, s = restored["params"], restored["opt_state"]
    for t in range(3, 6):
      grads = jax.tree.map(lambda g, q: jax.device_put(g, q.sharding), make_grads(t), p)
      p, s = step(p, s, grads)
  ref_params, _ = reference(6)
  err = max(float(jnp.max(jnp.abs(p[k] - ref_params[k]))) for k in p)
  assert err <= 1e-5, err
  return {"max_abs_diff": err}


def case_multiprocess(process_id, num_processes, port):
  """One of the processes of a jax.distributed run: 2 CPU devices each."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_num_cpu_devices", 2)
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Explicit,))
  specs = {k: param_spec(k, s, mesh, "fsdp") for k, s in SHAPES.items()}
  result = {"devices": jax.device_count(), "processes": jax.process_count()}
  shardings = {k: NamedSharding(mesh, specs[k]) for k in SHAPES}
  to_global = lambda tree: {  # noqa: E731
      k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: np.asarray(v)[idx])
      for k, v in tree.items()}
  # Blocks spread over the devices ("params"), and FSDP's local blocks.
  for key, extra in [("params", {}), ("local_params", {"param_specs": specs})]:
    tx = shampoo_optax.shampoo(0.05, mesh=mesh, block_axis="data", **extra, **HP)
    with jax.set_mesh(mesh):
      params = to_global(make_params())
      state = jax.jit(tx.init)(params)

      @jax.jit
      def step(params, state, grads):
        updates, state = tx.update(grads, state, params)  # noqa: B023
        return optax.apply_updates(params, updates), state

      for t in range(6):
        params, state = step(params, state, to_global(make_grads(t)))
      full = {k: np.asarray(jax.experimental.multihost_utils.process_allgather(v, tiled=True))
              for k, v in params.items()}
    result[key] = {k: v.tolist() for k, v in full.items()}
  return result


def case_local_reference(n):
  """local_reference for FSDP over a data mesh of ``n`` devices (as
  case_multiprocess lays it out), as lists."""
  mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
  shardings = {k: NamedSharding(mesh, param_spec(k, s, mesh, "fsdp")) for k, s in SHAPES.items()}
  index_maps = [{k: s.devices_indices_map(SHAPES[k])[d] for k, s in shardings.items()}
                for d in mesh.devices.flat]
  out, _ = local_reference(shampoo_optax.shampoo(0.05, **HP), index_maps, 6)
  return {"params": {k: v.tolist() for k, v in out.items()}}


if __name__ == "__main__":
  import jax.experimental.multihost_utils  # noqa: F401

  name = sys.argv[1]
  if name == "multiprocess":
    result = case_multiprocess(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
  elif name == "reference":
    params, _ = reference(6)
    result = {"params": {k: np.asarray(v).tolist() for k, v in params.items()}}
  elif name == "local_reference":
    result = case_local_reference(int(sys.argv[2]))
  elif name == "restore_smaller_mesh":
    result = case_restore_smaller_mesh(sys.argv[2])
  else:
    result = globals()[f"case_{name}"]()
  print("RESULT " + json.dumps(result))
