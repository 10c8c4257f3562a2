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


@pytest.mark.parametrize("model_dtype", [jnp.float32, jnp.bfloat16])
def test_nnx_state_is_arrays_only(model_dtype):
  model = nnx.Linear(8, 8, rngs=nnx.Rngs(0), param_dtype=model_dtype)
  optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
  leaves = jax.tree.leaves(nnx.state(optimizer))
  assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
