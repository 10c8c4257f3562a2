# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A hand-written float64 NumPy Shampoo, one block at a time, for the tests.

Written from the paper's equations and the package's documented semantics, and
independent of the package: its own blocking (plain loops over block index
ranges), its own refresh schedule, eigh roots in float64, Adam grafting.

What it assumes of the block plan (true for the parameters the tests give it):
no dimension needs merging (every parameter of rank >= 2 has all its
dimensions > 1 and no two adjacent ones whose product is <= ``block_size``),
and each parameter's blocks all have one shape, different from every other
parameter's block shape. Then the package's statistics of one size (and root
exponent) form one group, whose rows are, in the documented order: parameters
in tree order; for each, its preconditioned axes in order; for each axis, the
parameter's blocks in row-major order.
"""

import itertools

import numpy as np


def _split(dim, block):
  return [(s, min(s + block, dim)) for s in range(0, dim, block)]


def _inverse_root(stat, p, matrix_eps, pseudo_inverse_rtol=None):
  w, q = np.linalg.eigh(stat)
  w = np.maximum(w, 0)
  if pseudo_inverse_rtol is not None:  # drop the directions below the threshold
    keep = w > pseudo_inverse_rtol * w[-1]
    return (q[:, keep] * (w[keep] + matrix_eps * w[-1]) ** (-1.0 / p)) @ q[:, keep].T
  w = w + matrix_eps * w[-1]
  return (q * w ** (-1.0 / p)) @ q.T


def newton_schulz(x, num_steps=5):
  """Muon's quintic Newton-Schulz iteration in float64, on the smaller Gram matrix."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = np.asarray(x, np.float64)
  wide = x.shape[0] <= x.shape[1]
  y = x if wide else x.T
  y = y / (np.linalg.norm(y) + 1e-7)
  for _ in range(num_steps):
    gram = y @ y.T
    y = a * y + (b * gram + c * gram @ gram) @ y
  return y if wide else y.T


def orthogonalized(x):
  """A matrix's Newton-Schulz polar factor at the matrix's own Frobenius norm."""
  if x.ndim != 2:
    return x
  polar = newton_schulz(x)
  norm = np.linalg.norm(polar)
  return polar * np.linalg.norm(x) / norm if norm > 0 else polar


class _Block:
  """One block of a parameter: its region, and per preconditioned axis its
  statistic, its inverse root (the identity until the first refresh) and its
  (group, row) in the refresh schedule."""

  def __init__(self, slices, dims, axes):
    self.slices = slices
    self.stats = {a: np.zeros((dims[a], dims[a])) for a in axes}
    self.roots = {a: np.eye(dims[a]) for a in axes}
    self.rows = {}


