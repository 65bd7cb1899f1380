"""Generation: cached CC inference equals the authors' two-pass procedure token for token,
batched equals one-at-a-time, and plain greedy decoding equals transformers'."""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from cc_jax import connection, convert, generate, model as M
from cc_jax.connection import ConnectionConfig
from tests import hf_reference as ref

NEW = 12


def with_decision_maker(params, cfg, seed=0, scale=3.0):
  """A Decision Maker with weights large enough that different prompts pick different layers."""
  kernel = np.random.default_rng(seed).normal(0, scale, (cfg.hidden_size, cfg.num_layers)).astype(np.float32)
  return {**params, connection.PARAM_NAME: {"kernel": kernel}}


def tiny_cc_model(tmp_dir):
  """(transformers model, cc_jax config, params with a Decision Maker) of a tiny Qwen2."""
  hf_model = ref.make_hf_model("qwen2_bias")
  cc_dir = ref.convert_hf_model(hf_model, tmp_dir)
  cfg = convert.load_config(cc_dir)
  return hf_model, cfg, with_decision_maker(convert.load_params(cc_dir), cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return tiny_cc_model(tmp_path_factory.mktemp("gen"))


def prompts(vocab, lengths=(9, 4, 13, 6), seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("mode", ["identity", "matrix", "oracle"])
def test_cached_cc_generation_equals_two_full_passes(tiny, mode):
  _, cfg, params = tiny
  tokens, mask = generate.left_pad(prompts(cfg.vocab_size), pad_id=0)
  eos = np.array([5], np.int32)
  matrix = np.random.default_rng(1).normal(0, 0.3, (cfg.hidden_size, cfg.hidden_size)).astype(np.float32)
  kwargs = dict(max_new_tokens=NEW)
  if mode == "matrix":
    kwargs["matrix"] = matrix
  if mode == "oracle":
    kwargs["english"] = generate.left_pad(prompts(cfg.vocab_size, (5, 7, 3, 8), seed=2), pad_id=0)
  model = M.Llama(cfg)
  fast = generate.cc_generate(model, params, tokens, mask, eos, **kwargs)
  slow = generate.cc_generate(model, params, tokens, mask, eos, reuse_cache=False, **kwargs)
  np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(slow[0]))
  np.testing.assert_array_equal(np.asarray(fast[1]), np.asarray(slow[1]))
  plain = generate.greedy_generate(model, params, tokens, mask, eos, max_new_tokens=NEW)
  assert not np.array_equal(np.asarray(plain[0]), np.asarray(fast[0])), "the connection must change the output"


@pytest.mark.parametrize("offsets", [(1, 1, 1, 1), (0, 3, 1, 2)])
def test_cached_cc_generation_with_anchors_before_the_end_equals_two_full_passes(tiny, offsets):
  """cc.anchor=authors puts anchors a few tokens before the prompt's end (qwen: before the
  final newline): the cached path recomputes the columns from the earliest anchor on."""
  _, cfg, params = tiny
  items = prompts(cfg.vocab_size)
  tokens, mask = generate.left_pad(items, pad_id=0)
  T = tokens.shape[1]
  anchor = np.asarray([T - 1 - o for o in offsets], np.int32)
  recompute = generate.recompute_width(offsets, T)
  assert recompute == (2 if max(offsets) == 1 else 4)
  eos = np.array([5], np.int32)
  model = M.Llama(cfg)
  english = generate.left_pad(prompts(cfg.vocab_size, (5, 7, 3, 8), seed=2), pad_id=0)
  en_anchor = np.asarray([english[0].shape[1] - 2] * 4, np.int32)
  for kwargs in (dict(), dict(english=(*english, en_anchor))):
    fast = generate.cc_generate(model, params, tokens, mask, eos, anchor_B=anchor, recompute=recompute,
                                max_new_tokens=NEW, **kwargs)
    slow = generate.cc_generate(model, params, tokens, mask, eos, anchor_B=anchor, reuse_cache=False,
                                max_new_tokens=NEW, **kwargs)
    np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(slow[0]))
    np.testing.assert_array_equal(np.asarray(fast[1]), np.asarray(slow[1]))
    last = generate.cc_generate(model, params, tokens, mask, eos, max_new_tokens=NEW, **kwargs)
    assert not np.array_equal(np.asarray(last[0]), np.asarray(fast[0])), "the anchor must matter"


def test_injection_at_a_later_layer_also_reuses_the_cache(tiny):
  _, cfg, params = tiny
  tokens, mask = generate.left_pad(prompts(cfg.vocab_size), pad_id=0)
  model = M.Llama(cfg, inject_layer=1)
  eos = np.zeros((0,), np.int32)
  fast = generate.cc_generate(model, params, tokens, mask, eos, max_new_tokens=NEW)
  slow = generate.cc_generate(model, params, tokens, mask, eos, max_new_tokens=NEW, reuse_cache=False)
  np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(slow[0]))


