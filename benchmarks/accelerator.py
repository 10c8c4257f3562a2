# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Step time, compile time, state and peak memory of a whole train step, each optimizer in its
own process: the figures to quote for accelerator speed (issue 12).

The model is the example character Transformer (``examples/lm_common.py``), by default issue 12's
configuration: d_model 512, 8 layers, 8 heads, batch 64 x 256 characters, ~25M float32
parameters; ``block_size=128`` and ``precondition_every=10`` for the Shampoos and SOAP. Optimizers
(``--optimizers``; run in this order, shown in table order):

- ``adamw`` (``optax.adamw``), ``muon`` (``optax.contrib.muon``, see ``peers.muon``), ``google``
  (Google's ``precondition.distributed_shampoo``, ``peers.google_shampoo``; reported as "not
  installed" where ``precondition-opt`` is missing),
- ``shampoo`` (``shampoo_optax.shampoo`` defaults, ``root_method='auto'``: eigh on CPUs and
  GPUs), ``shampoo_newton`` (``root_method='newton'``), ``shampoo_eigh`` (``'eigh'``; not run by
  default, as it is the ``shampoo`` row off TPUs), ``soap`` (``shampoo_optax.soap`` defaults),
- ``shampoo_no_refresh``: the defaults with ``precondition_every=10**6``: preconditioning
  starts at the default step, but the staggered schedule has one pair of rows per group due per
  step (not ~1/10 of them), so the refresh runs on 2 rows: Shampoo's step with the refresh's
  work, not its latency, taken out (on an H200 the eigh of those 2 rows took 0.64 ms per step,
  against 1.38 ms for the ~250 rows of the defaults). The breakdown table reads the refresh's
  share off it: "refresh only" = shampoo - no refresh (and likewise for eigh and Newton).
  ``soap_no_refresh`` is the same for SOAP (not run by default).
- ``soap_own_slots``: the defaults with SOAP's layout before its statistics shared padded slots
  and stacks: a slot of each statistic's own size, a stack per block shape (not run by default).
  That change was made for GPUs and measured only on CPU: the ``soap`` and ``soap_own_slots``
  rows of one GPU run decide it.

Each name may carry options, as ``lm.py``'s specs do (``peers.parse_spec``; the learning rate is
``--learning-rate``): ``shampoo+nesterov=True+precondition_every=3`` is the ``shampoo`` row with
two settings replaced.

Each optimizer runs in a fresh Python process (peak-memory statistics and compile caches are per
process; a hang does not sink the run), which sends its measurements back as JSON:

- compile: seconds of ``jax.jit(train_step).trace(...).lower().compile()`` (trace + lower + XLA
  compile, autotuning included) of the whole step: loss, gradients, ``tx.update``,
  ``apply_updates``; params and optimizer state donated, as a training loop should. The JSON
  also has each phase's seconds (``trace_s``, ``lower_s``, ``xla_compile_s``), printed in the
  compile table.
