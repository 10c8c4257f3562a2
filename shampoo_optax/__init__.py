# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Distributed Shampoo for JAX, as an optax gradient transformation."""

from shampoo_optax import sharding
from shampoo_optax.alias import shampoo, soap
from shampoo_optax.checkpointing import abstract_state, state_shardings, upgrade_state
from shampoo_optax.diagnostics import diagnostics
from shampoo_optax.matrix_functions import matrix_inverse_pth_root
from shampoo_optax.moments import BlockedMoment, LeafShape
from shampoo_optax.shampoo_transform import STATIC_ARGS, ShampooState, scale_by_shampoo
from shampoo_optax.soap_transform import STATIC_ARGS as SOAP_STATIC_ARGS
from shampoo_optax.soap_transform import SoapState, scale_by_soap

__version__ = "0.5.1"

__all__ = (
    "BlockedMoment",
    "LeafShape",
    "SOAP_STATIC_ARGS",
    "STATIC_ARGS",
    "ShampooState",
    "SoapState",
    "abstract_state",
    "diagnostics",
    "matrix_inverse_pth_root",
    "scale_by_shampoo",
    "scale_by_soap",
    "shampoo",
    "sharding",
    "soap",
    "state_shardings",
    "upgrade_state",
)