@pytest.mark.parametrize("cc", [False, True])
def test_batched_equals_one_at_a_time(tiny, cc):
  _, cfg, params = tiny
  model = M.Llama(cfg)
  eos = np.array([5], np.int32)
  run = generate.cc_generate if cc else generate.generate
  items = prompts(cfg.vocab_size)
  tokens, mask = generate.left_pad(items, pad_id=0)
  batched, lengths = run(model, params, tokens, mask, eos, max_new_tokens=NEW)
  for row, item in enumerate(items):
    single, single_len = run(model, params, *generate.left_pad([item], pad_id=0), eos, max_new_tokens=NEW)
    assert int(single_len[0]) == int(lengths[row])
    np.testing.assert_array_equal(np.asarray(single)[0, :int(single_len[0])],
                                  np.asarray(batched)[row, :int(lengths[row])])


def prompts_with_shared_opening(vocab):
  """(the shared 7 tokens, four prompts that open with them; one is only 1 token longer)."""
  shared = prompts(vocab, (7,), seed=3)[0]
  return shared, [shared + rest for rest in prompts(vocab, (9, 1, 13, 4))]


@pytest.mark.parametrize("mode", ["plain", "cc", "cc_two_pass"])
def test_shared_prefix_equals_whole_prompts(tiny, mode):
  """Prompts that open with the same tokens: prefilling those once (`prefill_prefix`) and
  only the rest per prompt gives the tokens of whole-prompt generation."""
  _, cfg, params = tiny
  model = M.Llama(cfg)
  eos = np.array([5], np.int32)
  shared, items = prompts_with_shared_opening(cfg.vocab_size)
  matrix = np.random.default_rng(1).normal(0, 0.3, (cfg.hidden_size, cfg.hidden_size)).astype(np.float32)
  if mode == "plain":
    run = functools.partial(generate.generate, max_new_tokens=NEW)
  else:
    run = functools.partial(generate.cc_generate, matrix=matrix, max_new_tokens=NEW,
                            reuse_cache=mode == "cc")
  whole = run(model, params, *generate.left_pad(items, pad_id=0), eos)
  prefix = generate.prefill_prefix(model, params, np.asarray(shared, np.int32))
  rests = generate.left_pad([item[len(shared):] for item in items], pad_id=0)
  reused = run(model, params, *rests, eos, prefix=prefix)
  np.testing.assert_array_equal(np.asarray(reused[0]), np.asarray(whole[0]))
  np.testing.assert_array_equal(np.asarray(reused[1]), np.asarray(whole[1]))


