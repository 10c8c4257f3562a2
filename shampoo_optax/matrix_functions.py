# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Inverse p-th roots of symmetric positive semi-definite matrices.

Everything here works on a batch: ``matrix`` may have any number of leading
batch dimensions ``[..., n, n]``, and the optimizer passes whole stacks of
statistics at once, so a refresh is one batched computation per stack.

Two methods:

* ``'newton'``: the coupled Newton iteration for the inverse p-th root
  (Guo and Higham, 2006; Higham, *Functions of Matrices*, eq. 7.18), made of
  matrix products only, which is what accelerators do fastest. It is correct for
  every integer ``p >= 1``: the ``p``-th power of the iteration matrix is
  computed by repeated squaring, not looked up in a table of powers of two.
* ``'eigh'``: a symmetric eigendecomposition, also used as the fallback of the
  Newton method for the matrices of a batch where it did not converge.

The error returned with each root is measured on the root that is returned,
not read off the iteration: ``||X^p (A + ridge I) - I||_2 / p``, estimated by
power iteration with matrix-vector products only. To first order this bounds
the relative error of the root, so it grows when float32 precision runs out
(a badly conditioned matrix) instead of staying at the size of the iteration's
own residual.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
# Power iterations for the error estimate.
_POWER_ITERS = 16
# Newton keeps iterating while its residual is above this, even when the
# residual grew: the first iterations are not monotone element-wise.
_NEWTON_TRANSIENT_ERROR = 0.05

METHODS = ("newton", "eigh")

# Environment variables through which a user sets OpenBLAS's (or another BLAS's) thread count.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS",
                          "MKL_NUM_THREADS")


@functools.cache
def single_threaded_cpu_lapack() -> bool:
  """On CPU, run jaxlib's LAPACK kernels (eigh, qr) on one thread; once per process.

  Every LAPACK call of the package goes through :func:`eigh` or :func:`qr`,
  which call this first.

  jaxlib computes ``eigh`` and ``qr`` on CPU in the LAPACK that SciPy ships,
  whose OpenBLAS starts one thread per core. Inside a jitted step those
  threads spin after each call and take the cores from XLA's own thread pool:
  on 2 cores, a small LM's Shampoo step took 1.49-1.57x AdamW's with two
  threads and 1.12-1.21x with one (``benchmarks/README.md``). So when the
  default backend is the CPU and the user has set none of
  ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, the first eigh or qr the optimizer traces sets *SciPy's*
  BLAS (the one bundled in SciPy's wheel; not NumPy's, and not a BLAS shared
  with other libraries) to one thread, with ``threadpoolctl``, and logs it.
  Setting any of those variables keeps the user's choice. Called at trace
  time.

  Returns:
    Whether a library was limited (by this call or an earlier one).
  """
  if any(os.environ.get(name) for name in _BLAS_THREAD_VARIABLES):
    return False
  if jax.default_backend() != "cpu":
    return False
  try:
    import scipy
    import scipy.linalg.cython_lapack  # noqa: F401  (loads the library jaxlib's kernels call)
    import threadpoolctl
  except ImportError:  # pragma: no cover (both are jax / package dependencies)
    return False
  scipy_dir = pathlib.Path(scipy.__file__).resolve().parent
  own = (scipy_dir, scipy_dir.with_name("scipy.libs"))
  try:
    controller = threadpoolctl.ThreadpoolController()
    paths = [info["filepath"] for info in controller.info()
             if info["user_api"] == "blas"
             and any(pathlib.Path(info["filepath"]).resolve().is_relative_to(d) for d in own)]
    if paths:
      controller.select(filepath=paths).limit(limits=1)
  except Exception as error:  # noqa: BLE001  (a speed setting must never stop training)
    logging.getLogger(__name__).warning(
        "shampoo_optax: could not set SciPy's BLAS to one thread (%r); on CPU, set "
        "OPENBLAS_NUM_THREADS=1 before starting Python for a faster eigh", error)
    return False
  if not paths:
    return False
  logging.getLogger(__name__).info(
      "shampoo_optax: SciPy's BLAS (%s), which runs jaxlib's CPU eigh and qr, set to one thread; "
      "set OPENBLAS_NUM_THREADS to choose otherwise", ", ".join(paths))
  return True


