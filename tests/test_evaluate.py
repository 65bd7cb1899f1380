"""Evaluation as the paper runs it: no truncation by default (and the question kept when a limit
forces a cut), the parallel English of the oracle mode, the authors' inference protocol
against a reimplementation of their script's steps, a base model without a training run, and
language subsets."""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from cc_jax import benchmarks, connection, convert, evaluate, generate, main, report, runtime, templates
from cc_jax.model import Llama
from tests import hf_reference, real_tokenizers
from tests.test_loop import tiny_config

XQUAD = ("Please answer these questions only based on the given context.\n\nContext: {context}\n"
         "Question: What colour is the sky over Kyoto?\n\nYour answer:")


def tiny_trained(config, tokenizer, seed=0):
  """A randomly initialised tiny model as evaluation sees a trained cc run."""
  cfg = runtime.model_config(config)
  model = Llama(cfg)
  dummy = np.zeros((1, 4), np.int32)
  params = dict(nn.unbox(model.init(jax.random.key(seed), dummy, dummy, dummy + 1)["params"]))
  params[connection.PARAM_NAME] = nn.unbox(connection.init_decision_maker(jax.random.key(1), cfg.hidden_size,
                                                                          cfg.num_layers))
  return runtime.TrainedModel(config, model, params, tokenizer, checkpoint="test")


def test_long_prompts_are_not_cut_by_default_and_a_forced_cut_keeps_the_question(smol_tokenizer, tmp_path):
  config = tiny_config()
  trained = tiny_trained(config, smol_tokenizer)
  context = " ".join(f"Sentence {i} of the passage about the weather in Kyoto." for i in range(150))
  prompt = XQUAD.format(context=context)
  whole = evaluate.Generator(trained, evaluate.EvalOptions(source="t")).encode([prompt])[0]
  assert whole.cut == 0 and len(whole.ids) > 1500  # nothing cut below the model's context (4096)
  limit = 256
  cut = evaluate.Generator(trained, evaluate.EvalOptions(source="t", max_prompt_len=limit)).encode([prompt])[0]
  assert len(cut.ids) == limit and cut.cut == len(whole.ids) - limit and cut.anchor == limit - 1
  text = smol_tokenizer.decode(cut.ids)
  assert "Please answer these questions only based on the given context." in text  # the opening
  assert "Question: What colour is the sky over Kyoto?\n\nYour answer:<|im_end|>\n<|im_start|>assistant\n" in text
  assert "Sentence 75 of" not in text  # the middle of the passage went
  # The cut is counted in the predictions, the results JSON and the table.
  example = benchmarks.EvalExample("XQuAD", "en", 0, prompt, "blue", "qa")
  records = evaluate.evaluate_examples(trained, [example], evaluate.EvalOptions(
      source="t", modes=("plain",), max_prompt_len=limit, max_new_tokens=4, batch_size=1))
  assert [r.prompt_cut for r in records] == [cut.cut]
  report.write_report(tmp_path, records, chart=False)
  result = json.loads((tmp_path / "results" / "cc-plain" / "XQuAD.json").read_text())
  assert result["prompts_cut"] == 1 and result["languages"]["en"]["prompts_cut"] == 1
  assert "Prompts cut to fit eval.max_prompt_len" in (tmp_path / "results.md").read_text()


def _write(path: pathlib.Path, values):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values), encoding="utf-8")


