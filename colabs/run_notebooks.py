# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Executes the notebooks in colabs/ top to bottom, each in a fresh kernel.

    python colabs/run_notebooks.py                      # every colabs/*.ipynb
    python colabs/run_notebooks.py colabs/sharding.ipynb --out /tmp/executed

The kernel is ipykernel on the interpreter that runs this script (not whatever
"python3" kernel Jupyter finds first), so the notebooks see the same installed
packages. Needs nbclient, nbformat and ipykernel (and matplotlib for the
notebooks themselves). Exits with status 1, naming the notebook and the cell,
if a cell raises or times out.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

COLABS = pathlib.Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colors in IPython tracebacks


class NotebookError(RuntimeError):
  """A cell of a notebook failed; the message names the notebook and the cell."""


def notebooks() -> list[pathlib.Path]:
  """The notebooks in colabs/, sorted by name."""
  return sorted(COLABS.glob("*.ipynb"))


def run_notebook(path, *, timeout: int = CELL_TIMEOUT_S, out_dir=None) -> float:
  """Executes one notebook in a fresh kernel; returns the wall time in seconds.

  Args:
    path: the .ipynb file. It runs with its own folder as working directory.
    timeout: seconds allowed per cell.
    out_dir: if given, the executed notebook (with outputs) is written there.

  Raises:
    NotebookError: a cell raised, timed out or killed the kernel.
  """
  # Imported here so that importing this module (e.g. from a test, to list the
  # notebooks) works without the notebook packages.
  import nbformat  # noqa: PLC0415
  from ipykernel.kernelspec import write_kernel_spec  # noqa: PLC0415
  from jupyter_client.kernelspec import KernelSpecManager  # noqa: PLC0415
  from jupyter_client.manager import AsyncKernelManager  # noqa: PLC0415
  from nbclient import NotebookClient  # noqa: PLC0415
  from nbclient.exceptions import (  # noqa: PLC0415
      CellExecutionError,
      CellTimeoutError,
      DeadKernelError,
  )

  path = pathlib.Path(path).resolve()
  nb = nbformat.read(path, as_version=4)
  current = {"index": None, "source": ""}

  def on_cell_start(cell, cell_index, **_):
    current["index"], current["source"] = cell_index, cell.source

  with tempfile.TemporaryDirectory() as kernels:
    # A kernel spec for this very interpreter: [sys.executable, -m, ipykernel_launcher, ...].
    write_kernel_spec(pathlib.Path(kernels) / "python3")
    km = AsyncKernelManager(kernel_name="python3",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))
    if os.name == "posix":  # local sockets: no open TCP ports, no "unencrypted TCP" warning
      km.transport, km.ip = "ipc", str(pathlib.Path(kernels) / "kernel")
    client = NotebookClient(
        nb, km=km, timeout=timeout, allow_errors=False, on_cell_start=on_cell_start,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
      client.execute(cleanup_kc=True)  # we made the kernel manager: shut the kernel down
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
      what = {DeadKernelError: "killed the kernel", CellTimeoutError: "timed out"}.get(
          type(e), "raised")
      first_line = (current["source"].strip().splitlines() or [""])[0]
      raise NotebookError(
          f"{path.name}: cell {current['index']} (counting all {len(nb.cells)} cells from 0; "
          f"it starts with {first_line!r}) {what}:\n{_ANSI.sub('', str(e))}"
      ) from e
    finally:
      if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.name)
  return time.perf_counter() - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("notebooks", nargs="*", type=pathlib.Path,
                      help="notebooks to run (default: every colabs/*.ipynb)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="save the executed notebooks (with outputs) in this folder")
  parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S,
                      help=f"seconds allowed per cell (default {CELL_TIMEOUT_S})")
  args = parser.parse_args(argv)

  failures = []
  for path in args.notebooks or notebooks():
    print(f"{path.name}: running ...", flush=True)
    try:
      seconds = run_notebook(path, timeout=args.timeout, out_dir=args.out)
    except NotebookError as e:
      print(f"FAILED {e}", file=sys.stderr, flush=True)
      failures.append(path.name)
      continue
    print(f"{path.name}: ok in {seconds:.1f} s", flush=True)
  if failures:
    print(f"{len(failures)} notebook(s) failed: {', '.join(failures)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
