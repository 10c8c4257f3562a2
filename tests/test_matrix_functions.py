# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Inverse p-th roots against float64 eigh references."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from shampoo_optax import matrix_functions, matrix_inverse_pth_root

P_VALUES = (1, 2, 3, 4, 6, 8)


def random_psd(rng, n, condition, scale=1.0):
  """A random symmetric matrix with eigenvalues log-spaced in [scale/cond, scale]."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  w = scale * np.logspace(0, -np.log10(condition), n)
  return (q * w) @ q.T


def reference_root(a, p, ridge=0.0):
  w, q = np.linalg.eigh(a)
  return (q * (np.maximum(w, 0) + ridge) ** (-1.0 / p)) @ q.T


def relative_error(x, ref):
  return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


root_jit = jax.jit(
    matrix_inverse_pth_root,
    static_argnames=("p", "method", "num_iters", "fallback_threshold"),
)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 257])
@pytest.mark.parametrize("condition,tolerance", [(1e2, 1e-3), (1e4, 5e-3)])
def test_accuracy_against_float64(rng, method, n, condition, tolerance):
  for p in P_VALUES:
    for scale in (1e-9, 1.0, 1e9):
      a = random_psd(rng, n, condition, scale)
      root, error = root_jit(jnp.asarray(a, jnp.float32), p=p, method=method)
      true_error = relative_error(root, reference_root(a, p))
      assert root.dtype == jnp.float32
      assert true_error <= tolerance, (p, scale, true_error)
      assert np.isfinite(error) and error <= 20 * max(true_error, 1e-4), (p, scale)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [2, 6])
def test_accuracy_size_1024(rng, method, p):
  a = random_psd(rng, 1024, 1e4)
  root, _ = root_jit(jnp.asarray(a, jnp.float32), p=p, method=method)
  assert relative_error(root, reference_root(a, p)) <= 5e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [1, 3, 4, 8])
def test_accuracy_size_1024_all_p(rng, method, p):
  for condition, tolerance in ((1e2, 1e-3), (1e4, 5e-3)):
    a = random_psd(rng, 1024, condition)
    root, _ = root_jit(jnp.asarray(a, jnp.float32), p=p, method=method)
    assert relative_error(root, reference_root(a, p)) <= tolerance


@pytest.mark.parametrize("method", ["newton", "eigh"])
def test_error_is_honest_when_float32_runs_out(rng, method):
  """At condition 1e8 float32 roots are poor; the error must say so."""
  for p in P_VALUES:
    for n in (16, 128):
      a = random_psd(rng, n, 1e8)
      root, error = root_jit(jnp.asarray(a, jnp.float32), p=p, method=method)
      true_error = relative_error(root, reference_root(a, p))
      if true_error > 0.02:
        assert error > 0.02, (p, n, true_error, error)
      assert error >= true_error / 10, (p, n, true_error, error)


def test_optax_reports_small_error_where_ours_is_accurate(rng):
  """optax's root is wrong for p = 3, 6; ours is right on the same inputs."""
  a = random_psd(rng, 32, 1e2)
  for p in (3, 6):
    ref = reference_root(a, p)
    theirs, _ = optax.matrix_inverse_pth_root(jnp.asarray(a, jnp.float32), p, ridge_epsilon=0.0)
    ours, _ = root_jit(jnp.asarray(a, jnp.float32), p=p)
    assert relative_error(theirs, ref) > 1e-2
    assert relative_error(ours, ref) < 1e-4


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", P_VALUES)
def test_zero_matrix_with_ridge(method, p):
  ridge = 1e-3
  root, error = root_jit(jnp.zeros((5, 5)), p=p, method=method, ridge_epsilon=ridge)
  np.testing.assert_allclose(root, ridge ** (-1.0 / p) * np.eye(5), rtol=1e-5)
  assert error < 1e-5


