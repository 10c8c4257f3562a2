# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The optimizer update of 1B and 8B Transformers under FSDP, 8 to 256 devices, never allocated.

Issue 15: for the parameter shapes of a plain pre-LN GPT (per layer wq, wk, wv, wo ``d x d``, w1
``d x 4d``, w2 ``4d x d``, two norm scales ``d``; a ``vocab x d`` embedding and a final norm;
float32; "1B" is d 2048 x 24 layers, 1.28e9 parameters, "8B" d 4096 x 32, 6.58e9), on a mesh
of N simulated CPU devices (``--xla_force_host_platform_device_count``, one subprocess per row
since the device count is fixed when JAX starts), ``optax.adamw``,
``shampoo_optax.shampoo`` and ``shampoo_optax.soap`` (``mesh=mesh, block_axis="data"``, default
block_size) are compiled for the same shardings, with ``jax.ShapeDtypeStruct``\\ s only: no
parameter, gradient or state is ever allocated.

FSDP: every parameter of rank >= 2 is sharded ``P("data")`` on its first dimension divisible by
N (else the next; else replicated, counted in the output); vectors are replicated. The mesh has
one ``Auto`` axis, ``"data"`` (``jit`` with ``in_shardings`` / ``out_shardings``). Where the
optimizers accept ``param_specs`` (the local-blocks mode: under FSDP each device cuts blocks
from its own shard), it is passed the parameters' PartitionSpecs; where they do not, the rows
are the global-blocks optimizer and the output says so.

Per row (model, N, optimizer):

- optimizer-state bytes per device: ``jax.eval_shape(tx.init, params)`` with
  ``shampoo_optax.state_shardings(tx, params, mesh, "data")``, summed over the leaves'
  ``sharding.shard_shape(shape)``; beside it the same optimizer's state without a mesh (one
  device) / N, the target's reference, and their ratio (the sharded state's own whole size / N,
  padding and local blocks' extra statistics included, is in the details);
- ``compiled.memory_analysis()`` of ``jax.jit(tx.update, in_shardings=..., out_shardings=...)``;
- seconds of ``.lower()`` (tracing included) and of ``.compile()``;
- every collective in the compiled update (``compiled.as_text()``: all-gather, all-reduce,
  reduce-scatter, all-to-all, collective-permute, collective-broadcast, async ``-start`` /
  ``-done`` pairs counted once) with the bytes of its result shape, per kind, and the largest
  one; ``while`` loops; the worker's peak resident memory.

Then the issue's targets: state per device <= 1.05 x (one-device state / N) + one block of
every statistics group; no collective of a gradient / statistic / root size (>= one float32
block_size x block_size block) in the update; the 256-device compile <= 1.3x the 8-device one.
A row whose worker runs past ``--cap`` seconds or ``--mem-cap-gb`` of resident memory is
killed and reported as such.

    python benchmarks/scale.py                    # 1B and 8B at N = 8, 64, 256 (13-17 min, 2 CPUs)
    python benchmarks/scale.py --tiny             # d 256, 2 layers, 8 devices: seconds (CI)
    python benchmarks/scale.py --models 8B --devices 8,64,256 --cap 3600
    python benchmarks/scale.py --models 1B --devices 8 --optimizers shampoo --global-blocks
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pathlib
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers get it too

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

