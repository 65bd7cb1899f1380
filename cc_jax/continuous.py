"""Continuous batching: a decode row whose answer has ended takes the next prompt.

A static batch decodes until its longest answer ends, and the rows that ended earlier wait as
padding (`decode busy` in launch/bench_eval.py). Here each of the batch's rows holds one
prompt at a time. Decoding stops as soon as a row ends (or after `chunk` steps, to look); the
rows that ended take the next prompts, whose prefill runs on its own (plain or CC, `generate`'s prompt passes)
and whose keys and values are copied into the rows' slots just before the batch's shared
write slot. That slot goes round a ring (`KVCache.ring_start`), so each row's slots always
hold its prompt followed by its answer, wherever in the ring it started; a row spans at most
prompt length + max_new_tokens - 1 slots, so it never overwrites itself. Positions are
explicit per row, and attention masks by validity alone (model.ring_attention_mask).

The tokens equal those of `generate.generate` / `generate.cc_generate`: every row computes
what it would compute alone, over the same keys in other slots.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from cc_jax import generate
from cc_jax import sharding as sh
from cc_jax.connection import ConnectionConfig
from cc_jax.model import KVCache, Llama
from cc_jax.train import model_params


@flax.struct.dataclass
class Slots:
  """The decode batch: B rows, each holding one prompt's answer so far (or nothing: done)."""
  cache: KVCache  # a ring of prompt_len + max_new_tokens slots after the shared prefix's
  logits_BV: jax.Array  # float32: the logits the next token is chosen from
  position_B: jax.Array  # int32: position of the last token in the cache
  count_B: jax.Array  # int32: tokens emitted so far
  done_B: jax.Array  # bool: ended (EOS or max_new_tokens), or never filled
  tokens_BN: jax.Array  # int32: the emitted tokens
  step: jax.Array  # int32: decode steps run (the sampling key's counter)


def fits(model: Llama, prompt_len: int, max_new_tokens: int, prefix: KVCache | None) -> bool:
  """Whether a ring for prompts of `prompt_len` tokens lies inside the model's sliding window."""
  window = model.cfg.sliding_window
  return window is None or generate.prefix_len(prefix) + prompt_len + max_new_tokens <= window


def _constrain_rows(mesh, slots: Slots) -> Slots:
  """Splits every per-row array over the mesh's batch axes, as `sharding.rows_to_devices` does."""
  if mesh is None:
    return slots

  def rows_on(axis):
    return lambda x: x if x.ndim <= axis else jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, PartitionSpec(*([None] * axis), sh.BATCH_AXES)))
  cache = slots.cache.replace(k_LBKES=rows_on(1)(slots.cache.k_LBKES), v_LBKSE=rows_on(1)(slots.cache.v_LBKSE),
                              valid_BS=rows_on(0)(slots.cache.valid_BS))
  return jax.tree.map(rows_on(0), slots.replace(cache=None)).replace(cache=cache)


@functools.partial(jax.jit, static_argnames=("model", "rows", "prompt_len", "max_new_tokens", "mesh"))
def empty(model: Llama, prefix: KVCache | None = None, *, rows: int, prompt_len: int, max_new_tokens: int,
          mesh=None) -> Slots:
  """B = `rows` empty rows for prompts of at most `prompt_len` tokens (after the prefix)."""
  cache = generate.fresh_cache(model.cfg, rows, prompt_len + max_new_tokens, prefix)
  cache = cache.replace(ring_start=generate.prefix_len(prefix))
  slots = Slots(cache, jnp.zeros((rows, model.cfg.vocab_size), jnp.float32), jnp.zeros((rows,), jnp.int32),
                jnp.zeros((rows,), jnp.int32), jnp.ones((rows,), bool), jnp.zeros((rows, max_new_tokens), jnp.int32),
                jnp.zeros((), jnp.int32))
  return _constrain_rows(mesh, slots)


def _into_ring(new_XT, ring: int, shift):
  """(..., T) -> (..., ring): the T values end just before ring slot `shift` (wrapping round)."""
  T = new_XT.shape[-1]
  placed = jnp.pad(new_XT, [(0, 0)] * (new_XT.ndim - 1) + [(ring - T, 0)])
  return jnp.roll(placed, shift, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "cc", "selection", "recompute", "mesh"),
                   donate_argnames=("slots",))
