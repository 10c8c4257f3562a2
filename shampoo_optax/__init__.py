# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Distributed Shampoo for JAX, as an optax gradient transformation."""

from shampoo_optax.alias import shampoo
from shampoo_optax.matrix_functions import matrix_inverse_pth_root
from shampoo_optax.transform import STATIC_ARGS
from shampoo_optax.transform import ShampooState
from shampoo_optax.transform import scale_by_shampoo

__version__ = "0.1.0"

__all__ = (
    "STATIC_ARGS",
    "ShampooState",
    "matrix_inverse_pth_root",
    "scale_by_shampoo",
    "shampoo",
)