class NumpyShampoo:
  """Shampoo with Adam grafting.

  Refresh schedule, with ``k = precondition_every`` and ``start =
  start_preconditioning_step``: without ``stagger``, every root on the steps
  ``t > start`` with ``(t - start - 1) % k == 0``. With ``stagger`` (the
  package's default), row ``i`` of a group on the steps ``t >= t0`` with
  ``(t - t0) % k == (i // 2) % k`` (by pairs of rows), ``t0 = max(1, start -
  k + 1)``. Roots are computed from the statistics including step ``t``'s
  gradient. From step ``start + 1`` on, each block's step is ``mu_hat`` times
  its current roots (the identity for a statistic not refreshed yet) along
  each preconditioned axis, rescaled to the norm of Adam's step for the block.

  Dimensions larger than ``skip_preconditioning_dim_size_gt`` are neither
  split into blocks nor given a statistic. ``nesterov`` is ``optax.adam``'s.
  ``orthogonalize``: a matrix block's preconditioned direction is replaced by
  its Newton-Schulz polar factor before it is grafted.
  """

  def __init__(self, shapes, *, block_size, b1, b2, eps, matrix_eps,
               precondition_every, start_preconditioning_step, learning_rate,
               pseudo_inverse_rtol=None, exponent_override=2, stagger=False, nesterov=False,
               skip_preconditioning_dim_size_gt=4096, orthogonalize=False):
    self.hp = dict(b1=b1, b2=b2, eps=eps, matrix_eps=matrix_eps)
    self.pseudo_inverse_rtol = pseudo_inverse_rtol
    self.k = precondition_every
    self.start = start_preconditioning_step
    self.stagger = stagger
    self.nesterov = nesterov
    self.orthogonalize = orthogonalize
    self.lr = learning_rate
    self.count = 0
    self.mu = [np.zeros(s) for s in shapes]
    self.nu = [np.zeros(s) for s in shapes]
    self.blocks = []  # per param: None (Adam only) or a list of _Block
    self.exponents = []
    rows_so_far = {}  # (statistic size, exponent) -> rows assigned
    for shape in shapes:
      axes = [a for a, d in enumerate(shape) if d <= skip_preconditioning_dim_size_gt]
      if len(shape) < 2 or not axes:
        self.blocks.append(None)
        self.exponents.append(None)
        continue
      exponent = exponent_override or 2 * len(axes)
      ranges = [_split(d, block_size) if a in axes else [(0, d)] for a, d in enumerate(shape)]
      blocks = [
          _Block(tuple(slice(a, b) for a, b in r), [b - a for a, b in r], axes)
          for r in itertools.product(*ranges)
      ]
      for axis in axes:
        for block in blocks:
          group = (block.stats[axis].shape[0], exponent)
          block.rows[axis] = rows_so_far.get(group, 0)
          rows_so_far[group] = block.rows[axis] + 1
      self.blocks.append(blocks)
      self.exponents.append(exponent)

  def _due(self, t, row):
    if self.stagger:
      t0 = max(1, self.start - self.k + 1)
      return t >= t0 and (t - t0) % self.k == (row // 2) % self.k
    return t > self.start and (t - self.start - 1) % self.k == 0

  def step(self, grads):
    b1, b2, eps = self.hp["b1"], self.hp["b2"], self.hp["eps"]
    self.count += 1
    t = self.count
    updates = []
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      self.mu[i] = b1 * self.mu[i] + (1 - b1) * g
      self.nu[i] = b2 * self.nu[i] + (1 - b2) * g * g
      if self.nesterov:
        mu_hat = b1 * self.mu[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
      else:
        mu_hat = self.mu[i] / (1 - b1**t)
      adam = mu_hat / (np.sqrt(self.nu[i] / (1 - b2**t)) + eps)
      if self.blocks[i] is None:
        updates.append(-self.lr * adam)
        continue
      out = np.zeros_like(g)
      for block in self.blocks[i]:
        s = block.slices
        out[s] = self._block(t, g[s], mu_hat[s], adam[s], block, self.exponents[i])
      updates.append(-self.lr * (out if t > self.start else adam))
    return updates

  def _block(self, t, g, m, adam, block, exponent):
    b2, matrix_eps = self.hp["b2"], self.hp["matrix_eps"]
    rank = g.ndim
    for axis, stat in block.stats.items():
      others = [a for a in range(rank) if a != axis]
      stat[...] = b2 * stat + (1 - b2) * np.tensordot(g, g, (others, others))
      if self._due(t, block.rows[axis]):
        block.roots[axis] = _inverse_root(stat, exponent, matrix_eps, self.pseudo_inverse_rtol)
    p = m
    for axis, root in block.roots.items():
      p = np.moveaxis(np.tensordot(p, root, (axis, 0)), -1, axis)
    if self.orthogonalize:
      p = orthogonalized(p)
    norm = np.linalg.norm(p)
    return p * np.linalg.norm(adam) / norm if norm > 0 else p


def _along(x, mat, axis, columns=False):
  """``x`` times ``mat`` along ``axis``: contracts the axis with ``mat``'s rows
  (``Q^T x`` for a basis ``Q``), or with its columns (``Q x``)."""
  return np.moveaxis(np.tensordot(x, mat, (axis, 1 if columns else 0)), -1, axis)


def numpy_soap(grads_seq, *, b1, b2, eps, learning_rate, basis_method="eigh",
               orthogonalize=False, nesterov=False):
  """SOAP on one tensor (of any rank) that is one block, every basis refreshed
  after every step.

  After step ``t`` the bases are recomputed from the statistics so far (so a
  basis is first used on the step after it is computed) and the second moment
  is carried into them, ``v <- (P * P) v`` per axis with ``P = Q_new^T Q_old``.
  ``basis_method='eigh'``: the eigenvectors. ``'qr'``: after the first refresh
  (eigh), one step of subspace iteration from the previous basis, its columns
  first sorted by their estimated eigenvalues ``diag(Q^T S Q)``, largest first:
  ``Q_new = qr(S Q_sorted).Q``. ``orthogonalize``: each (matrix) step is
  replaced by its Newton-Schulz polar factor at the step's norm.
  ``nesterov``: optax.adam's Nesterov first moment, in the eigenbasis.
  """
  out = []
  g0 = np.asarray(grads_seq[0], np.float64)
  axes = range(g0.ndim)
  m, v = np.zeros_like(g0), np.zeros_like(g0)
  stats = [np.zeros((d, d)) for d in g0.shape]
  bases = [np.eye(d) for d in g0.shape]

  def rotate(x, mats, columns=False):
    for axis in axes:
      x = _along(x, mats[axis], axis, columns)
    return x

  for t, g in enumerate(grads_seq, start=1):
    g = np.asarray(g, np.float64)
    stats = [b2 * s + (1 - b2) * np.tensordot(g, g, ([a for a in axes if a != i],) * 2)
             for i, s in enumerate(stats)]
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * rotate(g, bases) ** 2
    m_hat = m / (1 - b1**t)
    if nesterov:
      m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    step = rotate(m_hat, bases) / (np.sqrt(v / (1 - b2**t)) + eps)
    step = rotate(step, bases, columns=True)
    out.append(-learning_rate * (orthogonalized(step) if orthogonalize else step))
    new = []
    for s, q in zip(stats, bases):
      if basis_method == "qr" and t > 1:
        order = np.argsort(-np.einsum("ki,kl,li->i", q, s, q))
        new.append(np.linalg.qr(s @ q[:, order])[0])
      else:
        new.append(np.linalg.eigh(s)[1])
    v = rotate(v, [(n.T @ q) ** 2 for n, q in zip(new, bases)], columns=True)
    bases = new
  return out