def admit(model: Llama, params, slots: Slots, rows_R, tokens_RT, mask_RT, matrix=None, english=None, rng=None,
          prefix: KVCache | None = None, anchor_R=None, *, cc: bool, selection: ConnectionConfig = ConnectionConfig(
              selection="argmax"), recompute: int = 1, mesh=None) -> Slots:
  """Puts R new prompts (left-padded, after `prefix`) into rows `rows_R` of `slots`.

  The prompts' prefill is `generate`'s (arguments as for `cc_generate` when `cc`); a row listed
  twice must get the same prompt twice (padding to a compiled shape).
  """
  T = tokens_RT.shape[1]
  if cc:
    select_rng = jax.random.split(jax.random.key(0) if rng is None else rng)[0]  # as cc_generate's
    new, logits_RV, last_R = generate.cc_prompt_pass(
        model, params, tokens_RT, mask_RT, T, matrix, english, select_rng, prefix,
        anchor_R, selection=selection, reuse_cache=True, recompute=recompute)
  else:
    new, logits_RV, last_R = generate.plain_prompt_pass(model, params, tokens_RT, mask_RT, T, prefix)
  cache, start = slots.cache, slots.cache.ring_start
  ring, shift = cache.valid_BS.shape[1] - start, cache.index - start
  k = _into_ring(new.k_LBKES[..., start:], ring, shift)
  v = _into_ring(new.v_LBKSE[..., start:, :].swapaxes(-1, -2), ring, shift).swapaxes(-1, -2)
  cache = cache.replace(k_LBKES=cache.k_LBKES.at[:, rows_R, ..., start:].set(k.astype(cache.k_LBKES.dtype)),
                        v_LBKSE=cache.v_LBKSE.at[:, rows_R, :, start:].set(v.astype(cache.v_LBKSE.dtype)),
                        valid_BS=cache.valid_BS.at[rows_R, start:].set(_into_ring(mask_RT.astype(bool), ring, shift)))
  slots = slots.replace(cache=cache, logits_BV=slots.logits_BV.at[rows_R].set(logits_RV),
                        position_B=slots.position_B.at[rows_R].set(last_R),
                        count_B=slots.count_B.at[rows_R].set(0), done_B=slots.done_B.at[rows_R].set(False),
                        tokens_BN=slots.tokens_BN.at[rows_R].set(0))
  return _constrain_rows(mesh, slots)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("slots",))
def decode_chunk(model: Llama, params, slots: Slots, eos_ids, limit, waiting, rng=None, *,
                 sampling: generate.Sampling = generate.Sampling()) -> tuple[Slots, jax.Array]:
  """Up to `limit` decode steps of every row: fewer once every row is done or, when prompts are
  `waiting` for a row, once a row ends (so that it is refilled at once).

  Returns (slots, steps run). A done row keeps stepping (it is padding) but emits nothing.
  """
  params = model_params(params)
  rng = jax.random.key(0) if rng is None else rng
  start = slots.cache.ring_start
  ring = slots.cache.valid_BS.shape[1] - start
  N = slots.tokens_BN.shape[1]

  def body(carry):
    i, s = carry
    token_B = generate.next_token(s.logits_BV, jax.random.fold_in(rng, s.step), sampling)
    live_B = ~s.done_B
    at_BN = live_B[:, None] & (jnp.arange(N)[None, :] == s.count_B[:, None])
    count_B = s.count_B + live_B
    done_B = s.done_B | jnp.isin(token_B, eos_ids) | (count_B >= N)
    out = model.apply({"params": params}, token_B[:, None], s.position_B[:, None] + 1,
                      jnp.ones_like(token_B)[:, None], cache=s.cache)
    cache = out.cache.replace(index=start + (out.cache.index - start) % ring)
    return i + 1, s.replace(cache=cache, logits_BV=out.logits_BTV[:, 0], position_B=s.position_B + 1,
                            count_B=count_B, done_B=done_B, tokens_BN=jnp.where(at_BN, token_B[:, None], s.tokens_BN),
                            step=s.step + 1)

  done_at_start_B = slots.done_B

  def more(carry):
    i, s = carry
    ended = jnp.any(s.done_B & ~done_at_start_B)
    return (i < limit) & ~jnp.all(s.done_B) & ~(waiting & ended)

  steps, slots = jax.lax.while_loop(more, body, (jnp.zeros((), jnp.int32), slots))
  return slots, steps


