# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shared test settings: strict promotion everywhere, fresh seeds per test."""

import zlib

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _strict_promotion():
  """Catches silent float64 promotions and accidental broadcasting."""
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture
def rng(request):
  """A NumPy generator seeded from the test's name: fresh per test, reproducible."""
  seed = zlib.crc32(request.node.nodeid.encode())
  return np.random.default_rng(seed)

