# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""optax's own generic suite for contributed optimizers, run on shampoo and soap.

optax ships the checks it runs on every ``optax.contrib`` optimizer in its
wheel (``optax/contrib/_common_test.py``, class ``ContribTest``): convergence
on a parabola, Rosenbrock, a matrix parabola and a mixed tree (30,000 steps
under ``jax.lax.scan``), ``optax.tree.map_params``, extra arguments to
``update``, no recompilation, ``inject_hyperparams``, dtype preservation,
``MultiSteps``, state dtype stability (float16 to float64) and schedules as
``learning_rate``. The suite is loaded from the installed optax, not copied;
each of its test methods is run, with every parameter its decorators give it
(target, dtype, wrap, ...), on our optimizers in place of the optax optimizer
it is parameterized over first.

The suite runs under optax's default promotion rules (its own code, e.g.
``MultiSteps``, mixes int and float), not the strict ones of ``conftest.py``.
"""

import functools
import importlib.util
import inspect
import pathlib
import types
import unittest
from unittest import mock

import jax
import optax
from absl.testing import parameterized

import shampoo_optax

OPTIMIZERS = {  # lr 1e-2; max_merged_dim=1 gives the suite's 2x2, 2x3 and 2x5x2 params roots
    "shampoo": ("shampoo", {"learning_rate": 1e-2}),
    "shampoo_unmerged": ("shampoo", {"learning_rate": 1e-2, "max_merged_dim": 1}),
    "soap": ("soap", {"learning_rate": 1e-2}),
    "soap_unmerged": ("soap", {"learning_rate": 1e-2, "max_merged_dim": 1}),
}
FACTORIES = {"shampoo": shampoo_optax.shampoo, "soap": shampoo_optax.soap}
STATIC_NAMES = {"shampoo": "STATIC_ARGS", "soap": "SOAP_STATIC_ARGS"}
INJECT_TEST = "test_optimizers_can_be_wrapped_in_inject_hyperparams"


def _load_suite() -> types.ModuleType:
  """A private copy of optax's contrib test module (its lookups are ours to redirect)."""
  path = pathlib.Path(optax.contrib.__file__).parent / "_common_test.py"
  if not path.exists():
    raise FileNotFoundError(f"optax {optax.__version__} does not ship {path}")
  spec = importlib.util.spec_from_file_location("optax_contrib_common_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  lookup = module._get_opt_factory
  module._get_opt_factory = lambda name: FACTORIES.get(name) or lookup(name)
  return module


suite = _load_suite()


def _suite_cases():
  """(test name, undecorated test function, parameters) of each case ContribTest
  runs on its first optimizer, with the optimizer's own parameters left out."""
  template = suite._MAIN_OPTIMIZERS_UNDER_TEST[0]
  optimizer_keys = ("opt_name", "opt_kwargs", "wrapper_name", "wrapper_kwargs")
  cases = []
  for name, method in vars(suite.ContribTest).items():
    if not (name.startswith("test") and hasattr(method, "__wrapped__")):
      continue
    params = inspect.getclosurevars(method).nonlocals["testcase_params"]
    if all(params.get(k) == template.get(k) for k in optimizer_keys):
      rest = {k: v for k, v in params.items() if k not in optimizer_keys}
      cases.append((method.__wrapped__.__name__, method.__wrapped__, rest))
  if not cases:
    raise RuntimeError("found no parameterized cases in optax's ContribTest")
  return cases


def _case_id(params):
  parts = []
  for key, value in sorted(params.items()):
    if callable(value):
      value = getattr(value, "__name__", repr(value)).removeprefix("_setup_")
    elif not isinstance(value, (str, bool, int)):
      value = jax.numpy.dtype(value).name
    parts.append(f"{key}_{value}")
  return "__".join(parts)


def _run(self, test, optimizer, params):
  """One case; a case the suite skips (e.g. its schedule check, for an optimizer
  whose ``learning_rate`` is not annotated as a schedule) fails here."""
  opt_name, opt_kwargs = OPTIMIZERS[optimizer]
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    try:
      test(self, opt_name=opt_name, opt_kwargs=opt_kwargs, wrapper_name=None,
           wrapper_kwargs=None, **params)
    except unittest.SkipTest as skip:
      self.fail(f"optax's suite skipped this case: {skip}")


def _run_inject(self, test, optimizer, params):
  """The suite's own static arguments cannot name ours: if it fails, it must be
  for that reason, with an error that says what to pass."""
  static_name = STATIC_NAMES[OPTIMIZERS[optimizer][0]]
  try:
    _run(self, test, optimizer, params)
  except ValueError as error:
    self.assertIn(f"static_args=shampoo_optax.{static_name}", str(error))


def _run_inject_with_static_args(self, test, optimizer, params):
  """The suite's inject_hyperparams case, with our static arguments added to its own."""
  inject = suite._inject.inject_hyperparams
  static_args = getattr(shampoo_optax, STATIC_NAMES[OPTIMIZERS[optimizer][0]])
  ours = types.SimpleNamespace(
      inject_hyperparams=lambda factory, own: inject(factory, (*own, *static_args)))
  with mock.patch.object(suite, "_inject", ours):
    _run(self, test, optimizer, params)


class TestOptaxContribSuite(parameterized.TestCase):
  """Methods added below: ``<suite test>__<optimizer>__<the suite's parameters>``."""


def _add_cases():
  for name, test, params in _suite_cases():
    runners = {"": _run}
    if name == INJECT_TEST:
      runners = {"": _run_inject, "with_static_args": _run_inject_with_static_args}
    for optimizer in OPTIMIZERS:
      for suffix, runner in runners.items():
        case = "__".join(filter(None, (name, suffix, optimizer, _case_id(params))))
        method = functools.partialmethod(runner, test, optimizer, params)
        setattr(TestOptaxContribSuite, case, method)


_add_cases()
