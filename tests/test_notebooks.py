# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The notebooks in colabs/ run top to bottom without error.

Each runs in a fresh ipykernel (on this interpreter) through the function that
colabs/run_notebooks.py uses. Needs nbclient, nbformat, ipykernel and
matplotlib besides the test dependencies.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNER = ROOT / "colabs" / "run_notebooks.py"
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))
NEEDS = ("nbclient", "nbformat", "ipykernel", "matplotlib")
# Notebooks that take more than a minute on 2 CPU cores.
SLOW = set()


def _load_runner():
  spec = importlib.util.spec_from_file_location("run_notebooks", RUNNER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_notebook_is_found():
  assert {p.name for p in NOTEBOOKS} >= {
      "quickstart.ipynb", "sharding.ipynb", "matrix_roots.ipynb"}


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.name in SLOW else [])
    for p in NOTEBOOKS
])
def test_notebook_runs(path):
  missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
  if missing:
    pytest.fail(f"running the notebooks needs {', '.join(missing)}: "
                f"pip install {' '.join(missing)}")
  runner = _load_runner()
  runner.run_notebook(path)  # raises NotebookError naming the cell on failure
