"""Batched generation with a key/value cache, plain or with CC-Tuning's connection.

Left padding puts every prompt's last token (the anchor) in the same column, so one cache
write index serves the whole batch. CC inference (docs/method.md §4) needs the anchor's MLP
outputs before it can inject; since attention is causal and the anchor is the last prompt
token, injection changes nothing before it. So the prefill captures the activations, the
anchor alone is recomputed with the injection over the prefill's cache, and decoding goes
on: the cost of plain generation plus one token, instead of the authors' second full pass.
(With cc.anchor=authors an anchor may sit a few tokens before the end; then those last few
columns are recomputed.)

A run's prompts usually open with the same tokens (the chat template's system turn, a
benchmark's instruction). `prefill_prefix` computes that prefix's keys and values once;
generation then starts from a cache holding them in its first slots and prefills only the
rest of each prompt, left-padded after them (positions are explicit, so the gap of padding
between a short prompt's prefix and the rest of it changes nothing).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from cc_jax import batching, connection, transform
from cc_jax.connection import ConnectionConfig
from cc_jax.model import KVCache, Llama, left_pad_positions
from cc_jax.train import model_params


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 is greedy; otherwise softmax(logits / temperature) within top_p."""
  temperature: float = 0.0
  top_p: float = 1.0


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, buckets: Sequence[int] | None = None):
  """Left-pads prompts into (tokens, mask) int32 arrays (B, T); T is the smallest bucket that fits."""
  batch = batching.left_pad_prompts(sequences, pad_id, buckets)
  return batch["input_ids"], batch["attention_mask"]


def next_token(logits_BV, rng, sampling: Sampling):
  if sampling.temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = logits_BV / sampling.temperature
  if sampling.top_p < 1.0:
    # Keep the smallest set of tokens whose probability reaches top_p (nucleus sampling).
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def decode(model: Llama, params, cache: KVCache, logits_BV, last_position_B, eos_ids, max_new_tokens: int,
           sampling: Sampling = Sampling(), rng=None):
  """The decode loop from a filled cache and the logits of the last prompt token.

  Stops early once every row has emitted an EOS; a finished row repeats its EOS.

  Returns:
    (tokens (B, max_new_tokens) int32, lengths (B,) int32 up to and including the first EOS).
  """
  B = logits_BV.shape[0]
  rng = jax.random.key(0) if rng is None else rng

  def cond(carry):
    i, _, _, _, done_B, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, cache, logits_BV, position_B, done_B, tokens_BN = carry
    token_B = next_token(logits_BV, jax.random.fold_in(rng, i), sampling)
    token_B = jnp.where(done_B, tokens_BN[:, jnp.maximum(i - 1, 0)], token_B)
    tokens_BN = tokens_BN.at[:, i].set(token_B)
    out = model.apply({"params": params}, token_B[:, None], position_B[:, None] + 1,
                      jnp.ones((B, 1), jnp.int32), cache=cache)
    done_B = done_B | jnp.isin(token_B, eos_ids)
    return i + 1, out.cache, out.logits_BTV[:, 0], position_B + 1, done_B, tokens_BN

  init = (jnp.zeros((), jnp.int32), cache, logits_BV, last_position_B, jnp.zeros((B,), bool),
          jnp.zeros((B, max_new_tokens), jnp.int32))
  steps, _, _, _, _, tokens_BN = jax.lax.while_loop(cond, body, init)
  # When every row finished early, the unwritten columns repeat each row's last token.
  written_N = jnp.arange(max_new_tokens) < steps
  tokens_BN = jnp.where(written_N[None, :], tokens_BN, tokens_BN[:, jnp.maximum(steps - 1, 0)][:, None])
  is_eos_BN = jnp.isin(tokens_BN, eos_ids)
  lengths_B = jnp.where(is_eos_BN.any(-1), jnp.argmax(is_eos_BN, axis=-1) + 1, max_new_tokens)
  return tokens_BN, lengths_B.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def prefill_prefix(model: Llama, params, prefix_ids) -> KVCache:
  """The cache of a prompt prefix that every prompt of a run shares, for one row.

  Args:
    model, params: the decoder (a `source_select` entry in params is ignored).
    prefix_ids: int32 (P,) token ids, P >= 1: what each prompt passed with this prefix omits.
  """
  tokens_1P = jnp.asarray(prefix_ids, jnp.int32)[None]
  P = tokens_1P.shape[1]
  out = model.apply({"params": model_params(params)}, tokens_1P, jnp.arange(P)[None], jnp.ones_like(tokens_1P),
                    cache=KVCache.init(model.cfg, 1, P), compute_logits=False)
  return out.cache


def prefix_len(prefix: KVCache | None) -> int:
  """Slots a `prefill_prefix` cache holds (0 without one)."""
  return 0 if prefix is None else prefix.valid_BS.shape[1]


