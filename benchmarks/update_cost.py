# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The compiled optimizer update alone: XLA's cost analysis and HLO op counts, vs AdamW.

No model runs and no array is allocated: the parameter tree of the example character
Transformer (``examples/lm_common.py``; default d_model 512, 8 layers, 8 heads, seq_len 256,
vocabulary of the stdlib corpus, ~25M parameters, float32) is built with ``jax.eval_shape``, the
optimizer state with ``jax.eval_shape(tx.init, ...)``, and each optimizer's
``jax.jit(tx.update).lower(grads, state, params).compile()`` is inspected. It is the
CPU-measurable stand-in for an accelerator's memory traffic (issue 12), and runs on any backend.

Per optimizer (``adamw``, ``muon`` = ``peers.muon``, ``shampoo`` with its defaults,
``shampoo_eigh`` / ``shampoo_newton`` = ``root_method='eigh'`` / ``'newton'``, ``soap``; also
``soap_eigh`` / ``soap_qr`` (``basis_method``) and ``google`` (``peers.google_shampoo``) on
request), only through the package's public API (``shampoo_optax.shampoo`` / ``soap`` with
``block_size``, ``precondition_every``, ``root_method``, ``basis_method``):

- ``flops``, ``bytes accessed``, ``transcendentals``: ``compiled.cost_analysis()``. XLA's static
  estimate: a ``while`` body is counted once (not times its trip count), a ``conditional`` as
  its costliest branch (so the root/basis refresh, which runs on some steps only, is included).
- op counts in the optimized HLO (``compiled.as_text()``): gather, scatter, transpose, copy,
  while, custom-call, dot (matrix products: on a GPU each distinct one is autotuned when the
  step compiles, most of Shampoo's compile time there), fusion, dynamic-slice,
  dynamic-update-slice, conditional, collectives
  (all-reduce, all-gather, all-to-all, collective-permute, reduce-scatter, their async forms),
  and all instructions. Counted over the **whole module**, i.e. including the instructions inside
  fused computations (XLA:CPU wraps even a lone copy or scatter in a fusion, so counting
  top-level instructions only would hide them), in while bodies, and in conditional branches.
- the same counts split into "outside" and "in conditional branches": an instruction is in a
  branch if its computation is a branch of a ``conditional`` (``branch_computations={...}`` or
  ``true_computation=`` / ``false_computation=``) or is called, at any depth, from one. In
  ``shampoo`` and ``soap`` the conditionals are the root/basis refresh (skipped on steps where
  no row is due). A GPU waits on a conditional's predicate, so there the staggered default has
  none; ``--refresh-as gpu`` (the default) compiles it so here too, and ``soap`` with the
  GPU's basis method (eigh, where a CPU's ``'auto'`` is QR); ``--refresh-as backend`` as
  this backend would (a CPU keeps the conditionals).
