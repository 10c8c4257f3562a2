# Copyright 2026 The shampoo_optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A character-level Transformer LM on text that ships with Python itself.

The corpus is the source of Python's standard library (every CPython install
has it, so nothing is downloaded). Shared by examples/ and benchmarks/.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import sysconfig
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Files read in sorted order until this many characters: the same text on
# every machine with the same Python minor version.
_STDLIB_MODULES = ("json", "email", "http", "logging", "unittest", "asyncio", "xml", "importlib",
                   "concurrent", "urllib", "collections", "sqlite3", "wsgiref", "html")


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: np.ndarray  # uint8 token ids
  valid: np.ndarray
  vocab: tuple[str, ...]


def load_corpus(num_chars: int = 2_000_000, valid_fraction: float = 0.1) -> Corpus:
  """Python standard-library source as a character corpus (printable ASCII)."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for m in _STDLIB_MODULES for p in (root / m).rglob("*.py"))
  if not files:
    raise RuntimeError(f"no Python sources found under {root}")
  chunks, total = [], 0
  for path in files:
    text = path.read_text(encoding="utf-8", errors="ignore")
    text = "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)
    chunks.append(text)
    total += len(text)
    if total >= num_chars:
      break
  text = "".join(chunks)[:num_chars]
  vocab = tuple(sorted(set(text)))
  table = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((table[c] for c in text), dtype=np.uint8, count=len(text))
  split = int(len(ids) * (1 - valid_fraction))
  return Corpus(ids[:split], ids[split:], vocab)


def batches(data: np.ndarray, batch_size: int, seq_len: int, seed: int):
  """An endless stream of (inputs, targets) windows, deterministic per seed."""
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    window = np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int32)
    yield window[:, :-1], window[:, 1:]


def fixed_batches(data: np.ndarray, num: int, batch_size: int, seq_len: int, seed: int = 1234):
  stream = batches(data, batch_size, seq_len, seed)
  return [next(stream) for _ in range(num)]


class Block(nn.Module):
  d_model: int
  num_heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h, mask=mask)
    h = nn.LayerNorm()(x)
    h = nn.Dense(4 * self.d_model)(h)
    return x + nn.Dense(self.d_model)(nn.gelu(h))


class CharTransformer(nn.Module):
  vocab_size: int
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  seq_len: int = 64

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.d_model)(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))
    x = x + pos[: tokens.shape[1]]
    for _ in range(self.num_layers):
      x = Block(self.d_model, self.num_heads)(x)
    return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))


def cross_entropy(logits, targets):
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


@dataclasses.dataclass
class History:
  """What a training run measured. Times exclude compilation and evaluation."""

  name: str
  eval_steps: list[int] = dataclasses.field(default_factory=list)
  eval_seconds: list[float] = dataclasses.field(default_factory=list)  # training time so far
  valid_loss: list[float] = dataclasses.field(default_factory=list)
  train_loss: list[float] = dataclasses.field(default_factory=list)  # every step
  step_seconds: list[float] = dataclasses.field(default_factory=list)  # every step after the 1st
  compile_seconds: float = 0.0
  state_bytes: int = 0
  lr: float | None = None
  config: dict | None = None
  final_state: object = None  # the TrainState after the last step

  @property
  def final_valid(self) -> float:
    return self.valid_loss[-1]

  @property
  def median_step(self) -> float:
    return float(np.median(self.step_seconds))

  def reach(self, target: float) -> tuple[int | None, float | None]:
    """(steps, training seconds) at the first evaluation with valid loss <= target."""
    for step, seconds, loss in zip(self.eval_steps, self.eval_seconds, self.valid_loss):
      if loss <= target:
        return step, seconds
    return None, None


def setup_lm(tx, corpus: Corpus, *, num_layers: int = 4, d_model: int = 128, seq_len: int = 64,
             batch_size: int = 32, seed: int = 0):
  """CharTransformer, its flax TrainState with optimizer ``tx`` and the compiled train step.

  Returns ``(model, state, train_step, compile_seconds, data)``: ``train_step(state, x, y)``
  returns the new state and the loss; ``compile_seconds`` is its trace + lower + compile time;
  ``data`` yields ``(x, y)`` training batches, its first one being the batch the parameters
  were initialized with.
  """
  from flax.training import train_state  # noqa: PLC0415

  model = CharTransformer(len(corpus.vocab), d_model=d_model, num_layers=num_layers,
                          seq_len=seq_len)
  data = batches(corpus.train, batch_size, seq_len, seed)
  first = next(data)
  x0 = first[0]
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.key(seed), x0), tx=tx)

  @jax.jit
  def train_step(state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: cross_entropy(state.apply_fn(p, x), y))(state.params)
    return state.apply_gradients(grads=grads), loss

  t = time.perf_counter()
  compiled = train_step.trace(state, x0, x0).lower().compile()
  compile_seconds = time.perf_counter() - t
  return model, state, compiled, compile_seconds, itertools.chain([first], data)


def train_lm(tx, corpus: Corpus, *, name: str, num_layers: int = 4, d_model: int = 128,
             seq_len: int = 64, batch_size: int = 32, steps: int = 300, seed: int = 0,
             eval_every: int = 25, valid_batches: int = 8, progress: bool = True,
             diagnostics_every: int = 0) -> History:
  """Trains CharTransformer with optimizer ``tx`` (a flax TrainState loop, see :func:`setup_lm`).

  With ``diagnostics_every``, a Shampoo optimizer's health is logged every that
  many steps: the worst root error, the rejected roots and the worst
  condition estimate over all parameters (``shampoo_optax.diagnostics``).
  """
  model, state, compiled, compile_seconds, data = setup_lm(
      tx, corpus, num_layers=num_layers, d_model=d_model, seq_len=seq_len,
      batch_size=batch_size, seed=seed)
  valid = fixed_batches(corpus.valid, valid_batches, 64, seq_len)

  @jax.jit
  def eval_loss(params, x, y):
    return cross_entropy(model.apply(params, x), y)

  history = History(name, lr=getattr(tx, "learning_rate", None))
  history.state_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
  history.compile_seconds = compile_seconds
  bar = _progress(steps, name) if progress else None
  elapsed = 0.0
  for step in range(1, steps + 1):
    x, y = next(data)
    t = time.perf_counter()
    state, loss = compiled(state, x, y)
    loss = float(loss)  # waits for the step
    dt = time.perf_counter() - t
    elapsed += dt
    if step > 1:
      history.step_seconds.append(dt)
    history.train_loss.append(loss)
    if step % eval_every == 0 or step == steps:
      v = float(np.mean([eval_loss(state.params, vx, vy) for vx, vy in valid]))
      history.eval_steps.append(step)
      history.eval_seconds.append(elapsed)
      history.valid_loss.append(v)
      if bar is not None:
        bar.set_postfix(train=f"{loss:.3f}", valid=f"{v:.3f}")
    if diagnostics_every and step % diagnostics_every == 0:
      _log(bar, f"{name} step {step}: {diagnostics_summary(state.opt_state, state.params)}")
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  history.final_state = state
  return history


def diagnostics_summary(opt_state, params) -> str:
  """One line: worst root error, rejected roots, worst condition estimate."""
  import shampoo_optax  # noqa: PLC0415

  report = shampoo_optax.diagnostics(opt_state, params)
  if not report:
    return "no preconditioned parameters"
  worst = lambda key: max(report.items(), key=lambda kv: float(kv[1][key]))  # noqa: E731
  err_name, err = worst("root_error")
  cond_name, cond = worst("condition")
  failures = sum(int(v["root_failures"]) for v in report.values())
  return (f"worst root error {float(err['root_error']):.1e} ({err_name}), "
          f"{failures} rejected roots, worst condition {float(cond['condition']):.1e} "
          f"({cond_name})")


def _log(bar, message: str):
  if bar is None:
    print(message)
  else:
    bar.write(message)


def _progress(total: int, desc: str):
  from tqdm.auto import tqdm  # noqa: PLC0415

  return tqdm(total=total, desc=f"{desc:>8s}", unit="step", leave=True)