# name: (d_model, layers, vocab)
MODELS = {"tiny": (256, 2, 4096), "1B": (2048, 24, 32768), "8B": (4096, 32, 32768)}
OPTIMIZERS = ("adamw", "shampoo", "soap")
DEFAULT_MODELS = "1B,8B"
DEFAULT_DEVICES = "8,64,256"
MARK = "SCALE_RESULT "
STAGE = "SCALE_STAGE "

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "token": 0}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\(")
_ARRAY_SHAPE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


# ----------------------------------------------------------------------------------------------
# Model shapes and shardings (no JAX needed)
# ----------------------------------------------------------------------------------------------

def transformer_shapes(d: int, layers: int, vocab: int) -> dict:
  """Parameter shapes of a pre-LN GPT (tied embedding, no biases), one leaf per layer weight."""
  block = {"ln1": (d,), "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "ln2": (d,),
           "w1": (d, 4 * d), "w2": (4 * d, d)}
  return {"embed": (vocab, d), "final_norm": (d,),
          "layers": [dict(block) for _ in range(layers)]}


def model_config(name: str) -> tuple[int, int, int]:
  """(d_model, layers, vocab) of a named model, or of ``DxL`` (e.g. ``2048x4``, vocab 32768)."""
  if name in MODELS:
    return MODELS[name]
  m = re.fullmatch(r"(\d+)x(\d+)", name)
  if not m:
    raise SystemExit(f"unknown model {name!r}: one of {', '.join(MODELS)}, or DxL (2048x4)")
  return int(m.group(1)), int(m.group(2)), 32768


def fsdp_axis(shape: tuple, n: int) -> int | None:
  """The dimension FSDP shards: the first divisible by n, for rank >= 2; None = replicated."""
  if len(shape) < 2:
    return None
  return next((i for i, s in enumerate(shape) if s % n == 0), None)


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO shape, ``f32[64,2048]{1,0}`` or a tuple of them."""
  total = 0.0
  for dtype, dims in _ARRAY_SHAPE.findall(shape_text):
    size = math.prod(int(x) for x in dims.split(",") if x) if dims else 1
    total += size * _DTYPE_BYTES.get(dtype, 4)
  return int(total)


def short_shape(shape_text: str) -> str:
  """``f32[8,128]`` without layouts; a tuple of k equal shapes as ``k x f32[8,128]``."""
  parts = [f"{t}[{d}]" for t, d in _ARRAY_SHAPE.findall(shape_text)]
  if len(parts) > 1 and len(set(parts)) == 1:
    return f"{len(parts)} x {parts[0]}"
  return ", ".join(parts) if len(parts) > 1 else (parts[0] if parts else shape_text)


def collectives(hlo: str) -> list[dict]:
  """Every collective of an HLO module's text: kind, result shape, bytes, op_name."""
  found = []
  for line in hlo.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    _, shape, opcode = m.groups()
    kind = opcode
    if opcode.endswith("-start"):
      continue  # counted at its -done, whose result is the collective's output
    if opcode.endswith("-done"):
      kind = opcode[: -len("-done")]
    if kind not in COLLECTIVES:
      continue
    name = _OP_NAME.search(line)
    found.append(dict(kind=kind, shape=shape, bytes=shape_bytes(shape),
                      op_name=name.group(1) if name else ""))
  return found


def count_opcode(hlo: str, opcode: str) -> int:
  return sum(1 for line in hlo.splitlines()
             if (m := _INSTRUCTION.match(line)) and m.group(3) == opcode)


# ----------------------------------------------------------------------------------------------
# Worker: one (model, N, optimizer), in a process started with N simulated devices
# ----------------------------------------------------------------------------------------------

def worker(args) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import shampoo_optax

  n = args.devices
  assert jax.device_count() == n, (jax.device_count(), n)
  mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
  d, layers, vocab = model_config(args.model)
  shapes = transformer_shapes(d, layers, vocab)
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)  # noqa: E731

  def spec(shape):
    axis = fsdp_axis(shape, n)
    return P() if axis is None else P(*([None] * axis + ["data"]))

  specs = jax.tree.map(spec, shapes, is_leaf=is_shape)
  params = jax.tree.map(
      lambda s, sp: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, sp)),
      shapes, specs, is_leaf=is_shape)
  leaves = jax.tree.leaves(shapes, is_leaf=is_shape)
  replicated_matrices = sum(1 for s in leaves if len(s) >= 2 and fsdp_axis(s, n) is None)

  local_blocks = None
  if args.optimizer == "adamw":
    tx = optax.adamw(1e-3)
  else:
    make = getattr(shampoo_optax, args.optimizer)
    kwargs = dict(mesh=mesh, block_axis="data")
    accepted = "param_specs" in inspect.signature(make).parameters
    local_blocks = accepted and not args.global_blocks
    if local_blocks:
      kwargs["param_specs"] = specs
    tx = make(1e-3, **kwargs)
  param_shardings = jax.tree.map(lambda p: p.sharding, params)

  t = time.perf_counter()
  state = jax.eval_shape(tx.init, params)
  state_shardings = shampoo_optax.state_shardings(tx, params, mesh, "data")
  state_s = time.perf_counter() - t
  per_device = whole = 0
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(state_shardings)):
    itemsize = jnp.dtype(leaf.dtype).itemsize
    per_device += math.prod(sharding.shard_shape(leaf.shape)) * itemsize
    whole += math.prod(leaf.shape) * itemsize
  # The reference: the same optimizer's state on one device (no mesh, no padding).
  single = optax.adamw(1e-3) if args.optimizer == "adamw" else make(1e-3)
  plain = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  single_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(jax.eval_shape(single.init, plain)))
  # One block (one row) of every per-group array: the padding allowance of the target.
  one_block = 0
  for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, (shampoo_optax.ShampooState, shampoo_optax.SoapState))):
    if isinstance(node, (shampoo_optax.ShampooState, shampoo_optax.SoapState)):
      for name, value in node._asdict().items():
        if name not in ("count", "mu", "nu"):
          for leaf in jax.tree.leaves(value):
            if leaf.shape:
              one_block += math.prod(leaf.shape[1:]) * jnp.dtype(leaf.dtype).itemsize

  update = jax.jit(lambda g, s, p: tx.update(g, s, p),
                   in_shardings=(param_shardings, state_shardings, param_shardings),
                   out_shardings=(param_shardings, state_shardings))
  t = time.perf_counter()
  _stage("lowering")
  lowered = update.lower(params, state, params)
  lower_s = time.perf_counter() - t
  t = time.perf_counter()
  _stage(f"compiling (lowered in {lower_s:.1f} s)")
  compiled = lowered.compile()
  _stage("analysing")
  compile_s = time.perf_counter() - t

  memory = {}
  analysis = compiled.memory_analysis()
  for field in dir(analysis):
    if field.endswith("_in_bytes"):
      value = getattr(analysis, field)
      if isinstance(value, int):
        memory[field.removesuffix("_in_bytes")] = value
  hlo = compiled.as_text()
  return dict(
      model=args.model, devices=n, optimizer=args.optimizer, local_blocks=local_blocks,
      params=sum(math.prod(s) for s in leaves), leaves=len(leaves),
      replicated_matrices=replicated_matrices, state_per_device=per_device, state_whole=whole,
      state_single=single_bytes,
      one_block=one_block, state_s=state_s, lower_s=lower_s, compile_s=compile_s,
      memory=memory, collectives=collectives(hlo), whiles=count_opcode(hlo, "while"),
      hlo_lines=hlo.count("\n"),
      peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _stage(what: str) -> None:
  print(f"{STAGE}{what}", file=sys.stderr, flush=True)


def run_worker(model: str, n: int, optimizer: str, args, global_blocks: bool = False) -> dict:
  """Runs one row in a subprocess with n devices, under the time and memory caps."""
  cmd = [sys.executable, __file__, "--worker", "--model", model, "--n", str(n),
         "--optimizers", optimizer]
  if global_blocks:
    cmd.append("--global-blocks")
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count={n}".strip())
  row = dict(model=model, devices=n, optimizer=optimizer, local_blocks=None)
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env,
                            start_new_session=True)
    peak, killed = 0, None
    while proc.poll() is None:
      rss = _rss(proc.pid)
      peak = max(peak, rss)
      if time.perf_counter() - start > args.cap:
        killed = f"timeout (> {args.cap:.0f} s)"
      elif rss > args.mem_cap_gb * 2**30:
        killed = f"killed at {rss / 2**30:.1f} GiB resident (> --mem-cap-gb {args.mem_cap_gb:g})"
      if killed:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        break
      time.sleep(0.5)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  row["wall_s"] = time.perf_counter() - start
  stages = [line[len(STAGE):] for line in stderr.splitlines() if line.startswith(STAGE)]
  if killed:
    row["error"] = killed + (f" while {stages[-1]}" if stages else " while starting")
    row["peak_rss"] = peak
    return row
  for line in stdout.splitlines():
    if line.startswith(MARK):
      row.update(json.loads(line[len(MARK):]))
      return row
  tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
  row["error"] = f"failed (rc {proc.returncode}): {tail[:200]}"
  row["peak_rss"] = peak
  return row


