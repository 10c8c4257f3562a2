# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The aliases' signatures follow optax's; old spellings warn or say what changed."""

import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import shampoo_optax

ALIASES = {"shampoo": shampoo_optax.shampoo, "soap": shampoo_optax.soap}
ADAMW_POSITIONAL = ("learning_rate", "b1", "b2", "eps", "mu_dtype", "weight_decay", "mask")


def _steps(tx, params, grads_seq):
  state = tx.init(params)
  out = []
  for grads in grads_seq:
    updates, state = jax.jit(tx.update)(grads, state, params)
    out.append(updates)
  return out


def _tree(rng, shapes):
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("name", ALIASES)
def test_signature_follows_adamw(name):
  """optax.adamw's positional arguments in its order (without eps_root), the rest
  keyword-only; learning_rate annotated as optax's schedule type, not a string."""
  params = inspect.signature(ALIASES[name]).parameters
  positional = [p.name for p in params.values()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert tuple(positional) == ADAMW_POSITIONAL
  adamw = inspect.signature(optax.adamw).parameters
  assert [p for p in adamw if p in ADAMW_POSITIONAL] == list(ADAMW_POSITIONAL)
  assert params["learning_rate"].annotation is optax.ScalarOrSchedule
  assert params["learning_rate"].default is inspect.Parameter.empty
  for flag in ("block_size", "precondition_every", "start_preconditioning_step", "mesh"):
    assert params[flag].kind is inspect.Parameter.KEYWORD_ONLY, flag


@pytest.mark.parametrize("name", ALIASES)
def test_adamw_positional_call(rng, name):
  """``alias(lr, b1, b2, eps)`` binds as in optax.adamw."""
  shapes = {"w": (6, 4), "b": (4,)}
  params, grads_seq = _tree(rng, shapes), [_tree(rng, shapes) for _ in range(3)]
  alias = ALIASES[name]
  by_position = _steps(alias(1e-2, 0.8, 0.9, 1e-6), params, grads_seq)
  by_name = _steps(alias(learning_rate=1e-2, b1=0.8, b2=0.9, eps=1e-6), params, grads_seq)
  jax.tree.map(np.testing.assert_array_equal, by_position, by_name)


@pytest.mark.parametrize("name", ALIASES)
def test_old_positional_block_size_says_what_to_write(name):
  with pytest.raises(ValueError, match=rf"b1 must be in \[0, 1\), got 128.*"
                                       rf"{name}\(learning_rate, block_size=128\)"):
    ALIASES[name](1e-3, 128)
  with pytest.raises(TypeError):  # keyword-only now
    ALIASES[name](1e-3, 0.9, 0.95, 1e-8, None, 0.0, None, 128)


@pytest.mark.parametrize("name", ALIASES)
def test_weight_decay_mask_is_deprecated_but_works(rng, name):
  shapes = {"w": (6, 4), "b": (4,)}
  params = _tree(rng, shapes)
  zero = jax.tree.map(jnp.zeros_like, params)
  mask = {"w": True, "b": False}
  with pytest.warns(DeprecationWarning, match="mask="):
    old = ALIASES[name](0.1, weight_decay=0.5, weight_decay_mask=mask)
  new = ALIASES[name](0.1, weight_decay=0.5, mask=mask)
  (got,), (want,) = _steps(old, params, [zero]), _steps(new, params, [zero])
  jax.tree.map(np.testing.assert_array_equal, got, want)
  np.testing.assert_array_equal(want["b"], 0.0)
  np.testing.assert_allclose(want["w"], -0.05 * params["w"], rtol=1e-6)
  with pytest.raises(TypeError, match="both mask and weight_decay_mask"):
    ALIASES[name](0.1, mask=mask, weight_decay_mask=mask)


def test_exponent_override_zero_is_the_papers_exponent(rng):
  """Google's distributed_shampoo spells the automatic exponent (2k for k
  preconditioned axes) 0; so may we: for a matrix, 4."""
  shapes = {"w": (6, 4)}
  params, grads_seq = _tree(rng, shapes), [_tree(rng, shapes) for _ in range(3)]
  kwargs = dict(block_size=8, precondition_every=1, start_preconditioning_step=1)
  zero = _steps(shampoo_optax.shampoo(1e-2, exponent_override=0, **kwargs), params, grads_seq)
  four = _steps(shampoo_optax.shampoo(1e-2, exponent_override=4, **kwargs), params, grads_seq)
  jax.tree.map(np.testing.assert_array_equal, zero, four)
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="exponent_override"):
      shampoo_optax.shampoo(1e-2, exponent_override=bad)


@pytest.mark.parametrize("name, static_args_name", [("shampoo", "STATIC_ARGS"),
                                                    ("soap", "SOAP_STATIC_ARGS")])
def test_inject_hyperparams_error_names_the_right_static_args(name, static_args_name):
  injected = optax.inject_hyperparams(ALIASES[name])(learning_rate=0.01)
  with pytest.raises(ValueError, match=rf"static_args=shampoo_optax\.{static_args_name}$"):
    injected.init({"w": jnp.ones((3, 3))})


@pytest.mark.parametrize("name", ALIASES)
def test_integer_params_error_does_not_name_another_optimizer(name):
  with pytest.raises(TypeError, match=r"params\['n'\] has dtype int32") as error:
    ALIASES[name](1e-3).init({"n": jnp.arange(3)})
  assert "Shampoo" not in str(error.value) and "SOAP" not in str(error.value)


@pytest.mark.parametrize("name", ALIASES)
def test_non_finite_learning_rate_or_weight_decay_is_an_error(name):
  """A NaN or infinite step size would make every update NaN without a word."""
  make = ALIASES[name]
  with pytest.raises(ValueError, match=r"learning_rate must be in \(-inf, inf\), got nan"):
    make(float("nan"))
  with pytest.raises(ValueError, match=r"weight_decay must be in \(-inf, inf\), got inf"):
    make(1e-3, weight_decay=float("inf"))
  with pytest.raises(ValueError, match="learning_rate must be a number"):
    make("1e-3")
  # Schedules, arrays and optax.inject_hyperparams' traced values are accepted.
  make(optax.constant_schedule(1e-3))
  make(jnp.asarray(1e-3), weight_decay=jnp.asarray(1e-4))
  static = shampoo_optax.STATIC_ARGS if name == "shampoo" else shampoo_optax.SOAP_STATIC_ARGS
  injected = optax.inject_hyperparams(make, static_args=static)(learning_rate=1e-3)
  params = {"w": jnp.ones((3, 3))}
  jax.jit(injected.update)(params, injected.init(params), params)


def test_public_names_are_documented():
  """Every name in __all__ has a docstring; the functions a References section."""
  for name in shampoo_optax.__all__:
    obj = getattr(shampoo_optax, name)
    if isinstance(obj, tuple):  # STATIC_ARGS, SOAP_STATIC_ARGS
      continue
    assert inspect.getdoc(obj), name
  for alias in ALIASES.values():
    doc = inspect.getdoc(alias)
    assert "References:" in doc and "Examples:" in doc, alias.__name__


def test_api_reference_lists_every_public_name():
  """docs/api.rst documents exactly shampoo_optax.__all__ (the docs build, with
  warnings as errors, then checks that each one imports and renders)."""
  text = (pathlib.Path(__file__).parent.parent / "docs" / "api.rst").read_text()
  documented = re.findall(r"^\.\. auto(?:function|class|data|module):: (\S+)", text, re.M)
  names = {name.removeprefix("shampoo_optax.") for name in documented}
  assert names == set(shampoo_optax.__all__)