WIDEST = 2  # a length group's widest prompts are at most this many times its narrowest


def length_groups(order: list, width) -> list[list]:
  """Splits `order` (sorted by length) into groups that share one ring: each spans padded
  widths within a factor WIDEST, so no row attends over many more slots than its prompt needs,
  and there are few groups (each ends with a tail in which ended rows have nothing to take)."""
  groups = []
  for item in order:
    if groups and width(item) <= WIDEST * width(groups[-1][0]):
      groups[-1].append(item)
    else:
      groups.append([item])
  return groups


def admission_size(free: int, rows: int, ways: int) -> int:
  """Rows an admission of `free` prompts prefills: a power of two (few compiled shapes), a
  multiple of the `ways` devices the rows are split over, at most `rows`."""
  size = 1 << max(free - 1, 0).bit_length()
  return min(rows, -(-size // ways) * ways)


def run(model: Llama, params, items: list, admission, *, rows: int, prompt_len: int, max_new_tokens: int, eos_ids,
        prefix: KVCache | None = None, chunk: int = 8, mesh=None, on_done=None) -> dict:
  """Generates an answer for every item, `rows` at a time, refilling rows as they end.

  Args:
    items: what to generate for, in admission order (any objects).
    admission: items -> the keyword arguments of `admit` for them (tokens_RT, mask_RT, cc, ...;
      prompts at most `prompt_len` columns wide).
    on_done: called with (item, token ids up to and including the stopping token) as each
      answer ends; every process gets every answer.

  Returns:
    {"row_steps": (steps that emitted a token, row-steps run), "local": items whose row is on
    this process's devices}.
  """
  ways = sh.batch_devices(mesh)
  slots = empty(model, prefix, rows=rows, prompt_len=prompt_len, max_new_tokens=max_new_tokens, mesh=mesh)
  held = [None] * rows  # the item each row is answering
  mine = set(sh.local_rows(mesh, rows))
  queue, live, run_steps, local = list(items), 0, 0, 0
  while queue or any(h is not None for h in held):
    free = [r for r, h in enumerate(held) if h is None]
    if queue and free:
      n = min(len(free), len(queue))
      size = admission_size(n, rows, ways)
      taken, queue, targets = queue[:n], queue[n:], free[:n]
      for r, item in zip(targets, taken):
        held[r] = item
        local += r in mine
      padded = taken + taken[-1:] * (size - len(taken))  # a row written twice gets the same prompt
      rows_R = targets + targets[-1:] * (size - len(targets))
      inputs = {k: sh.rows_to_devices(mesh, v) if k in ("tokens_RT", "mask_RT", "anchor_R") else v
                for k, v in admission(padded).items()}
      if inputs.get("english") is not None:
        inputs["english"] = tuple(sh.rows_to_devices(mesh, x) for x in inputs["english"])
      slots = admit(model, params, slots, jnp.asarray(rows_R, jnp.int32), prefix=prefix, mesh=mesh, **inputs)
    # With prompts waiting, stop as soon as a row ends (at most `chunk` steps between checks);
    # with none, run until every row has ended.
    limit = chunk if queue else max_new_tokens
    slots, steps = decode_chunk(model, params, slots, eos_ids, jnp.int32(limit), jnp.bool_(bool(queue)))
    run_steps += rows * int(sh.to_host(steps))
    done, count, tokens = sh.to_host(slots.done_B), sh.to_host(slots.count_B), sh.to_host(slots.tokens_BN)
    for r, item in enumerate(held):
      if item is not None and done[r]:
        live += int(count[r])
        held[r] = None
        if on_done is not None:
          on_done(item, tokens[r, :count[r]].tolist())
  return {"row_steps": (live, run_steps), "local": local}