def _rss(pid: int) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


# ----------------------------------------------------------------------------------------------
# Parent: the table
# ----------------------------------------------------------------------------------------------

def gib(x: float) -> str:
  if x >= 2**30:
    return f"{x / 2**30:.2f} GiB"
  if x >= 2**20:
    return f"{x / 2**20:.1f} MiB"
  return f"{x / 2**10:.1f} KiB"


def label(row: dict) -> str:
  if row["optimizer"] == "adamw":
    return "adamw"
  if row.get("local_blocks") is None:
    return row["optimizer"]
  return row["optimizer"] + (" (local blocks)" if row["local_blocks"] else " (global blocks)")


def collective_summary(row: dict) -> str:
  per_kind = defaultdict(lambda: [0, 0])
  for c in row["collectives"]:
    per_kind[c["kind"]][0] += 1
    per_kind[c["kind"]][1] += c["bytes"]
  if not per_kind:
    return "none"
  return ", ".join(f"{k}:{c}:{gib(b)}" for k, (c, b) in sorted(per_kind.items()))


def print_table(rows: list[dict]) -> None:
  print("\n| model | N | optimizer | params | state / device | 1-device state / N | x | "
        "XLA temp | XLA peak | lower s | compile s | while | "
        "collectives in the update (kind:count:bytes) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    head = f"| {r['model']} | {r['devices']} | {label(r)} |"
    if "error" in r:
      print(f"{head} {r.get('params', '-')} | not compiled: {r['error']} "
            f"(after {r['wall_s']:.0f} s, peak {gib(r.get('peak_rss', 0))} resident) "
            "| | | | | | | | |")
      continue
    single_n = r["state_single"] / r["devices"]
    print(f"{head} {r['params']:,} | {gib(r['state_per_device'])} | {gib(single_n)} | "
          f"{r['state_per_device'] / single_n:.3f} | {gib(r['memory'].get('temp_size', 0))} | "
          f"{gib(r['memory'].get('peak_memory', 0))} | {r['lower_s']:.1f} | "
          f"{r['compile_s']:.1f} | {r['whiles']} | {collective_summary(r)} |")


def print_details(rows: list[dict], block_bytes: int) -> None:
  print("\nPer row: the sharded state's whole size / N, XLA memory_analysis, the largest "
        "collective, FSDP leaves left replicated, HLO size, worker's peak resident memory")
  for r in rows:
    if "error" in r:
      continue
    memory = ", ".join(f"{k} {gib(v)}" for k, v in r["memory"].items() if v)
    big = max(r["collectives"], key=lambda c: c["bytes"], default=None)
    large = sum(1 for c in r["collectives"] if c["bytes"] >= block_bytes)
    largest = (f"largest {big['kind']} {short_shape(big['shape'])} ({gib(big['bytes'])}, "
               f"{big['op_name'][-90:] or '?'})" if big else "no collective")
    print(f"- {r['model']} N={r['devices']} {label(r)}: whole sharded state / N "
          f"{gib(r['state_whole'] / r['devices'])} "
          f"({r['state_whole'] / r['state_single']:.3f}x the 1-device state); {memory}; "
          f"{largest}; {large} collective(s) >= one {gib(block_bytes)} block; "
          f"{r['replicated_matrices']} of {r['leaves']} leaves are matrices left replicated; "
          f"HLO {r['hlo_lines']} lines; peak RSS {gib(r['peak_rss'])}; worker {r['wall_s']:.0f} s")


def print_targets(rows: list[dict], block_bytes: int) -> None:
  print("\nTargets (issue 15): state / device <= 1.05 x (1-device state / N) + one block of "
        "every statistics group; no collective >= one block in the update; compile at N=256 "
        "<= 1.3x N=8")
  for r in rows:
    if "error" in r or r["optimizer"] == "adamw":
      continue
    single_n = r["state_single"] / r["devices"]
    bound = 1.05 * single_n + r["one_block"]
    large = [c for c in r["collectives"] if c["bytes"] >= block_bytes]
    state_ok = r["state_per_device"] <= bound
    own = r["state_per_device"] / (r["state_whole"] / r["devices"])
    print(f"- {r['model']} N={r['devices']} {label(r)}: state/device {gib(r['state_per_device'])}"
          f" vs 1.05 x {gib(single_n)} + {gib(r['one_block'])} = {gib(bound)}: "
          f"{'met' if state_ok else 'NOT met'} ({own:.3f}x its own whole state / N); "
          f"collectives >= one block: {len(large)} "
          f"({gib(sum(c['bytes'] for c in large))}): {'met' if not large else 'NOT met'}")
  by_model = defaultdict(dict)
  for r in rows:
    if "error" not in r:
      by_model[(r["model"], label(r))][r["devices"]] = r["compile_s"]
  for (model, name), times in by_model.items():
    if len(times) < 2:
      continue
    lo, hi = min(times), max(times)
    ratio = times[hi] / times[lo]
    verdict = (f"{'met' if ratio <= 1.3 else 'NOT met'} (target <= 1.3x)"
               if (lo, hi) == (8, 256) else "the target is for N=256 / N=8")
    print(f"- {model} {name}: compile at N={hi} / N={lo} = {times[hi]:.1f} / {times[lo]:.1f} s"
          f" = {ratio:.2f}x: {verdict}")
  missing = [f"{r['model']} N={r['devices']} {label(r)}: {r['error']}" for r in rows
             if "error" in r]
  if missing:
    print("Not compiled here:")
    for line in missing:
      print(f"- {line}")


def header(args) -> bool:
  """Prints command, machine, versions, commit; returns whether param_specs is accepted."""
  import jax

  import shampoo_optax
  sys.path.insert(0, str(HERE))
  import hostinfo

  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip() or "?"
  dirty = subprocess.run(["git", "status", "--porcelain", "--", "shampoo_optax"], cwd=ROOT,
                         text=True, capture_output=True).stdout.split("\n")
  source = pathlib.Path(shampoo_optax.__file__).resolve().parent
  dirty = [line for line in dirty if line.strip() and source == ROOT / "shampoo_optax"]
  print(f"command: {shlex.join(sys.orig_argv)}")
  print(f"machine: {hostinfo.describe()} (workers: N simulated devices each)")
  print(f"jax {jax.__version__}; git commit {commit}"
        + (f" (shampoo_optax/ has {len(dirty)} uncommitted change(s))" if dirty else ""))
  print(f"shampoo_optax imported from {source}")
  print(f"load average at start (1, 5, 15 min): {hostinfo.load_average()}")
  accepted = all("param_specs" in inspect.signature(f).parameters
                 for f in (shampoo_optax.shampoo, shampoo_optax.soap))
  if accepted:
    print("local-blocks mode: param_specs accepted; Shampoo/SOAP rows pass the parameters' "
          "PartitionSpecs" + (" (disabled by --global-blocks)" if args.global_blocks else ""))
  else:
    print("local-blocks mode NOT available: shampoo_optax.shampoo/soap take no param_specs at "
          "this commit; the Shampoo and SOAP rows are the global-blocks optimizer")
  return accepted


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=DEFAULT_MODELS,
                 help=f"of {', '.join(MODELS)}, or DxL (d_model x layers, vocab 32768)")
  p.add_argument("--devices", default=DEFAULT_DEVICES, help="simulated device counts N")
  p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  p.add_argument("--cap", type=float, default=900, help="seconds per row before it is killed")
  p.add_argument("--mem-cap-gb", type=float, default=14,
                 help="resident GiB per row before it is killed")
  p.add_argument("--global-blocks", action="store_true",
                 help="never pass param_specs (the global-blocks optimizer)")
  p.add_argument("--contrast", default="shampoo",
                 help="with param_specs available: these optimizers also get one "
                      "global-blocks row per model, at the largest N ('' for none)")
  p.add_argument("--tiny", action="store_true", help="tiny model, 8 devices (seconds; CI)")
  p.add_argument("--json", help="write the rows here")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--model", help=argparse.SUPPRESS)
  p.add_argument("--n", type=int, help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    args.devices, args.optimizer = args.n, args.optimizers
    print(MARK + json.dumps(worker(args)), flush=True)
    return

  if args.tiny:
    args.models, args.devices = "tiny", "8"
  models = [m for m in args.models.split(",") if m]
  devices = [int(n) for n in args.devices.split(",") if n]
  optimizers = [o for o in args.optimizers.split(",") if o]
  unknown = [o for o in optimizers if o not in OPTIMIZERS]
  if unknown:
    raise SystemExit(f"unknown optimizer {unknown}; choose from {', '.join(OPTIMIZERS)}")
  started = time.perf_counter()
  accepted = header(args)
  contrast = [o for o in args.contrast.split(",") if o in optimizers and o != "adamw"]
  for model in models:
    d, layers, vocab = model_config(model)
    count = sum(math.prod(s) for s in jax_free_leaves(transformer_shapes(d, layers, vocab)))
    print(f"{model}: d_model {d}, {layers} layers, vocab {vocab}, d_ff {4 * d}: "
          f"{count:,} parameters (float32)")

  rows = []
  plan = [(m, n, o, args.global_blocks) for m in models for n in devices for o in optimizers]
  if accepted and not args.global_blocks:
    plan += [(m, max(devices), o, True) for m in models for o in contrast]
  for model, n, optimizer, global_blocks in plan:
    row = run_worker(model, n, optimizer, args, global_blocks)
    rows.append(row)
    status = row.get("error") or (f"compile {row['compile_s']:.1f} s, "
                                  f"{len(row['collectives'])} collectives")
    print(f"  {model} N={n} {label(row)}: {status} ({row['wall_s']:.0f} s)", flush=True)

  import shampoo_optax
  block_size = inspect.signature(shampoo_optax.shampoo).parameters["block_size"].default
  block_bytes = block_size * block_size * 4  # one float32 block_size x block_size block
  print_table(rows)
  print_details(rows, block_bytes)
  print_targets(rows, block_bytes)
  sys.path.insert(0, str(HERE))
  import hostinfo
  wall = time.perf_counter() - started
  print(f"\nload average at end (1, 5, 15 min): {hostinfo.load_average()}; "
        f"total wall time {wall:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(command=shlex.join(sys.orig_argv), wall_s=wall, rows=rows), f, indent=1)
    print(f"wrote {args.json}")


def jax_free_leaves(tree) -> list[tuple]:
  if isinstance(tree, dict):
    return [leaf for v in tree.values() for leaf in jax_free_leaves(v)]
  if isinstance(tree, list):
    return [leaf for v in tree for leaf in jax_free_leaves(v)]
  return [tree]


if __name__ == "__main__":
  main()