def test_oracle_english_of_xlsum_is_split_sample_en_and_of_the_others_the_en_file(tmp_path):
  """XLSum's `en` file is other articles; the English of the ar articles is split_sample_en/ar."""
  root = tmp_path / "bench"
  for lang in ("en", "ar"):
    _write(root / "XLSum" / "split_sample" / f"{lang}.json", [{"instruction": f"{lang} article {i}"} for i in range(3)])
    _write(root / "XLSum" / "ans_sample" / f"{lang}.json", [f"{lang} summary {i}" for i in range(3)])
    _write(root / "XLSum" / "split_sample_en" / f"{lang}.json",
           [{"instruction": f"English version of {lang} article {i}"} for i in range(3)])
    _write(root / "XNLI" / "split_sample" / f"{lang}.json", [{"instruction": f"{lang} premise {i}"} for i in range(3)])
    _write(root / "XNLI" / "ans_sample" / f"{lang}.json", ["1", "2", "3"])
  xlsum = benchmarks.load_local(root, "XLSum", ["ar", "en"], limit=2, seed=3)
  assert [e.english_prompt for e in xlsum] == [f"English version of {e.lang} article {e.index}" for e in xlsum]
  xnli = benchmarks.load_local(root, "XNLI", ["ar"])
  assert [e.english_prompt for e in xnli] == [f"en premise {i}" for i in range(3)]
  english = evaluate._english_prompts(xlsum + xnli)  # pylint: disable=protected-access
  assert english[("XLSum", "ar", xlsum[0].index)] == f"English version of ar article {xlsum[0].index}"
  # Without split_sample_en, XLSum has no parallel English; the en file is never taken instead.
  for path in (root / "XLSum" / "split_sample_en").glob("*"):
    path.unlink()
  assert all(e.english_prompt is None for e in benchmarks.load_local(root, "XLSum", ["ar"]))
  assert not evaluate._english_prompts(benchmarks.load(root, ["XLSum"], {"XLSum": ["ar", "en"]}))  # pylint: disable=protected-access
  # cc_jax's own layout keeps XLSum's parallel English through a round trip.
  benchmarks.write_local(tmp_path / "own", xlsum)
  again = benchmarks.load_local(tmp_path / "own", "XLSum", ["ar", "en"])
  assert [e.english_prompt for e in again] == [e.english_prompt for e in xlsum]


def _authors_steps(tokenizer, model, instruction, template_text):
  """The authors' inference script, step by step: the template written as text with the BOS
  text, tokenized with the tokenizer's special tokens, greedy for 40 tokens, stopping only at
  the model config's eos_token_id, decoded with special tokens skipped."""
  input_ids = tokenizer(template_text.format(instruction=instruction), return_tensors="pt").input_ids
  with torch.no_grad():
    output = model.generate(input_ids, max_new_tokens=40, do_sample=False, eos_token_id=model.config.eos_token_id,
                            pad_token_id=0)
  return input_ids[0].tolist(), tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


LLAMA3_TEXT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n")
MISTRAL_TEXT = "<s>[INST] {instruction} [/INST]"


def test_authors_protocol_reproduces_their_token_ids_and_stopping_rule(tmp_path):
  tokenizer = real_tokenizers.load("llama3")
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(**{**hf_reference.TINY, "vocab_size": len(tokenizer)},
                                       bos_token_id=128000, eos_token_id=128001)
  hf_model = transformers.LlamaForCausalLM(hf_config).eval()
  instructions = ["Premise: It rains.\nHypothesis: The street is wet.\n\nYour answer:", "Qu'est-ce que 2 + 2 ?"]
  # A stopping id the random model emits: the 6th token of its first free reply.
  ids, _ = _authors_steps(tokenizer, hf_model, instructions[0], LLAMA3_TEXT)
  with torch.no_grad():
    free = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
  hf_model.config.eos_token_id = hf_model.generation_config.eos_token_id = int(free[0, len(ids) + 5])
  hf_model.save_pretrained(tmp_path / "hf")
  tokenizer.save_pretrained(tmp_path / "hf")
  model_dir = convert.hf_to_cc_jax(tmp_path / "hf", tmp_path / "cc_jax")

  config = unchecked_arch(tiny_config(**{"model.path": str(model_dir), "model.tokenizer": "",
                                         "data.chat_template": "llama3"}))
  trained = runtime.load_model(config)
  authors = evaluate.Generator(trained, evaluate.EvalOptions(source="t", protocol="authors", batch_size=2))
  cc_jax = evaluate.Generator(trained, evaluate.EvalOptions(source="t", batch_size=2))
  prompts = authors.encode(instructions)
  expected = [_authors_steps(tokenizer, hf_model, i, LLAMA3_TEXT) for i in instructions]
  assert [p.ids for p in prompts] == [ids for ids, _ in expected]
  assert all(p.ids[:2] == [128000, 128000] for p in prompts)  # their doubled BOS
  assert authors.run(prompts, "plain") == [text.strip() for _, text in expected]
  # cc_jax's protocol: one BOS, and its stop ids are the template's end of turn and the eos.
  ours = cc_jax.encode(instructions)
  assert all(p.ids[0] == 128000 and p.ids[1] != 128000 for p in ours)
  assert list(cc_jax.eos) == [128009, 128001] and list(authors.eos) == [hf_model.config.eos_token_id]
  # Mistral: the same doubled BOS, from the same template text.
  mistral = real_tokenizers.load("mistral")
  rendered = templates.prompt_format(mistral, "mistral").render(instructions)
  assert rendered == [MISTRAL_TEXT.format(instruction=i) for i in instructions]
  assert mistral(rendered[0])["input_ids"][:2] == [1, 1]


