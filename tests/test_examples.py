# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The examples and benchmarks run (at tiny settings), so they cannot rot."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_process(*args, timeout=600) -> subprocess.CompletedProcess:
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
  return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


def run_script(*args, timeout=600):
  out = run_process(*args, timeout=timeout)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
  return out.stdout


def test_main_example(tmp_path):
  out = run_script("examples/char_lm.py", "--steps", "6", "--eval-every", "3", "--layers", "1",
                   "--batch-size", "8", "--no-progress", "--out", tmp_path)
  assert "Shampoo" in out and "AdamW" in out and "steps to AdamW" in out
  assert sorted(p.name for p in tmp_path.glob("*.png")) == [
      "char_lm_loss_vs_seconds.png", "char_lm_loss_vs_step.png"]


def test_nnx_example():
  out = run_script("examples/nnx_digits.py", "--epochs", "1")
  assert "Shampoo" in out and "test acc" in out


BENCHMARKS = ["lm.py", "cnn.py", "vit.py", "roots.py", "growth.py", "sharding_memory.py",
              "diagnostics_cost.py", "accelerator.py", "update_cost.py", "scale.py", "zoo.py",
              "compile_repeat.py"]
# The two longest (~1.5 and ~1 min alone, ~3 and ~1.2 min beside another test): lm.py's
# training loop is examples/char_lm.py's (test_main_example), growth.py's claim (one root
# computation at any depth) is test_transform's test_update_is_batched_over_layers.
# compile_repeat.py (~35 s) only times growth.py's compile again.
SLOW_BENCHMARKS = {"lm.py", "growth.py", "compile_repeat.py"}
# vit.py runs cnn.py's loop (smoke-tested with every optimizer there) on its own model: the
# optimizers whose code differs for it (Muon's split of the kernels), beside AdamW (~35 s
# saved).
TINY_ARGS = {"vit.py": ("--optimizers", "adamw,muon,shampoo")}


@pytest.mark.parametrize("script", [
    pytest.param(s, marks=[pytest.mark.slow] if s in SLOW_BENCHMARKS else []) for s in BENCHMARKS])
def test_benchmark_tiny(script):
  path = ROOT / "benchmarks" / script
  if not path.exists():
    pytest.fail(f"benchmarks/{script} is missing")
  out = run_script(path, "--tiny", *TINY_ARGS.get(script, ()))
  assert "jax" in out  # every benchmark prints the machine and versions first


def test_cnn_benchmark_without_adamw_in_its_list():
  """AdamW, the ratios' baseline, is added when the list leaves it out (it used to
  end in a StopIteration after every run was done)."""
  out = run_script(ROOT / "benchmarks" / "cnn.py", "--tiny", "--optimizers", "shampoo")
  assert "  adamw: " in out and "  shampoo: " in out


def test_cnn_benchmark_says_when_its_baseline_fails():
  """A baseline that cannot run ends the run with why (it was a StopIteration)."""
  out = run_process("benchmarks/cnn.py", "--tiny", "--optimizers", "adamw+b3=1")
  assert out.returncode != 0
  assert "AdamW, the ratios' baseline, did not run" in out.stderr and "'b3'" in out.stderr


def test_lm_benchmark_interleaved_step_times(tmp_path):
  """lm.py --interleave: every optimizer's step timed in turn, ratios to AdamW per window of
  precondition_every steps (--tiny: 12 steps, windows of 4)."""
  out = run_script(ROOT / "benchmarks" / "lm.py", "--tiny", "--interleave", "--optimizers",
                   "shampoo,adamw@1e-3,soap+nesterov=True@3e-3", "--json", tmp_path / "r.json")
  rows = json.loads((tmp_path / "r.json").read_text())["rows"]
  assert [r["optimizer"] for r in rows] == ["shampoo@0.002", "adamw@0.001",
                                            "soap+nesterov=True@0.003"]
  # The ratios' baseline is AdamW wherever the list puts it.
  assert rows[1]["x_adamw"] == rows[1]["x_adamw_min"] == rows[1]["x_adamw_max"] == 1.0
  for r in rows:
    assert r["windows"] == 3 and r["ms_per_step"] > 0 and r["state_bytes"] > 0
    assert r["x_adamw_min"] <= r["x_adamw"] <= r["x_adamw_max"]
  assert "x AdamW: median (range) over windows of 4 steps" in out
  # Fewer steps than one window: a clear error, not an empty median.
  out = run_process("benchmarks/lm.py", "--interleave", "--steps", "3", "--optimizers", "shampoo")
  assert out.returncode != 0 and "--interleave needs --steps >= --precondition-every" in out.stderr


