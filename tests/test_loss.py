"""Chunked cross-entropy equals the whole-logits loss, and the whole logits never exist."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cc_jax import connection, loss, model as M, train
from tests.test_train import synthetic_batch

CFG = M.LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=4, max_position_embeddings=64)


def relative_error(actual, expected) -> float:
  return float(np.abs(np.asarray(actual) - np.asarray(expected)).max() / np.abs(np.asarray(expected)).max())


@pytest.mark.parametrize("chunk_len", [1, 4, 5, 12])  # 5: T=12 is padded to 15 with ignored positions
def test_chunked_loss_and_gradients_equal_whole_logits(chunk_len):
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(3, 12, 8)).astype(np.float32)
  head = rng.normal(size=(8, 50)).astype(np.float32)
  labels = rng.integers(0, 50, (3, 12)).astype(np.int32)
  labels[0, :4] = labels[2, 7:] = loss.IGNORE_INDEX

  def whole(h, w):
    return loss.token_loss_sum(h @ w, labels)

  def chunked(h, w):
    return loss.chunked_token_loss_sum(h, labels, lambda x: x @ w, chunk_len)

  (expected, expected_tokens), (got, got_tokens) = whole(hidden, head), chunked(hidden, head)
  assert float(got_tokens) == float(expected_tokens) == (labels[:, 1:] != loss.IGNORE_INDEX).sum()
  assert abs(float(got) - float(expected)) / float(expected) <= 1e-6
  grads_expected = jax.grad(lambda h, w: whole(h, w)[0], argnums=(0, 1))(hidden, head)
  grads_got = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(hidden, head)
  for g, e in zip(grads_got, grads_expected):
    assert relative_error(g, e) <= 1e-5


@pytest.mark.parametrize("method,tied", [("cc", False), ("sft", True)])  # both heads, both methods
def test_train_loss_with_chunks_equals_plain(method, tied):
  cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
  model = M.Llama(cfg)
  batch = synthetic_batch(cfg.vocab_size)
  params = model.init(jax.random.key(0), batch["input_ids"], batch["positions"], batch["attention_mask"])["params"]
  params = dict(nn.unbox(params))
  if method == "cc":
    params[connection.PARAM_NAME] = nn.unbox(connection.init_decision_maker(
        jax.random.key(1), cfg.hidden_size, cfg.num_layers, jnp.float32))
  noise = connection.gumbel_noise(jax.random.key(2), (batch["input_ids"].shape[0], cfg.num_layers))

  def loss_and_grads(chunk_len):
    step_cfg = train.StepConfig(method=method, loss_chunk_len=chunk_len)
    fn = lambda p: train.loss_fn(p, batch, noise, model=model, cfg=step_cfg)[0]  # noqa: E731
    return jax.jit(jax.value_and_grad(fn))(params)

  (expected, grads_expected), (got, grads_got) = loss_and_grads(0), loss_and_grads(5)
  assert abs(float(got) - float(expected)) / float(expected) <= 1e-6
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(grads_got), jax.tree.leaves(grads_expected)):
    assert relative_error(g, e) <= 1e-5, jax.tree_util.keystr(path)


def test_chunked_step_never_holds_the_whole_logits():
  """XLA's own memory analysis: the chunked step's temporaries are smaller than the plain
  step's by most of the (B, T, V) float32 logits and their gradient."""
  cfg = dataclasses.replace(CFG, vocab_size=8192)
  model = M.Llama(cfg)
  B, T = 4, 256
  batch = {"input_ids": jnp.ones((B, T), jnp.int32), "positions": jnp.tile(jnp.arange(T), (B, 1)),
           "attention_mask": jnp.ones((B, T), jnp.int32), "labels": jnp.ones((B, T), jnp.int32)}
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch["input_ids"], batch["positions"],
                                                       batch["attention_mask"])["params"]))

  def temp_bytes(chunk_len):
    step_cfg = train.StepConfig(method="sft", loss_chunk_len=chunk_len)
    fn = jax.grad(lambda p: train.loss_fn(p, batch, None, model=model, cfg=step_cfg)[0])
    return jax.jit(fn).lower(params).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = B * T * cfg.vocab_size * 4  # 33.5 MB
  plain, chunked = temp_bytes(0), temp_bytes(32)
  assert plain - chunked >= logits_bytes, (plain, chunked, logits_bytes)