def unchecked_arch(config):
  """The config without the tiny preset's architecture checks (0 = unchecked), for another model."""
  arch = config.model.arch
  for key, value in arch.items():
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      arch[key] = type(value)(0)
  return config


def _small_benchmarks(root: pathlib.Path) -> pathlib.Path:
  examples = []
  for lang in ("en", "zh"):
    for i in range(2):
      examples.append(benchmarks.EvalExample("XNLI", lang, i, f"Premise {i}\n(1) Entailment\n(2) Neutral\n"
                                             "(3) Contradiction", "1", "choice", ("Entailment", "Neutral",
                                                                                   "Contradiction"), ("1", "2", "3")))
  for lang in ("en", "ja"):
    for i in range(2):
      examples.append(benchmarks.EvalExample("MKQA", lang, i, f"What is {i} plus 2?", (str(i + 2),), "qa"))
  benchmarks.write_local(root, examples)
  return root


def test_a_base_model_evaluates_without_a_training_run_and_languages_select_benchmarks(tmp_path, caplog):
  """`--config.model.path=... --config.task=eval`: no workdir, plain mode, label "base"; with
  eval.languages=("ja",), only the benchmarks that have ja run, and the skip is said."""
  torch.manual_seed(0)
  tiny = tiny_config()
  arch = tiny.model.arch
  hf_config = transformers.LlamaConfig(
      vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
      num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
      rope_theta=arch.rope_theta, tie_word_embeddings=True, max_position_embeddings=4096)
  transformers.LlamaForCausalLM(hf_config).save_pretrained(tmp_path / "hf")
  model_dir = convert.hf_to_cc_jax(tmp_path / "hf", tmp_path / "model")
  bench = _small_benchmarks(tmp_path / "bench")
  out = tmp_path / "eval"
  config = tiny_config(**{"model.path": str(model_dir), "task": "eval", "eval.source": str(bench),
                          "eval.out_dir": str(out), "eval.max_new_tokens": 4, "eval.batch_size": 2,
                          "eval.benchmarks": ("XNLI", "MKQA"), "eval.languages": ("ja",)})
  with caplog.at_level("WARNING"):
    main.evaluate(config, "")
  assert "skipping XNLI" in caplog.text
  results = report.read_results(out)
  assert [(r["method"], r["benchmark"], list(r["languages"])) for r in results] == [("base", "MKQA", ["ja"])]
  # All languages: both benchmarks.
  config.eval.languages = ()
  main.evaluate(config, "")
  assert {(r["method"], r["benchmark"]) for r in report.read_results(out)} == {("base", "XNLI"), ("base", "MKQA")}
  with pytest.raises(ValueError, match="no benchmark .* has xx"):
    evaluate.selected_languages(evaluate.EvalOptions(source=str(bench), benchmarks=("XNLI", "MKQA"),
                                                     languages=("xx",)))


