# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Compile time and step time of a full train step as the model grows: AdamW vs Shampoo.

The model is the example character Transformer (``examples/lm_common.py``) with ``d_model`` 128,
``seq_len`` 64 and batch 16, small enough per layer that the optimizer's own cost shows, with
``--layers`` blocks (default 4, 8, 16, 32, 64). Its layers are unrolled Python, so the forward
and backward graph, and AdamW's per-leaf update, grow with depth. Shampoo
(``shampoo_optax.shampoo`` with its defaults: block_size 128, precondition_every 10, root method
'auto', i.e. eigh on CPU and Newton elsewhere) stacks every statistic of one size into one array,
so its inverse roots are one batched computation per stack whatever the depth. What this
checks: Shampoo's compile time over AdamW's should stay nearly flat as layers are added, its
step time should grow linearly in layers, and its eigh and while ops should not multiply.

For each depth and optimizer:

- compile: seconds of ``jax.jit(step).trace(...)``, ``.lower()`` and ``.compile()`` of the whole
  train step (loss, gradients, optimizer update, parameter update), each reported, and their sum;
  ``+/layer`` is the sum's increment per added layer from the previous depth.
- step: median wall time of ``--steps`` steps of the compiled step (``block_until_ready``) after
  ``--warmup`` steps (by default past Shampoo's start_preconditioning_step, so roots are used and
  refreshed, 1/10 of them per step with the default staggering).
- update: the same compile time, and HLO instruction count, for ``tx.update`` jitted alone,
  which isolates the optimizer's share of the compile.
- HLO: in the optimized HLO (``compiled.as_text()``), the number of instructions, of eigh custom
  calls (LAPACK/cuSOLVER ``syevd`` or XLA ``Eigh``), of ``while`` loops and of ``conditional``s.
  For Shampoo the last three should not grow with depth.
- stacks: Shampoo's statistic stacks, ``count x d`` for ``count`` statistics of ``d x d``.

Run:
  python benchmarks/growth.py              # full: 4..64 layers (~5-10 min on 2 CPU cores)
  python benchmarks/growth.py --tiny       # seconds-long smoke run (CI): 1 and 2 layers
  python benchmarks/growth.py --layers 8,16 --json growth.json
"""

from __future__ import annotations

import os

# Before NumPy/JAX are imported: jaxlib's eigh calls SciPy's OpenBLAS, whose threads fight
# XLA's thread pool and make eigh several times slower inside jitted programs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import shampoo_optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import hostinfo  # noqa: E402
import lm_common  # noqa: E402

OPTIMIZERS = ("adamw", "shampoo")
DEFAULTS = dict(layers=(4, 8, 16, 32, 64), warmup=10, steps=20)
TINY = dict(layers=(1, 2), warmup=2, steps=3)

_EIGH_TARGET = re.compile(r'custom_call_target="[^"]*(syevd|syev|heevd|eigh)[^"]*"', re.IGNORECASE)
_EIGH_OP = re.compile(r"=\s*\S+\s+eigh\(", re.IGNORECASE)
_WHILE = re.compile(r"\swhile\(")
_CONDITIONAL = re.compile(r"\sconditional\(")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+\s*=\s", re.MULTILINE)


def hlo_counts(hlo: str) -> dict[str, int]:
  """Instruction, eigh, while and conditional counts of an HLO module's text."""
  return dict(
      instructions=len(_INSTRUCTION.findall(hlo)),
      eigh=len(_EIGH_TARGET.findall(hlo)) + len(_EIGH_OP.findall(hlo)),
      whiles=len(_WHILE.findall(hlo)),
      conditionals=len(_CONDITIONAL.findall(hlo)),
  )


def make_optimizer(name: str, learning_rate: float,
                   root_method: str) -> optax.GradientTransformation:
  if name == "adamw":
    return optax.adamw(learning_rate)
  if name == "shampoo":
    return shampoo_optax.shampoo(learning_rate, root_method=root_method)
  raise ValueError(f"unknown optimizer {name!r}")


