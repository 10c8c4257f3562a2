# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Sharded and multi-process Shampoo equals one device.

Each check runs tests/sharding_cases.py in a fresh process (8 simulated CPU
devices, or two jax.distributed processes with 2 devices each), since the
device count is fixed when JAX starts.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import shampoo_optax

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_case(*args, timeout=900, env=None):
  out = subprocess.run(
      [sys.executable, "-m", "tests.sharding_cases", *map(str, args)],
      cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
  )
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
  assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-5000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_sharded_equals_single_device():
  """Explicit and Auto axes; FSDP, replicated and data x model layouts."""
  errors = run_case("equivalence")
  assert len(errors) == 8
  assert max(errors.values()) <= 1e-5, errors


def test_fsdp_local_blocks_equal_single_device_on_each_shard():
  """param_specs: Shampoo and SOAP, data and data x model meshes, both axis types."""
  errors = run_case("fsdp_local")
  assert len(errors) == 4 and max(errors.values()) <= 1e-4, errors


def test_fsdp_update_has_no_collectives():
  """Issue 15: with param_specs, the compiled FSDP update moves nothing between devices."""
  counts = run_case("fsdp_collectives")
  assert counts["shampoo-local"] == counts["soap-local"] == counts["adamw-local"] == {}, counts
  assert counts["shampoo-global"], counts  # the count finds them where they are


def test_sharded_soap_equals_single_device():
  errors = run_case("soap_equivalence")
  assert max(errors.values()) <= 1e-4, errors


def test_sharded_compact_state():
  results = run_case("compact_state")
  assert set(results) == {"Explicit", "Auto"}, results


def test_many_roots_per_device_do_not_deadlock():
  assert run_case("many_roots_per_device", timeout=300) == {"eigh": True, "newton": True}


def test_memory_per_device_shrinks_with_devices():
  per_device = {int(n): b for n, b in run_case("memory").items()}
  # At most one pair of padding matrices (16 x 17 float32 as a pair) in stats
  # and in roots per device: see sharding_cases.case_memory.
  for n in (2, 4, 8):
    assert per_device[n] <= per_device[1] / n + 2 * 16 * 17 * 4


def test_restore_onto_smaller_mesh(tmp_path):
  assert run_case("restore_smaller_mesh", tmp_path)["max_abs_diff"] <= 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_single_device(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = lambda pid: [sys.executable, "-m", "tests.sharding_cases", "multiprocess",  # noqa: E731
                     str(pid), "2", str(port)]
  # Output to files, not pipes: a process blocked on a full pipe (read after
  # the other's) would hold the other at jax.distributed's shutdown barrier.
  files = [(open(tmp_path / f"{pid}.out", "w+"), open(tmp_path / f"{pid}.err", "w+"))
           for pid in (0, 1)]
  procs = [subprocess.Popen(cmd(pid), cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
           for pid, (out, err) in zip((0, 1), files)]
  outputs = []
  for proc, (out, err) in zip(procs, files):
    proc.wait(timeout=600)
    with out, err:
      out.seek(0)
      err.seek(0)
      outputs.append((out.read(), err.read()))
  results = []
  for proc, (stdout, stderr) in zip(procs, outputs):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-2000:] + stderr[-4000:]
    results.append(json.loads(lines[-1][len("RESULT "):]))
  reference = run_case("reference")["params"]
  local = run_case("local_reference", 4)["params"]  # FSDP's local blocks on 4 devices
  for result in results:
    assert result["devices"] == 4 and result["processes"] == 2
    for k, v in reference.items():
      np.testing.assert_allclose(result["params"][k], v, atol=1e-5)
      np.testing.assert_allclose(result["local_params"][k], local[k], atol=1e-5)
    # The two layouts cut different blocks: the comparison above can tell them apart.
    assert max(np.max(np.abs(np.subtract(local[k], v))) for k, v in reference.items()) > 1e-3


def test_block_axis_without_mesh_is_an_error():
  with pytest.raises(ValueError, match="needs a mesh"):
    shampoo_optax.shampoo(1e-3, block_axis="data")


def test_unknown_block_axis_is_an_error():
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="not in the mesh"):
    shampoo_optax.shampoo(1e-3, mesh=mesh, block_axis="model")


def test_param_specs_errors():
  mesh = jax.make_mesh((1,), ("data",))
  params = {"w": jnp.ones((8, 8)), "b": jnp.ones(8)}
  with pytest.raises(ValueError, match="param_specs needs mesh= and block_axis="):
    shampoo_optax.shampoo(1e-3, mesh=mesh, param_specs={"w": None, "b": None})
  with pytest.raises(TypeError, match="PartitionSpec"):
    shampoo_optax.shampoo(1e-3, mesh=mesh, block_axis="data", param_specs={"w": "data", "b": None})
  tx = shampoo_optax.shampoo(1e-3, mesh=mesh, block_axis="data", param_specs={"w": None})
  with pytest.raises(ValueError, match="param_specs must have the parameters' tree structure"):
    tx.init(params)
  tx = shampoo_optax.soap(1e-3, mesh=mesh, block_axis="data",
                          param_specs={"w": P("data", None, None), "b": None})
  with pytest.raises(ValueError, match=r"param_specs\['w'\].*more entries"):
    tx.init(params)
  with pytest.raises(ValueError, match="rmsprop_normalized.*whole parameter"):
    shampoo_optax.shampoo(1e-3, graft="rmsprop_normalized", mesh=mesh, block_axis="data",
                          param_specs={"w": P("data"), "b": None})


