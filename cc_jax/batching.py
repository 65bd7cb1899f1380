"""Fixed-shape batches of CC-Tuning examples: length buckets, a resumable shuffled iterator,
multi-host global arrays, microbatches for gradient accumulation."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from cc_jax.data import Example, IGNORE_INDEX

# One host's example lengths: (non-English lengths, English lengths), both (n,) int32.
Lengths = tuple[np.ndarray, np.ndarray]


def default_buckets(cutoff_len: int, min_len: int = 64) -> tuple[int, ...]:
  """Powers of two from `min_len` below `cutoff_len`, then `cutoff_len` itself."""
  buckets, length = [], min_len
  while length < cutoff_len:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (cutoff_len,)


def prompt_buckets(max_len: int, min_len: int = 32) -> tuple[int, ...]:
  """Powers of two from `min_len` and the midpoints 1.5x between them, below `max_len`, then
  `max_len`: 32, 48, 64, 96, 128, 192, ... Generation pads each batch of prompts to one of
  these, so padding stays under a third of a prompt with twice the shapes of
  `default_buckets` (each shape is compiled once)."""
  buckets = []
  for length in default_buckets(max_len, min_len)[:-1]:
    buckets += [length, length * 3 // 2]
  return tuple(b for b in buckets if b < max_len) + (max_len,)


def bucket_length(length: int | np.ndarray, buckets: Sequence[int]) -> np.ndarray:
  """Smallest bucket >= length (elementwise). Raises if a length exceeds the largest bucket."""
  buckets = np.asarray(sorted(buckets))
  index = np.searchsorted(buckets, length, side="left")
  if np.any(index >= len(buckets)):
    raise ValueError(f"length {np.max(length)} exceeds the largest bucket {buckets[-1]}")
  return buckets[index]


def right_pad(seqs: Sequence[np.ndarray], length: int, pad_id: int,
              fill: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads id sequences to (B, length) int32; returns (ids, attention_mask)."""
  ids = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, seq in enumerate(seqs):
    ids[i, :len(seq)] = seq
    mask[i, :len(seq)] = 1
  return ids, mask


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int,
                     buckets: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Left-pads prompt-only sequences (for generation): every anchor sits in the last column.

  Args:
    prompts: token ids of prompts (e.g. `Example.en_input_ids`, or `input_ids[:prompt_len]`).
    pad_id: padding id.
    buckets: allowed lengths; None pads to the longest prompt.

  Returns:
    `input_ids`, `attention_mask`, `positions` (B, T) int32, with positions counting real
    tokens from 0 (pads get 0), and `anchor` (B,) int32, all T - 1.
  """
  longest = max(len(p) for p in prompts)
  length = int(bucket_length(longest, buckets)) if buckets else longest
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, prompt in enumerate(prompts):
    ids[i, length - len(prompt):] = prompt
    mask[i, length - len(prompt):] = 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "positions": positions,
          "anchor": np.full((len(prompts),), length - 1, np.int32)}


def local_lengths(examples: Sequence[Example]) -> Lengths:
  return (np.asarray([len(e.input_ids) for e in examples], np.int32),
          np.asarray([len(e.en_input_ids) for e in examples], np.int32))


def gather_lengths(examples: Sequence[Example]) -> list[Lengths]:
  """Every process's example lengths (a collective: all processes must call it together).

  Shapes must agree across processes, so each batch's bucket is decided from all of them."""
  lens, en_lens = local_lengths(examples)
  counts = multihost_utils.process_allgather(np.asarray([len(lens)], np.int32)).reshape(-1)
  width = int(counts.max())
  padded = np.zeros((2, width), np.int32)
  padded[0, :len(lens)], padded[1, :len(lens)] = lens, en_lens
  table = multihost_utils.process_allgather(padded).reshape(len(counts), 2, width)
  return [(table[q, 0, :n], table[q, 1, :n]) for q, n in enumerate(counts)]


