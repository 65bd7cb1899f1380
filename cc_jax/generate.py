"""Batched generation with a key/value cache: left-padded prefill, then a jitted decode loop.

Left padding puts every prompt's last token in the same column, so one cache write index
serves the whole batch and the next token of every row is read from the last column.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cc_jax.model import KVCache, Llama, left_pad_positions


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
  """Left-pads token lists into (tokens, mask) int32 arrays of shape (B, length)."""
  length = length or max(len(s) for s in sequences)
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for row, seq in enumerate(sequences):
    if len(seq) > length:
      raise ValueError(f"sequence {row} has {len(seq)} tokens, more than length={length}")
    if len(seq):
      tokens[row, length - len(seq):] = seq
      mask[row, length - len(seq):] = 1
  return tokens, mask


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: Llama, params, tokens_BT, mask_BT, eos_ids, *, max_new_tokens: int):
  """Greedy decoding of a left-padded batch.

  Args:
    model: the Llama module.
    params: its parameters.
    tokens_BT: left-padded prompt ids (int32).
    mask_BT: 1 for real prompt tokens.
    eos_ids: int32 array of token ids that end a sequence (may be empty).
    max_new_tokens: number of tokens to generate at most.

  Returns:
    (new_tokens (B, max_new_tokens) int32, lengths (B,) int32): each row's generated ids;
    positions at and after a row's EOS repeat that EOS and do not count in `lengths`
    beyond the EOS itself.
  """
  B, T = tokens_BT.shape
  cache = KVCache.init(model.cfg, B, T + max_new_tokens)
  positions_BT = left_pad_positions(mask_BT)
  out = model.apply({"params": params}, tokens_BT, positions_BT, mask_BT, cache=cache, compute_logits=False)
  logits_BV = model.apply({"params": params}, out.hidden_BTD[:, -1:], method=Llama.logits)[:, 0]
  return decode(model, params, out.cache, logits_BV, positions_BT[:, -1], eos_ids, max_new_tokens)


def decode(model: Llama, params, cache: KVCache, logits_BV, last_position_B, eos_ids, max_new_tokens: int):
  """The greedy decode loop from a filled cache and the logits of the last prompt token.

  Stops early once every row has emitted an EOS; rows that finished earlier are padded
  with the EOS they emitted.
  """
  B = logits_BV.shape[0]

  def cond(carry):
    i, _, _, _, done_B, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, cache, logits_BV, position_B, done_B, tokens_BN = carry
    token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    previous_B = tokens_BN[:, jnp.maximum(i - 1, 0)]
    token_B = jnp.where(done_B, previous_B, token_B)
    tokens_BN = tokens_BN.at[:, i].set(token_B)
    out = model.apply({"params": params}, token_B[:, None], position_B[:, None] + 1,
                      jnp.ones((B, 1), jnp.int32), cache=cache)
    done_B = done_B | jnp.isin(token_B, eos_ids)
    return i + 1, out.cache, out.logits_BTV[:, 0], position_B + 1, done_B, tokens_BN

  init = (jnp.zeros((), jnp.int32), cache, logits_BV, last_position_B, jnp.zeros((B,), bool),
          jnp.zeros((B, max_new_tokens), jnp.int32))
  steps, _, _, _, done_B, tokens_BN = jax.lax.while_loop(cond, body, init)
  # Rows that all finished early leave unwritten columns: repeat their EOS there too.
  written_N = jnp.arange(max_new_tokens) < steps
  tokens_BN = jnp.where(written_N[None, :], tokens_BN, tokens_BN[:, jnp.maximum(steps - 1, 0)][:, None])
  is_eos_BN = jnp.isin(tokens_BN, eos_ids)
  # Length: up to and including the first EOS.
  first_eos_B = jnp.where(is_eos_BN.any(-1), jnp.argmax(is_eos_BN, axis=-1) + 1, max_new_tokens)
  return tokens_BN, first_eos_B.astype(jnp.int32)