def eigh(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``jnp.linalg.eigh`` (eigenvalues ascending, eigenvectors as columns), after
  :func:`single_threaded_cpu_lapack`."""
  single_threaded_cpu_lapack()
  return jnp.linalg.eigh(matrix)


def qr(matrix: jax.Array) -> jax.Array:
  """The ``Q`` of ``jnp.linalg.qr``, after :func:`single_threaded_cpu_lapack`."""
  single_threaded_cpu_lapack()
  return jnp.linalg.qr(matrix)[0]


def matrix_inverse_pth_root(
    matrix: jax.typing.ArrayLike,
    p: int,
    *,
    ridge_epsilon: jax.typing.ArrayLike = 0.0,
    relative_ridge_epsilon: jax.typing.ArrayLike = 0.0,
    method: str = "newton",
    num_iters: int = 100,
    error_tolerance: float | None = None,
    fallback_threshold: float | None = 0.1,
    pseudo_inverse_rtol: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Computes ``(matrix + ridge * I)^(-1/p)`` for symmetric PSD matrices.

  The ridge is ``ridge_epsilon + relative_ridge_epsilon * lambda_max(matrix)``:
  ``ridge_epsilon`` is absolute, ``relative_ridge_epsilon`` is scaled by the
  largest eigenvalue, as Shampoo's ``matrix_eps`` is
  (`Anil et al., 2020 <https://arxiv.org/abs/2002.09018>`_).

  The computation runs in the input's dtype promoted to at least float32, so a
  bfloat16 matrix gives a float32 root and a float64 matrix (with
  ``jax_enable_x64``) a float64 root. Inputs of any scale work: the matrix is
  normalized by its largest eigenvalue before iterating.

  Args:
    matrix: symmetric positive semi-definite matrices, shape ``[..., n, n]``.
      Only the symmetric part is used.
    p: the root, a Python integer ``>= 1`` (static).
    ridge_epsilon: absolute ridge added to the diagonal.
    relative_ridge_epsilon: ridge relative to the largest eigenvalue.
    method: ``'newton'`` (coupled Newton iteration) or ``'eigh'``.
    num_iters: maximum number of Newton iterations.
    error_tolerance: Newton stops once the iteration's residual is below this;
      ``None`` means 10 machine epsilons of the compute dtype.
    fallback_threshold: with ``method='newton'``, matrices whose error is above
      this (or not finite) are recomputed with ``'eigh'``, and the root with
      the smaller error is kept. ``None`` disables the fallback.
    pseudo_inverse_rtol: if set, the pseudo-inverse root of a rank-deficient
      matrix: eigenvalues at most ``pseudo_inverse_rtol * lambda_max`` are
      dropped (their directions get 0) instead of being lifted by a ridge, and
      the ridge, if any, is added to the kept ones. Uses ``'eigh'``; the
      error is measured on the kept subspace.

  Returns:
    ``(root, error)``: ``root`` of shape ``[..., n, n]``, and ``error`` of
    shape ``[...]``, an estimate of the relative error of each root (see the
    module docstring). If ``matrix + ridge * I`` is singular the root is not
    defined: its error is large (at least ``1/p``) or ``inf``, and the root
    must not be used.

  Examples:
    >>> import jax.numpy as jnp
    >>> from shampoo_optax import matrix_inverse_pth_root
    >>> a = jnp.diag(jnp.array([16.0, 81.0]))
    >>> root, error = matrix_inverse_pth_root(a, 4)
    >>> jnp.round(jnp.diag(root), 4)
    Array([0.5   , 0.3333], dtype=float32)
    >>> bool(error < 1e-5)
    True
  """
  p = _check_root_args(matrix, p, method, num_iters)
  a = jnp.asarray(matrix)
  wide_float = jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize >= 4
  dtype = a.dtype if wide_float else jnp.dtype(jnp.float32)
  a = a.astype(dtype)
  a = 0.5 * (a + jnp.swapaxes(a, -1, -2))
  if error_tolerance is None:
    error_tolerance = 10 * float(jnp.finfo(dtype).eps)
  if method == "eigh" or pseudo_inverse_rtol is not None:
    return _eigh_root(a, p, ridge_epsilon, relative_ridge_epsilon, pseudo_inverse_rtol)
  root, error = _newton_root(
      a, p, ridge_epsilon, relative_ridge_epsilon, num_iters, error_tolerance
  )
  if fallback_threshold is None:
    return root, error
  bad = ~(error <= fallback_threshold)

  def with_eigh(args):
    root, error = args
    root_e, error_e = _eigh_root(a, p, ridge_epsilon, relative_ridge_epsilon)
    take = (bad & (error_e < error)) | ~jnp.isfinite(error)
    return (
        jnp.where(take[..., None, None], root_e, root),
        jnp.where(take, error_e, error),
    )

  return jax.lax.cond(jnp.any(bad), with_eigh, lambda args: args, (root, error))


def _check_root_args(matrix, p, method, num_iters) -> int:
  shape = jnp.shape(matrix)
  if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] == 0:
    raise ValueError(f"matrix must have shape [..., n, n] with n >= 1, got {shape}")
  if isinstance(p, bool) or int(p) != p or p < 1:
    raise ValueError(f"p must be an integer >= 1, got {p!r}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  return int(p)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _mv(a: jax.Array, v: jax.Array) -> jax.Array:
  """Batched matrix-vector products, as a multiply and a row sum: float32
  arithmetic, as a HIGHEST-precision dot has, and on XLA:CPU 30% faster to
  compile inside the error estimate's loop (0.50 s against 0.70 s for 102
  matrices of 32 x 32)."""
  return jnp.sum(a * v[..., None, :], axis=-1)


def _matrix_power(x: jax.Array, p: int) -> jax.Array:
  """x**p for a static integer p >= 1, by repeated squaring."""
  result = None
  while True:
    if p & 1:
      result = x if result is None else _mm(result, x)
    p >>= 1
    if not p:
      return result
    x = _mm(x, x)


def _start_vector(shape, dtype) -> jax.Array:
  """A fixed vector with components along every eigenvector of typical inputs.

  A constant of the program (NumPy, not traced ops): computed in the program it
  was two more kernels to compile, each about 10 ms on XLA:CPU."""
  n = shape[-1]
  v = 1.0 + 0.5 * np.sin(1.7 * np.arange(n) + 0.3)
  return jnp.broadcast_to(jnp.asarray(v / np.linalg.norm(v), dtype), shape)


def _power_iteration(apply, shape, dtype) -> jax.Array:
  """Estimates the largest |eigenvalue| of the linear map ``apply``."""

  def body(_, v):
    w = apply(v)
    norm = jnp.linalg.norm(w, axis=-1, keepdims=True)
    return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), v)

  v = jax.lax.fori_loop(0, _POWER_ITERS, body, _start_vector(shape, dtype))
  return jnp.linalg.norm(apply(v), axis=-1)


