# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Checks of arguments and inputs, with errors that name the problem.

They run at construction and trace time only, never inside compiled code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def validate_layout(*, block_size, precondition_every, start_preconditioning_step,
                    skip_preconditioning_dim_size_gt, max_merged_dim, exponent_override=None,
                    static_args_name="STATIC_ARGS"):
  """The static, shape-setting integers shared by Shampoo and SOAP.

  ``static_args_name``: the ``shampoo_optax`` tuple that an error about an
  array argument names (``"SOAP_STATIC_ARGS"`` for SOAP).
  """
  for name, value in (("block_size", block_size), ("precondition_every", precondition_every),
                      ("skip_preconditioning_dim_size_gt", skip_preconditioning_dim_size_gt)):
    validate_int(name, value, 1, static_args_name)
  validate_int("start_preconditioning_step", start_preconditioning_step, 0, static_args_name)
  for name, value in (("exponent_override", exponent_override), ("max_merged_dim", max_merged_dim)):
    if value is not None:
      validate_int(name, value, 1, static_args_name)


def validate_bool(name, value):
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}")


def validate_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _static_error(name, static_args_name):
  return ValueError(
      f"{name} sets shapes and must be a Python value, got an array; with "
      f"optax.inject_hyperparams pass static_args=shampoo_optax.{static_args_name}"
  )


def validate_int(name, value, minimum, static_args_name="STATIC_ARGS"):
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    raise _static_error(name, static_args_name)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_static_args(kwargs, static_args, static_args_name):
  """Raises if an argument named in ``static_args`` is an array (as
  ``optax.inject_hyperparams`` makes every number it is not told is static)."""
  for name in static_args:
    if isinstance(kwargs.get(name), (jax.Array, jax.core.Tracer)):
      raise _static_error(name, static_args_name)


def canonical_exponent_override(exponent_override, static_args_name="STATIC_ARGS"):
  """``None`` for the paper's exponent, spelled ``None`` or ``0`` (as in Google's
  ``distributed_shampoo``); otherwise the integer ``p >= 1`` itself."""
  if exponent_override is None:
    return None
  validate_int("exponent_override", exponent_override, 0, static_args_name)
  return exponent_override or None


def validate_number(name, value, lower, upper, *, lower_open=False, upper_open=False):
  """Checks a hyperparameter's range when it is known (not a tracer)."""
  if isinstance(value, jax.core.Tracer):
    return
  try:
    if isinstance(value, (str, bytes)):  # float() would read "1e-3"; optax would not
      raise TypeError
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}") from None
  ok = x == x  # not NaN
  ok &= (x > lower) if lower_open else (x >= lower)
  if upper is not None:
    ok &= (x < upper) if upper_open else (x <= upper)
  if not ok:
    lo = "(" if lower_open else "["
    hi = ")" if upper_open else "]"
    bounds = f"{lo}{lower}, {'inf)' if upper is None else f'{upper}{hi}'}"
    raise ValueError(f"{name} must be in {bounds}, got {value!r}")


def validate_step_size(name, value):
  """A learning rate or weight decay: a schedule, or a finite number (NaN or
  inf would make every update NaN, silently)."""
  if not callable(value):
    validate_number(name, value, -math.inf, math.inf, lower_open=True, upper_open=True)


def check_float_leaves(tree, what):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"{what}{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
          "shampoo_optax's optimizers need real floating-point parameters and gradients"
      )


def _raise_tree_mismatch(got: dict, want: dict, otherwise: str):
  """The error for trees of other leaves (``got``, ``want``: leaves by key
  path): the leaves missing and unexpected, or ``otherwise``."""
  missing = [jax.tree_util.keystr(k) for k in want if k not in got]
  extra = [jax.tree_util.keystr(k) for k in got if k not in want]
  detail = "; ".join(s for s in (
      f"missing leaves {missing[:5]}" if missing else "",
      f"unexpected leaves {extra[:5]}" if extra else "",
  ) if s) or otherwise
  raise ValueError(
      "The gradient tree does not match the tree the optimizer state was "
      f"initialized with: {detail}.")


def raise_tree_mismatch(updates, state_tree):
  """Raises the error for ``updates`` that do not have the structure of
  ``state_tree``, a moment's tree: the parameters' tree with ``None`` for
  each leaf whose moments are kept in block stacks, and the parameters' own
  ``None`` subtrees. Both are compared with ``None`` as a leaf."""
  is_none = lambda x: x is None  # noqa: E731
  got = dict(jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_none)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(state_tree, is_leaf=is_none)[0])
  # Where both have an entry: None against an array. The state's None is
  # either the parameters' own or a leaf kept in stacks; only the first is wrong.
  swapped = [jax.tree_util.keystr(k) for k in got if k in want and (
      (got[k] is None) != (want[k] is None))]
  _raise_tree_mismatch(got, want, (
      f"an array where the parameters had None, or None where they had an array, among "
      f"{swapped[:8]}" if swapped else
      f"different containers: {jax.tree.structure(updates)} vs "
      f"{jax.tree.structure(state_tree, is_leaf=is_none)}"))


def check_updates_match(updates, reference):
  """Raises an error naming the leaf where ``updates`` and ``reference`` differ."""
  got = dict(jax.tree_util.tree_flatten_with_path(updates)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  if got.keys() != want.keys() or (
      jax.tree.structure(updates) != jax.tree.structure(reference)
  ):
    _raise_tree_mismatch(got, want, (
        f"same leaves but different containers: {jax.tree.structure(updates)} "
        f"vs {jax.tree.structure(reference)}"))
  for key, leaf in got.items():
    name = f"updates{jax.tree_util.keystr(key)}"
    want_shape = tuple(want[key].shape if hasattr(want[key], "shape") else jnp.shape(want[key]))
    if jnp.shape(leaf) != want_shape:
      raise ValueError(
          f"{name} has shape {jnp.shape(leaf)} but the optimizer state was "
          f"initialized for shape {want_shape}"
      )
  check_float_leaves(updates, "updates")
