"""Tests of cc_jax.batching: buckets, the resumable iterator, multi-host shapes, microbatches."""

import json

import jax
import numpy as np
import pytest

from cc_jax import batching, data

PAD = 0
BUCKETS = (16, 32, 64)


def _example(i, prompt_len, response_len, en_len):
  """A synthetic example whose first token (1000 + i) identifies it."""
  rng = np.random.default_rng(i)
  ids = rng.integers(5, 100, prompt_len + response_len).astype(np.int32)
  ids[0] = 1000 + i
  labels = ids.copy()
  labels[:prompt_len] = data.IGNORE_INDEX
  en = rng.integers(5, 100, en_len).astype(np.int32)
  return data.Example(input_ids=ids, labels=labels, prompt_len=prompt_len, en_input_ids=en,
                      source=f"synthetic:{i}")


def _examples(n, start=0):
  rng = np.random.default_rng(1234 + start)
  return [_example(start + i, int(rng.integers(2, 40)), int(rng.integers(1, 24)),
                   int(rng.integers(2, 60))) for i in range(n)]


def _iterator(examples, batch_size=4, **kwargs):
  return batching.BatchIterator(examples, batching.BatchOptions(batch_size, BUCKETS, **kwargs),
                                pad_id=PAD)


def _ids(batch):
  """Example ids of a batch's rows; -1 for padding rows."""
  first = batch["input_ids"][:, 0]
  return [int(t) - 1000 if t >= 1000 else -1 for t in first]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_default_buckets():
  assert batching.default_buckets(1024) == (64, 128, 256, 512, 1024)
  assert batching.default_buckets(1000, min_len=128) == (128, 256, 512, 1000)
  assert batching.bucket_length(17, BUCKETS) == 32 and batching.bucket_length(16, BUCKETS) == 16
  with pytest.raises(ValueError, match="exceeds"):
    batching.bucket_length(65, BUCKETS)