def max_eigenvalue(matrix: jax.Array, num_steps: int = 24) -> jax.Array:
  """Largest eigenvalue of symmetric matrices, by Lanczos iteration.

  Lanczos with full reorthogonalization: ``num_steps`` matrix-vector products
  and a small tridiagonal eigenproblem. Unlike power iteration it converges
  fast when the top eigenvalues are close (gradient statistics often have
  several), which matters because the relative ridge is scaled by it.
  """
  return extreme_eigenvalues(matrix, num_steps)[1]


def extreme_eigenvalues(matrix: jax.Array, num_steps: int = 24) -> tuple[jax.Array, jax.Array]:
  """(smallest, largest) Ritz values of symmetric matrices after Lanczos steps.

  The largest converges fast; the smallest is an upper bound of the smallest
  eigenvalue (exact when ``num_steps >= n``), so their ratio bounds the
  condition number from below.
  """
  n = matrix.shape[-1]
  k = min(n, num_steps)
  batch = matrix.shape[:-2]
  dtype = matrix.dtype

  def step(j, carry):
    basis, alphas, betas, v = carry
    basis = basis.at[..., j, :].set(v)
    w = _mv(matrix, v)
    alpha = jnp.sum(v * w, axis=-1)
    for _ in range(2):  # twice is enough (Kahan-Parlett)
      w = w - jnp.einsum("...kn,...k->...n", basis, jnp.einsum("...kn,...n->...k", basis, w,
                         precision=_HIGHEST), precision=_HIGHEST)
    beta = jnp.linalg.norm(w, axis=-1)
    # Past an invariant subspace the next vector is zero: its Ritz values are
    # zero, below the largest one of a PSD matrix.
    v = w / jnp.where(beta > 0, beta, 1)[..., None]
    return basis, alphas.at[..., j].set(alpha), betas.at[..., j].set(beta), v

  init = (
      jnp.zeros((*batch, k, n), dtype),
      jnp.zeros((*batch, k), dtype),
      jnp.zeros((*batch, k), dtype),
      _start_vector((*batch, n), dtype),
  )
  _, alphas, betas, _ = jax.lax.fori_loop(0, k, step, init)
  # After an exact breakdown (beta = 0) the remaining steps have zero
  # vectors; give them the first Ritz value, which lies inside the spectrum,
  # so they move neither extreme.
  alive = jnp.cumprod(jnp.concatenate(
      [jnp.ones_like(betas[..., :1]), (betas[..., :-1] > 0).astype(dtype)], axis=-1), axis=-1)
  alphas = jnp.where(alive > 0, alphas, alphas[..., :1])
  betas = betas * alive
  i = jnp.arange(k)
  tridiagonal = (
      jnp.zeros((*batch, k, k), dtype)
      .at[..., i, i].set(alphas)
      .at[..., i[:-1], i[1:]].set(betas[..., :-1])
      .at[..., i[1:], i[:-1]].set(betas[..., :-1])
  )
  ritz = eigh(tridiagonal)[0]  # jnp.linalg.eigvalsh is the same eigh
  return ritz[..., 0], ritz[..., -1]


