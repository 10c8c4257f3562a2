# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The machine a benchmark ran on, printed at the top of every benchmark's output."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

import jax
import jaxlib
import numpy as np
import optax


def describe() -> str:
  """One line: platform, CPUs, versions, backend and device."""
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  device = jax.devices()[0]
  return (
      f"{platform.platform()}, {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPUs ({usable} usable), Python {platform.python_version()}, "
      f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}, "
      f"numpy {np.__version__}, backend {jax.default_backend()} ({device.device_kind}, "
      f"{jax.device_count()} device(s)), OPENBLAS_NUM_THREADS="
      f"{os.environ.get('OPENBLAS_NUM_THREADS')}"
  )


def load_average() -> str:
  """The 1, 5 and 15 minute load averages (a busy machine makes timings noisy)."""
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def start() -> dict:
  """Prints the command, the machine and the load; returns them for ``finish``."""
  run = dict(command=shlex.join(sys.orig_argv), machine=describe(),
             load_average_start=load_average(), started=time.perf_counter())
  print(f"command: {run['command']}")
  print(f"machine: {run['machine']}")
  print(f"load average at start (1, 5, 15 min): {run['load_average_start']}", flush=True)
  return run


def finish(run: dict, args, **results) -> None:
  """Prints the load and wall time; with ``args.json``, writes everything there."""
  wall = time.perf_counter() - run["started"]
  load_end = load_average()
  print(f"\nload average at end: {load_end}; total wall time {wall:.1f} s")
  if args.json:
    payload = dict(command=run["command"], machine=run["machine"],
                   load_average_start=run["load_average_start"], load_average_end=load_end,
                   wall_s=wall, args={k: v for k, v in vars(args).items() if k != "json"},
                   **results)
    with open(args.json, "w") as f:
      json.dump(payload, f, indent=1)
    print(f"wrote {args.json}")
