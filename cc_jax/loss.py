"""Token-summed next-token cross-entropy, whole or a chunk of positions at a time.

At Llama 3's 128k vocabulary the float32 logits of one device's 16 x 1024 tokens are ~8.4 GB,
more than any other activation of the step. `chunked_token_loss_sum` applies the LM head and
the cross-entropy to `chunk_len` positions at a time under `jax.checkpoint`, so the forward
keeps only each chunk's scalar loss and the backward recomputes one chunk's logits at a time:
the (B, T, V) logits never exist whole. The sum is the same; only its order differs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100


def token_loss_sum(logits_BTV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed next-token cross-entropy over labelled tokens, and their count (labels unshifted)."""
  logits, labels = logits_BTV[:, :-1], labels_BT[:, 1:]
  valid = labels != IGNORE_INDEX
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(losses * valid), jnp.sum(valid).astype(jnp.float32)


def next_token_labels(labels_BT: jax.Array) -> jax.Array:
  """The label each position predicts (the next token's), IGNORE_INDEX at the last position."""
  return jnp.concatenate([labels_BT[:, 1:], jnp.full_like(labels_BT[:, :1], IGNORE_INDEX)], axis=1)


def chunked_token_loss_sum(hidden_BTD: jax.Array, labels_BT: jax.Array,
                           logits_fn: Callable[[jax.Array], jax.Array],
                           chunk_len: int) -> tuple[jax.Array, jax.Array]:
  """`token_loss_sum(logits_fn(hidden_BTD), labels_BT)`, `chunk_len` positions at a time.

  Args:
    hidden_BTD: final-norm hidden states.
    labels_BT: unshifted labels, IGNORE_INDEX where no loss is taken.
    logits_fn: the LM head, (B, C, D) -> float32 (B, C, V); may close over parameters.
    chunk_len: positions per chunk; T is padded up to a multiple with ignored positions.
  """
  B, T, D = hidden_BTD.shape
  targets_BT = next_token_labels(labels_BT)
  num_chunks = -(-T // chunk_len)
  pad = num_chunks * chunk_len - T
  if pad:
    hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
  # (num_chunks, B, C, ...): the scan runs over chunks; the batch axis keeps its sharding.
  hidden_NBCD = hidden_BTD.reshape(B, num_chunks, chunk_len, D).swapaxes(0, 1)
  targets_NBC = targets_BT.reshape(B, num_chunks, chunk_len).swapaxes(0, 1)

  @jax.checkpoint  # the backward recomputes this chunk's logits instead of keeping them
  def chunk_loss(h_BCD, t_BC):
    valid = t_BC != IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(h_BCD).astype(jnp.float32), jnp.where(valid, t_BC, 0))
    return jnp.sum(losses * valid)

  def body(total, chunk):
    return total + chunk_loss(*chunk), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden_NBCD, targets_NBC))
  return total, jnp.sum(targets_BT != IGNORE_INDEX).astype(jnp.float32)