@dataclasses.dataclass(frozen=True)
class BatchOptions:
  """Batching of training examples.

  Attributes:
    batch_size: global batch size (all processes together).
    buckets: allowed padded lengths of the non-English sequences.
    en_buckets: allowed padded lengths of the English prompts; None: `buckets`.
    seed: shuffle seed; epoch e uses the permutation drawn from (seed, e, process).
    shuffle: shuffle each epoch (else source order).
    drop_last: drop the last partial batch of each epoch (logged) instead of padding it with
      rows that have no label tokens.
    num_epochs: stop after this many epochs; None: never stop.
  """
  batch_size: int
  buckets: tuple[int, ...]
  en_buckets: tuple[int, ...] | None = None
  seed: int = 0
  shuffle: bool = True
  drop_last: bool = False
  num_epochs: int | None = None

  @classmethod
  def from_config(cls, cfg: Any, seed: int) -> "BatchOptions":
    """From `config.data`: batch_size, buckets (empty: powers of two from min_bucket up to
    cutoff_len), shuffle, drop_last, num_epochs (0: no limit)."""
    buckets = tuple(cfg.buckets) or default_buckets(cfg.cutoff_len, cfg.min_bucket)
    en_cutoff = cfg.en_cutoff_len or cfg.cutoff_len
    return cls(batch_size=cfg.batch_size, buckets=buckets,
               en_buckets=tuple(b for b in buckets if b < en_cutoff) + (en_cutoff,), seed=seed,
               shuffle=cfg.shuffle, drop_last=cfg.drop_last, num_epochs=cfg.num_epochs or None)


