# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Inverse p-th roots of batches of SPD matrices: time and accuracy of four methods.

Methods, each jitted once per (n, batch, p) and applied to a whole batch ``[batch, n, n]``:

- ``newton``: ``shampoo_optax.matrix_inverse_pth_root(..., method='newton')`` (coupled Newton
  iteration, with its default eigh fallback for matrices whose error estimate is above 0.1).
- ``eigh``: ``shampoo_optax.matrix_inverse_pth_root(..., method='eigh')``.
- ``optax``: ``optax.matrix_inverse_pth_root`` (coupled Newton, one matrix at a time), vmapped.
- ``jnp-eigh``: a plain ``jnp.linalg.eigh`` root, ``Q diag((w + ridge)^(-1/p)) Q^T``.

All four use the same ridge, relative to the largest eigenvalue, as Shampoo's ``matrix_eps``:
ours through ``relative_ridge_epsilon``, optax through its ``ridge_epsilon`` (which optax scales
by its power-iteration estimate of the largest eigenvalue), ``jnp-eigh`` by the largest
eigenvalue that eigh returns.

Matrices (float32): ``gram`` is ``G G^T / n`` for a Gaussian ``n x n`` ``G`` (as Shampoo's
statistics, Marchenko-Pastur spectrum, nearly singular so the ridge matters); ``lowrank`` is
the same with ``G`` of shape ``n x n/8`` (rank n/8, the ridge lifts the rest); ``cond1eK`` is
``Q diag(w) Q^T`` with ``Q`` random orthogonal and ``w`` log-spaced from 1 to ``10^-K``.

Accuracy: relative Frobenius error ``||X - R||_F / ||R||_F`` against a float64 NumPy eigh
reference ``R`` for the first ``--ref-count`` matrices of each batch (max and median over them).
``own_err`` is the largest error a method reports about itself over the batch: ours, an estimate
of the root's relative error; optax, its Newton residual ``max|M - I|``; jnp-eigh, none.

Time: median wall time of ``--repeats`` calls of the compiled executable (``block_until_ready``)
after ``--warmup`` calls; compile time (trace + lower + XLA compile) is reported separately.
Ratios compare methods on the same matrices in the same run.

The issue asks for batches of 128..1024 matrices; on a small CPU that many large matrices take
minutes per call, so the default batch sizes shrink with n (``--batches``); on an accelerator,
pass e.g. ``--batches 1024,512,256,128``.

Run:
  python benchmarks/roots.py                 # full: n = 128..1024, p = 2, 4, 6 (~5-10 min, 2 CPUs)
  python benchmarks/roots.py --tiny          # seconds-long smoke run (CI)
  python benchmarks/roots.py --sizes 256 --batches 64 --powers 4 --json roots.json