def _root_error(root_n: jax.Array, a_n: jax.Array, p: int, basis=None) -> jax.Array:
  """||root_n^p a_n - I||_2 / p, by power iteration on matrix-vector products.

  Products with vectors keep the rounding error relative to the vector they
  act on, so the estimate is not swamped by the rounding noise of forming
  root_n^p, which grows with the condition number. With ``basis`` (columns
  spanning a subspace, zero columns ignored), the error on that subspace:
  ``||(root_n^p a_n - I) P||_2 / p`` for the projector P onto it.
  """

  def project(v):
    if basis is None:
      return v
    return _mv(basis, jnp.einsum("...ji,...j->...i", basis, v, precision=_HIGHEST))

  def residual(v):
    v = project(v)
    w = _mv(a_n, v)
    for _ in range(p):
      w = _mv(root_n, w)
    return w - v

  error = _power_iteration(residual, a_n.shape[:-1], a_n.dtype) / p
  return jnp.where(jnp.isnan(error), jnp.inf, error)


def _normalize(a, ridge_epsilon, relative_ridge_epsilon, lambda_max):
  """Returns (a + ridge I) / scale and scale, where scale ~ its top eigenvalue."""
  dtype = a.dtype
  lambda_max = jnp.maximum(lambda_max, 0)
  ridge = jnp.asarray(ridge_epsilon, dtype) + jnp.asarray(
      relative_ridge_epsilon, dtype
  ) * lambda_max
  scale = lambda_max + ridge
  safe_scale = jnp.where(scale > 0, scale, 1)
  # The ridge on the diagonal by a product with I, not a scatter: the same
  # numbers, and an elementwise op that fuses.
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=dtype).reshape((1,) * (a.ndim - 2) + (n, n))
  a_n = a + ridge[..., None, None] * eye
  return a_n / safe_scale[..., None, None], scale, safe_scale


def _newton_root(a, p, ridge_epsilon, relative_ridge_epsilon, num_iters, tol):
  a_n, scale, safe_scale = _normalize(
      a, ridge_epsilon, relative_ridge_epsilon, max_eigenvalue(a)
  )
  x_n = _coupled_newton(a_n, p, num_iters, tol)
  error = jnp.where(scale > 0, _root_error(x_n, a_n, p), jnp.inf)
  root = x_n * (safe_scale ** (-1.0 / p))[..., None, None]
  return root, error