def test_singular_matrix_without_ridge_reports_infinite_error():
  _, error = root_jit(jnp.zeros((3, 3)), p=2)
  assert error == np.inf


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [2, 4, 6])
def test_low_rank_with_ridge(rng, method, p):
  g = rng.standard_normal((96, 7))
  a = g @ g.T
  lam = np.linalg.eigvalsh(a)[-1]
  for relative in (1e-2, 1e-4):
    root, _ = root_jit(
        jnp.asarray(a, jnp.float32), p=p, method=method, relative_ridge_epsilon=relative
    )
    ref = reference_root(a, p, ridge=relative * lam)
    assert relative_error(root, ref) <= (1e-3 if relative == 1e-2 else 5e-3)


def test_batched_equals_one_by_one_and_vmaps(rng):
  a = np.stack([random_psd(rng, 12, c) for c in (1e1, 1e2, 1e3, 1e4)])
  batched, errors = root_jit(jnp.asarray(a, jnp.float32), p=4)
  assert batched.shape == (4, 12, 12) and errors.shape == (4,)
  vmapped, _ = jax.vmap(lambda m: matrix_inverse_pth_root(m, 4))(jnp.asarray(a, jnp.float32))
  for i in range(4):
    ref = reference_root(a[i], 4)
    assert relative_error(batched[i], ref) < 1e-3
    assert relative_error(vmapped[i], ref) < 1e-3
  nested, _ = root_jit(jnp.asarray(a.reshape(2, 2, 12, 12), jnp.float32), p=4)
  np.testing.assert_allclose(nested.reshape(4, 12, 12), batched, rtol=1e-6, atol=1e-6)


def test_newton_falls_back_to_eigh(rng):
  a = jnp.asarray(random_psd(rng, 16, 1e3), jnp.float32)
  ref = reference_root(np.asarray(a, np.float64), 4)
  unconverged, error = root_jit(a, p=4, num_iters=2, fallback_threshold=None)
  assert error > 0.1 and relative_error(unconverged, ref) > 0.1
  fixed, error = root_jit(a, p=4, num_iters=2)
  assert error < 1e-3 and relative_error(fixed, ref) < 1e-3


def test_dtypes(rng):
  a = random_psd(rng, 8, 1e2)
  root, _ = matrix_inverse_pth_root(jnp.asarray(a, jnp.bfloat16), 2)
  assert root.dtype == jnp.float32
  with jax.enable_x64(True):
    root, error = matrix_inverse_pth_root(jnp.asarray(a, jnp.float64), 3)
    assert root.dtype == jnp.float64
    assert relative_error(root, reference_root(a, 3)) < 1e-10
    assert error < 1e-10


@pytest.mark.parametrize(
    "kwargs",
    [dict(p=0), dict(p=2.5), dict(p=True), dict(p=2, method="svd"), dict(p=2, num_iters=0)],
)
def test_invalid_arguments(kwargs):
  with pytest.raises(ValueError):
    matrix_inverse_pth_root(jnp.eye(3), **kwargs)


def test_non_square_matrix():
  with pytest.raises(ValueError, match="shape"):
    matrix_inverse_pth_root(jnp.ones((3, 4)), 2)