"""

from __future__ import annotations

import os

# Before NumPy/JAX are imported: jaxlib's eigh calls SciPy's OpenBLAS, whose threads fight
# XLA's thread pool and make eigh several times slower inside jitted programs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import hostinfo
import jax
import jax.numpy as jnp
import numpy as np
import optax

from shampoo_optax import matrix_inverse_pth_root

METHODS = ("newton", "eigh", "optax", "jnp-eigh")
SPECTRA = ("gram", "lowrank", "cond1e2", "cond1e4", "cond1e6")

DEFAULTS = dict(
    sizes=(128, 256, 512, 1024),
    batches=(128, 32, 8, 4),
    powers=(2, 4, 6),
    spectra=("gram", "cond1e2", "cond1e4", "cond1e6"),
    repeats=3,
    warmup=1,
    ref_count=4,
)
TINY = dict(
    sizes=(32, 64),
    batches=(8, 4),
    powers=(2, 4, 6),
    spectra=("gram", "cond1e6"),
    repeats=2,
    warmup=1,
    ref_count=2,
)


# ----------------------------------------------------------------------------------------------
# Test matrices and the float64 reference
# ----------------------------------------------------------------------------------------------


def make_matrices(spectrum: str, n: int, batch: int, seed: int) -> np.ndarray:
  """A float32 batch ``[batch, n, n]`` of symmetric PSD matrices of the given kind."""
  rng = np.random.default_rng(seed)
  if spectrum in ("gram", "lowrank"):
    m = n if spectrum == "gram" else max(1, n // 8)
    g = rng.standard_normal((batch, n, m))
    a = g @ np.swapaxes(g, -1, -2) / m
  elif spectrum.startswith("cond"):
    condition = float(spectrum[len("cond"):])
    q, r = np.linalg.qr(rng.standard_normal((batch, n, n)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]  # Haar-distributed
    w = np.logspace(0.0, -math.log10(condition), n)
    a = (q * w[None, None, :]) @ np.swapaxes(q, -1, -2)
  else:
    raise ValueError(f"unknown spectrum {spectrum!r}; choose from {SPECTRA}")
  a = a.astype(np.float32)
  return 0.5 * (a + np.swapaxes(a, -1, -2))


def reference_eigh(a32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """float64 eigendecomposition of the float32 matrices as they are stored."""
  return np.linalg.eigh(a32.astype(np.float64))


def reference_root(w: np.ndarray, q: np.ndarray, p: int, ridge: float) -> np.ndarray:
  """``(A + ridge * lambda_max * I)^(-1/p)`` in float64 from ``A = Q diag(w) Q^T``."""
  w = np.maximum(w, 0.0)
  w = w + ridge * w[..., -1:]
  return (q * w[..., None, :] ** (-1.0 / p)) @ np.swapaxes(q, -1, -2)


def relative_errors(root: np.ndarray, reference: np.ndarray) -> np.ndarray:
  diff = np.linalg.norm(root.astype(np.float64) - reference, axis=(-2, -1))
  return diff / np.linalg.norm(reference, axis=(-2, -1))


# ----------------------------------------------------------------------------------------------
# Methods: [batch, n, n] -> (roots [batch, n, n], own error [batch] or None)
# ----------------------------------------------------------------------------------------------


def method_fn(name: str, p: int, ridge: float) -> Callable[[jax.Array], Any]:
  if name == "newton":
    return lambda a: matrix_inverse_pth_root(a, p, relative_ridge_epsilon=ridge, method="newton")
  if name == "eigh":
    return lambda a: matrix_inverse_pth_root(a, p, relative_ridge_epsilon=ridge, method="eigh")
  if name == "optax":
    one = lambda m: optax.matrix_inverse_pth_root(m, p, ridge_epsilon=ridge)
    return jax.vmap(one)
  if name == "jnp-eigh":

    def jnp_eigh_root(a: jax.Array) -> tuple[jax.Array, None]:
      w, q = jnp.linalg.eigh(a)
      w = jnp.maximum(w, 0.0)
      w = w + ridge * w[..., -1:]
      scaled = q * (w ** (-1.0 / p))[..., None, :]
      root = jnp.matmul(scaled, jnp.swapaxes(q, -1, -2), precision=jax.lax.Precision.HIGHEST)
      return root, None

    return jnp_eigh_root
  raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def compile_method(fn: Callable[[jax.Array], Any], a: jax.Array) -> tuple[Any, float]:
  """(compiled executable, seconds to trace + lower + compile)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).trace(a).lower().compile()
  return compiled, time.perf_counter() - start


def time_calls(compiled: Any, a: jax.Array, repeats: int) -> tuple[list[float], Any]:
  """Wall times of ``repeats`` calls, and the last output."""
  out = None
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(a))
    times.append(time.perf_counter() - start)
  return times, out


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def parse_ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


