"""The Transform Matrix solver against numpy and closed forms, and its save/load checks."""

import json

import numpy as np
import pytest

from cc_jax import transform


def random_pairs(n=40, layers=3, d=16, noise=0.01, seed=0):
  rng = np.random.default_rng(seed)
  planted = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
  source = rng.normal(size=(n, layers, d)).astype(np.float32)
  target = source @ planted + noise * rng.normal(size=(n, layers, d)).astype(np.float32)
  return source, target, planted


def relative(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


STACKED = transform.SolveOptions(streaming=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_solver_equals_numpy_lstsq(streaming):
  source, target, _ = random_pairs(noise=0.5)
  rows_s, rows_t = source.reshape(-1, 16), target.reshape(-1, 16)
  expected = np.linalg.lstsq(rows_s.astype(np.float64), rows_t.astype(np.float64), rcond=None)[0]
  options = transform.SolveOptions(streaming=streaming)
  assert relative(transform.solve(source, target, options, chunk_pairs=7), expected) <= 1e-5


@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_ridge_and_streaming_agree_with_closed_forms(ridge):
  source, target, _ = random_pairs(noise=0.5)
  s, t = source.reshape(-1, 16).astype(np.float64), target.reshape(-1, 16).astype(np.float64)
  closed = np.linalg.solve(s.T @ s + ridge * np.eye(16), s.T @ t)
  direct = transform.solve(source, target, transform.SolveOptions(ridge=ridge, streaming=False))
  streamed = transform.solve(source, target, transform.SolveOptions(ridge=ridge, streaming=True), chunk_pairs=7)
  assert relative(direct, closed) <= 1e-4
  assert relative(streamed, closed) <= 1e-4


@pytest.mark.parametrize("streaming", [False, True])
def test_recovers_a_planted_map_shared_and_per_layer(streaming):
  source, target, planted = random_pairs(n=200, noise=0.001)
  assert relative(transform.solve(source, target, transform.SolveOptions(streaming=streaming)), planted) <= 1e-2
  per_layer = transform.solve(source, target, transform.SolveOptions(per_layer=True, streaming=streaming))
  assert per_layer.shape == (3, 16, 16)
  for layer in range(3):
    assert relative(per_layer[layer], planted) <= 1e-2
  stats = transform.fit_statistics(source, target, planted)
  assert stats["r2"] > 0.999 and len(stats["r2_per_layer"]) == 3
  np.testing.assert_allclose(stats["mse"], np.mean((source @ planted - target) ** 2), rtol=1e-5)


def test_fit_statistics_by_hand():
  source = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # N=2, L=1, D=2
  target = np.array([[[1.0, 1.0]], [[3.0, 1.0]]], np.float32)
  stats = transform.fit_statistics(source, target, np.eye(2, dtype=np.float32))
  # residuals: (0, 1) and (3, 0) -> squares 0 + 1 + 9 + 0 = 10 over 4 entries
  assert stats["mse"] == pytest.approx(2.5)
  # target column means (2, 1): total sum of squares 1 + 0 + 1 + 0 = 2 -> R^2 = 1 - 10/2
  assert stats["r2"] == pytest.approx(-4.0)


def test_save_load_refuses_mismatches(tmp_path):
  matrix = np.eye(8, dtype=np.float32)
  transform.save(tmp_path, matrix, {"checkpoint": "/runs/a/checkpoints/100", "n": 5})
  loaded, meta = transform.load(tmp_path, num_layers=2, hidden_size=8, checkpoint="/runs/a/checkpoints/100")
  np.testing.assert_array_equal(loaded, matrix)
  assert meta["n"] == 5 and meta["shape"] == [8, 8]
  with pytest.raises(ValueError, match="does not fit a model with 2 layers of width 16"):
    transform.load(tmp_path, num_layers=2, hidden_size=16)
  with pytest.raises(ValueError, match="fitted on checkpoint '/runs/a/checkpoints/100'"):
    transform.load(tmp_path, num_layers=2, hidden_size=8, checkpoint="/runs/b/checkpoints/7")
  # An object array would need pickle to load: refused.
  np.save(tmp_path / transform.MATRIX_FILE, np.array([{"x": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="allow_pickle"):
    transform.load(tmp_path, num_layers=2, hidden_size=8)
  assert json.loads((tmp_path / transform.META_FILE).read_text())["checkpoint"] == "/runs/a/checkpoints/100"


def test_collection_captures_at_each_prompts_anchor():
  """Left-padded batches of unequal prompts, anchors anywhere (cc.anchor=authors puts them a
  token before the end): each row equals the MLP outputs of its own unpadded forward pass."""
  import flax.linen as nn
  import jax
  from cc_jax.model import Llama, LlamaConfig
  cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8)
  model = Llama(cfg)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 50, n).tolist() for n in (5, 9, 3, 7, 6)]
  anchors = [3, 8, 1, 5, 4]
  dummy = np.zeros((1, 4), np.int32)
  params = nn.unbox(model.init(jax.random.key(0), dummy, dummy, dummy + 1)["params"])
  got = transform.collect_activations(model, params, prompts, pad_id=0, batch_size=2, buckets=(8, 16),
                                      anchors=anchors)
  assert got.shape == (5, cfg.num_layers, cfg.hidden_size)
  for row, (prompt, anchor) in enumerate(zip(prompts, anchors)):
    tokens = np.asarray([prompt], np.int32)
    out = model.apply({"params": params}, tokens, np.arange(len(prompt))[None], np.ones_like(tokens),
                      capture_at_B=np.asarray([anchor], np.int32), compute_logits=False)
    np.testing.assert_allclose(got[row], np.asarray(out.captured_LBD)[:, 0], rtol=1e-5, atol=1e-5)
  last = transform.collect_activations(model, params, prompts, pad_id=0, batch_size=2, buckets=(8, 16))
  assert not np.allclose(last, got)  # None: the last token, which is not these anchors


def test_an_underdetermined_fit_is_flagged():
  """Fewer rows than the width: lstsq reproduces its own pairs (R^2 1.0 on them) and the
  statistics say nothing; the fit says so, unless a ridge regularises it."""
  rng = np.random.default_rng(0)
  source, target = rng.normal(size=(2, 3, 2, 16)).astype(np.float32)  # 3 pairs x 2 layers = 6 rows < 16
  stats = transform.fit_statistics(source, target, transform.solve(source, target))
  assert stats["r2"] > 0.999  # the meaningless perfect fit
  shared = transform.underdetermined(3, 2, 16, transform.SolveOptions())
  assert shared == ("the Transform Matrix is underdetermined: 6 rows (3 pairs x 2 layers) for a 16 x 16 matrix, so "
                    "its fit statistics say nothing; use matrix.num_samples >= 8 or matrix.ridge > 0")
  assert "3 rows (3 pairs) for a 16 x 16" in transform.underdetermined(3, 2, 16, transform.SolveOptions(per_layer=True))
  assert transform.underdetermined(3, 2, 16, transform.SolveOptions(ridge=0.1)) is None
  assert transform.underdetermined(8, 2, 16, transform.SolveOptions()) is None


@pytest.mark.parametrize("per_layer", [False, True])
def test_fit_statistics_summed_over_chunks_equal_numpy(per_layer):
  source, target, _ = random_pairs(n=50, noise=0.3)
  matrix = transform.solve(source, target, transform.SolveOptions(per_layer=per_layer))
  chunked = transform.FitStatistics(matrix, num_layers=3)
  for start in range(0, 50, 7):
    chunked.add(source[start:start + 7], target[start:start + 7])
  got = chunked.result()
  s, t = source.astype(np.float64), target.astype(np.float64)
  pred = np.einsum("nld,lde->nle", s, matrix) if per_layer else s @ matrix
  err = (pred - t) ** 2
  centred = (t - t.mean(axis=0)) ** 2
  np.testing.assert_allclose(got["mse"], err.mean(), rtol=1e-9)
  np.testing.assert_allclose(got["r2"], 1 - err.sum() / centred.sum(), rtol=1e-9)
  np.testing.assert_allclose(got["mse_per_layer"], err.mean(axis=(0, 2)), rtol=1e-9)
  np.testing.assert_allclose(got["r2_per_layer"], 1 - err.sum(axis=(0, 2)) / centred.sum(axis=(0, 2)), rtol=1e-9)
