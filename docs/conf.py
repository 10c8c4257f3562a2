# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Sphinx configuration: the API reference, the README's guide, the benchmark tables.

Build (what CI runs, warnings are errors):
  pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html
"""

import shampoo_optax

project = "shampoo_optax"
author = "The shampoo_optax Authors"
copyright = "2026, The shampoo_optax Authors"  # noqa: A001
release = shampoo_optax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Docstrings are Google style (Args/Returns/Examples/References), as optax's.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = "none"  # the unions of optax's aliases, expanded, drown the signature
autodoc_member_order = "bysource"
# Else STATIC_ARGS shows the docstring of tuple.
autodoc_inherit_docstrings = False
python_use_unqualified_type_names = True

myst_heading_anchors = 3

html_theme = "furo"
html_title = f"shampoo_optax {release}"