def parse_names(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
  def parse(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    for name in names:
      if name not in choices and not (choices is SPECTRA and name.startswith("cond")):
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(choices)}")
    return names

  return parse


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Time and accuracy of inverse p-th roots of batches of SPD matrices: "
      "shampoo_optax (newton, eigh), optax.matrix_inverse_pth_root and a plain jnp eigh root.",
  )
  j = lambda xs: ",".join(str(x) for x in xs)
  parser.add_argument("--tiny", action="store_true",
                      help=f"seconds-long smoke run: sizes {j(TINY['sizes'])}, batches "
                      f"{j(TINY['batches'])}, spectra {j(TINY['spectra'])}, repeats "
                      f"{TINY['repeats']} (explicit options override)")
  parser.add_argument("--sizes", type=parse_ints, default=None,
                      help=f"matrix sizes n (default {j(DEFAULTS['sizes'])})")
  parser.add_argument("--batches", type=parse_ints, default=None,
                      help="matrices per batch, one per size or one for all (default "
                      f"{j(DEFAULTS['batches'])}: reduced from 128..1024 to fit a small CPU)")
  parser.add_argument("--powers", type=parse_ints, default=None,
                      help=f"root exponents p (default {j(DEFAULTS['powers'])})")
  parser.add_argument("--spectra", type=parse_names(SPECTRA), default=None,
                      help=f"test matrices, from {j(SPECTRA)} or any cond1eK "
                      f"(default {j(DEFAULTS['spectra'])})")
  parser.add_argument("--methods", type=parse_names(METHODS), default=METHODS,
                      help=f"methods to compare (default {j(METHODS)}; newton and jnp-eigh are "
                      "always run, as the ratios' baselines)")
  parser.add_argument("--ridge", type=float, default=1e-6,
                      help="ridge relative to the largest eigenvalue, Shampoo's matrix_eps "
                      "(default %(default)g)")
  parser.add_argument("--repeats", type=int, default=None,
                      help=f"timed calls per case, median reported (default {DEFAULTS['repeats']})")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed calls per compiled executable before timing "
                      f"(default {DEFAULTS['warmup']})")
  parser.add_argument("--ref-count", type=int, default=None,
                      help="matrices per batch checked against the float64 reference "
                      f"(default {DEFAULTS['ref_count']})")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
  parser.add_argument("--json", metavar="PATH", default=None, help="also write results here")
  return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  base = TINY if args.tiny else DEFAULTS
  for key, value in base.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if len(args.batches) == 1:
    args.batches = args.batches * len(args.sizes)
  if len(args.batches) != len(args.sizes):
    raise SystemExit("--batches needs one value, or one per size")
  if "newton" not in args.methods or "jnp-eigh" not in args.methods:
    args.methods = tuple(dict.fromkeys(("newton", *args.methods, "jnp-eigh")))
  return args


def fmt_err(x: float | None) -> str:
  if x is None:
    return "-"
  if not math.isfinite(x):
    return str(x)
  return f"{x:.1e}"


def run(args: argparse.Namespace) -> dict[str, Any]:
  rows: list[dict[str, Any]] = []
  compiles: list[dict[str, Any]] = []
  for n, batch in zip(args.sizes, args.batches):
    ref_count = min(args.ref_count, batch)
    data = {}
    for k, spectrum in enumerate(args.spectra):
      a32 = make_matrices(spectrum, n, batch, seed=args.seed + 1000 * k + n)
      data[spectrum] = (jnp.asarray(a32), reference_eigh(a32[:ref_count]))
    for p in args.powers:
      case_rows = []
      for method in args.methods:
        first = data[args.spectra[0]][0]
        compiled, compile_s = compile_method(method_fn(method, p, args.ridge), first)
        compiles.append(dict(n=n, batch=batch, p=p, method=method, compile_s=compile_s))
        for _ in range(args.warmup):
          jax.block_until_ready(compiled(first))
        for spectrum in args.spectra:
          a, (w, q) = data[spectrum]
          times, (root, own) = time_calls(compiled, a, args.repeats)
          errors = relative_errors(np.asarray(root[:ref_count]), reference_root(w, q, p,
                                                                                args.ridge))
          own_max = None if own is None else float(jnp.max(own))
          median = statistics.median(times)
          case_rows.append(dict(
              n=n, batch=batch, spectrum=spectrum, p=p, method=method, compile_s=compile_s,
              times_s=times, median_s=median, per_matrix_ms=1e3 * median / batch,
              rel_err_max=float(np.max(errors)), rel_err_median=float(np.median(errors)),
              own_err_max=own_max,
          ))
        print(f"  done n={n} batch={batch} p={p} {method}: compile {compile_s:.2f} s",
              file=sys.stderr, flush=True)
      for row in case_rows:
        same = {r["method"]: r["median_s"] for r in case_rows
                if r["spectrum"] == row["spectrum"]}
        row["vs_newton"] = row["median_s"] / same["newton"]
        row["vs_jnp_eigh"] = row["median_s"] / same["jnp-eigh"]
      order = lambda r: (args.spectra.index(r["spectrum"]), args.methods.index(r["method"]))
      rows.extend(sorted(case_rows, key=order))
  return dict(rows=rows, compiles=compiles)


