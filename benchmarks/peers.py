# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The peer optimizers that the benchmarks compare shampoo_optax against.

Each builder takes a learning rate (a float or an optax schedule) and a decoupled weight decay
applied as ``lr * weight_decay * param`` to every parameter, as ``optax.adamw`` and
``shampoo_optax.shampoo`` do, and returns an optax ``GradientTransformation`` whose
``update(grads, state, params)`` gives updates to add with ``optax.apply_updates``.

- ``adamw``: ``optax.adamw``.
- ``muon``: ``optax.contrib.muon``. Newton-Schulz-orthogonalized momentum for the hidden weight
  matrices (Dense kernels and the 3-D attention kernels, as matrices), and its built-in AdamW
  fallback for everything else: embeddings, biases, LayerNorm, and the layers that sit
  directly in the root module (the output head here). See ``muon_dimension_numbers``.
- ``google_shampoo``: Google's original Distributed Shampoo, ``distributed_shampoo`` from the PyPI
  package ``precondition-opt`` (module ``precondition.distributed_shampoo``), with RMSProp
  grafting made Adam-like; see its docstring for the settings and why.

Caveat: ``precondition-opt`` (0.3.0) predates current JAX and calls ``jax.tree_map``,
``jax.tree_flatten`` and ``jax.tree_unflatten``, which JAX has removed. ``google_shampoo`` puts
them back on the ``jax`` module (``_alias_removed_jax_names``) before importing it, only where they
are missing: this changes the global ``jax`` namespace of the process that calls it.