class BatchIterator:
  """Yields right-padded training batches; its position is a small JSON-able state.

  Each process holds its own examples (its share of the records) and yields its rows of
  every global batch: `batch_size // process_count` of them. Epoch e visits each process's
  examples in a permutation drawn from (seed, e, process index); the padded lengths of step s
  are the buckets of the longest sequences of step s over all processes, so every process
  yields the same shapes. A batch is a dict of numpy arrays:

    input_ids, labels, attention_mask, positions: (B, T) int32; labels IGNORE_INDEX where
      no loss is taken (prompt, padding), aligned with input_ids (not shifted).
    anchor: (B,) int32, index of the last prompt token.
    en_input_ids, en_attention_mask, en_positions: (B, T_en) int32; en_anchor: (B,) int32.

  Where a process runs out of examples in the last batch of an epoch (and drop_last is off),
  the missing rows are padding rows: one visible pad token, no labels, anchors 0. They add
  nothing to a loss that is summed over label tokens.
  """

  def __init__(self, examples: Sequence[Example], options: BatchOptions, *, pad_id: int,
               process_index: int | None = None, process_count: int | None = None,
               host_lengths: Sequence[Lengths] | None = None):
    """Args:
      examples: this process's examples.
      options: batch size, buckets, shuffle.
      pad_id: padding id (`data.pad_token_id(tokenizer)`).
      process_index, process_count: default `jax.process_index()`, `jax.process_count()`.
      host_lengths: every process's `local_lengths`; default: gathered (`gather_lengths`, a
        collective) when there are several processes.
    """
    self._examples, self._options, self._pad_id = list(examples), options, pad_id
    self._index = jax.process_index() if process_index is None else process_index
    self._count = jax.process_count() if process_count is None else process_count
    if options.batch_size % self._count:
      raise ValueError(f"batch_size {options.batch_size} is not a multiple of the "
                       f"{self._count} processes")
    self._local_batch = options.batch_size // self._count
    if host_lengths is None:
      host_lengths = gather_lengths(examples) if self._count > 1 else [local_lengths(examples)]
    if len(host_lengths) != self._count or len(host_lengths[self._index][0]) != len(examples):
      raise ValueError("host_lengths does not match the processes and this process's examples")
    self._lengths = list(host_lengths)
    self._en_buckets = options.en_buckets or options.buckets
    self._steps = self._count_steps()
    self._epoch, self._position, self._plan = 0, 0, None

  def _count_steps(self) -> int:
    counts = [len(lens) for lens, _ in self._lengths]
    b = self._local_batch
    steps = min(counts) // b if self._options.drop_last else -(-max(counts) // b)
    if steps == 0:
      raise ValueError(f"too few examples {counts} for a batch of {b} per process")
    dropped = counts[self._index] - steps * b
    if dropped > 0:
      logging.warning("drop_last: each epoch leaves out %d of this process's %d examples",
                      dropped, counts[self._index])
    elif dropped < 0:
      logging.info("the last batch of each epoch has %d padding rows on this process", -dropped)
    return steps

  @property
  def steps_per_epoch(self) -> int:
    return self._steps

  def state(self) -> dict[str, int]:
    """Position of the next batch: {"epoch": e, "position": step within the epoch}."""
    return {"epoch": self._epoch, "position": self._position}

  def restore(self, state: Mapping[str, int]) -> None:
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position <= self._steps:
      raise ValueError(f"iterator state {dict(state)} is out of range ({self._steps} steps/epoch)")
    self._epoch, self._position, self._plan = epoch, position, None

  def _rows(self, epoch: int, process: int) -> np.ndarray:
    """(steps, local_batch) example indices of one process in one epoch; -1 for padding."""
    n = len(self._lengths[process][0])
    if self._options.shuffle:
      order = np.random.default_rng([self._options.seed, epoch, process]).permutation(n)
    else:
      order = np.arange(n)
    rows = np.full(self._steps * self._local_batch, -1, np.int64)
    used = min(n, len(rows))
    rows[:used] = order[:used]
    return rows.reshape(self._steps, self._local_batch)

  def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This process's rows and every step's (T, T_en), agreed over all processes."""
    longest = np.ones((2, self._steps), np.int64)
    for q, (lens, en_lens) in enumerate(self._lengths):
      rows = self._rows(epoch, q)
      for k, table in enumerate((lens, en_lens)):
        per_row = np.where(rows >= 0, table[np.maximum(rows, 0)], 1)
        longest[k] = np.maximum(longest[k], per_row.max(axis=1))
    return (self._rows(epoch, self._index), bucket_length(longest[0], self._options.buckets),
            bucket_length(longest[1], self._en_buckets))

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._position == self._steps:
      self._epoch, self._position, self._plan = self._epoch + 1, 0, None
    if self._options.num_epochs is not None and self._epoch >= self._options.num_epochs:
      raise StopIteration
    if self._plan is None:
      self._plan = self._epoch_plan(self._epoch)
    rows, lengths, en_lengths = self._plan
    s = self._position
    batch = self._assemble(rows[s], int(lengths[s]), int(en_lengths[s]))
    self._position += 1
    return batch

  def _assemble(self, rows: np.ndarray, length: int, en_length: int) -> dict[str, np.ndarray]:
    pad = np.asarray([self._pad_id], np.int32)
    # A padding row keeps one visible token so that no attention row is fully masked.
    picked = [self._examples[r] if r >= 0 else None for r in rows]
    ids, mask = right_pad([e.input_ids if e else pad for e in picked], length, self._pad_id)
    labels, _ = right_pad([e.labels if e else [IGNORE_INDEX] for e in picked], length,
                          IGNORE_INDEX)
    en_ids, en_mask = right_pad([e.en_input_ids if e else pad for e in picked], en_length,
                                self._pad_id)
    b = len(rows)
    return {
        "input_ids": ids, "labels": labels, "attention_mask": mask,
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
        "anchor": np.asarray([e.anchor if e else 0 for e in picked], np.int32),
        "en_input_ids": en_ids, "en_attention_mask": en_mask,
        "en_positions": np.broadcast_to(np.arange(en_length, dtype=np.int32),
                                        (b, en_length)).copy(),
        "en_anchor": np.asarray([e.en_anchor if e else 0 for e in picked], np.int32),
    }


def make_global_batch(local_batch: Mapping[str, np.ndarray],
                      sharding: jax.sharding.Sharding | Mapping[str, jax.sharding.Sharding]
                      ) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays (batch axis across processes).

  Args:
    local_batch: this process's batch from BatchIterator.
    sharding: one sharding for every key (e.g. NamedSharding(mesh, P("data"))), or one per key.
  """
  def pick(key):
    return sharding[key] if isinstance(sharding, Mapping) else sharding
  return {k: jax.make_array_from_process_local_data(pick(k), v) for k, v in local_batch.items()}


def split_microbatches(batch: Mapping[str, Any], num_microbatches: int) -> dict[str, Any]:
  """Stacks microbatches on a new leading axis: (M, B / M, ...), for a scan over M.

  Microbatch m holds rows m, m + M, m + 2M, ...: a strided split keeps each microbatch spread
  over all devices when the batch axis is sharded in contiguous blocks. Works on numpy and
  jax arrays. Divide the summed loss by `count_label_tokens` of the whole batch, not by the
  per-microbatch counts (docs/method.md §1 pitfalls).
  """
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch {x.shape[0]} is not divisible into {num_microbatches} microbatches")
    return x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
  return {k: split(v) for k, v in batch.items()}


def count_label_tokens(batch: Mapping[str, Any]) -> Any:
  """Number of tokens that carry a loss (labels != IGNORE_INDEX); numpy or jax."""
  return (batch["labels"] != IGNORE_INDEX).sum()