def fresh_cache(cfg, batch: int, length: int, prefix: KVCache | None) -> KVCache:
  """A cache with `length` free slots, after the prefix's slots when there is a prefix."""
  if prefix is None:
    return KVCache.init(cfg, batch, length)
  P = prefix_len(prefix)
  if cfg.sliding_window is not None and P + length > cfg.sliding_window:
    # The mask measures the window in cache slots, and a left-padded row's slots skip its
    # padding after the prefix: the window would shut out prefix keys too early.
    raise ValueError(f"a shared prefix needs the whole cache ({P} + {length} slots) inside the model's "
                     f"sliding window ({cfg.sliding_window}); generate without the prefix")
  cache = KVCache.init(cfg, batch, P + length)
  L, _, K, E, _ = prefix.k_LBKES.shape
  return cache.replace(
      k_LBKES=cache.k_LBKES.at[..., :P].set(jnp.broadcast_to(prefix.k_LBKES, (L, batch, K, E, P))),
      v_LBKSE=cache.v_LBKSE.at[:, :, :, :P].set(jnp.broadcast_to(prefix.v_LBKSE, (L, batch, K, P, E))),
      valid_BS=cache.valid_BS.at[:, :P].set(True), index=jnp.asarray(P, jnp.int32))


def _positions(mask_BT, prefix: KVCache | None):
  """Rotary positions of the (rest of the) prompts: they count on from the prefix."""
  return left_pad_positions(mask_BT) + prefix_len(prefix)


def _prefill(model: Llama, params, tokens_BT, mask_BT, length: int, capture_at_B=None,
             prefix: KVCache | None = None):
  """Fills a fresh cache (after `prefix`, if given) with the prompts; captures every layer's
  MLP output at columns `capture_at_B` when given."""
  B, T = tokens_BT.shape
  cache = fresh_cache(model.cfg, B, length, prefix)
  return model.apply({"params": params}, tokens_BT, _positions(mask_BT, prefix), mask_BT, cache=cache,
                     capture_at_B=capture_at_B, compute_logits=False)


def recompute_width(anchor_offsets: Sequence[int], length: int) -> int:
  """How many trailing prompt columns CC inference recomputes for anchors `anchor_offsets`
  tokens before each prompt's end: a power of two (few compiled shapes), at most `length`."""
  need = max(anchor_offsets, default=0) + 1
  return min(1 << (need - 1).bit_length(), length)


def _last_logits(model: Llama, params, hidden_BTD):
  return model.apply({"params": params}, hidden_BTD[:, -1:], method=Llama.logits)[:, 0]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling"))
def generate(model: Llama, params, tokens_BT, mask_BT, eos_ids, rng=None, prefix: KVCache | None = None, *,
             max_new_tokens: int, sampling: Sampling = Sampling()):
  """Plain generation for a left-padded batch (an `sft` model, or a cc model without connection).

  Args:
    model, params: the decoder (a `source_select` entry in params is ignored).
    tokens_BT, mask_BT: left-padded prompt ids and their mask (int32).
    eos_ids: int32 ids that end a sequence (may be empty).
    rng: PRNG key for sampling (unused when greedy).
    prefix: `prefill_prefix` of the tokens that every prompt opens with and that tokens_BT
      leave out; None when tokens_BT are whole prompts.
    max_new_tokens, sampling: static decoding settings.

  Returns:
    (tokens (B, max_new_tokens), lengths (B,)).
  """
  cache, logits_BV, last_position_B = plain_prompt_pass(model, params, tokens_BT, mask_BT,
                                                       tokens_BT.shape[1] + max_new_tokens, prefix)
  return decode(model, model_params(params), cache, logits_BV, last_position_B, eos_ids, max_new_tokens, sampling,
                rng)


def plain_prompt_pass(model: Llama, params, tokens_BT, mask_BT, length: int, prefix: KVCache | None = None):
  """The prompts' prefill into a cache of `length` slots (after the prefix's): (cache, logits of
  each prompt's last token (B, V), its position (B,)), where decoding starts."""
  params = model_params(params)
  out = _prefill(model, params, tokens_BT, mask_BT, length, prefix=prefix)
  return out.cache, _last_logits(model, params, out.hidden_BTD), _positions(mask_BT, prefix)[:, -1]


def greedy_generate(model: Llama, params, tokens_BT, mask_BT, eos_ids, *, max_new_tokens: int):
  """Greedy `generate`."""
  return generate(model, params, tokens_BT, mask_BT, eos_ids, max_new_tokens=max_new_tokens)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "selection", "reuse_cache",
                                             "recompute"))