@pytest.mark.parametrize("script", ["examples/char_lm.py", "examples/nnx_digits.py",
                                    "benchmarks/lm.py", "benchmarks/cnn.py"])
def test_help(script):
  assert "usage" in run_script(script, "--help").lower()


def test_optimizer_spec_parsing():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import peers  # noqa: PLC0415

  assert peers.parse_spec("muon") == ("muon", {}, None)
  assert peers.parse_spec("shampoo+exponent_override=3+nesterov=True+graft=sgd@3e-3/1e-2") == (
      "shampoo", {"exponent_override": 3, "nesterov": True, "graft": "sgd"}, [3e-3, 1e-2])
  with pytest.raises(ValueError, match="not key=value"):
    peers.parse_spec("shampoo+nesterov")
  assert peers.spec_label("shampoo", {"nesterov": True}) == "shampoo+nesterov=True"
  assert peers.edge_note("muon", [5e-3, 1e-2, 7e-3], 1e-2).startswith("muon: best lr 0.01")
  assert peers.edge_note("muon", [5e-3, 1e-2, 7e-3], 7e-3) is None
  assert peers.edge_note("muon", [7e-3], 7e-3) is None
  # A spec's options reach the peer (cnn.py and vit.py build AdamW here).
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  tx = peers.adamw(1e-3, b1=0.7)
  with jax.numpy_dtype_promotion("standard"):  # optax's own bias correction needs it
    _, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
  assert float(state[0].mu["w"][0]) == pytest.approx(0.3)  # (1 - b1) g
  with pytest.raises(TypeError, match="b3"):
    peers.adamw(1e-3, b3=0.7)


def _accelerator_case(block_size: int, shape: tuple[int, int]):
  """accelerator.py, its arguments for make_optimizer, and one weight with its gradient."""
  import argparse  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  sys.path.insert(0, str(ROOT / "benchmarks"))
  import accelerator  # noqa: PLC0415

  args = argparse.Namespace(learning_rate=1e-2, block_size=block_size, precondition_every=2)
  params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)}
  return accelerator, args, params, jax.tree.map(lambda p: 0.3 * p + 0.1, params)


def _run_update(tx, params, grads, steps: int):
  """The weight's update after ``steps`` updates, and the compiled update's HLO text (one
  compile serves both)."""
  import jax  # noqa: PLC0415

  state = tx.init(params)
  update = jax.jit(tx.update).lower(grads, state, params).compile()
  for _ in range(steps):
    u, state = update(grads, state, params)
  return u["w"], update.as_text()


def test_accelerator_optimizer_specs():
  """accelerator.py builds a row named with options as the optimizer with those options."""
  import argparse  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415

  import shampoo_optax  # noqa: PLC0415

  accelerator, args, params, grads = _accelerator_case(4, (4, 6))
  assert accelerator.base_name("shampoo+nesterov=True") == "shampoo"
  assert accelerator.label("shampoo_eigh+precondition_every=3+nesterov=True") == (
      "shampoo, root_method='eigh', precondition_every=3, nesterov=True")

  def updates(tx):
    return _run_update(tx, params, grads, 3)[0]

  ours = updates(accelerator.make_optimizer("shampoo+nesterov=True+precondition_every=1", args))
  expected = updates(shampoo_optax.shampoo(1e-2, block_size=4, precondition_every=1,
                                           weight_decay=1e-4, nesterov=True))
  np.testing.assert_array_equal(ours, expected)
  plain = updates(accelerator.make_optimizer("shampoo", args))
  assert not np.allclose(ours, plain)  # the options took effect
  with pytest.raises(SystemExit, match="unknown optimizer"):
    accelerator.parent(argparse.Namespace(optimizers="adamw,shampoo@1e-3"))


def test_accelerator_soap_own_slots_row():
  """accelerator.py's soap_own_slots row builds SOAP with a slot of each statistic's own size
  (the 16 x 15 block's 15 x 15 statistic in a group of its own, where soap pads it into the
  16 x 16 slots), to the same updates, and leaves SOAP's layout as it was."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  accelerator, args, params, grads = _accelerator_case(16, (16, 15))

  def run(name):
    tx = accelerator.make_optimizer(name, args)
    slots = [x.shape[-1] for x in jax.tree.leaves(tx.init(params)[0].bases)]
    return _run_update(tx, params, grads, 4)[0], slots

  (padded, padded_slots), (own, own_slots), (again, again_slots) = (
      run(name) for name in ("soap", "soap_own_slots", "soap"))
  assert (padded_slots, own_slots, again_slots) == ([16], [16, 15], [16])
  np.testing.assert_allclose(own, padded, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(again, padded)
