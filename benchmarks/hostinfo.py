# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The machine a benchmark ran on, printed at the top of every benchmark's output."""

from __future__ import annotations

import os
import platform

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