@pytest.mark.parametrize("shape", [(8, 8), (16, 40), (40, 16), (3, 128, 96)])
@pytest.mark.parametrize("condition", [1e1, 1e4])
def test_orthogonalize_against_float64(rng, shape, condition):
  """Muon's Newton-Schulz polar factor, batched, against the same iteration in
  float64, on matrices of a given condition number; its singular vectors are
  the matrix's own (U^T O V is diagonal) and its singular values near 1."""
  from shampoo_optax import matrix_functions  # noqa: PLC0415
  from tests import reference  # noqa: PLC0415

  m, n = shape[-2:]
  k = min(m, n)
  u = np.linalg.qr(rng.standard_normal(shape[:-2] + (m, k)))[0]
  v = np.linalg.qr(rng.standard_normal(shape[:-2] + (n, k)))[0]
  s = np.geomspace(1.0, 1.0 / condition, k)
  x = np.einsum("...ik,k,...jk->...ij", u, s, v)
  got = np.asarray(matrix_functions.orthogonalize(jnp.asarray(x, jnp.float32)), np.float64)
  want = np.stack([reference.newton_schulz(a) for a in x.reshape((-1, m, n))]).reshape(x.shape)
  np.testing.assert_allclose(got, want, atol=2e-4)
  core = np.einsum("...ik,...ij,...jl->...kl", u, got, v)
  diag = np.diagonal(core, axis1=-2, axis2=-1)
  assert np.abs(core - np.einsum("...k,kl->...kl", diag, np.eye(k))).max() < 2e-4
  # Muon's coefficients bring singular values above ~1e-2 of the largest to
  # [0.68, 1.2] in 5 steps; smaller ones (condition 1e4) grow but stay below.
  big = s >= 1e-2
  assert diag[..., big].min() > 0.6 and diag.max() < 1.25


def test_orthogonalize_keeps_zeros(rng):
  """A block's zero padding stays zero, and a zero matrix gives zeros (no NaN)."""
  from shampoo_optax import matrix_functions  # noqa: PLC0415

  x = np.zeros((2, 8, 8), np.float32)
  x[0, :5, :3] = rng.standard_normal((5, 3))
  got = np.asarray(matrix_functions.orthogonalize(jnp.asarray(x)))
  assert np.all(got[0, 5:] == 0) and np.all(got[0, :, 3:] == 0) and np.all(got[1] == 0)
  assert np.all(np.isfinite(got))


def _blas_threads():
  """{filepath: threads} of the BLAS libraries loaded in this process."""
  import threadpoolctl

  return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
          if i["user_api"] == "blas"}


@pytest.fixture
def restore_blas_threads():
  import threadpoolctl

  matrix_functions.single_threaded_cpu_lapack.cache_clear()
  with threadpoolctl.threadpool_limits(limits=None):  # restores every library's count on exit
    yield
  matrix_functions.single_threaded_cpu_lapack.cache_clear()


def test_cpu_lapack_set_to_one_thread_unless_the_user_chose(monkeypatch, restore_blas_threads):
  # jaxlib's CPU eigh runs in SciPy's BLAS; left multi-threaded it fights XLA's thread pool.
  import scipy

  for name in matrix_functions._BLAS_THREAD_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  x = jnp.eye(3)
  monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
  jnp.asarray(matrix_functions.eigh(x)[0]).block_until_ready()  # loads SciPy's BLAS
  import threadpoolctl

  threadpoolctl.threadpool_limits(limits=2)
  before = _blas_threads()
  assert not matrix_functions.single_threaded_cpu_lapack()  # the user's choice is kept
  assert _blas_threads() == before
  monkeypatch.delenv("OPENBLAS_NUM_THREADS")
  matrix_functions.single_threaded_cpu_lapack.cache_clear()
  w, _ = jax.jit(matrix_functions.eigh)(x)  # the limit is set while tracing
  np.testing.assert_allclose(w, np.ones(3))
  after = _blas_threads()
  scipy_dir = str(pathlib.Path(scipy.__file__).resolve().parent)
  scipys = [p for p in after if pathlib.Path(p).resolve().parent.name in ("scipy.libs", ".dylibs")
            or str(pathlib.Path(p).resolve()).startswith(scipy_dir)]
  if jax.default_backend() != "cpu" or not scipys:
    pytest.skip("no CPU backend, or SciPy without a BLAS of its own")
  assert matrix_functions.single_threaded_cpu_lapack()
  assert all(after[p] == 1 for p in scipys), after
  # Only SciPy's: NumPy's (or any other) BLAS keeps its count.
  assert {p: t for p, t in after.items() if p not in scipys} == {
      p: t for p, t in before.items() if p not in scipys}
