"""The decoder against transformers' PyTorch models, and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cc_jax import convert, model as M
from tests import hf_reference as ref

ATOL = 1e-4  # fp32 logits vs transformers (issue 2)


def load(cc_dir, **overrides):
  cfg = convert.load_config(cc_dir, **overrides)
  params = convert.load_params(cc_dir)
  if not cfg.scan_layers:
    params = M.unstack_layers(params, cfg.num_layers)
  return M.Llama(cfg), params


@pytest.fixture(scope="module", params=sorted(ref.FAMILIES))
def family(request, tmp_path_factory):
  hf_model = ref.make_hf_model(request.param)
  cc_dir = ref.convert_hf_model(hf_model, tmp_path_factory.mktemp(request.param))
  return request.param, hf_model, cc_dir


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(family, scan_layers):
  name, hf_model, cc_dir = family
  model, params = load(cc_dir, scan_layers=scan_layers)
  tokens, mask, positions = ref.mixed_batch(model.cfg.vocab_size)
  expected = ref.hf_forward(hf_model, tokens, mask, positions).logits.numpy()
  out = model.apply({"params": params}, tokens, positions, mask)
  logits = np.asarray(out.logits_BTV)
  real = mask.astype(bool)
  assert np.isfinite(logits).all(), "padding rows must not produce NaN"
  np.testing.assert_allclose(logits[real], expected[real], atol=ATOL, rtol=0, err_msg=name)


def test_captured_mlp_outputs_match_forward_hooks(family):
  """Hook (a): every layer's MLP output at one position per example, as torch hooks see it."""
  _, hf_model, cc_dir = family
  model, params = load(cc_dir)
  tokens, mask, positions = ref.mixed_batch(model.cfg.vocab_size)
  anchor = np.array([11, 7, 11], np.int32)  # the last real token of each row
  seen = []
  handles = [layer.mlp.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().numpy()))
             for layer in hf_model.model.layers]
  try:
    hidden = ref.hf_forward(hf_model, tokens, mask, positions, output_hidden_states=True).hidden_states
  finally:
    for h in handles:
      h.remove()
  expected = np.stack([s[np.arange(3), anchor] for s in seen])
  out = model.apply({"params": params}, tokens, positions, mask, capture_at_B=anchor)
  np.testing.assert_allclose(np.asarray(out.captured_LBD), expected, atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(out.hidden_BTD)[mask.astype(bool)],
                             hidden[-1].numpy()[mask.astype(bool)], atol=ATOL, rtol=0)


def test_zero_injection_is_identity_and_injection_matches_torch(family):
  """Hook (b): a zero vector changes nothing; a real one equals adding it in torch."""
  _, hf_model, cc_dir = family
  model, params = load(cc_dir)
  tokens, mask, positions = ref.mixed_batch(model.cfg.vocab_size)
  at = np.array([3, 6, 8], np.int32)
  plain = model.apply({"params": params}, tokens, positions, mask).logits_BTV
  zero = np.zeros((3, model.cfg.hidden_size), np.float32)
  hooked = model.apply({"params": params}, tokens, positions, mask, capture_at_B=at, inject=(zero, at))
  np.testing.assert_array_equal(np.asarray(hooked.logits_BTV), np.asarray(plain))

  vec = np.random.default_rng(1).normal(size=(3, model.cfg.hidden_size)).astype(np.float32)

  def add_at_anchor(module, inputs, output):
    output = output.clone()
    output[torch.arange(3), torch.tensor(at)] += torch.tensor(vec)
    return output

  handle = hf_model.model.layers[1].mlp.register_forward_hook(add_at_anchor)
  try:
    expected = ref.hf_forward(hf_model, tokens, mask, positions).logits.numpy()
  finally:
    handle.remove()
  injected = M.Llama(model.cfg, inject_layer=1).apply({"params": params}, tokens, positions, mask,
                                                      inject=(vec, at)).logits_BTV
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(injected)[real], expected[real], atol=ATOL, rtol=0)
  assert not np.allclose(np.asarray(injected)[real], np.asarray(plain)[real], atol=1e-3)


@pytest.mark.parametrize("family_name,scan_layers", [("llama3_rope_scaling", True), ("llama3_rope_scaling", False),
                                                     ("mistral_sliding_window", True), ("qwen2_bias", True)])
def test_cached_decoding_equals_full_forward(family_name, scan_layers, tmp_path):
  """Prefill a left-padded batch, then feed one token at a time: every step's logits equal
  those of a full forward pass over the whole prefix (the window slides past 4 here), with
  the layers scanned (the cache in the scan's carry) or unrolled."""
  hf_model = ref.make_hf_model(family_name)
  model, params = load(ref.convert_hf_model(hf_model, tmp_path), scan_layers=scan_layers)
  B, prompt_len, steps = 3, 6, 6
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.cfg.vocab_size, (B, prompt_len + steps)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, :2] = 0
  mask[2, :4] = 0
  positions = np.asarray(M.left_pad_positions(mask))
  full = np.asarray(model.apply({"params": params}, tokens, positions, mask).logits_BTV)

  apply = jax.jit(lambda p, t, pos, m, c: model.apply({"params": p}, t, pos, m, cache=c))
  cache = M.KVCache.init(model.cfg, B, prompt_len + steps)
  out = apply(params, tokens[:, :prompt_len], positions[:, :prompt_len], mask[:, :prompt_len], cache)
  np.testing.assert_allclose(np.asarray(out.logits_BTV)[:, -1], full[:, prompt_len - 1], atol=ATOL, rtol=0)
  for t in range(prompt_len, prompt_len + steps):
    out = apply(params, tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1], out.cache)
    np.testing.assert_allclose(np.asarray(out.logits_BTV)[:, 0], full[:, t], atol=ATOL, rtol=0,
                               err_msg=f"step {t}")