- first step: seconds of the first call (a lazy start shows here, e.g. SOAP's first step on GPU).
- ms/step: median (and worst) wall time of ``--steps`` steps, each ``jax.block_until_ready``
  on params, state and loss, after ``--warmup`` steps (first step included), so preconditioning
  is on and the staggered refreshes (1/precondition_every of the roots per step) are in the
  timed window. Batches are real text, prepared on the device beforehand.
- pipelined ms/step: then ``--steps`` more steps called back to back and blocked on once at
  the end, over the number of steps: a training loop that does not wait on each step, where
  the host queues step t + 1 while the device runs step t (unless the step makes the host
  wait: on a GPU, a ``lax.cond`` copies its predicate to the host). The host's own time per
  step hides behind the device's here, and adds to it in "ms/step".
- state: bytes of the optimizer state's arrays.
- peak memory: ``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` after the steps
  (params, state, activations, workspace); "n/a" where the backend has no memory stats (CPU).

Every figure is also given as a ratio to AdamW's, measured in the same run. Each optimizer gets at
most ``--cap`` seconds (a process past it is killed and reported as a timeout, with what it had
done), and the whole run at most ``--budget`` seconds (optimizers not started by then are
reported as skipped); the defaults keep a run on one GPU within 5 minutes. The tables are
printed as Markdown, to paste into benchmarks/README.md.

Run:
  python benchmarks/accelerator.py                  # issue 12's config (one GPU: < 5 minutes)
  python benchmarks/accelerator.py --tiny           # CPU smoke run (CI), about a minute
  python benchmarks/accelerator.py --d-model 128 --layers 2 --seq-len 64 --batch 16 \
      --json acc.json                               # a CPU stand-in
  python benchmarks/accelerator.py --optimizers adamw,muon,shampoo,shampoo+precondition_every=3
"""

from __future__ import annotations

# OPENBLAS_NUM_THREADS is left as the user has it (unlike the other benchmarks): this script
# measures what a user gets. On CPU the package itself runs jaxlib's eigh on one thread unless the
# variable is set (matrix_functions.single_threaded_cpu_lapack); set it to measure otherwise.
import argparse
import functools
import json
import math
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))
import hostinfo  # noqa: E402  (imports jax, but initializes no backend in this process)

# Run order: the targets first (AdamW is every ratio's base), peers last, so that a run cut
# short by --budget loses the least useful rows.
# shampoo_eigh is not run by default: root_method='auto' is eigh on CPUs and GPUs (it is the
# shampoo row there); on a TPU, add it.
RUN_ORDER = ("adamw", "shampoo", "soap", "soap_own_slots", "muon", "google", "shampoo_no_refresh",
             "shampoo_newton", "shampoo_eigh", "soap_no_refresh")
DEFAULT_OPTIMIZERS = ("adamw", "muon", "google", "shampoo", "shampoo_newton", "soap",
                      "shampoo_no_refresh")
TINY_OPTIMIZERS = ("adamw", "shampoo", "shampoo_no_refresh")
LABELS = {
    "adamw": "optax.adamw",
    "muon": "optax.contrib.muon",
    "google": "Google's Shampoo (precondition-opt)",
    "shampoo": "shampoo (defaults, root_method='auto')",
    "shampoo_eigh": "shampoo, root_method='eigh'",
    "shampoo_newton": "shampoo, root_method='newton'",
    "soap": "soap (defaults)",
    "shampoo_no_refresh": "shampoo, roots never refreshed (precondition_every=10**6)",
    "soap_no_refresh": "soap, bases never refreshed (precondition_every=10**6)",
    "soap_own_slots": "soap, a slot of each statistic's own size (SOAP's earlier layout)",
}
NEVER = 10**6  # precondition_every of the no-refresh rows
DEFAULTS = dict(d_model=512, layers=8, heads=8, seq_len=256, batch=64, block_size=128,
                precondition_every=10, warmup=10, steps=30, cap=100.0, budget=280.0)
TINY = dict(d_model=32, layers=1, heads=2, seq_len=16, batch=4, block_size=16,
            precondition_every=4, warmup=5, steps=5, cap=150.0, budget=450.0)


def base_name(name: str) -> str:
  """``shampoo`` of ``shampoo+nesterov=True``: an optimizer named with options (a spec, as
  ``lm.py`` takes; its learning rate is ``--learning-rate``)."""
  return name.partition("+")[0]


def label(name: str) -> str:
  options = name.partition("+")[2]
  return LABELS[base_name(name)] + (f", {options.replace('+', ', ')}" if options else "")


def make_optimizer(name: str, args: argparse.Namespace) -> Any:
  """The optax transformation called ``name`` (a spec: ``name[+key=value...]``, the options
  replacing the row's settings); imports what it needs only when built."""
  # Imported here: the parent process never needs them (nor initializes a backend).
  import peers  # noqa: PLC0415

  import shampoo_optax  # noqa: PLC0415

  base, options, _ = peers.parse_spec(name)
  lr, wd = args.learning_rate, 1e-4
  blocks = dict(block_size=args.block_size, precondition_every=args.precondition_every,
                weight_decay=wd)
  never = dict(blocks, precondition_every=NEVER)
  builders: dict[str, Callable[..., Any]] = {
      "adamw": lambda **kw: peers.adamw(lr, **{"weight_decay": wd, **kw}),
      "muon": lambda **kw: peers.muon(lr, **{"weight_decay": wd, **kw}),
      "google": lambda **kw: peers.google_shampoo(lr, **{
          "block_size": args.block_size,
          "preconditioning_compute_steps": args.precondition_every, "weight_decay": wd, **kw}),
      "shampoo": lambda **kw: shampoo_optax.shampoo(lr, **{**blocks, **kw}),
      "shampoo_eigh": lambda **kw: shampoo_optax.shampoo(
          lr, **{**blocks, "root_method": "eigh", **kw}),
      "shampoo_newton": lambda **kw: shampoo_optax.shampoo(
          lr, **{**blocks, "root_method": "newton", **kw}),
      "soap": lambda **kw: shampoo_optax.soap(lr, **{**blocks, **kw}),
      "shampoo_no_refresh": lambda **kw: shampoo_optax.shampoo(lr, **{**never, **kw}),
      "soap_no_refresh": lambda **kw: shampoo_optax.soap(lr, **{**never, **kw}),
      "soap_own_slots": lambda **kw: soap_own_slots(lr, **{**blocks, **kw}),
  }
  return builders[base](**options)


def soap_own_slots(learning_rate: float, **kwargs: Any) -> Any:
  """``shampoo_optax.soap`` with the layout SOAP had before its statistics shared padded slots
  (``soap_transform.block_layout(own_slots=True)``: a slot of each statistic's own size, so no
  stacks joined). A benchmark row, not an option: the layout function is replaced only while the
  optimizer is built, which is when SOAP makes its layout."""
  import shampoo_optax  # noqa: PLC0415
  from shampoo_optax import soap_transform  # noqa: PLC0415

  layout = soap_transform.block_layout
  soap_transform.block_layout = functools.partial(layout, own_slots=True)
  try:
    return shampoo_optax.soap(learning_rate, **kwargs)
  finally:
    soap_transform.block_layout = layout


# ----------------------------------------------------------------------------------------------
# One optimizer, in its own process
# ----------------------------------------------------------------------------------------------


def _write(path: pathlib.Path, result: dict[str, Any]) -> None:
  """Writes the result so far (the parent reads it even if this process is then killed)."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(result))
  tmp.replace(path)


def measure(args: argparse.Namespace, out: pathlib.Path) -> None:
  """Compiles and times one optimizer's train step; writes its measurements to ``out``."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import lm_common  # noqa: PLC0415
  import optax  # noqa: PLC0415

  name = args.child
  device = jax.devices()[0]
  result: dict[str, Any] = dict(optimizer=name, phase="setup", machine=hostinfo.describe(),
                                backend=jax.default_backend(), device_kind=device.device_kind)
  _write(out, result)
  try:
    tx = make_optimizer(name, args)
  except ImportError as e:
    if (e.name or "").split(".")[0] != "precondition":
      raise  # a broken install of ours or a peer's is a failure, not a missing extra
    result.update(phase="done", error=f"not installed ({e.name}: pip install precondition-opt)")
    _write(out, result)
    return

  corpus = lm_common.load_corpus(num_chars=2_000_000)
  model = lm_common.CharTransformer(len(corpus.vocab), d_model=args.d_model,
                                    num_layers=args.layers, num_heads=args.heads,
                                    seq_len=args.seq_len)
  stream = lm_common.batches(corpus.train, args.batch, args.seq_len, seed=0)
  data = [tuple(jax.device_put(v) for v in next(stream)) for _ in range(8)]
  if args.compile_only:  # shapes are all a compile needs (and model.init's own compile is not)
    params = jax.eval_shape(model.init, jax.random.key(0), data[0][0])
    opt_state = jax.eval_shape(tx.init, params)
  else:
    params = jax.jit(model.init)(jax.random.key(0), data[0][0])
    opt_state = jax.jit(tx.init)(params)
  result.update(
      params=sum(leaf.size for leaf in jax.tree.leaves(params)), vocab=len(corpus.vocab),
      state_bytes=sum(math.prod(leaf.shape) * leaf.dtype.itemsize
                      for leaf in jax.tree.leaves(opt_state)), phase="compile")
  _write(out, result)

  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: lm_common.cross_entropy(model.apply(p, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  traced = jax.jit(train_step, donate_argnums=(0, 1)).trace(params, opt_state, *data[0])
  traced_at = time.perf_counter()
  lowered = traced.lower()
  lowered_at = time.perf_counter()
  step = lowered.compile(dict(args.xla_option or ()))
  done_at = time.perf_counter()
  result.update(compile_s=done_at - start, trace_s=traced_at - start,
                lower_s=lowered_at - traced_at, xla_compile_s=done_at - lowered_at,
                phase="first step")
  if args.hlo_dir:
    pathlib.Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.hlo_dir) / f"{name}.hlo.txt").write_text(step.as_text())
  if args.compile_only:
    result.update(phase="done")
    _write(out, result)
    return
  _write(out, result)

  times = []
  loss = jnp.zeros([])
  for i in range(args.warmup + args.steps):
    x, y = data[i % len(data)]
    start = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(step(params, opt_state, x, y))
    elapsed = time.perf_counter() - start
    if i == 0:
      result.update(first_step_s=elapsed, phase="warm-up")
      _write(out, result)
    if i + 1 == args.warmup:
      result.update(phase="timed steps")
      _write(out, result)
    if i >= args.warmup:
      times.append(elapsed)
  # As a training loop that does not block on each step runs: the host queues the next step
  # while the device runs this one, unless something in the step makes it wait (on a GPU, a
  # lax.cond or while loop whose predicate is copied to the host).
  start = time.perf_counter()
  for i in range(args.steps):
    x, y = data[i % len(data)]
    params, opt_state, loss = step(params, opt_state, x, y)
  jax.block_until_ready((params, opt_state, loss))
  result.update(pipelined_step_s=(time.perf_counter() - start) / args.steps)
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  if args.profile:
    result.update(phase="profile")
    _write(out, result)

    def steps(n, state):
      for i in range(n):
        state = step(*state, *data[i % len(data)])[:2]
      return jax.block_until_ready(state)

    try:
      result["profile"], (params, opt_state) = profile(
          steps, (params, opt_state), args.profile, step.as_text(),
          keep=pathlib.Path(args.hlo_dir) / f"{name}.xplane.pb" if args.hlo_dir else None)
    except Exception as e:  # noqa: BLE001  (a profiler that cannot start costs no figures)
      result["profile"] = dict(error=f"{type(e).__name__}: {e}"[:300])
  result.update(
      phase="done", step_s=statistics.median(times), worst_step_s=max(times),
      step_times_s=times, peak_bytes=None if peak is None else int(peak),
      final_loss=float(loss))
  if not math.isfinite(result["final_loss"]):
    result["error"] = f"loss {result['final_loss']} after {args.warmup + args.steps} steps"
  _write(out, result)


_HLO_OP = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}", re.M)
def hlo_sources(hlo_text: str) -> dict[str, str]:
  """``{instruction: "dir/file.py:line"}`` for every instruction of a compiled module: the line
  each op (a fusion: its root's) was traced from, "?" where its metadata names none (parsed as
  ``update_cost.py`` parses it)."""
  import update_cost  # noqa: PLC0415  (imports jax: in the child only)

  module = update_cost.parse_hlo(hlo_text)
  return {ins["name"]: update_cost.source_location(module, ins["line"]) or "?"
          for instructions in module["computations"].values() for ins in instructions}


def profile(run_steps: Callable[[int, Any], Any], state: Any, steps: int, hlo_text: str,
            top: int = 20, keep: pathlib.Path | None = None) -> tuple[dict[str, Any], Any]:
  """Traces ``run_steps(steps, state)`` with ``jax.profiler`` and sums the time of each compiled
  op (GPU kernels where a device plane has them, else the host's XLA ops), attributed to the
  source line it was traced from. Returns the summary (per step) and the new state."""
  import jax  # noqa: PLC0415

  with tempfile.TemporaryDirectory(prefix="trace_") as tmp:
    with jax.profiler.trace(tmp):
      state = run_steps(steps, state)
    files = sorted(pathlib.Path(tmp).rglob("*.xplane.pb"))
    if not files:
      return dict(error="no trace written"), state
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    if keep is not None:
      keep.write_bytes(files[-1].read_bytes())

  def op_events(planes, nested):
    """(op, ns) of each op run; with ``nested`` (a host's lines), an op that encloses others
    on its line (a ``while`` or ``conditional``) is left out, its ops counted instead. (A
    GPU's kernels on one stream may overlap a little at their ends, and are all counted.)"""
    for plane in planes:
      for line in plane.lines:
        ops = []
        for event in line.events:
          stats = dict(event.stats)
          if stats.get("hlo_op") and str(stats.get("hlo_module", "")).startswith("jit_"):
            op = str(stats["hlo_op"])
            if op.startswith("command_buffer"):  # a CUDA graph: its kernels named as fusions
              op = kernels.get(event.name, f"kernel {event.name[:48]}")
            ops.append((event.start_ns, event.end_ns, op))
        ops.sort(key=lambda o: (o[0], -o[1]))
        for i, (start, end, op) in enumerate(ops):
          if nested and i + 1 < len(ops) and ops[i + 1][1] <= end:
            continue  # the next op runs inside this one
          yield op, end - start
  sources = hlo_sources(hlo_text)
  # A GPU kernel is named after its fusion with "." and "-" as "_" (library calls keep theirs).
  kernels = {re.sub(r"[.\-]", "_", op): op for op in sources}
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith("/device:") and "CPU" not in p.name]
  events = list(op_events(device, nested=False)) or list(
      op_events((p for p in planes if p.name.startswith("/host:")), nested=True))
  by_op: dict[str, list[float]] = {}
  by_source: dict[str, list[float]] = {}
  for op, ns in events:
    for table, key in ((by_op, op), (by_source, sources.get(op, "?"))):
      entry = table.setdefault(key, [0.0, 0])
      entry[0] += ns / 1e6 / steps
      entry[1] += 1 / steps
  ranked = lambda table: sorted(table.items(), key=lambda kv: -kv[1][0])  # noqa: E731
  return dict(
      steps=steps, on="device" if device and events else "host",
      op_ms_per_step=sum(ms for ms, _ in by_op.values()),
      ops_per_step=sum(n for _, n in by_op.values()),
      top_ops=[[op, ms, n, sources.get(op, "?")] for op, (ms, n) in ranked(by_op)[:top]],
      by_source=[[where, ms, n] for where, (ms, n) in ranked(by_source)[:top]],
  ), state


def profile_tables(rows: list[dict]) -> list[str]:
  """Per optimizer traced (``--profile``): its ops' time by source line, and its top ops."""
  tables = []
  for r in rows:
    prof = r.get("profile")
    if not prof or "error" in prof:
      continue
    step_ms = 1e3 * r["step_s"] if _num(r, "step_s") else None
    head = (f"{label(r['optimizer'])}: {prof['ops_per_step']:.0f} ops per step on the "
            f"{prof['on']}, {prof['op_ms_per_step']:.2f} ms of op time per step"
            + (f" (step {step_ms:.2f} ms)" if step_ms else "") + f", {prof['steps']} steps traced")
    by_source = markdown(["source line", "ms/step", "ops/step"],
                         [[w, f"{ms:.3f}", f"{n:.1f}"] for w, ms, n in prof["by_source"]])
    top = markdown(["op", "ms/step", "calls/step", "source line"],
                   [[o, f"{ms:.3f}", f"{n:.1f}", w] for o, ms, n, w in prof["top_ops"]])
    tables.append(f"{head}\n\n{by_source}\n\n{top}")
  return tables


# ----------------------------------------------------------------------------------------------
# The parent: one process per optimizer
# ----------------------------------------------------------------------------------------------

_MODEL_FLAGS = ("d_model", "layers", "heads", "seq_len", "batch", "block_size",
                "precondition_every", "warmup", "steps", "learning_rate", "profile",
                "hlo_dir")
# XLA's own timings of the train step's compile, in its log when TF_CPP_VMODULE names
# gpu_compiler (or cpu_compiler) at level 1: the HLO passes (autotuning included) and the backend
# (code generation).
_XLA_PHASE = re.compile(r"(RunHloPasses|RunBackend|Running HLO passes on) .*?"
                        r"jit_train_step\]? .*?time: [^(]*\((\d+) us\)")


def run_one(name: str, args: argparse.Namespace, cap: float, workdir: pathlib.Path) -> dict:
  """Runs ``name`` in a child process for at most ``cap`` seconds; returns its row."""
  out = workdir / f"{name}.json"
  log = workdir / f"{name}.log"
  command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", name,
             "--child-out", str(out)]
  for flag in _MODEL_FLAGS:
    if getattr(args, flag) is not None:
      command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
  if args.compile_only:
    command.append("--compile-only")
  for key, value in args.xla_option or ():
    command += ["--xla-option", f"{key}={value}"]
  env = dict(os.environ)
  # The package from this checkout, unless PYTHONPATH already names one.
  env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
  start = time.perf_counter()
  with open(log, "w") as log_file:
    child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                             cwd=ROOT)
    try:
      returncode = child.wait(timeout=cap)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()
      returncode = None
  wall = time.perf_counter() - start
  row = json.loads(out.read_text()) if out.exists() else dict(optimizer=name, phase="start")
  row.update(optimizer=name, process_s=wall)
  if returncode is None:
    row["error"] = f"timeout: {row['phase']} not done within {cap:.0f} s"
  elif returncode != 0 or row.get("phase") != "done":
    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    row.setdefault("error", f"failed in {row['phase']} (exit {returncode}): "
                   f"{tail[0][:200] if tail else 'no output'}")
  output = log.read_text().strip() if log.exists() else ""
  for phase, micros in _XLA_PHASE.findall(output):
    key = "xla_passes_s" if "passes" in phase.lower() else "xla_backend_s"
    row[key] = int(micros) / 1e6
  if args.hlo_dir and output:  # kept beside the HLO: e.g. XLA's own logs (TF_CPP_VMODULE)
    pathlib.Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.hlo_dir) / f"{name}.log").write_text(output)
  if "error" in row and "not installed" not in row["error"] and output:
    print(f"--- {name}: last lines of its output ---", file=sys.stderr)
    print("\n".join(output.splitlines()[-15:]), file=sys.stderr, flush=True)
  return row


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """An aligned Markdown table (readable as printed, pastes into README.md)."""
  cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
  return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                    *map(line, cells[1:])])


def _num(row: dict | None, key: str) -> float | None:
  value = None if row is None else row.get(key)
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _ratio(row: dict, base: dict | None, key: str) -> str:
  value, ref = _num(row, key), _num(base, key)
  return "-" if value is None or not ref else f"{value / ref:.2f}"


def _bytes(value: float | None) -> str:
  if value is None:
    return "n/a"
  return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def results_table(rows: list[dict]) -> str:
  base = next((r for r in rows if r["optimizer"] == "adamw" and "error" not in r), None)
  table = []
  for r in rows:
    name = label(r["optimizer"])
    pipelined = _num(r, "pipelined_step_s")
    if "error" in r and _num(r, "step_s") is not None:
      name += f" ({r['error']})"  # timed, but e.g. the loss is not finite
    elif "error" in r:
      compiled = _num(r, "compile_s")  # a timeout after compiling still tells this
      table.append([name, r["error"], "-", "-", "-", "-",
                    "-" if compiled is None else f"{compiled:.1f}",
                    _ratio(r, base, "compile_s"), "-", _bytes(_num(r, "state_bytes")),
                    _ratio(r, base, "state_bytes"), "-", "-"])
      continue
    table.append([
        name, f"{1e3 * r['step_s']:.1f}", _ratio(r, base, "step_s"),
        f"{1e3 * r['worst_step_s']:.1f}", "-" if pipelined is None else f"{1e3 * pipelined:.1f}",
        _ratio(r, base, "pipelined_step_s"), f"{r['compile_s']:.1f}",
        _ratio(r, base, "compile_s"), f"{r['first_step_s']:.2f}", _bytes(r["state_bytes"]),
        _ratio(r, base, "state_bytes"), _bytes(_num(r, "peak_bytes")),
        _ratio(r, base, "peak_bytes")])
  return markdown(["optimizer", "ms/step", "x AdamW", "worst ms", "pipelined ms/step",
                   "x AdamW", "compile s", "x AdamW",
                   "first step s", "optimizer state", "x AdamW", "peak memory", "x AdamW"], table)


def breakdown_table(rows: list[dict]) -> str | None:
  """Shampoo's step in parts: without root refreshes, the refreshes, the rest over AdamW."""
  by = {r["optimizer"]: r for r in rows if _num(r, "step_s") is not None}
  adamw = _num(by.get("adamw"), "step_s")
  table = []

  def add(part: str, seconds: float | None, whole: float | None) -> None:
    if seconds is None:
      return
    table.append([part, f"{1e3 * seconds:.1f}",
                  "-" if not adamw else f"{seconds / adamw:.2f}",
                  "-" if not whole else f"{seconds / whole:.2f}"])

  for prefix, what in (("shampoo", "roots"), ("soap", "bases")):
    never = _num(by.get(f"{prefix}_no_refresh"), "step_s")
    if never is None:
      continue
    whole = _num(by.get(prefix), "step_s")
    add(f"{prefix}: whole step (defaults)", whole, whole)
    add(f"{prefix}: no refresh ({what} never recomputed)", never, whole)
    if adamw:
      add(f"{prefix}: no refresh - AdamW's step (the update's cost outside refreshes, over "
          "AdamW's)", never - adamw, whole)
    for suffix, label in (("", "defaults"), ("_eigh", "eigh"), ("_newton", "newton")):
      variant = _num(by.get(prefix + suffix), "step_s")
      if variant is not None:
        add(f"{prefix}: refresh only, {label} (its step - no refresh)", variant - never,
            variant)
  if not table:
    return None
  return markdown(["part", "ms/step", "x AdamW's step", "share of the step"], table)


COMPILE_PHASES = {"compile_s": "compile s", "trace_s": "trace s", "lower_s": "lower s",
                  "xla_compile_s": "XLA compile s", "xla_passes_s": "of which HLO passes s",
                  "xla_backend_s": "of which backend s"}


def compile_table(rows: list[dict]) -> str | None:
  """Where each optimizer's compile time goes: Python tracing, lowering to StableHLO, and XLA's
  compile (optimization passes, autotuning, code generation)."""
  base = next((r for r in rows if r["optimizer"] == "adamw" and "error" not in r), None)
  keys = [key for key in COMPILE_PHASES if key in ("compile_s", "trace_s", "lower_s",
                                                   "xla_compile_s")
          or any(_num(r, key) is not None for r in rows)]
  table = []
  for r in rows:
    if _num(r, "xla_compile_s") is None:
      continue
    table.append([label(r["optimizer"])] + [
        cell for key in keys
        for cell in ("-" if _num(r, key) is None else f"{r[key]:.1f}", _ratio(r, base, key))])
  if not table:
    return None
  header = ["optimizer"]
  for key in keys:
    header += [COMPILE_PHASES[key], "x AdamW"]
  return markdown(header, table)


def parent(args: argparse.Namespace) -> None:
  names = [n for n in args.optimizers.split(",") if n]
  unknown = [n for n in names if base_name(n) not in LABELS or "@" in n]
  if unknown:
    raise SystemExit(f"unknown optimizer(s) {unknown}; choose from {', '.join(LABELS)}, each "
                     "with options as name+key=value (the learning rate is --learning-rate)")
  if "adamw" not in names:
    names.insert(0, "adamw")
  order = sorted(names, key=lambda n: RUN_ORDER.index(base_name(n)))
  # hostinfo.start() would initialize a backend here (jax.devices()), which on a GPU holds
  # memory the children need; the machine line comes from the first child instead.
  run = dict(command=shlex.join(sys.orig_argv), machine="?",
             load_average_start=hostinfo.load_average(), started=time.perf_counter())
  print(f"command: {run['command']}")
  print(f"load average at start (1, 5, 15 min): {run['load_average_start']}")
  print(f"CharTransformer d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
        f"batch {args.batch} x {args.seq_len} tokens, float32 params; block_size "
        f"{args.block_size}, precondition_every {args.precondition_every}; {args.warmup} warm-up "
        f"+ {args.steps} timed steps; each optimizer in its own process, at most {args.cap:.0f} s "
        f"each and {args.budget:.0f} s in all", flush=True)
  rows = {}
  with tempfile.TemporaryDirectory(prefix="accelerator_") as tmp:
    for name in order:
      left = args.budget - (time.perf_counter() - run["started"])
      if left < min(args.cap, 10.0):
        rows[name] = dict(optimizer=name, error=f"skipped: --budget {args.budget:.0f} s spent")
        print(f"  {name}: {rows[name]['error']}", flush=True)
        continue
      row = run_one(name, args, min(args.cap, left), pathlib.Path(tmp))
      if left < args.cap and "timeout" in row.get("error", ""):
        row["error"] += " (the rest of --budget)"
      rows[name] = row
      if run["machine"] == "?" and row.get("machine"):
        run["machine"] = row["machine"]
        print(f"machine: {run['machine']}")
      if _num(row, "step_s") is not None:
        print(f"  {name}: {1e3 * row['step_s']:.1f} ms/step, compile {row['compile_s']:.1f} s, "
              f"process {row['process_s']:.0f} s", flush=True)
      elif "error" in row:
        print(f"  {name}: {row['error']} (process {row['process_s']:.0f} s)", flush=True)
      else:
        print(f"  {name}: compile {row['compile_s']:.1f} s, process {row['process_s']:.0f} s",
              flush=True)
  ordered = [rows[n] for n in sorted(rows, key=lambda n: list(LABELS).index(base_name(n)))]
  kind = next((r["device_kind"] for r in ordered if r.get("device_kind")), "?")
  params = next((r["params"] for r in ordered if r.get("params")), 0)
  print(f"\nOn {kind}: {params / 1e6:.2f}M parameters" + ("" if args.compile_only else
        f"; ms/step = median of {args.steps} steps "
        f"each blocked on (worst ms: the slowest of them); pipelined = {args.steps} steps "
        f"called back to back, blocked on at the end; x AdamW = ratio to optax.adamw in this "
        f"run; first "
        f"step = the first call after compiling; peak memory = the device's peak bytes in use "
        f"in that optimizer's process") + ".\n")
  if not args.compile_only:
    print(results_table(ordered))
  phases = compile_table(ordered)
  if phases:
    print("\nCompile time in phases (jit(...).trace, .lower, .compile"
          + (f", compiler options {dict(args.xla_option)}" if args.xla_option else "")
          + "; XLA's passes and backend where its log has them):\n")
    print(phases)
  parts = breakdown_table(ordered)
  if parts:
    print("\nShampoo's step in parts (medians; share = of the whole step named):\n")
    print(parts)
  for table in profile_tables(ordered):
    print(f"\nWhere the time goes (--profile), {table}")
  hostinfo.finish(run, args, device_kind=kind, params=params, rows=ordered)
  # A timeout or a skipped row is a figure on an accelerator (issue 12's SOAP), but in the CI
  # smoke run it means something hangs.
  tolerated = ("not installed",) if args.tiny else ("not installed", "timeout", "skipped")
  failed = [r["optimizer"] for r in ordered
            if "error" in r and not r["error"].startswith(tolerated)]
  if failed:
    raise SystemExit(f"failed: {', '.join(failed)}")


def _xla_option(text: str) -> tuple[str, Any]:
  """``KEY=VALUE`` with VALUE read as a bool, int or float where it is one."""
  key, sep, value = text.partition("=")
  if not sep:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  if value.lower() in ("true", "false"):
    return key, value.lower() == "true"
  for parse in (int, float):
    try:
      return key, parse(value)
    except ValueError:
      pass
  return key, value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  for key in ("d_model", "layers", "heads", "seq_len", "batch", "block_size",
              "precondition_every", "warmup", "steps"):
    parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                        help=f"(default {DEFAULTS[key]}; --tiny: {TINY[key]})")
  parser.add_argument("--cap", type=float, default=None,
                      help="seconds one optimizer's process may take (default "
                      f"{DEFAULTS['cap']:.0f}; --tiny: {TINY['cap']:.0f})")
  parser.add_argument("--budget", type=float, default=None,
                      help=f"seconds for the whole run (default {DEFAULTS['budget']:.0f}; "
                      f"--tiny: {TINY['budget']:.0f})")
  parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default %(default)g)")
  parser.add_argument("--optimizers", default=None,
                      help=f"comma-separated, from {','.join(LABELS)} (default "
                      f"{','.join(DEFAULT_OPTIMIZERS)}; --tiny: {','.join(TINY_OPTIMIZERS)}), "
                      "each optionally with options, as lm.py takes them: "
                      "shampoo+nesterov=True+precondition_every=3; adamw is always run, for "
                      "the ratios")
  parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                      help="also trace this many steps (after the timed ones) with jax.profiler "
                      "and print each optimizer's op time by source line (default: off)")
  parser.add_argument("--hlo-dir", default=None, metavar="DIR",
                      help="also write each optimizer's compiled train step (HLO text), its "
                      "process's output (.log) and, with --profile, its trace (xplane.pb) here")
  parser.add_argument("--compile-only", action="store_true",
                      help="only compile each optimizer's train step (from shapes: no init, no "
                      "steps) and print the compile table")
  parser.add_argument("--xla-option", action="append", type=_xla_option, metavar="KEY=VALUE",
                      help="an XLA option for the train step's compile (repeatable), e.g. "
                      "xla_gpu_autotune_level=0: where compile time goes")
  parser.add_argument("--tiny", action="store_true",
                      help="a tiny model for a CPU smoke run (CI); explicit flags override it")
  parser.add_argument("--json", metavar="PATH", default=None, help="also write results here")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--child-out", type=pathlib.Path, help=argparse.SUPPRESS)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  for key, value in (TINY if args.tiny else DEFAULTS).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.optimizers is None:
    args.optimizers = ",".join(TINY_OPTIMIZERS if args.tiny else DEFAULT_OPTIMIZERS)
  if args.child:
    measure(args, args.child_out)
  else:
    parent(args)


if __name__ == "__main__":
  main()