def test_shared_prefix_prefill_gives_the_anchor_states_of_whole_prompts(tiny):
  """The token test above can pass by luck (a tiny model's greedy choices are robust to small
  errors); the anchor's final hidden state and captured MLP outputs cannot."""
  from cc_jax.train import model_params
  _, cfg, params = tiny
  model, decoder = M.Llama(cfg), model_params(params)
  shared, items = prompts_with_shared_opening(cfg.vocab_size)
  tokens, mask = generate.left_pad(items, pad_id=0)
  last = np.full((len(items),), tokens.shape[1] - 1, np.int32)
  whole = generate._prefill(model, decoder, tokens, mask, tokens.shape[1], capture_at_B=last)
  prefix = generate.prefill_prefix(model, params, np.asarray(shared, np.int32))
  rest_tokens, rest_mask = generate.left_pad([item[len(shared):] for item in items], pad_id=0)
  rest_last = np.full((len(items),), rest_tokens.shape[1] - 1, np.int32)
  reused = generate._prefill(model, decoder, rest_tokens, rest_mask, rest_tokens.shape[1], capture_at_B=rest_last,
                             prefix=prefix)
  np.testing.assert_allclose(np.asarray(reused.hidden_BTD[:, -1]), np.asarray(whole.hidden_BTD[:, -1]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(reused.captured_LBD), np.asarray(whole.captured_LBD), rtol=1e-5, atol=1e-5)


def test_shared_prefix_needs_the_cache_inside_the_sliding_window(tiny):
  _, cfg, params = tiny
  model = M.Llama(dataclasses.replace(cfg, sliding_window=16))
  prefix = generate.prefill_prefix(model, params, np.arange(1, 8, dtype=np.int32))
  tokens, mask = generate.left_pad(prompts(cfg.vocab_size), pad_id=0)  # 7 + 13 + NEW slots > 16
  with pytest.raises(ValueError, match="sliding window"):
    generate.generate(model, params, tokens, mask, np.zeros((0,), np.int32), prefix=prefix, max_new_tokens=NEW)


def test_greedy_equals_transformers_generate_with_eos(tiny):
  hf_model, cfg, params = tiny
  model = M.Llama(cfg)
  item = prompts(cfg.vocab_size)[0]
  with torch.no_grad():
    expected = hf_model.generate(torch.tensor([item]), max_new_tokens=NEW, do_sample=False, eos_token_id=[],
                                 pad_token_id=0)[0, len(item):].tolist()
  eos_token = expected[4]  # stop at the fifth generated token
  tokens, length = generate.greedy_generate(model, params, *generate.left_pad([item], pad_id=0),
                                            np.array([eos_token], np.int32), max_new_tokens=NEW)
  first = expected.index(eos_token) + 1
  assert int(length[0]) == first
  assert np.asarray(tokens)[0, :first].tolist() == expected[:first]
  assert set(np.asarray(tokens)[0, first:].tolist()) <= {eos_token}


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(tiny):
  import jax
  _, cfg, params = tiny
  model = M.Llama(cfg)
  tokens, mask = generate.left_pad(prompts(cfg.vocab_size), pad_id=0)
  eos = np.zeros((0,), np.int32)
  hot = generate.Sampling(temperature=1.5)
  a = generate.generate(model, params, tokens, mask, eos, jax.random.key(3), max_new_tokens=NEW, sampling=hot)
  b = generate.generate(model, params, tokens, mask, eos, jax.random.key(3), max_new_tokens=NEW, sampling=hot)
  c = generate.generate(model, params, tokens, mask, eos, jax.random.key(4), max_new_tokens=NEW, sampling=hot)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
  nucleus = generate.generate(model, params, tokens, mask, eos, jax.random.key(3), max_new_tokens=NEW,
                              sampling=generate.Sampling(temperature=1.0, top_p=1e-6))
  greedy = generate.greedy_generate(model, params, tokens, mask, eos, max_new_tokens=NEW)
  np.testing.assert_array_equal(np.asarray(nucleus[0]), np.asarray(greedy[0]))


def test_gumbel_selection_is_an_option(tiny):
  import jax
  _, cfg, params = tiny
  model = M.Llama(cfg)
  tokens, mask = generate.left_pad(prompts(cfg.vocab_size), pad_id=0)
  eos = np.zeros((0,), np.int32)
  gumbel = ConnectionConfig(selection="gumbel")
  runs = [np.asarray(generate.cc_generate(model, params, tokens, mask, eos, rng=jax.random.key(k),
                                          max_new_tokens=NEW, selection=gumbel)[0]) for k in range(4)]
  assert any(not np.array_equal(runs[0], r) for r in runs[1:]), "Gumbel noise should vary the choice"
  fixed = [np.asarray(generate.cc_generate(model, params, tokens, mask, eos, rng=jax.random.key(k),
                                           max_new_tokens=NEW)[0]) for k in range(2)]
  np.testing.assert_array_equal(fixed[0], fixed[1])  # argmax (default) is deterministic


def test_smollm2_cached_cc_equals_two_passes(smollm2_dir, smollm2_hf):
  _, tokenizer = smollm2_hf
  cfg = convert.load_config(smollm2_dir)
  params = with_decision_maker(convert.load_params(smollm2_dir), cfg, scale=0.5)
  texts = ["Combien font 7 fois 6 ?", "Сколько будет 12 плюс 30? Ответьте числом.", "3加4等于多少？"]
  items = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"]
           for t in texts]
  tokens, mask = generate.left_pad(items, tokenizer.pad_token_id)
  eos = np.array([tokenizer.convert_tokens_to_ids("<|im_end|>")], np.int32)
  model = M.Llama(cfg)
  fast = generate.cc_generate(model, params, tokens, mask, eos, max_new_tokens=16)
  slow = generate.cc_generate(model, params, tokens, mask, eos, max_new_tokens=16, reuse_cache=False)
  np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(slow[0]))


def test_smollm2_evaluation_prefills_the_chat_template_once(smollm2_dir, smollm2_hf):
  """Evaluation's shared prefix on real chat prompts: SmolLM2's system turn is prefilled once,
  and every prediction equals the one from whole prompts (plain and cc, batch 3 and 1)."""
  from configs import base
  from cc_jax import evaluate, runtime
  _, tokenizer = smollm2_hf
  cfg = convert.load_config(smollm2_dir)
  params = with_decision_maker(convert.load_params(smollm2_dir), cfg, scale=0.5)
  trained = runtime.TrainedModel(base.get_config(), M.Llama(cfg), params, tokenizer, checkpoint="")
  texts = ["Combien font 7 fois 6 ?", "Сколько будет 12 плюс 30? Ответьте числом.", "3加4等于多少？"]
  generators = {(b, shared): evaluate.Generator(trained, evaluate.EvalOptions(
      source="test", batch_size=b, max_new_tokens=12, shared_prefix=shared)) for b in (1, 3) for shared in (False, True)}
  ids = generators[1, True].encode(texts)
  prefix = generators[1, True].shared_prefix(ids)
  assert tokenizer.decode(prefix).startswith("<|im_start|>system\nYou are a helpful AI assistant")
  assert len(prefix) >= 16 and len(prefix) % evaluate.PREFIX_STEP == 0
  assert generators[1, False].shared_prefix(ids) == []
  for mode in ("plain", "identity"):
    outputs = {key: gen.run(ids, mode) for key, gen in generators.items()}
    assert all(o == outputs[1, False] for o in outputs.values()), (mode, outputs)
    assert all(outputs[1, False]), outputs