@pytest.mark.parametrize("T", [1, 5])
def test_cached_attention_equals_numpy(T):
  """cached_attention (keys stored (B, K, E, S), values (B, K, S, E)) against grouped-query
  attention in float64 numpy, where query head n reads kv head n // G (transformers'
  repeat_kv). Row 1 has every key masked for its first query, which both give the mean of
  the values (uniform weights over the same large negative)."""
  B, S, N, K, E = 2, 7, 6, 2, 4
  rng = np.random.default_rng(0)
  q = rng.normal(size=(B, T, N, E)).astype(np.float32)
  k = rng.normal(size=(B, S, K, E)).astype(np.float32)
  v = rng.normal(size=(B, S, K, E)).astype(np.float32)
  mask = rng.random((B, 1, T, S)) < 0.7
  mask[1, 0, 0] = False
  out = M.cached_attention(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask, E**-0.5)

  kv_head = np.arange(N) // (N // K)
  scores = np.einsum("btne,bsne->bnts", q.astype(np.float64), k[:, :, kv_head].astype(np.float64)) * E**-0.5
  scores = np.where(mask, scores, -0.7 * np.finfo(np.float32).max)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bnts,bsne->btne", weights, v[:, :, kv_head].astype(np.float64))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out)[1, 0], v[1].mean(0)[kv_head], atol=1e-5, rtol=0)


def test_causality(tmp_path):
  """The loss at position t has exactly zero gradient w.r.t. embeddings of positions > t."""
  model, params = load(ref.convert_hf_model(ref.make_hf_model("llama2_mha"), tmp_path))
  positions = np.arange(8)[None]

  def logit_sum_at_3(embed):
    p = {**params, "embed_tokens": {"embedding": embed}}
    return model.apply({"params": p}, tokens, positions, mask).logits_BTV[0, 3].sum()

  # Every position uses its own embedding row, so per-position gradients are separable.
  tokens = np.arange(8, dtype=np.int32)[None]
  mask = np.ones_like(tokens)
  grad = jax.grad(logit_sum_at_3)(params["embed_tokens"]["embedding"])
  assert np.all(np.asarray(grad)[4:8] == 0)
  assert np.any(np.asarray(grad)[:4] != 0)


@pytest.mark.parametrize("remat_policy", ["full", "save_dots"])
def test_remat_and_jit_do_not_change_results(tmp_path, remat_policy):
  hf_model = ref.make_hf_model("llama3_rope_scaling")
  cc_dir = ref.convert_hf_model(hf_model, tmp_path)
  model, params = load(cc_dir)
  remat_model, _ = load(cc_dir, remat_policy=remat_policy)
  tokens, mask, positions = ref.mixed_batch(model.cfg.vocab_size)

  def loss(m, p):
    return jnp.sum(m.apply({"params": p}, tokens, positions, mask).logits_BTV ** 2) * 1e-3

  eager_loss, eager_grads = jax.value_and_grad(lambda p: loss(model, p))(params)
  remat_loss, remat_grads = jax.jit(jax.value_and_grad(lambda p: loss(remat_model, p)))(params)
  np.testing.assert_allclose(remat_loss, eager_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eager_grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_bf16_compute_stays_close_to_fp32(tmp_path):
  hf_model = ref.make_hf_model("llama2_mha")
  cc_dir = ref.convert_hf_model(hf_model, tmp_path)
  model32, params = load(cc_dir)
  model16, _ = load(cc_dir, dtype="bfloat16")
  tokens, mask, positions = ref.mixed_batch(model32.cfg.vocab_size)
  l32 = np.asarray(model32.apply({"params": params}, tokens, positions, mask).logits_BTV)
  out16 = model16.apply({"params": params}, tokens, positions, mask)
  assert out16.logits_BTV.dtype == jnp.float32  # logits are always float32
  assert out16.hidden_BTD.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16.logits_BTV), l32, atol=0.05)


def test_config_round_trips_through_hf_dict():
  for name, make in ref.FAMILIES.items():
    cfg = M.LlamaConfig.from_hf(make().to_dict())
    assert M.LlamaConfig.from_hf(cfg.to_hf()) == cfg, name


def test_legacy_rope_scaling_keys_are_read():
  """transformers 4.x config.json files carry rope_theta/rope_scaling (e.g. Llama 3.1's)."""
  hf = ref.FAMILIES["llama2_mha"]().to_dict()
  hf.pop("rope_parameters", None)
  hf.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
  cfg = M.LlamaConfig.from_hf(hf)
  assert cfg.rope_theta == 500000.0
  assert cfg.rope_scaling == M.RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gpt2"}, "model_type='gpt2' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope type 'yarn'"),
])
def test_unsupported_configs_are_named(change, message):
  hf = {**ref.FAMILIES["llama2_mha"]().to_dict(), **change}
  with pytest.raises(ValueError, match=message):
    M.LlamaConfig.from_hf(hf)


def test_llama7b_shapes_without_memory():
  """Llama-2-7B's parameter count from eval_shape (no weights are allocated)."""
  cfg = M.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, head_dim=128, dtype="bfloat16")
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: M.Llama(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1))
  params = shapes["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == 6_738_415_616
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].value.shape == (32, 4096, 32, 128)
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].names == ("layers", "embed", "heads", "head_dim")