def test_prompt_buckets():
  assert batching.prompt_buckets(1024) == (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
  assert batching.prompt_buckets(100) == (32, 48, 64, 96, 100)
  assert batching.prompt_buckets(64) == (32, 48, 64)
  assert batching.prompt_buckets(20) == (20,)
  # padding stays under a third of a prompt longer than the smallest bucket
  buckets = batching.prompt_buckets(1024)
  for length in range(33, 1025):
    assert batching.bucket_length(length, buckets) < 1.5 * length


def test_batch_contents():
  examples = _examples(6)
  it = _iterator(examples, batch_size=3, shuffle=False)
  for step in range(2):
    batch = next(it)
    rows = examples[3 * step:3 * step + 3]
    longest = max(len(e.input_ids) for e in rows)
    length = min(b for b in BUCKETS if b >= longest)
    en_length = min(b for b in BUCKETS if b >= max(len(e.en_input_ids) for e in rows))
    assert batch["input_ids"].shape == (3, length) and batch["en_input_ids"].shape == (3, en_length)
    assert all(v.dtype == np.int32 for v in batch.values())
    for i, ex in enumerate(rows):
      n, m = len(ex.input_ids), len(ex.en_input_ids)
      assert batch["input_ids"][i, :n].tolist() == ex.input_ids.tolist()
      assert (batch["input_ids"][i, n:] == PAD).all()
      assert batch["labels"][i, :n].tolist() == ex.labels.tolist()
      assert (batch["labels"][i, n:] == data.IGNORE_INDEX).all()
      assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (length - n)
      assert batch["positions"][i].tolist() == list(range(length))
      a = batch["anchor"][i]
      assert a == ex.prompt_len - 1 and batch["labels"][i, a] == data.IGNORE_INDEX
      assert batch["labels"][i, a + 1] == ex.input_ids[a + 1]
      assert batch["en_input_ids"][i, :m].tolist() == ex.en_input_ids.tolist()
      assert batch["en_attention_mask"][i].sum() == m and batch["en_anchor"][i] == m - 1
      assert batch["en_positions"][i].tolist() == list(range(en_length))


def test_shapes_are_limited_to_buckets():
  it = _iterator(_examples(50), batch_size=4, num_epochs=3)
  shapes = {(b["input_ids"].shape, b["en_input_ids"].shape) for b in it}
  assert {s[0][0] for s in shapes} == {4}
  assert {s[0][1] for s in shapes} <= set(BUCKETS) and {s[1][1] for s in shapes} <= set(BUCKETS)


def test_epoch_visits_each_example_once_and_pads_the_last_batch(caplog):
  examples = _examples(10)
  with caplog.at_level("INFO"):
    it = _iterator(examples, batch_size=4, num_epochs=1)
  assert it.steps_per_epoch == 3 and "2 padding rows" in caplog.text
  batches = list(it)
  ids = [i for b in batches for i in _ids(b)]
  assert sorted(ids) == [-1, -1] + list(range(10))
  last = batches[-1]
  for row in np.flatnonzero(np.asarray(_ids(last)) < 0):  # padding rows: no labels, one token
    assert (last["labels"][row] == data.IGNORE_INDEX).all()
    assert last["attention_mask"][row].tolist() == [1] + [0] * (last["input_ids"].shape[1] - 1)
    assert last["en_attention_mask"][row].sum() == 1
  assert sum(int(batching.count_label_tokens(b)) for b in batches) == sum(
      e.num_label_tokens for e in examples)


def test_drop_last_is_logged(caplog):
  with caplog.at_level("WARNING"):
    it = _iterator(_examples(10), batch_size=4, drop_last=True, num_epochs=1)
  assert it.steps_per_epoch == 2 and "leaves out 2 of this process's 10 examples" in caplog.text
  assert len(list(it)) == 2


def test_order_is_deterministic_from_seed():
  examples = _examples(20)
  order = lambda seed: [_ids(b) for b in _iterator(examples, seed=seed, num_epochs=2)]
  first, again, other = order(0), order(0), order(1)
  assert first == again and first != other
  steps = len(first) // 2
  assert first[:steps] != first[steps:]  # each epoch is shuffled afresh
  assert sorted(sum(first[:steps], [])) == sorted(sum(first[steps:], []))


def test_restored_iterator_yields_the_same_batches():
  examples = _examples(22)
  original = _iterator(examples, seed=7)
  for _ in range(8):  # into the second epoch (6 steps per epoch)
    next(original)
  saved = json.dumps(original.state())
  expected = [next(original) for _ in range(9)]
  restored = _iterator(examples, seed=7)
  restored.restore(json.loads(saved))
  assert json.loads(saved) == {"epoch": 1, "position": 2}
  assert all(_same(a, next(restored)) for a in expected)
  with pytest.raises(ValueError, match="out of range"):
    restored.restore({"epoch": 0, "position": 99})


def test_multihost_shares_agree_on_shapes():
  # Two processes with unequal shares; each builds its own iterator from the length table.
  shares = [_examples(11), _examples(9, start=11)]
  lengths = [batching.local_lengths(s) for s in shares]
  its = [batching.BatchIterator(shares[p], batching.BatchOptions(4, BUCKETS, seed=3, num_epochs=1),
                                pad_id=PAD, process_index=p, process_count=2, host_lengths=lengths)
         for p in range(2)]
  assert its[0].steps_per_epoch == its[1].steps_per_epoch == 6
  seen = []
  for b0, b1 in zip(*its):
    assert b0["input_ids"].shape == b1["input_ids"].shape == (2, b0["input_ids"].shape[1])
    assert b0["en_input_ids"].shape == b1["en_input_ids"].shape
    rows = [i for i in _ids(b0) + _ids(b1) if i >= 0]
    longest = max(len((shares[0] + shares[1])[i].input_ids) for i in rows)
    assert b0["input_ids"].shape[1] == min(b for b in BUCKETS if b >= longest)
    seen += rows
  assert sorted(seen) == list(range(20))


def test_gather_lengths_single_process():
  examples = _examples(5)
  (gathered,) = batching.gather_lengths(examples)
  for a, b in zip(gathered, batching.local_lengths(examples)):
    np.testing.assert_array_equal(a, b)


def test_make_global_batch():
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = next(_iterator(_examples(2 * n), batch_size=2 * n, shuffle=False))
  global_batch = batching.make_global_batch(batch, sharding)
  for key, value in batch.items():
    assert global_batch[key].sharding == sharding
    np.testing.assert_array_equal(np.asarray(global_batch[key]), value)


def test_split_microbatches():
  batch = next(_iterator(_examples(8), batch_size=8, shuffle=False))
  micro = batching.split_microbatches(batch, 4)
  assert micro["input_ids"].shape == (4, 2) + batch["input_ids"].shape[1:]
  assert micro["anchor"].shape == (4, 2)
  np.testing.assert_array_equal(micro["labels"][1], batch["labels"][[1, 5]])
  total = batching.count_label_tokens(batch)
  assert sum(int(batching.count_label_tokens({"labels": m})) for m in micro["labels"]) == total
  on_device = batching.split_microbatches({k: jax.numpy.asarray(v) for k, v in batch.items()}, 4)
  np.testing.assert_array_equal(np.asarray(on_device["input_ids"]), micro["input_ids"])
  with pytest.raises(ValueError, match="not divisible"):
    batching.split_microbatches(batch, 3)


def test_left_pad_prompts():
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
  out = batching.left_pad_prompts(prompts, PAD, buckets=(4, 8))
  assert out["input_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 4, 5, 6, 7, 8],
                                       [0, 0, 0, 0, 0, 0, 0, 9]]
  assert out["attention_mask"].tolist()[0] == [0, 0, 0, 0, 0, 1, 1, 1]
  assert out["positions"].tolist()[1] == [0, 0, 0, 0, 1, 2, 3, 4]
  assert out["anchor"].tolist() == [7, 7, 7]
  assert batching.left_pad_prompts(prompts, PAD)["input_ids"].shape == (3, 5)


def test_batch_options_from_config():
  import ml_collections  # a runtime requirement: a missing install must fail, not skip
  cfg = ml_collections.ConfigDict(dict(batch_size=16, buckets=(), min_bucket=64, cutoff_len=1024,
                                       en_cutoff_len=300, shuffle=True, drop_last=False,
                                       num_epochs=3))
  options = batching.BatchOptions.from_config(cfg, seed=5)
  assert options.buckets == (64, 128, 256, 512, 1024)
  assert options.en_buckets == (64, 128, 256, 300)
  assert options.seed == 5 and options.num_epochs == 3