def _coupled_newton(a_n, p, num_iters, tol):
  """Coupled Newton iteration for a_n^(-1/p), a_n with top eigenvalue ~1.

  X_{k+1} = X_k T_k, M_{k+1} = T_k^p M_k with T_k = ((p + 1) I - M_k) / p,
  started at M_0 = z a_n, X_0 = z^(1/p) I; M_k -> I and X_k -> a_n^(-1/p).
  z = (p + 1) / 2 puts the top eigenvalue of M_0 in the middle of the
  convergence interval (0, p + 1), which leaves room for an estimate of the
  top eigenvalue that is off by up to a factor of two.
  """
  eye = jnp.broadcast_to(jnp.eye(a_n.shape[-1], dtype=a_n.dtype), a_n.shape)
  z = (p + 1) / 2
  m = z * a_n
  x = z ** (1.0 / p) * eye
  error = jnp.max(jnp.abs(m - eye), axis=(-2, -1))
  running = jnp.isfinite(error)

  def cond(state):
    i, _, _, _, running = state
    return (i < num_iters) & jnp.any(running)

  def body(state):
    i, m, x, error, running = state
    t = ((p + 1) * eye - m) / p
    new_x = _mm(x, t)
    new_m = _mm(_matrix_power(t, p), m)
    new_error = jnp.max(jnp.abs(new_m - eye), axis=(-2, -1))
    # Accept a step that improved the residual or is still in the transient;
    # stop (keeping the last iterate) once the residual stops improving, which
    # is where float rounding takes over.
    accept = running & jnp.isfinite(new_error) & (
        (new_error < error) | (error > _NEWTON_TRANSIENT_ERROR)
    )
    x = jnp.where(accept[..., None, None], new_x, x)
    m = jnp.where(accept[..., None, None], new_m, m)
    error = jnp.where(accept, new_error, error)
    return i + 1, m, x, error, accept & (new_error > tol)

  _, _, x, _, _ = jax.lax.while_loop(cond, body, (0, m, x, error, running))
  return 0.5 * (x + jnp.swapaxes(x, -1, -2))


def _eigh_root(a, p, ridge_epsilon, relative_ridge_epsilon, pseudo_inverse_rtol=None):
  # Normalize first so that eigh sees entries of order one at any scale.
  norm = jnp.linalg.norm(a, axis=(-2, -1))
  norm = jnp.where(norm > 0, norm, 1)
  w, q = eigh(a / norm[..., None, None])
  w = jnp.maximum(w, 0) * norm[..., None]
  lambda_max = w[..., -1]
  a_n, scale, safe_scale = _normalize(
      a, ridge_epsilon, relative_ridge_epsilon, lambda_max
  )
  w_n = (w + (scale - lambda_max)[..., None]) / safe_scale[..., None]
  basis = None
  if pseudo_inverse_rtol is None:
    # Eigenvalues below the float resolution of the largest one cannot be
    # resolved; flooring them keeps the root finite and the error estimate
    # reports how far from a true root that is.
    w_n = jnp.maximum(w_n, jnp.finfo(w_n.dtype).eps * w_n[..., -1:])
    inverse_root = w_n ** (-1.0 / p)
  else:
    keep = w > pseudo_inverse_rtol * lambda_max[..., None]
    inverse_root = jnp.where(keep, jnp.where(keep, w_n, 1) ** (-1.0 / p), 0)
    basis = q * keep[..., None, :].astype(q.dtype)
  x_n = _mm(q * inverse_root[..., None, :], jnp.swapaxes(q, -1, -2))
  error = jnp.where(scale > 0, _root_error(x_n, a_n, p, basis), jnp.inf)
  root = x_n * (safe_scale ** (-1.0 / p))[..., None, None]
  return root, error


# Muon's quintic Newton-Schulz coefficients (Jordan et al., 2024): chosen to pull
# every singular value of a matrix of Frobenius norm <= 1 into about [0.7, 1.2]
# in five steps, fast rather than exact.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(x: jax.Array, num_steps: int = 5, eps: float = 1e-7) -> jax.Array:
  """About ``U V^T`` for each matrix ``x = U S V^T`` of ``[..., m, n]``, as Muon does.

  Muon's quintic Newton-Schulz iteration on ``x / ||x||_F``: matrix products
  only, on the smaller of ``x x^T`` and ``x^T x``. Its singular values land
  near 1 (about 0.7 to 1.2 after five steps), not at 1: an approximate polar
  factor. Zero rows and columns (a block's padding) stay zero, and a zero
  matrix gives zeros.
  """
  a, b, c = NEWTON_SCHULZ_COEFFICIENTS
  wide = x.shape[-2] <= x.shape[-1]
  y = x if wide else jnp.swapaxes(x, -1, -2)
  y = y / (jnp.sqrt(jnp.sum(jnp.square(y), axis=(-2, -1), keepdims=True)) + eps)
  for _ in range(num_steps):
    gram = jnp.matmul(y, jnp.swapaxes(y, -1, -2))
    y = a * y + jnp.matmul(b * gram + c * jnp.matmul(gram, gram), y)
  return y if wide else jnp.swapaxes(y, -1, -2)