Run ``python benchmarks/peers.py`` for a smoke check: 20 steps of each peer on the example
character Transformer.
"""

from __future__ import annotations

import ast
import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

PyTree = Any


def adamw(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 1e-4,
          **kwargs) -> optax.GradientTransformation:
  """``optax.adamw`` with its default betas and epsilon; ``kwargs`` (a spec's
  ``adamw+b1=0.7``) replace any of its settings."""
  return optax.adamw(learning_rate, weight_decay=weight_decay, **kwargs)


# ----------------------------------------------------------------------------------------------
# Muon
# ----------------------------------------------------------------------------------------------

# Flax's MultiHeadDotProductAttention projections are DenseGeneral layers with 3-D kernels.
# Muon orthogonalizes each as the matrix it is, as PyTorch Muon does with nn.Linear projections:
# query/key/value map d_model -> (heads, head_dim), out maps (heads, head_dim) -> d_model.
_ATTENTION_IN = ("query", "key", "value")
_ATTENTION_OUT = ("out",)


def muon_dimension_numbers(params: PyTree) -> PyTree:
  """Which leaves Muon orthogonalizes, and as which matrix; None sends a leaf to AdamW.

  - ``kernel`` leaves of rank 2 (``nn.Dense``) inside a submodule: Muon, as (fan_in, fan_out).
  - ``kernel`` leaves of rank 3 in an attention ``query``/``key``/``value`` module: Muon,
    reduction axis 0, output axes (1, 2), i.e. the (d_model, heads * head_dim) matrix.
  - ``kernel`` leaves of rank 3 in an attention ``out`` module: Muon, reduction axes (0, 1),
    output axis 2, i.e. the (heads * head_dim, d_model) matrix.
  - AdamW: every other leaf, i.e. biases, LayerNorm scales and biases, embeddings (``embedding``
    and the ``pos`` table: Muon is for hidden linear maps, not lookup tables), other DenseGeneral
    kernels, and kernels of layers owned directly by the root module. In a Transformer those are
    the first and last layers; the customary Muon recipe keeps them on Adam (here that is the
    output head, ``Dense_0`` at the root).

  Works on ``model.init(...)`` output (with the ``'params'`` collection) or on its contents.
  """

  def spec(path, leaf) -> MuonDimensionNumbers | None:
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if names and names[0] == "params":
      names = names[1:]
    # Below the root: a layer owned by the root module has path (layer, 'kernel').
    if len(names) < 3 or names[-1] != "kernel":
      return None
    if leaf.ndim == 2:
      return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    if leaf.ndim == 3 and names[-2] in _ATTENTION_IN:
      return MuonDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    if leaf.ndim == 3 and names[-2] in _ATTENTION_OUT:
      return MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2)
    return None

  return jax.tree_util.tree_map_with_path(spec, params)


def muon(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 1e-4,
         **kwargs) -> optax.GradientTransformation:
  """``optax.contrib.muon`` for a Flax linen Transformer; see ``muon_dimension_numbers``.

  One learning rate serves both groups: ``consistent_rms=0.2`` scales each orthogonalized update
  to AdamW's typical RMS (Liu et al. 2025, "Muon is Scalable for LLM Training"), so the learning
  rate that suits ``adamw`` suits this too, and sweeps can share one grid. (Without it Muon wants
  learning rates about 20x larger than Adam's.) Muon keeps its defaults: momentum 0.95, Nesterov,
  5 Newton-Schulz steps. Because ``optax.contrib.muon`` passes ``nesterov`` to its AdamW fallback
  as well, that fallback is NAdamW (betas 0.9, 0.999, eps 1e-8). Weight decay is decoupled,
  ``lr * weight_decay * param``, on both groups, as in ``adamw``. ``kwargs`` replace any of
  these settings (``optax.contrib.muon``'s keyword arguments).
  """
  return optax.contrib.muon(learning_rate, **{
      "weight_decay": weight_decay,
      "adam_weight_decay": weight_decay,
      "muon_weight_dimension_numbers": muon_dimension_numbers,
      "consistent_rms": 0.2,
      **kwargs,
  })


# ----------------------------------------------------------------------------------------------
# Google's Distributed Shampoo (precondition-opt)
# ----------------------------------------------------------------------------------------------


def _alias_removed_jax_names() -> None:
  """Restores the JAX names that ``precondition.distributed_shampoo`` still calls.

  Only missing attributes are added, so this is a no-op on a JAX that still has them. Found by
  importing the package and running init and a jitted update on a Flax param tree (single device,
  the pmap-style code path that ``batch_axis_name=None`` takes):

  - ``jax.tree_map``: used by its ``init_fn`` and ``update_fn``.
  - ``jax.tree_flatten``, ``jax.tree_unflatten``: used by its ``update_fn``.

  All three were deprecated during JAX 0.4.x in favour of ``jax.tree_util``/``jax.tree`` and are
  gone from current JAX. ``jax.tree_util`` is still used by the package as is.

  ``pjit.with_sharding_constraint`` is also gone, but only the ``shard_optimizer_states`` (pjit)
  path calls it, which we do not use, so it is not aliased.
  """
  for name in ("tree_map", "tree_flatten", "tree_unflatten"):
    if not hasattr(jax, name):
      setattr(jax, name, getattr(jax.tree_util, name))


@contextlib.contextmanager
def _quiet_float64_requests():
  # The package asks for float64 in its inverse roots; under the default float32 JAX every
  # such request warns at trace time. Scoped to our calls into it, so other warnings survive.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    yield


class GoogleShampooState(NamedTuple):
  count: jax.Array  # steps taken, int32 scalar
  inner: Any  # precondition.distributed_shampoo.ShampooState


def google_shampoo(learning_rate: optax.ScalarOrSchedule,
                   block_size: int = 128,
                   preconditioning_compute_steps: int = 10,
                   weight_decay: float = 1e-4,
                   beta1: float = 0.9,
                   beta2: float = 0.999,
                   *,
                   adam_bias_correction: bool = True) -> optax.GradientTransformation:
  """Google's ``precondition.distributed_shampoo``, set up as close to ``shampoo_optax`` as it goes.

  Settings shared with ``shampoo_optax.shampoo``: ``block_size``, ``beta1`` (momentum), ``beta2``
  (statistics and grafting second moment), ``preconditioning_compute_steps`` (our
  ``precondition_every``), ``start_preconditioning_step = preconditioning_compute_steps``,
  ``matrix_epsilon=1e-6`` (relative to the largest eigenvalue, as ours),
  ``skip_preconditioning_dim_size_gt=4096`` (its default and ours), ``nesterov=False``, root
  exponent ``2 * (number of preconditioned dims)`` (its default), adjacent dims merged up to
  ``block_size`` (``merge_small_dims_block_size``; ours: ``max_merged_dim`` defaults to
  ``block_size``, then cuts what still has rank > 2 into its most nearly square matrix), and
  parameters of rank < 2 left to the grafting method (``skip_preconditioning_rank_lt=2``).
  Differences remain: it tests the rank before merging, so a (heads, head_dim) attention bias
  with heads * head_dim <= block_size is preconditioned, as a vector with one full statistic,
  where ours treats it as a vector and grafts only (a larger one both precondition as a heads x
  head_dim matrix); and it keeps tensors that still have rank > 2 after merging as they are.

  Grafting: the package has no Adam grafting; its types are NONE, SGD, ADAGRAD, RMSPROP,
  RMSPROP_NORMALIZED, SQRT_N, ADAGRAD_NORMALIZED (``GraftingType``). RMSPROP is the closest to
  Adam: ``_transform_grad`` keeps ``v = beta2 * v + (1 - beta2) * g**2`` and grafts from
  ``g / (sqrt(v) + diagonal_epsilon)``, Adam's denominator. RMSPROP_NORMALIZED divides each
  gradient by its norm before that, which Adam does not do. What RMSPROP lacks against Adam:

  - Momentum. By default the package's momentum is heavy-ball, ``m = beta1 * m + u``, which makes
    steps ``1 / (1 - beta1)`` = 10x Adam's; ``moving_average_for_momentum=True`` gives Adam's
    ``m = beta1 * m + (1 - beta1) * u``. (It averages the grafted update ``u``, not the raw
    gradient, so the steps are Adam-like, not identical to Adam.)
  - Bias correction: none, so its first steps are about ``1 / sqrt(1 - beta2**t)`` (31.6x at
    t = 1) larger than Adam's. With ``adam_bias_correction`` (default) we add Adam's: the
    learning rate handed to the package is ``lr_t * sqrt(1 - beta2**t)`` with
    ``decoupled_learning_rate=False``, so it multiplies each step's grafted (and grafted-Shampoo)
    update before it enters the momentum, which is exactly Adam's ``v_hat``; the momentum it returns
    is divided by ``1 - beta1**t``, Adam's ``m_hat``. Set False for the package's own step sizes.

  Weight decay: the package's ``weight_decay`` is not AdamW's. With its default
  ``decoupled_weight_decay=False`` it adds ``weight_decay * param`` to the update before the
  momentum (so the decay goes through the momentum); with ``decoupled_weight_decay=True`` it adds
  ``lr * weight_decay * param`` to the momentum output, which its default
  ``decoupled_learning_rate=True`` then multiplies by ``lr`` again: ``lr**2 * weight_decay``. So we
  pass ``weight_decay=0`` and subtract ``lr_t * weight_decay * param`` from its output ourselves,
  from every parameter, as ``optax.adamw`` and ``shampoo_optax.shampoo`` do.

  Other choices: ``diagonal_epsilon=1e-8`` (Adam's eps; its default is 1e-10),
  ``generate_training_metrics=False`` (no inverse-root diagnostics in the state). Its inverse roots
  ask for float64; without ``jax_enable_x64`` JAX truncates that to float32 (the warnings about it
  are silenced here), the precision ``shampoo_optax`` uses for float32 statistics.

  Single device only: ``batch_axis_name=None``, no pmap, works under ``jax.jit``.

  Args:
    learning_rate: a float or an optax schedule of the step count.
    block_size: largest side of a preconditioned block.
    preconditioning_compute_steps: inverse roots are recomputed every this many steps, and
      Shampoo starts after this many steps of grafting alone.
    weight_decay: decoupled weight decay, multiplied by the learning rate.
    beta1: momentum.
    beta2: decay of the Kronecker-factor statistics and of the grafting second moment.
    adam_bias_correction: apply Adam's bias corrections to the step size (see above).

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.
  """
  _alias_removed_jax_names()
  # Imported here so that adamw and muon do not need precondition-opt installed.
  from precondition import distributed_shampoo as ds

  lr_fn: Callable[[jax.Array], jax.Array] = (
      learning_rate if callable(learning_rate) else lambda count: learning_rate)

  def inner_lr(count):
    # The package calls this with its 0-based step count; its second moment has then seen
    # count + 1 gradients.
    if not adam_bias_correction:
      return lr_fn(count)
    return lr_fn(count) * jnp.sqrt(1.0 - beta2**(count + 1.0))

  inner = ds.distributed_shampoo(
      inner_lr,
      block_size=block_size,
      beta1=beta1,
      beta2=beta2,
      diagonal_epsilon=1e-8,
      matrix_epsilon=1e-6,
      weight_decay=0.0,  # done below, as lr * weight_decay * param
      start_preconditioning_step=preconditioning_compute_steps,
      preconditioning_compute_steps=preconditioning_compute_steps,
      statistics_compute_steps=1,
      # Merge adjacent dims up to block_size, as shampoo_optax's default max_merged_dim does
      # first: (d, heads, head_dim) -> (d, heads * head_dim) while heads * head_dim <= block_size
      # (shampoo_optax then makes any rank > 2 a matrix; Google's keeps it). Its default, 4096,
      # gives (d * heads, head_dim), mixing an input axis with an output one.
      best_effort_shape_interpretation=True,
      merge_small_dims_block_size=block_size,
      # Vectors take the grafting method alone, as in shampoo_optax (its default, 1, gives each
      # bias and LayerNorm scale a full d x d statistic).
      skip_preconditioning_rank_lt=2,
      graft_type=ds.GraftingType.RMSPROP,
      nesterov=False,
      moving_average_for_momentum=True,
      decoupled_learning_rate=False,
      generate_training_metrics=False,
  )

  def init_fn(params):
    with _quiet_float64_requests():
      inner_state = inner.init(params)
    return GoogleShampooState(count=jnp.zeros([], jnp.int32), inner=inner_state)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("google_shampoo needs params in update()")
    with _quiet_float64_requests():
      inner_updates, inner_state = inner.update(updates, state.inner, params)
    # The package returns -momentum, its learning rate already inside.
    t = state.count + 1.0
    scale = 1.0 / (1.0 - beta1**t) if adam_bias_correction else 1.0
    lr = lr_fn(state.count)
    new_updates = jax.tree.map(
        lambda u, p: (scale * u - lr * weight_decay * p).astype(p.dtype), inner_updates, params)
    return new_updates, GoogleShampooState(count=state.count + 1, inner=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


PEERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": adamw,
    "muon": muon,
    "google_shampoo": google_shampoo,
}


# ----------------------------------------------------------------------------------------------
# Smoke check
# ----------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, dict[str, Any], list[float] | None]:
  """An optimizer named on a benchmark's command line, with its options and lrs.

  ``name[+key=value ...][@lr/lr/...]``: ``shampoo+exponent_override=3+nesterov=True@3e-3/4e-3``
  is the benchmark's ``shampoo`` with two keyword arguments added, swept over two learning
  rates (the command's ``--lrs`` when there is no ``@``). Values are Python literals
  (``ast.literal_eval``) or bare strings. This is how ablations are written down: the command
  line is the record.
  """
  spec, _, lrs = spec.partition("@")
  name, *pairs = spec.split("+")
  kwargs = {}
  for pair in pairs:
    key, eq, value = pair.partition("=")
    if not eq or not key.isidentifier():
      raise ValueError(f"optimizer spec {spec!r}: {pair!r} is not key=value")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  return name, kwargs, [float(v) for v in lrs.split("/")] if lrs else None


def spec_label(name: str, kwargs: dict[str, Any]) -> str:
  """How a parsed spec is named in a benchmark's output (its lrs left out)."""
  return "+".join([name, *(f"{k}={v}" for k, v in kwargs.items())])


def edge_note(label: str, lrs, best: float) -> str | None:
  """A warning when the best learning rate sits at the edge of a grid of several."""
  lrs = sorted(set(lrs))
  if len(lrs) > 1 and best in (lrs[0], lrs[-1]):
    return f"{label}: best lr {best:g} is at the edge of its grid {lrs}"
  return None


def _smoke_check(num_steps: int = 20, learning_rate: float = 3e-3) -> None:
  """Trains each peer for num_steps on the example Transformer; the loss must go down."""
  import pathlib
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
  import lm_common

  corpus = lm_common.load_corpus(num_chars=300_000)
  model = lm_common.CharTransformer(len(corpus.vocab))
  valid = lm_common.fixed_batches(corpus.valid, num=4, batch_size=32, seq_len=model.seq_len)
  init_params = model.init(jax.random.key(0), valid[0][0])

  @jax.jit
  def eval_loss(params):
    return jnp.mean(jnp.stack(
        [lm_common.cross_entropy(model.apply(params, x), y) for x, y in valid]))

  def train(tx):
    @jax.jit
    def step(params, state, x, y):
      loss, grads = jax.value_and_grad(
          lambda p: lm_common.cross_entropy(model.apply(p, x), y))(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    params, state = init_params, tx.init(init_params)
    stream = lm_common.batches(corpus.train, batch_size=32, seq_len=model.seq_len, seed=0)
    x, y = next(stream)
    params, state, _ = jax.block_until_ready(step(params, state, x, y))  # compiles
    start = time.perf_counter()
    for _ in range(num_steps - 1):
      x, y = next(stream)
      params, state, _ = step(params, state, x, y)
    jax.block_until_ready(params)
    return params, (time.perf_counter() - start) / (num_steps - 1)

  before = float(eval_loss(init_params))
  print(f"{num_steps} steps, lr {learning_rate}, batch 32 x {model.seq_len}, "
        f"validation loss before {before:.4f}")
  for name, build in PEERS.items():
    params, seconds = train(build(learning_rate))
    after = float(eval_loss(params))
    print(f"{name:>15}: loss {before:.4f} -> {after:.4f}   {1e3 * seconds:7.1f} ms/step")
    assert math.isfinite(after) and after < before, (name, before, after)


if __name__ == "__main__":
  _smoke_check()