def test_authors_anchor_in_evaluation_recomputes_from_the_role_word(monkeypatch):
  """cc.anchor=authors with the qwen template: each anchor is the role word "assistant", one
  token before the prompt's end, and the cached CC inference equals the two-pass procedure."""
  tokenizer = real_tokenizers.load("qwen2")
  config = tiny_config(**{"data.chat_template": "qwen", "cc.anchor": "authors", "model.arch.vocab_size": len(tokenizer)})
  trained = tiny_trained(config, tokenizer)
  kernel = np.random.default_rng(0).normal(0, 3.0, trained.params[connection.PARAM_NAME]["kernel"].shape)
  trained.params[connection.PARAM_NAME] = {"kernel": kernel.astype(np.float32)}  # layers chosen differ
  generator = evaluate.Generator(trained, evaluate.EvalOptions(source="t", batch_size=3, max_new_tokens=8,
                                                               continuous="on"))
  prompts = generator.encode(["Bonjour !", "你好，世界", "Wie spät ist es?\nBitte antworten."])
  assert [tokenizer.decode([p.ids[p.anchor]]) for p in prompts] == ["assistant"] * 3
  assert [p.anchor_offset for p in prompts] == [1, 1, 1]
  cached = generator.run(prompts, "identity")  # continuous batching: the anchor's columns recomputed at admission
  two_pass = functools.partial(evaluate.generate.cc_generate, reuse_cache=False)
  monkeypatch.setattr(evaluate.generate, "cc_generate", two_pass)
  static = evaluate.Generator(trained, evaluate.EvalOptions(source="t", batch_size=3, max_new_tokens=8,
                                                            continuous="off"))
  assert static.run(prompts, "identity") == cached


def test_decode_steps_count_the_row_steps_a_batch_waits_for_its_last_row(smol_tokenizer):
  """Static batches (eval.continuous=off): 5 prompts in batches of 2 (the last filled with a
  copy); every row ends at an EOS that the test reads off the generated tokens, so the expected
  counts come from the outputs alone."""
  trained = tiny_trained(tiny_config(), smol_tokenizer)
  options = evaluate.EvalOptions(source="t", batch_size=2, max_new_tokens=6, shared_prefix=False, continuous="off")
  generator = evaluate.Generator(trained, options)
  prompts = generator.encode([f"Question {i}: what is {i} plus {i}?" for i in range(5)])
  generator.run(prompts, "plain")
  live, run = generator.decode_steps
  order = sorted(range(5), key=lambda i: (len(prompts[i].ids), i))
  lengths = []
  for i in order:  # each prompt alone: its own number of decode steps (up to its first EOS)
    tokens, mask = generate.left_pad([prompts[i].ids], generator.pad_id)
    _, length = generate.generate(trained.model, trained.params, tokens, mask, generator.eos,
                                           max_new_tokens=6)
    lengths.append(int(length[0]))
  batches = [lengths[0:2], lengths[2:4], lengths[4:5] + lengths[4:5]]
  assert live == sum(lengths)
  assert run == sum(2 * max(b) for b in batches)


def test_long_prompts_go_in_smaller_batches_within_max_batch_tokens(smol_tokenizer, monkeypatch):
  """Static batches: within a budget of 256 prompt tokens, each batch holds as many rows (up to batch_size 4)
  as fit at its padded length, and the predictions equal those of batches of one."""
  trained = tiny_trained(tiny_config(), smol_tokenizer)
  texts = [" ".join(["word"] * n) for n in (5, 6, 7, 8, 9, 60, 70, 80, 120)]
  options = dict(source="t", max_new_tokens=4, shared_prefix=False)
  prompts = evaluate.Generator(trained, evaluate.EvalOptions(**options)).encode(texts)
  one = evaluate.Generator(trained, evaluate.EvalOptions(batch_size=1, **options)).run(prompts, "plain")
  budgeted = evaluate.Generator(trained, evaluate.EvalOptions(batch_size=4, max_batch_tokens=256, continuous="off",
                                                              **options))
  shapes = []
  generate_batch = budgeted._generate
  monkeypatch.setattr(budgeted, "_generate",
                      lambda b, *args: shapes.append(b["tokens"].shape) or generate_batch(b, *args))
  assert budgeted.run(prompts, "plain") == one
  assert sorted(len(p.ids) for p in prompts)[-1] > 128 > sorted(len(p.ids) for p in prompts)[4]  # lengths vary
  for rows, length in shapes:
    assert rows == min(4, 256 // length) or (rows == 1 and length > 256), shapes
  assert {rows for rows, _ in shapes} >= {4, 1}, shapes  # short prompts four at a time, the longest alone