def make_step(model: lm_common.CharTransformer, tx: optax.GradientTransformation) -> Callable:
  def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    loss, grads = jax.value_and_grad(
        lambda p: lm_common.cross_entropy(model.apply(p, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _block_side(stat: Any) -> str:
  """Side d of the d x d statistics in one stack, stored full or as packed triangles."""
  leaves = jax.tree.leaves(stat)
  if not leaves:
    return "?"
  shape = leaves[0].shape
  if len(shape) == 3:
    return str(shape[-1])
  if len(shape) == 2:
    d = (math.isqrt(8 * shape[-1] + 1) - 1) // 2
    if d * (d + 1) // 2 == shape[-1]:
      return str(d)
  return "x".join(str(x) for x in shape)


def shampoo_stacks(opt_state: Any) -> str:
  """``count x d`` of each statistic stack (one per group) in a shampoo() state."""
  is_state = lambda s: isinstance(s, shampoo_optax.ShampooState)
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]
  return " ".join(f"{errors.shape[0]}x{_block_side(stat)}" for st in states
                  for errors, stat in zip(st.root_errors, st.stats)) or "-"


def measure(name: str, model: lm_common.CharTransformer, params: Any, data: Any,
            args: argparse.Namespace) -> dict[str, Any]:
  """Compiles and runs one optimizer's train step; returns the measurements."""
  tx = make_optimizer(name, args.learning_rate, args.root_method)
  opt_state = jax.jit(tx.init)(params)
  x, y = (jnp.asarray(v) for v in next(data))
  jitted = jax.jit(make_step(model, tx))
  t0 = time.perf_counter()
  traced = jitted.trace(params, opt_state, x, y)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  counts = hlo_counts(compiled.as_text())
  # The optimizer update alone (params stand in for gradients of the same tree and dtypes).
  t4 = time.perf_counter()
  update = jax.jit(tx.update).trace(params, opt_state, params).lower().compile()
  update_compile_s = time.perf_counter() - t4
  update_instructions = hlo_counts(update.as_text())["instructions"]

  times = []
  loss = jnp.zeros([])
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(compiled(params, opt_state, x, y))
    if i >= args.warmup:
      times.append(time.perf_counter() - start)
    x, y = (jnp.asarray(v) for v in next(data))
  loss = float(loss)
  if not math.isfinite(loss):
    raise FloatingPointError(f"{name}: loss {loss} after {args.warmup + args.steps} steps")
  return dict(
      trace_s=t1 - t0, lower_s=t2 - t1, xla_compile_s=t3 - t2, compile_s=t3 - t0,
      update_compile_s=update_compile_s, update_instructions=update_instructions,
      step_times_s=times, step_s=statistics.median(times), final_loss=loss,
      stacks=shampoo_stacks(opt_state) if name == "shampoo" else "-",
      state_bytes=sum(leaf.nbytes for leaf in jax.tree.leaves(opt_state)), **counts,
  )


def warm_up_compiler(corpus: lm_common.Corpus, args: argparse.Namespace) -> None:
  """Compiles a 1-layer step once per optimizer, so one-time JAX/XLA setup is not counted."""
  model = lm_common.CharTransformer(len(corpus.vocab), d_model=args.d_model, num_layers=1,
                                    num_heads=args.num_heads, seq_len=args.seq_len)
  x, y = next(lm_common.batches(corpus.train, args.batch_size, args.seq_len, seed=1))
  params = jax.jit(model.init)(jax.random.key(0), x)
  for name in args.optimizers:
    tx = make_optimizer(name, args.learning_rate, args.root_method)
    jax.jit(make_step(model, tx)).trace(params, jax.jit(tx.init)(params), x, y).lower().compile()


def parse_ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Compile time and step time of a CharTransformer train step as layers are "
      "added: optax.adamw vs shampoo_optax.shampoo.",
  )
  j = lambda xs: ",".join(str(x) for x in xs)
  parser.add_argument("--tiny", action="store_true",
                      help=f"seconds-long smoke run: layers {j(TINY['layers'])}, warmup "
                      f"{TINY['warmup']}, steps {TINY['steps']} (explicit options override)")
  parser.add_argument("--layers", type=parse_ints, default=None,
                      help=f"model depths (default {j(DEFAULTS['layers'])})")
  parser.add_argument("--warmup", type=int, default=None,
                      help=f"untimed steps after compiling (default {DEFAULTS['warmup']})")
  parser.add_argument("--steps", type=int, default=None,
                      help=f"timed steps, median reported (default {DEFAULTS['steps']})")
  parser.add_argument("--d-model", type=int, default=128, help="(default %(default)s)")
  parser.add_argument("--num-heads", type=int, default=4, help="(default %(default)s)")
  parser.add_argument("--seq-len", type=int, default=64, help="(default %(default)s)")
  parser.add_argument("--batch-size", type=int, default=16, help="(default %(default)s)")
  parser.add_argument("--learning-rate", type=float, default=1e-3,
                      help="for both optimizers (default %(default)g)")
  parser.add_argument("--root-method", default="auto", choices=("auto", "newton", "eigh"),
                      help="shampoo's root_method (default %(default)s: eigh on CPU)")
  parser.add_argument("--optimizers", type=lambda s: tuple(s.split(",")), default=OPTIMIZERS,
                      help=f"comma-separated, from {','.join(OPTIMIZERS)} (default: both)")
  parser.add_argument("--no-compiler-warmup", dest="compiler_warmup", action="store_false",
                      help="do not compile a 1-layer step first (then the first compile also "
                      "pays one-time setup)")
  parser.add_argument("--json", metavar="PATH", default=None, help="also write results here")
  return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  base = TINY if args.tiny else DEFAULTS
  for key, value in base.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  for name in args.optimizers:
    if name not in OPTIMIZERS:
      raise SystemExit(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
  return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
  corpus = lm_common.load_corpus(num_chars=200_000)
  if args.compiler_warmup:
    warm_up_compiler(corpus, args)
  rows = []
  for layers in args.layers:
    model = lm_common.CharTransformer(len(corpus.vocab), d_model=args.d_model,
                                      num_layers=layers, num_heads=args.num_heads,
                                      seq_len=args.seq_len)
    x0, _ = next(lm_common.batches(corpus.train, args.batch_size, args.seq_len, seed=0))
    params = jax.jit(model.init)(jax.random.key(0), x0)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    for name in args.optimizers:
      data = lm_common.batches(corpus.train, args.batch_size, args.seq_len, seed=0)
      row = dict(layers=layers, optimizer=name, params=num_params,
                 **measure(name, model, params, data, args))
      rows.append(row)
      print(f"  done {layers} layers {name}: compile {row['compile_s']:.1f} s, step "
            f"{1e3 * row['step_s']:.1f} ms", file=sys.stderr, flush=True)
  return rows


def print_tables(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
  def get(layers: int, name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["layers"] == layers and r["optimizer"] == name), None)

  print("\nPer optimizer: compile = trace + lower + XLA compile of the train step (s); +/layer = "
        "its increment per added layer; step = median step time; HLO counts from the optimized "
        "module; upd cmp / upd ins = compile seconds / HLO instructions of the optimizer update "
        "alone (jit of tx.update).")
  header = (f"{'layers':>6} {'params':>9} {'optimizer':>9} {'trace':>6} {'lower':>6} {'xla':>7} "
            f"{'compile':>7} {'+/layer':>7} {'step ms':>8} {'ms/layer':>8} {'+ms/layer':>9} "
            f"{'HLO ins':>8} {'eigh':>4} {'while':>5} {'cond':>4} {'upd cmp':>7} "
            f"{'upd ins':>7}  stacks")
  print(header)
  print("-" * len(header))
  for name in args.optimizers:
    previous = None
    for layers in args.layers:
      r = get(layers, name)
      inc = step_inc = "-"
      if previous is not None:
        dl = layers - previous["layers"]
        inc = f"{(r['compile_s'] - previous['compile_s']) / dl:.2f}"
        step_inc = f"{1e3 * (r['step_s'] - previous['step_s']) / dl:.2f}"
      print(f"{layers:>6} {r['params']:>9} {name:>9} {r['trace_s']:>6.2f} {r['lower_s']:>6.2f} "
            f"{r['xla_compile_s']:>7.2f} {r['compile_s']:>7.2f} {inc:>7} "
            f"{1e3 * r['step_s']:>8.1f} {1e3 * r['step_s'] / layers:>8.2f} {step_inc:>9} "
            f"{r['instructions']:>8} {r['eigh']:>4} {r['whiles']:>5} {r['conditionals']:>4} "
            f"{r['update_compile_s']:>7.2f} {r['update_instructions']:>7}  {r['stacks']}")
      previous = r
    print()

  if not {"adamw", "shampoo"} <= set(args.optimizers):
    return
  print("Shampoo vs AdamW (A): ratios, Shampoo's extra compile time (S-A, s) with its increment "
        "per added layer, and the compile time of the optimizer update alone (upd, s).")
  header = (f"{'layers':>6} {'compile A':>9} {'compile S':>9} {'S/A':>6} {'S-A':>7} "
            f"{'S-A +/layer':>11} {'upd A':>6} {'upd S':>6} {'step A ms':>9} {'step S ms':>9} "
            f"{'S/A':>6}")
  print(header)
  print("-" * len(header))
  previous_extra = None
  for layers in args.layers:
    a, s = get(layers, "adamw"), get(layers, "shampoo")
    extra = s["compile_s"] - a["compile_s"]
    inc = "-"
    if previous_extra is not None:
      inc = f"{(extra - previous_extra[1]) / (layers - previous_extra[0]):.3f}"
    previous_extra = (layers, extra)
    print(f"{layers:>6} {a['compile_s']:>9.2f} {s['compile_s']:>9.2f} "
          f"{s['compile_s'] / a['compile_s']:>6.2f} {extra:>7.2f} {inc:>11} "
          f"{a['update_compile_s']:>6.2f} {s['update_compile_s']:>6.2f} "
          f"{1e3 * a['step_s']:>9.1f} {1e3 * s['step_s']:>9.1f} {s['step_s'] / a['step_s']:>6.2f}")


def main(argv: Sequence[str] | None = None) -> None:
  args = resolve(build_parser().parse_args(argv))
  report = hostinfo.start()
  print(f"CharTransformer d_model {args.d_model}, heads {args.num_heads}, seq_len {args.seq_len}, "
        f"batch {args.batch_size}, layers {args.layers}; optimizers {args.optimizers} (shampoo: "
        f"defaults, root_method {args.root_method!r}); warmup {args.warmup} steps, "
        f"timed {args.steps} steps", flush=True)
  rows = run(args)
  print_tables(args, rows)
  hostinfo.finish(report, args, rows=rows)


if __name__ == "__main__":
  main()
