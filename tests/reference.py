# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A hand-written float64 NumPy Shampoo, one block at a time, for the tests.

Written from the paper's equations and independent of the package: its own
blocking (plain loops over block index ranges), eigh roots in float64, Adam
grafting. Only for parameters whose dimensions need no merging.
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


class NumpyShampoo:
  """Shampoo with Adam grafting, refreshing all roots every k steps."""

  def __init__(self, shapes, *, block_size, b1, b2, eps, matrix_eps,
               precondition_every, start_preconditioning_step, learning_rate,
               pseudo_inverse_rtol=None, exponent_override=2):
    self.hp = dict(b1=b1, b2=b2, eps=eps, matrix_eps=matrix_eps)
    self.pseudo_inverse_rtol = pseudo_inverse_rtol
    self.exponent_override = exponent_override  # None: the paper's 2 x rank
    self.k = precondition_every
    self.start = start_preconditioning_step
    self.lr = learning_rate
    self.count = 0
    self.mu = [np.zeros(s) for s in shapes]
    self.nu = [np.zeros(s) for s in shapes]
    self.blocks = []  # per param: list of (slices, [stat per axis], [root per axis])
    for shape in shapes:
      if len(shape) < 2:
        self.blocks.append(None)
        continue
      entries = []
      for ranges in itertools.product(*[_split(d, block_size) for d in shape]):
        slices = tuple(slice(a, b) for a, b in ranges)
        dims = [b - a for a, b in ranges]
        entries.append((slices, [np.zeros((d, d)) for d in dims], [np.eye(d) for d in dims]))
      self.blocks.append(entries)

  def step(self, grads):
    b1, b2, eps = self.hp["b1"], self.hp["b2"], self.hp["eps"]
    self.count += 1
    t = self.count
    refresh = t > self.start and (t - self.start - 1) % self.k == 0
    updates = []
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      self.mu[i] = b1 * self.mu[i] + (1 - b1) * g
      self.nu[i] = b2 * self.nu[i] + (1 - b2) * g * g
      mu_hat = self.mu[i] / (1 - b1**t)
      adam = mu_hat / (np.sqrt(self.nu[i] / (1 - b2**t)) + eps)
      if self.blocks[i] is None:
        updates.append(-self.lr * adam)
        continue
      out = np.zeros_like(g)
      for slices, stats, roots in self.blocks[i]:
        out[slices] = self._block(g[slices], mu_hat[slices], adam[slices], stats, roots, refresh)
      updates.append(-self.lr * (out if t > self.start else adam))
    return updates

  def _block(self, g, m, adam, stats, roots, refresh):
    b2, matrix_eps = self.hp["b2"], self.hp["matrix_eps"]
    rank = g.ndim
    for axis in range(rank):
      others = [a for a in range(rank) if a != axis]
      stats[axis][...] = b2 * stats[axis] + (1 - b2) * np.tensordot(g, g, (others, others))
      if refresh:
        roots[axis][...] = _inverse_root(stats[axis], self.exponent_override or 2 * rank,
                                         matrix_eps,
                                         self.pseudo_inverse_rtol)
    p = m
    for axis in range(rank):
      p = np.moveaxis(np.tensordot(p, roots[axis], (axis, 0)), -1, axis)
    return p * np.linalg.norm(adam) / np.linalg.norm(p)