def print_tables(args: argparse.Namespace, results: dict[str, Any]) -> None:
  rows, compiles = results["rows"], results["compiles"]
  print("\nPer case: time = median of the batch call; err = relative Frobenius error vs float64 "
        f"eigh (max / median over {args.ref_count} matrices); own_err = the method's own "
        "error report (max over the batch).")
  header = (f"{'n':>5} {'batch':>5} {'spectrum':>8} {'p':>2} {'method':>8} {'time ms':>9} "
            f"{'ms/matrix':>9} {'/newton':>7} {'/jnp-eigh':>9} {'err max':>8} {'err med':>8} "
            f"{'own_err':>8}")
  print(header)
  print("-" * len(header))
  previous = None
  for r in rows:
    key = (r["n"], r["spectrum"], r["p"])
    if previous is not None and key != previous:
      print()
    previous = key
    print(f"{r['n']:>5} {r['batch']:>5} {r['spectrum']:>8} {r['p']:>2} {r['method']:>8} "
          f"{1e3 * r['median_s']:>9.1f} {r['per_matrix_ms']:>9.2f} {r['vs_newton']:>7.2f} "
          f"{r['vs_jnp_eigh']:>9.2f} {fmt_err(r['rel_err_max']):>8} "
          f"{fmt_err(r['rel_err_median']):>8} {fmt_err(r['own_err_max']):>8}")

  methods = args.methods
  print("\nSummary per (n, p): ms per matrix, geometric mean over spectra "
        f"({', '.join(args.spectra)}); worst err over spectra.")
  header = f"{'n':>5} {'batch':>5} {'p':>2} " + " ".join(f"{m:>9}" for m in methods)
  header += "  " + " ".join(f"{'err ' + m:>13}" for m in methods) + "  fastest"
  print(header)
  print("-" * len(header))
  for n, batch in zip(args.sizes, args.batches):
    for p in args.powers:
      sel = [r for r in rows if r["n"] == n and r["p"] == p]
      mean = {m: math.exp(statistics.fmean(math.log(r["per_matrix_ms"]) for r in sel
                                           if r["method"] == m)) for m in methods}
      worst = {m: max(r["rel_err_max"] for r in sel if r["method"] == m) for m in methods}
      fastest = min(methods, key=mean.get)
      print(f"{n:>5} {batch:>5} {p:>2} " + " ".join(f"{mean[m]:>9.2f}" for m in methods)
            + "  " + " ".join(f"{fmt_err(worst[m]):>13}" for m in methods) + f"  {fastest}")

  print("\nCompile time (s): trace + lower + XLA compile, once per (n, batch, p, method).")
  header = f"{'n':>5} {'batch':>5} {'p':>2} " + " ".join(f"{m:>9}" for m in methods)
  print(header)
  print("-" * len(header))
  for n, batch in zip(args.sizes, args.batches):
    for p in args.powers:
      by = {c["method"]: c["compile_s"] for c in compiles if c["n"] == n and c["p"] == p}
      print(f"{n:>5} {batch:>5} {p:>2} " + " ".join(f"{by[m]:>9.2f}" for m in methods))


def main(argv: Sequence[str] | None = None) -> None:
  args = resolve(build_parser().parse_args(argv))
  report = hostinfo.start()
  print(f"sizes {args.sizes}, batches {args.batches} (the issue asks for 128..1024 matrices per "
        "batch; the default batches are smaller to fit a small CPU, see --batches), powers "
        f"{args.powers}, spectra "
        f"{args.spectra}, ridge {args.ridge:g} x lambda_max, repeats {args.repeats}, "
        f"warmup {args.warmup}, reference on the first {args.ref_count} matrices", flush=True)
  results = run(args)
  print_tables(args, results)
  hostinfo.finish(report, args, **results)


if __name__ == "__main__":
  main()