def test_local_state_on_another_mesh_is_an_error():
  """A state made with local blocks for one device count is refused by another's."""
  mesh = jax.make_mesh((1,), ("data",))
  params = {"w": jnp.ones((8, 8))}
  tx = shampoo_optax.shampoo(1e-3, block_size=4, mesh=mesh, block_axis="data",
                             param_specs={"w": P("data")})
  state = tx.init(params)
  double = lambda tree: jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)  # noqa: E731
  doubled = (state[0]._replace(stats=double(state[0].stats), roots=double(state[0].roots),
                               root_errors=double(state[0].root_errors),
                               root_failures=double(state[0].root_failures)), *state[1:])
  tx.update(params, state, params)  # the state it made is fine
  with pytest.raises(ValueError, match="same param_specs, same block-axis size"):
    tx.update(params, doubled, params)
  # The moments kept in block stacks are checked the same way.
  doubled = (state[0]._replace(mu=state[0].mu._replace(stacks=double(state[0].mu.stacks))),
             *state[1:])
  with pytest.raises(ValueError, match="mu do not fit.*same param_specs, same block-axis size"):
    tx.update(params, doubled, params)


def test_state_shardings_on_one_device_mesh():
  mesh = jax.make_mesh((1,), ("data",))
  params = {"w": jnp.ones((8, 8)), "b": jnp.ones(8)}
  tx = shampoo_optax.shampoo(1e-3, block_size=4, mesh=mesh, block_axis="data")
  shardings = shampoo_optax.state_shardings(tx, params, mesh, "data")
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert jax.tree.structure(state) == jax.tree.structure(shardings)
  inner = shardings[0]
  assert all(s.spec == jax.sharding.PartitionSpec("data") for s in jax.tree.leaves(inner.stats))


def test_local_blocks_skip_dims_by_their_whole_size():
  """A shard is preconditioned on the sides the whole parameter would be: a
  dimension over skip_preconditioning_dim_size_gt stays skipped however small
  its shard."""
  from shampoo_optax import blocking  # noqa: PLC0415

  kw = dict(block_size=128, max_merged_dim=128, skip_preconditioning_dim_size_gt=4096,
            exponent_override=2)
  whole = blocking.make_plan(((8192, 256),), **kw).leaves[0]
  shard = blocking.make_plan(((1024, 256),), global_shapes=((8192, 256),), **kw).leaves[0]
  alone = blocking.make_plan(((1024, 256),), **kw).leaves[0]
  assert whole.preconditioned == shard.preconditioned == (False, True)
  assert alone.preconditioned == (True, True)


def test_thin_shards_fold_into_whole_blocks():
  """FSDP over many devices leaves shards thinner than a block: [16, 4096] of a
  [4096, 4096] weight on 256 devices. Folded to [512, 128] (a row-major
  reshape), its blocks are whole 128 x 128 again, and so is its statistics'
  memory per parameter; a shard of whole blocks is not folded, and neither
  is a whole (unsharded) parameter."""
  from shampoo_optax import blocking  # noqa: PLC0415

  kw = dict(block_size=128, max_merged_dim=128, skip_preconditioning_dim_size_gt=4096,
            exponent_override=2)

  def leaf(shape, whole=None):
    return blocking.plan_leaf(shape, global_shape=whole, **kw)

  thin = leaf((16, 4096), (4096, 4096))
  assert thin.merged_shape == (512, 128) and [p.block_shape for p in thin.pieces] == [(128, 128)]
  assert leaf((4096, 16), (4096, 4096)).merged_shape == (512, 128)
  assert leaf((512, 4096), (4096, 4096)).merged_shape == (512, 4096)
  # Rows not preconditioned (16384 > 4096), cut over N devices: N column
  # blocks share a statistic (as many in all as one device keeps: 32).
  assert leaf((64, 4096), (16384, 4096)).merged_shape == (64 * 32, 128)  # N = 256
  assert leaf((64, 4096), (16384, 4096)).preconditioned == (False, True)
  assert leaf((256, 4096), (16384, 4096)).merged_shape == (256 * 32, 128)  # N = 64
  assert leaf((2048, 4096), (16384, 4096)).merged_shape == (2048 * 8, 512)  # N = 8
  assert leaf((16384, 4096), (16384, 4096)).merged_shape == (16384, 4096)  # N = 1
  assert leaf((4096, 64), (4096, 16384)).merged_shape == (4096, 64)  # columns skipped
  assert leaf((16, 4096)).merged_shape == (16, 4096)
  assert leaf((16, 4096), (16, 4096)).merged_shape == (16, 4096)  # replicated: not a shard
  # Folding is a reshape: the blocks of the folded shard are its row-major chunks.
  plan = blocking.make_plan(((16, 256),), global_shapes=((256, 256),), **kw)
  x = np.arange(16 * 256, dtype=np.float32).reshape(16, 256)
  (stack,) = blocking.to_stacks(plan, [jnp.asarray(x)])
  np.testing.assert_array_equal(stack, x.reshape(32, 128)[None])
  np.testing.assert_array_equal(blocking.from_stacks(plan, [stack])[0], x)