def cc_generate(model: Llama, params, tokens_BT, mask_BT, eos_ids, matrix=None, english=None, rng=None,
                prefix: KVCache | None = None, anchor_B=None, *,
                max_new_tokens: int, sampling: Sampling = Sampling(),
                selection: ConnectionConfig = ConnectionConfig(selection="argmax"), reuse_cache: bool = True,
                recompute: int = 1):
  """CC-Tuning inference (docs/method.md §4) for a left-padded batch.

  Args:
    model: the decoder; `model.inject_layer` is where the vector goes.
    params: decoder params plus `source_select` (the trained Decision Maker).
    tokens_BT, mask_BT: left-padded non-English prompts.
    eos_ids: int32 ids that end a sequence.
    matrix: the Transform Matrix, (D, D) or (L, D, D); None uses the identity.
    english: optional (tokens, mask) or (tokens, mask, anchor_B) of left-padded parallel
      English prompts: the oracle mode, taking the real English activations instead of the
      simulated ones (anchors default to the last column).
    rng: PRNG key for Gumbel selection and sampling.
    prefix: as for `generate` (the English prompts of the oracle mode are always whole).
    anchor_B: int32 column of each row's anchor; None is the last column (cc_jax's anchor).
      cc.anchor=authors may put it a few tokens earlier.
    max_new_tokens, sampling: decoding settings.
    selection: argmax (default, deterministic) or gumbel (the authors' noisy inference).
    reuse_cache: True recomputes only the last `recompute` columns (those from the earliest
      anchor on) over the prefill cache; False runs the authors' procedure (a second full
      forward pass with the injection). Same tokens.
    recompute: static; must reach every anchor: T - recompute <= min(anchor_B)
      (`recompute_width`). 1 when the anchors are the last column.

  Returns:
    (tokens (B, max_new_tokens), lengths (B,)).
  """
  rng = jax.random.key(0) if rng is None else rng
  select_rng, sample_rng = jax.random.split(rng)
  cache, logits_BV, last_position_B = cc_prompt_pass(
      model, params, tokens_BT, mask_BT, tokens_BT.shape[1] + max_new_tokens, matrix, english, select_rng, prefix,
      anchor_B, selection=selection, reuse_cache=reuse_cache, recompute=recompute)
  return decode(model, model_params(params), cache, logits_BV, last_position_B, eos_ids, max_new_tokens, sampling,
                sample_rng)


def cc_prompt_pass(model: Llama, params, tokens_BT, mask_BT, length: int, matrix, english, select_rng,
                   prefix: KVCache | None, anchor_B, *, selection: ConnectionConfig, reuse_cache: bool,
                   recompute: int):
  """`plain_prompt_pass` with the connection (arguments as for `cc_generate`): the prefill
  captures, the vector is chosen and the anchor's columns are recomputed with it."""
  decoder = model_params(params)
  B, T = tokens_BT.shape
  anchor_B = jnp.full((B,), T - 1, jnp.int32) if anchor_B is None else jnp.asarray(anchor_B, jnp.int32)
  out = _prefill(model, decoder, tokens_BT, mask_BT, length, capture_at_B=anchor_B, prefix=prefix)
  if english is not None:
    en_tokens, en_mask = english[:2]
    en_anchor_B = english[2] if len(english) > 2 else jnp.full((B,), en_tokens.shape[1] - 1, jnp.int32)
    source_LBD = _prefill(model, decoder, en_tokens, en_mask, en_tokens.shape[1], capture_at_B=en_anchor_B).captured_LBD
  else:
    source_LBD = out.captured_LBD
    if matrix is not None:
      source_LBD = transform.apply_matrix(source_LBD, matrix)
  anchor_tokens_B = jnp.take_along_axis(tokens_BT, anchor_B[:, None], axis=1)[:, 0]
  anchor_embed_BD = model.apply({"params": decoder}, anchor_tokens_B, method=Llama.embed)
  noise_BL = connection.gumbel_noise(select_rng, (B, model.cfg.num_layers))
  vector_BD, _, _ = connection.connect(params[connection.PARAM_NAME]["kernel"], source_LBD.astype(model.cfg.jnp_dtype),
                                       anchor_embed_BD, noise_BL, selection)
  positions_BT = _positions(mask_BT, prefix)

  if reuse_cache:
    # Rewind the cache by `recompute` slots and recompute those columns with the injection:
    # every earlier key and value is unchanged because attention is causal.
    R = recompute
    cache = out.cache.replace(index=out.cache.index - R)
    out = model.apply({"params": decoder}, tokens_BT[:, T - R:], positions_BT[:, T - R:], mask_BT[:, T - R:],
                      cache=cache, inject=(vector_BD, anchor_B - (T - R)), compute_logits=False)
  else:
    cache = fresh_cache(model.cfg, B, length, prefix)
    out = model.apply({"params": decoder}, tokens_BT, positions_BT, mask_BT, cache=cache,
                      inject=(vector_BD, anchor_B), compute_logits=False)
  return out.cache, _last_logits(model, decoder, out.hidden_BTD), positions_BT[:, -1]
