# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Flax linen and nnx training loops, and orbax checkpoints."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import shampoo_optax


def regression_data(rng, n=256, d=12):
  x = rng.standard_normal((n, d)).astype(np.float32)
  w = rng.standard_normal((d, 3)).astype(np.float32)
  y = np.tanh(x @ w) + 0.01 * rng.standard_normal((n, 3)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(32)(x))
    return nn.Dense(3)(x)


def make_tx():
  return shampoo_optax.shampoo(
      1e-2, block_size=16, precondition_every=5, start_preconditioning_step=5, weight_decay=1e-4
  )


def test_linen_train_state_trains(rng):
  x, y = regression_data(rng)
  model = LinenMLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.key(0), x), tx=make_tx()
  )

  def loss_fn(params):
    return jnp.mean(jnp.square(state.apply_fn(params, x) - y))

  @jax.jit
  def step(state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(jnp.square(state.apply_fn(p, x) - y)))(state.params)
    return state.apply_gradients(grads=grads), loss

  first = float(loss_fn(state.params))
  for _ in range(150):
    state, _ = step(state)
  assert float(loss_fn(state.params)) < 0.1 * first


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(12, 32, rngs=rngs)
    self.out = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.gelu(self.hidden(x)))


def test_nnx_optimizer_trains(rng):
  x, y = regression_data(rng)
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)

  def loss_fn(model):
    return jnp.mean(jnp.square(model(x) - y))

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(loss_fn(model))
  for _ in range(150):
    step(model, optimizer)
  assert float(loss_fn(model)) < 0.1 * first


def test_orbax_resume_is_bit_exact(rng, tmp_path):
  x, y = regression_data(rng)
  model = LinenMLP()
  params = model.init(jax.random.key(1), x)
  tx = make_tx()

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, x) - y)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(7):
    params, opt_state = step(params, opt_state)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": opt_state})
  checkpointer.wait_until_finished()

  straight = (params, opt_state)
  for _ in range(8):
    straight = step(*straight)

  abstract = jax.tree.map(
      ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state}
  )
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  resumed = (restored["params"], restored["opt_state"])
  assert jax.tree.structure(resumed[1]) == jax.tree.structure(opt_state)
  for _ in range(8):
    resumed = step(*resumed)
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_nnx_optimizer_with_int8_state():
  """int8 storage under nnx.Optimizer, with a matrix that is not preconditioned
  ((1, 16) merges into a vector): nnx keeps each parameter-shaped leaf of the
  state in a Variable and gives a NamedTuple inside one back as a dict, which
  broke 0.3's int8 first moments (QuantizedArray per matrix) on the second step."""

  class Scaled(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(8, 16, rngs=rngs)
      self.s = nnx.Param(jnp.ones((1, 16)))

    def __call__(self, x):
      return self.a(x) * self.s[...]

  model = Scaled(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, shampoo_optax.shampoo(1e-2, statistics_dtype="int8", block_size=8), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  x = jnp.ones((4, 8))
  losses = [float(step(model, optimizer, x)) for _ in range(4)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("model_dtype", [jnp.float32, jnp.bfloat16])
def test_nnx_state_is_arrays_only(model_dtype):
  model = nnx.Linear(8, 8, rngs=nnx.Rngs(0), param_dtype=model_dtype)
  optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
  leaves = jax.tree.leaves(nnx.state(optimizer))
  assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)


# Client patterns beyond a training loop: an ensemble under jax.vmap, and meta-learning
# (a gradient through the update with respect to a hyperparameter).
ALIASES = {"shampoo": (shampoo_optax.shampoo, shampoo_optax.STATIC_ARGS),
           "soap": (shampoo_optax.soap, shampoo_optax.SOAP_STATIC_ARGS)}


def _small_problem(rng):
  params = {"w": jnp.asarray(rng.standard_normal((12, 6)), jnp.float32),
            "b": jnp.zeros(6, jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
           for _ in range(5)]
  return params, grads


@pytest.mark.parametrize("name", ALIASES)
def test_vmap_over_an_ensemble_matches_each_member_alone(rng, name):
  # Default refresh settings (staggered, the backend's root method), small blocks so that
  # preconditioning starts within the run: each member must evolve as if it ran alone.
  tx = ALIASES[name][0](1e-2, block_size=8, precondition_every=2, start_preconditioning_step=1)
  params, grads = _small_problem(rng)
  scales = jnp.asarray([0.5, 1.0, 3.0])  # members differ, so mixing them would show
  batched = jax.tree.map(lambda p: p[None] * scales.reshape((3,) + (1,) * p.ndim), params)
  state = jax.vmap(tx.init)(batched)
  update = jax.jit(jax.vmap(tx.update))
  for g in grads:
    g = jax.tree.map(lambda x: x[None] * scales.reshape((3,) + (1,) * x.ndim) ** 2, g)
    updates, state = update(g, state, batched)
    batched = optax.apply_updates(batched, updates)

  def alone(scale):
    p = jax.tree.map(lambda x: x * scale, params)
    state = tx.init(p)
    for g in grads:
      updates, state = jax.jit(tx.update)(jax.tree.map(lambda x: x * scale**2, g), state, p)
      p = optax.apply_updates(p, updates)
    return p

  for member, scale in enumerate(scales):
    for b, a in zip(jax.tree.leaves(batched), jax.tree.leaves(alone(scale))):
      np.testing.assert_allclose(b[member], a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALIASES)
def test_gradient_through_the_update_wrt_learning_rate(rng, name):
  # Meta-learning through optax.inject_hyperparams: d(loss after 3 steps)/d(learning rate) by
  # autodiff, against central differences. The roots are refreshed every step. (Without the
  # stop_gradient in factor_matrices.refresh both gave NaN; SOAP only from the third step.)
  alias, static = ALIASES[name]
  tx = optax.inject_hyperparams(alias, static_args=static)(
      learning_rate=1e-2, block_size=8, precondition_every=1, start_preconditioning_step=1)
  params, grads = _small_problem(rng)
  target = jnp.asarray(rng.standard_normal(params["w"].shape), jnp.float32)

  def loss_after(lr):
    state = tx.init(params)
    state.hyperparams["learning_rate"] = lr
    p = params
    for g in grads[:3]:
      # The gradient depends on the parameters, so the learning rate reaches the statistics.
      g = {"w": g["w"] + p["w"] - target, "b": g["b"]}
      updates, state = tx.update(g, state, p)
      p = optax.apply_updates(p, updates)
    return jnp.sum(jnp.square(p["w"] - target))

  lr, h = 1e-2, 1e-3
  autodiff = float(jax.jit(jax.grad(loss_after))(jnp.float32(lr)))
  finite = float((loss_after(jnp.float32(lr + h)) - loss_after(jnp.float32(lr - h))) / (2 * h))
  assert np.isfinite(autodiff) and abs(finite) > 1.0
  np.testing.assert_allclose(autodiff, finite, rtol=2e-2)