- gathers and scatters by the source line that emitted them: issue 12's target is none outside
  the refresh (the due rows' reads and writes: ``factor_matrices.py``, ``quantization.py``;
  SOAP's second-moment carry, ``soap_transform.py``).
- compile seconds: ``lower`` (tracing included) + ``compile``.
- with ``--top N``: the N instructions with the most bytes, estimated from the shapes in the HLO
  text (result + operands of each kernel-level instruction, i.e. not inside a fused
  computation; an operand a fusion only slices is charged the slices, one it updates in place
  the update; see ``instruction_bytes``), with the JAX op name and source line from their
  metadata (a fusion's are those of its root op), and the same estimate summed per source line;
  this points at what to rewrite. Their sum ("est. GB") is printed next to XLA's total.

Run:
  python benchmarks/update_cost.py                  # the 25M tree (a few minutes on 2 CPU cores)
  python benchmarks/update_cost.py --tiny           # a tiny tree, seconds (CI)
  python benchmarks/update_cost.py --optimizers adamw,shampoo --top 10 --json cost.json
  python benchmarks/update_cost.py --donate         # the state donated, as in a training step
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import shampoo_optax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import hostinfo  # noqa: E402
import lm_common  # noqa: E402
import peers  # noqa: E402

DEFAULT_OPTIMIZERS = ("adamw", "muon", "shampoo", "shampoo_eigh", "shampoo_newton", "soap")
TINY = dict(d_model=32, layers=1, heads=2, seq_len=16, block_size=16, precondition_every=4)
TINY_OPTIMIZERS = ("adamw", "shampoo", "soap")

# The op kinds counted, in table order; "collectives" sums COLLECTIVE_OPS.
COUNTED_OPS = ("gather", "scatter", "transpose", "copy", "while", "custom-call", "dot", "fusion",
               "dynamic-slice", "dynamic-update-slice", "conditional", "collectives")
COLLECTIVE_OPS = frozenset(
    f"{base}{suffix}"
    for base in ("all-reduce", "all-gather", "all-to-all", "collective-permute",
                 "reduce-scatter", "collective-broadcast", "ragged-all-to-all")
    for suffix in ("", "-start", "-done"))
# Instructions that move no data of their own (their callees' instructions are counted).
_FREE_OPS = frozenset(("parameter", "constant", "tuple", "get-tuple-element", "bitcast",
                       "while", "conditional", "call", "after-all", "partition-id",
                       "replica-id", "opt-barrier", "add-dependency"))


def make_optimizer(name: str, args: argparse.Namespace) -> optax.GradientTransformation:
  """``name`` may add options as lm.py's specs do: ``soap+orthogonalize=True``."""
  lr, wd = 1e-3, 1e-4
  name, kwargs, _ = peers.parse_spec(name)
  blocks = dict(block_size=args.block_size, precondition_every=args.precondition_every,
                weight_decay=wd, **kwargs)
  if name == "soap" and args.refresh_as == "gpu":
    # What basis_method='auto' is on GPUs; this backend's 'auto' would be
    # its own choice (QR on CPUs since 0.5.1).
    blocks.setdefault("basis_method", "eigh")
  builders: dict[str, Callable[[], optax.GradientTransformation]] = {
      "adamw": lambda: peers.adamw(lr, weight_decay=wd),
      "muon": lambda: peers.muon(lr, weight_decay=wd),
      "google": lambda: peers.google_shampoo(
          lr, block_size=args.block_size, preconditioning_compute_steps=args.precondition_every,
          weight_decay=wd),
      "shampoo": lambda: shampoo_optax.shampoo(lr, **blocks),
      "shampoo_eigh": lambda: shampoo_optax.shampoo(lr, root_method="eigh", **blocks),
      "shampoo_newton": lambda: shampoo_optax.shampoo(lr, root_method="newton", **blocks),
      "soap": lambda: shampoo_optax.soap(lr, **blocks),
      "soap_eigh": lambda: shampoo_optax.soap(lr, basis_method="eigh", **blocks),
      "soap_qr": lambda: shampoo_optax.soap(lr, basis_method="qr", **blocks),
  }
  if name not in builders:
    raise SystemExit(f"unknown optimizer {name!r}; choose from {', '.join(builders)}")
  return builders[name]()


# ----------------------------------------------------------------------------------------------
# HLO text
# ----------------------------------------------------------------------------------------------

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s*([a-z][a-z0-9\-]*)\(")
_CALLEES = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation|branch_computations|"
    r"called_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_ARRAY = re.compile(r"\b(pred|token|[subfc]\d+(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
_STACK_FRAME = re.compile(r"stack_frame_id=(\d+)")
_COMMENT = re.compile(r"/\*.*?\*/")
_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_BRANCH_KEYS = ("true_computation", "false_computation", "branch_computations")


def _balanced(text: str, start: int) -> int:
  """Index just past the parenthesis group that opens at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  return len(text)


def shape_bytes(type_text: str) -> int:
  """Bytes of every array in an HLO type (a tuple's elements summed)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype == "token":
      continue
    bits = 8 if dtype == "pred" else int(re.match(r"[a-z]+(\d+)", dtype).group(1))
    total += math.prod(int(d) for d in dims.split(",") if d) * bits / 8
  return int(total)


def parse_hlo(text: str) -> dict[str, Any]:
  """Computations of an HLO module: their instructions and which computations each calls.

  Returns ``dict(computations={name: [instruction, ...]}, entry=name, tables=...)``, each
  instruction a dict with ``name``, ``opcode``, ``type`` (the result type's text), ``operands``
  (names), ``callees`` ({attribute: [computation names]}) and ``line``; ``tables`` holds the
  module's stack-frame tables (``FileNames`` ... ``StackFrames``: {id: text}) where it has them.
  """
  computations: dict[str, list[dict[str, Any]]] = {}
  tables: dict[str, dict[int, str]] = {}
  entry, current, table = None, None, None
  for line in text.splitlines():
    if not line.strip() or line.startswith("HloModule"):
      table = None
      continue
    if line.strip() in _TABLES:
      table = tables.setdefault(line.strip(), {})
      continue
    if table is not None and (m := re.match(r"^(\d+)\s+(.*)$", line)):
      table[int(m.group(1))] = m.group(2)
      continue
    if not line[0].isspace():
      if line.rstrip().endswith("{") and (m := _HEADER.match(line)):
        current = m.group(1)
        computations[current] = []
        if line.startswith("ENTRY"):
          entry = current
      elif line.strip() == "}":
        current = None
      continue
    m = _INSTRUCTION.match(line)
    if current is None or not m:
      continue
    name, rest = m.groups()
    rest = _COMMENT.sub("", rest)  # XLA numbers long operand lists: /*index=5*/
    if rest.startswith("("):
      end = _balanced(rest, 0)
    else:
      end = len(rest.split(None, 1)[0]) if rest.split() else 0
    type_text, after = rest[:end], rest[end:]
    op = _OPCODE.match(after)
    if not op:
      continue
    open_paren = op.end() - 1
    close = _balanced(after, open_paren)
    operands = [piece.strip().split()[-1].lstrip("%")
                for piece in _split_top_level(after[open_paren + 1:close - 1]) if piece.strip()]
    attributes = after[close:]
    callees = {key: [c.strip().lstrip("%") for c in value.strip("{}").split(",") if c.strip()]
               for key, value in _CALLEES.findall(attributes)}
    computations[current].append(dict(name=name, opcode=op.group(1), type=type_text,
                                      operands=operands, callees=callees, line=line.strip()))
  if entry is None and computations:
    entry = list(computations)[-1]
  return dict(computations=computations, entry=entry, tables=tables)


def _short_path(path: str) -> str:
  """``optax/_src/transform.py`` for an installed package, else the last two path parts
  (``shampoo_optax/transform.py``): file names alone are ambiguous."""
  if "site-packages/" in path:
    return path.rsplit("site-packages/", 1)[1]
  return "/".join(pathlib.PurePath(path).parts[-2:])


def source_location(module: dict[str, Any], line: str) -> str:
  """``file:line`` of the Python code that emitted an instruction, from its metadata: either
  ``source_file``/``source_line`` or a ``stack_frame_id`` into the module's stack-frame tables
  (its innermost frame)."""
  if m := _SOURCE.search(line):
    return f"{_short_path(m.group(1))}:{m.group(2)}"
  m = _STACK_FRAME.search(line)
  tables = module["tables"]
  if not m or "StackFrames" not in tables:
    return ""
  frame = tables["StackFrames"].get(int(m.group(1)), "")
  location = re.search(r"file_location_id=(\d+)", frame)
  location = tables.get("FileLocations", {}).get(int(location.group(1)), "") if location else ""
  file_id = re.search(r"file_name_id=(\d+)", location)
  line_no = re.search(r"\bline=(\d+)", location)
  if not (file_id and line_no):
    return ""
  file_name = tables.get("FileNames", {}).get(int(file_id.group(1)), "?").strip('"')
  return f"{_short_path(file_name)}:{line_no.group(1)}"


def _split_top_level(text: str) -> list[str]:
  pieces, depth, start = [], 0, 0
  for i, c in enumerate(text):
    if c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif c == "," and depth == 0:
      pieces.append(text[start:i])
      start = i + 1
  pieces.append(text[start:])
  return pieces


def _reachable(module: dict[str, Any], roots: set[str]) -> set[str]:
  """The computations in ``roots`` and every computation they call, at any depth."""
  seen, todo = set(), list(roots)
  while todo:
    name = todo.pop()
    if name in seen or name not in module["computations"]:
      continue
    seen.add(name)
    for ins in module["computations"][name]:
      for callees in ins["callees"].values():
        todo.extend(callees)
  return seen


def branch_computations(module: dict[str, Any]) -> set[str]:
  """Computations that run only inside a conditional's branch (at any depth)."""
  roots = {c for instructions in module["computations"].values() for ins in instructions
           if ins["opcode"] == "conditional"
           for key in _BRANCH_KEYS for c in ins["callees"].get(key, ())}
  return _reachable(module, roots)


def kernel_computations(module: dict[str, Any]) -> set[str]:
  """Computations whose instructions are kernels: the entry and control flow, not fusion bodies
  or reducers (``to_apply``), whose instructions XLA merges into their caller's kernel."""
  inner = {c for instructions in module["computations"].values() for ins in instructions
           for key, callees in ins["callees"].items()
           if key == "to_apply" or (key == "calls" and ins["opcode"] == "fusion")
           for c in callees}
  return set(module["computations"]) - _reachable(module, inner)


def op_kind(opcode: str) -> str:
  return "collectives" if opcode in COLLECTIVE_OPS else opcode


def count_ops(module: dict[str, Any]) -> dict[str, dict[str, int]]:
  """Op counts over the whole module: ``total``, ``outside`` and ``in_branches`` (of
  conditionals), each {kind: count} for COUNTED_OPS plus ``instructions``."""
  in_branch = branch_computations(module)
  counts = {"outside": Counter(), "in_branches": Counter()}
  for comp, instructions in module["computations"].items():
    where = counts["in_branches" if comp in in_branch else "outside"]
    for ins in instructions:
      where[op_kind(ins["opcode"])] += 1
      where["instructions"] += 1
  keys = (*COUNTED_OPS, "instructions")
  out = {where: {k: c[k] for k in keys} for where, c in counts.items()}
  out["total"] = {k: out["outside"][k] + out["in_branches"][k] for k in keys}
  return out


def instruction_bytes(module: dict[str, Any]) -> list[dict[str, Any]]:
  """Estimated bytes of each kernel-level instruction, from the shapes in the HLO text.

  Two estimates per instruction (XLA's cost analysis gives only the module's total):

  - ``bytes``: as XLA's own cost analysis counts (its sum is within a few percent of XLA's
    total for AdamW, Muon and Shampoo): result + operands; slices, dynamic slices and gathers
    read only what they return (plus indices), in-place dynamic-update-slices and scatters only
    what they write, and a fusion is charged the slices of an operand it only slices (through
    bitcasts), else the whole operand.
  - ``used_bytes``: what a fusion needs to read: the part of each operand its result depends
    on, followed through elementwise ops and transposes as well (a fusion that scales a whole
    stack of blocks and keeps one parameter's slice reads that slice). Nearer a GPU's traffic;
    where it is far below ``bytes``, XLA's figure charges whole operands that are sliced late.
  """
  kernels, in_branch = kernel_computations(module), branch_computations(module)
  rows = []
  for comp in kernels:
    instructions = module["computations"][comp]
    types = {ins["name"]: ins["type"] for ins in instructions}
    for ins in instructions:
      if ins["opcode"] in _FREE_OPS:
        continue
      result = shape_bytes(ins["type"])
      operands = [shape_bytes(types.get(o, "")) for o in ins["operands"]]
      if ins["opcode"] in _SLICING:
        estimate = used = 2 * result + sum(operands[1:])
      elif ins["opcode"] in _IN_PLACE:
        estimate = used = 2 * sum(operands[1:])
      elif ins["opcode"] == "fusion":
        callee = ins["callees"].get("calls", [""])[0]
        estimate = _fusion_bytes(module, callee, result, operands, through_elementwise=False)
        used = _fusion_bytes(module, callee, result, operands, through_elementwise=True)
      else:
        estimate = used = result + sum(operands)
      op_name = _OP_NAME.search(ins["line"])
      fused = ""
      if ins["opcode"] == "fusion":
        inside = Counter(op_kind(i["opcode"]) for i in module["computations"].get(callee, ()))
        fused = " ".join(f"{k}x{inside[k]}" for k in ("gather", "scatter", "transpose", "copy",
                                                       "dot", "dynamic-slice",
                                                       "dynamic-update-slice", "reduce")
                         if inside[k])
      rows.append(dict(
          bytes=estimate, used_bytes=used, name=ins["name"], opcode=ins["opcode"],
          type=_short_type(ins["type"]), in_branch=comp in in_branch, computation=comp,
          fused=fused, op_name=op_name.group(1) if op_name else "",
          source=source_location(module, ins["line"])))
  rows.sort(key=lambda r: -r["bytes"])
  return rows


_SLICING = ("slice", "dynamic-slice", "gather")
_IN_PLACE = ("dynamic-update-slice", "scatter")
_VIEWS = ("bitcast", "reshape")
# Ops that read all of an operand whatever part of their result is used.
_READS_ALL = frozenset((
    "dot", "convolution", "reduce", "reduce-window", "sort", "custom-call", "scatter", "gather",
    "dynamic-slice", "dynamic-update-slice", "select-and-scatter", "fft", "triangular-solve",
    "cholesky", "rng", "all-reduce"))


def _elements(type_text: str) -> int:
  return sum(math.prod(int(d) for d in dims.split(",") if d)
             for _, dims in _ARRAY.findall(type_text))


def _fusion_bytes(module: dict[str, Any], callee: str, result: int, operands: list[int], *,
                  through_elementwise: bool) -> int:
  """A fusion's bytes: its result (updated in place: the update) plus each operand times the
  fraction of it used: the utilization of each fused instruction, from the root back, is 1 at
  the root, through a slice the slice's share, through a bitcast (and, ``through_elementwise``,
  an elementwise op or a transpose) that op's own, and 1 where anything else reads it.
  """
  body = module["computations"].get(callee)
  if not body:
    return result + sum(operands)
  users: dict[str, list[tuple[dict[str, Any], int]]] = {}
  for ins in body:
    for position, operand in enumerate(ins["operands"]):
      users.setdefault(operand, []).append((ins, position))
  root = next((i for i in body if i["line"].startswith("ROOT")), body[-1])
  utilization: dict[str, float] = {}
  for ins in reversed(body):  # XLA prints operands before their users
    if ins is root:
      utilization[ins["name"]] = 1.0
      continue
    size, total = max(_elements(ins["type"]), 1), 0.0
    for user, position in users.get(ins["name"], ()):
      used = utilization.get(user["name"], 1.0)
      passes = user["opcode"] in _VIEWS or (
          through_elementwise and user["opcode"] not in _READS_ALL
          and _elements(user["type"]) == size)
      if user["opcode"] in _SLICING and position == 0:
        total += used * min(1.0, _elements(user["type"]) / size)
      elif user["opcode"] in _IN_PLACE and position == 0 and user is root:
        continue  # updated in place: what is not overwritten is neither read nor written
      elif passes:
        total += used
      else:
        total += 1.0
    utilization[ins["name"]] = min(1.0, total)
  if root["opcode"] in _IN_PLACE:
    types = {i["name"]: i["type"] for i in body}
    result = sum(shape_bytes(types.get(o, "")) for o in root["operands"][1:])
  by_index = {}
  for ins in body:
    if ins["opcode"] == "parameter" and (m := re.search(r"parameter\((\d+)\)", ins["line"])):
      by_index[int(m.group(1))] = ins["name"]
  return int(result + sum(full * utilization.get(by_index.get(i, ""), 1.0)
                          for i, full in enumerate(operands)))


def _short_type(type_text: str) -> str:
  return re.sub(r"\{[^}]*\}", "", type_text)


def xla_costs(compiled: Any) -> dict[str, float]:
  """flops, bytes accessed and transcendentals from ``compiled.cost_analysis()`` (a dict in
  current JAX, a list of one dict per module in older ones); NaN where missing."""
  try:
    costs = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 (some backends do not implement it)
    costs = None
  if isinstance(costs, (list, tuple)):
    costs = costs[0] if costs else None
  costs = costs or {}
  return {key: float(costs.get(key, math.nan))
          for key in ("flops", "bytes accessed", "transcendentals")}


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def param_tree(args: argparse.Namespace) -> Any:
  """The CharTransformer's parameters as ShapeDtypeStructs (nothing runs or is allocated)."""
  vocab = len(lm_common.load_corpus(num_chars=2_000_000).vocab)
  model = lm_common.CharTransformer(vocab, d_model=args.d_model, num_layers=args.layers,
                                    num_heads=args.heads, seq_len=args.seq_len)
  tokens = jax.ShapeDtypeStruct((1, args.seq_len), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens), vocab


def measure(name: str, params: Any, args: argparse.Namespace) -> dict[str, Any]:
  tx = make_optimizer(name, args)
  state = jax.eval_shape(tx.init, params)
  grads = params  # the same tree, shapes and dtypes
  t0 = time.perf_counter()
  lowered = jax.jit(tx.update, donate_argnums=(1,) if args.donate else ()).lower(
      grads, state, params)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  module = parse_hlo(compiled.as_text())
  top = instruction_bytes(module)
  return dict(
      optimizer=name, lower_s=t1 - t0, compile_s=t2 - t1, total_compile_s=t2 - t0,
      state_bytes=sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)),
      **xla_costs(compiled), ops=count_ops(module),
      estimated_bytes=sum(r["bytes"] for r in top),
      estimated_bytes_in_branches=sum(r["bytes"] for r in top if r["in_branch"]),
      used_bytes=sum(r["used_bytes"] for r in top),
      gather_scatter_sources=dict(Counter(
          f"{ins['opcode']} {source_location(module, ins['line']) or '?'}"
          for instructions in module["computations"].values() for ins in instructions
          if ins["opcode"] in ("gather", "scatter"))),
      top=top[:max(args.top, 0)], top_sources=bytes_by_source(top)[:max(args.top, 0)])


def bytes_by_source(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """``instruction_bytes`` summed per Python source line (and in or out of a branch)."""
  totals: dict[tuple[str, bool], dict[str, Any]] = {}
  for r in rows:
    key = (r["source"] or "?", r["in_branch"])
    entry = totals.setdefault(key, dict(source=key[0], in_branch=key[1], bytes=0,
                                        used_bytes=0, instructions=0, opcodes=Counter()))
    entry["bytes"] += r["bytes"]
    entry["used_bytes"] += r["used_bytes"]
    entry["instructions"] += 1
    entry["opcodes"][r["opcode"]] += 1
  out = sorted(totals.values(), key=lambda e: -e["bytes"])
  for e in out:
    e["opcodes"] = " ".join(f"{k}x{v}" for k, v in e["opcodes"].most_common())
  return out


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """An aligned Markdown table (readable as printed, pastes into README.md)."""
  cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
  return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                    *map(line, cells[1:])])


def _ratio(value: float, base: float) -> str:
  if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
    return "-"
  return f"{value / base:.2f}"


def print_tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
  ok = [r for r in rows if "error" not in r]
  base = next((r for r in ok if r["optimizer"] == "adamw"), None)
  get = lambda r, key: base[key] if base else math.nan  # noqa: E731
  print("\nCost of the compiled update (XLA cost_analysis; x = ratio to adamw; compile = lower "
        "+ compile of jax.jit(tx.update); state = optimizer-state bytes):\n")
  table = []
  for r in rows:
    if "error" in r:
      table.append([r["optimizer"], f"error: {r['error']}", *["-"] * 11])
      continue
    table.append([
        r["optimizer"], f"{r['flops'] / 1e9:.3f}", _ratio(r["flops"], get(r, "flops")),
        f"{r['bytes accessed'] / 1e9:.3f}",
        _ratio(r["bytes accessed"], get(r, "bytes accessed")),
        f"{r['state_bytes'] / 2**20:.1f}", _ratio(r["state_bytes"], get(r, "state_bytes")),
        f"{r['total_compile_s']:.2f}", _ratio(r["total_compile_s"], get(r, "total_compile_s")),
        f"{r['estimated_bytes'] / 1e9:.3f}", f"{r['used_bytes'] / 1e9:.3f}",
        _ratio(r["used_bytes"], get(r, "used_bytes"))])
  print(markdown(["optimizer", "GFLOP", "x", "GB accessed", "x", "state MiB", "x", "compile s",
                  "x", "est. GB", "used GB", "x"], table))
  print("\n(est. GB: XLA's count re-estimated per instruction from the HLO's shapes; used GB: "
        "what the fusions need to read and write, sliced late or not; see instruction_bytes.)")

  print("\nHLO op counts over the whole module (fused computations, while bodies and conditional "
        "branches included; instructions = all of them):\n")
  keys = (*COUNTED_OPS, "instructions")
  print(markdown(["optimizer", *keys],
                 [[r["optimizer"], *(r["ops"]["total"][k] for k in keys)] for r in ok]))
  if args.branch_split:
    print("\nThe same, as outside / in conditional branches (the root or basis refresh in "
          "shampoo and soap; estimated GB from shapes, kernel-level instructions):\n")
    print(markdown(
        ["optimizer", *keys, "est. GB"],
        [[r["optimizer"],
          *(f"{r['ops']['outside'][k]} / {r['ops']['in_branches'][k]}" for k in keys),
          f"{(r['estimated_bytes'] - r['estimated_bytes_in_branches']) / 1e9:.3f} / "
          f"{r['estimated_bytes_in_branches'] / 1e9:.3f}"] for r in ok]))
  for r in ok:
    if r["gather_scatter_sources"]:
      where = ", ".join(f"{k} x{n}" for k, n in sorted(r["gather_scatter_sources"].items()))
      print(f"\n{r['optimizer']}: gathers and scatters by the source line they come from: "
            f"{where}")
  for r in ok:
    if not r["top"]:
      continue
    print(f"\n{r['optimizer']}: the {len(r['top'])} kernel-level instructions with the most "
          f"bytes as XLA counts them (MB; of {r['estimated_bytes'] / 1e9:.3f} GB in all), and "
          f"what they need (used MB; of {r['used_bytes'] / 1e9:.3f} GB); a fusion's JAX op "
          "and source are its root's:\n")
    print(markdown(
        ["MB", "used MB", "instruction", "opcode", "fused", "result", "branch", "JAX op",
         "source"],
        [[f"{t['bytes'] / 1e6:.1f}", f"{t['used_bytes'] / 1e6:.1f}", t["name"], t["opcode"],
          t["fused"] or "-", t["type"], "yes" if t["in_branch"] else "-", t["op_name"][-60:],
          t["source"]] for t in r["top"]]))
    print(f"\n{r['optimizer']}: the same summed per Python source line (the "
          f"{len(r['top_sources'])} lines with the most bytes):\n")
    print(markdown(
        ["MB", "used MB", "source", "branch", "instructions", "opcodes"],
        [[f"{t['bytes'] / 1e6:.1f}", f"{t['used_bytes'] / 1e6:.1f}", t["source"],
          "yes" if t["in_branch"] else "-", t["instructions"], t["opcodes"]]
         for t in r["top_sources"]]))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--d-model", type=int, default=512, help="(default %(default)s)")
  parser.add_argument("--layers", type=int, default=8, help="(default %(default)s)")
  parser.add_argument("--heads", type=int, default=8, help="(default %(default)s)")
  parser.add_argument("--seq-len", type=int, default=256,
                      help="sets the position table's size (default %(default)s)")
  parser.add_argument("--block-size", type=int, default=128, help="(default %(default)s)")
  parser.add_argument("--precondition-every", type=int, default=10, help="(default %(default)s)")
  parser.add_argument("--optimizers", default=None,
                      help=f"comma-separated (default {','.join(DEFAULT_OPTIMIZERS)}; with "
                      f"--tiny {','.join(TINY_OPTIMIZERS)}; also soap_eigh, soap_qr, google); "
                      "adamw is added first if missing, for the ratios")
  parser.add_argument("--refresh-as", choices=("gpu", "backend"), default="gpu",
                      help="compile the staggered refresh as for a GPU, without lax.cond (the "
                      "default: this script stands in for a GPU's memory traffic), or as this "
                      "backend does (on CPU: under lax.cond); see "
                      "factor_matrices.UNCONDITIONAL_PLATFORMS")
  parser.add_argument("--no-branch-split", dest="branch_split", action="store_false",
                      help="do not print op counts split into outside / in conditional branches")
  parser.add_argument("--top", type=int, default=0, metavar="N",
                      help="also list each optimizer's N instructions with the most bytes")
  parser.add_argument("--tiny", action="store_true",
                      help="a tiny model, seconds (CI): " + ", ".join(
                          f"{k.replace('_', '-')} {v}" for k, v in TINY.items()))
  parser.add_argument("--json", metavar="PATH", default=None, help="also write results here")
  parser.add_argument("--donate", action="store_true",
                      help="donate the optimizer state to the update (as a training step that "
                      "donates its state does): XLA may then update it in place; without it, "
                      "an in-place update of the state (the refresh's scatter) needs a copy")
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  if args.tiny:
    for key, value in TINY.items():
      setattr(args, key, value)
  if args.optimizers is None:
    args.optimizers = ",".join(TINY_OPTIMIZERS if args.tiny else DEFAULT_OPTIMIZERS)
  names = [n for n in args.optimizers.split(",") if n]
  if "adamw" not in names:
    names.insert(0, "adamw")
  if args.refresh_as == "gpu":
    from shampoo_optax import factor_matrices  # noqa: PLC0415

    factor_matrices.UNCONDITIONAL_PLATFORMS += (jax.default_backend(),)
  run = hostinfo.start()
  params, vocab = param_tree(args)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  print(f"CharTransformer d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
        f"seq_len {args.seq_len}, vocab {vocab}: {num_params / 1e6:.2f}M float32 parameters; "
        f"block_size {args.block_size}, precondition_every {args.precondition_every}; "
        f"shampoo_optax from {pathlib.Path(shampoo_optax.__file__).parent}; staggered refresh "
        f"compiled as for {'a GPU' if args.refresh_as == 'gpu' else 'this backend'}", flush=True)
  rows = []
  for name in names:
    try:
      row = measure(name, params, args)
    except ImportError as e:
      row = dict(optimizer=name, error=f"not installed ({e.name or e})")
    except Exception as e:  # noqa: BLE001 (reported as a row; the exit status says it failed)
      traceback.print_exc()
      row = dict(optimizer=name, error=f"{type(e).__name__}: {str(e)[:200]}")
    rows.append(row)
    if "error" in row:
      print(f"  {name}: {row['error']}", flush=True)
    else:
      print(f"  {name}: {row['bytes accessed'] / 1e9:.3f} GB accessed, "
            f"{row['flops'] / 1e9:.3f} GFLOP, compile {row['total_compile_s']:.1f} s", flush=True)
  print_tables(rows, args)
  hostinfo.finish(run, args, params=num_params, vocab=vocab, rows=rows)
  failed = [r["optimizer"] for r in rows if "error" in r and "not installed" not in r["error"]]
  if failed:
    raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
  main()
