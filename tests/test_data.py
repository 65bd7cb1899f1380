"""Tests of cc_jax.data: reading parallel SFT records and tokenizing them LLaMA-Factory style."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import transformers  # noqa: E402

from cc_jax import data  # noqa: E402

# Meta-Llama-3-8B-Instruct's chat template, verbatim (it writes bos_token itself).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

RECORDS = [
    {"instruction": "Привет! Как дела?", "instruction_en": "Hi! How are you?",
     "output": "Хорошо, спасибо.", "lang": "ru"},
    {"instruction": "Translate: good morning", "instruction_en": "Translate: good morning",
     "output": "Bonjour", "system": "You are a translator."},
    {"instruction": "写一首关于春天的诗", "instruction_en": "Write a poem about spring",
     "output": "春风吹绿了柳树。", "lang": "zh"},
]


def _fields(records):
  return [(r.prompt, r.prompt_en, r.response, r.lang, r.system) for r in records]


EXPECTED_FIELDS = [(r["instruction"], r["instruction_en"], r["output"], r.get("lang"),
                    r.get("system")) for r in RECORDS]


# ---------------------------------------------------------------------------------------------
# Tokenizers: SmolLM2's real one (ChatML) and a small Llama-3-style one built here.


@pytest.fixture(scope="module")
def smol_tokenizer():
  from cc_jax import smollm2
  gguf = smollm2.fetch_gguf()
  return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _build_llama3_tokenizer():
  """Byte-level BPE whose post-processor adds <|begin_of_text|>, as Llama 3's does."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = [r[k] for r in RECORDS for k in ("instruction", "instruction_en", "output")]
  tok.train_from_iterator(corpus * 5 + ["user assistant system the a of and to in"] * 20, trainer)
  bos = tok.token_to_id("<|begin_of_text|>")
  tok.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", bos)])
  # eos is <|end_of_text|> as in the base model: the end of turn must come from the template.
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
      chat_template=LLAMA3_TEMPLATE)


@pytest.fixture(scope="module")
def llama3_tokenizer():
  return _build_llama3_tokenizer()


# (tokenizer fixture, end-of-turn token, generation prompt, prompt tail) per template.
CASES = {
    "smollm2": ("smol_tokenizer", "<|im_end|>", "<|im_start|>assistant\n",
                "<|im_end|>\n<|im_start|>assistant\n"),
    "llama3": ("llama3_tokenizer", "<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
  fixture, end, gen_prompt, tail = CASES[request.param]
  return request.param, request.getfixturevalue(fixture), end, gen_prompt, tail


def test_llama3_tokenizer_adds_bos_on_its_own(llama3_tokenizer):
  # Precondition for the doubled-BOS tests: plain encoding adds a BOS, like Llama 3's.
  bos = llama3_tokenizer.bos_token_id
  assert llama3_tokenizer("hi")["input_ids"][0] == bos
  text = llama3_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
  assert text.startswith("<|begin_of_text|>")
  assert llama3_tokenizer(text)["input_ids"][:2] == [bos, bos]  # what cc_jax must avoid


# ---------------------------------------------------------------------------------------------
# Reading


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
  return path


def _write_json_array(path, rows):
  """Writes a JSON array with record k on line k + 2 (line 1 holds the bracket)."""
  path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n",
                  encoding="utf-8")
  return path


def test_formats_give_the_same_records(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  import datasets
  _write_jsonl(tmp_path / "train.jsonl", RECORDS)
  _write_json_array(tmp_path / "train.json", RECORDS)
  columns = ["instruction", "instruction_en", "output", "lang", "system"]
  pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in RECORDS]),
                 tmp_path / "train.parquet")
  datasets.Dataset.from_list([{c: r.get(c) for c in columns} for r in RECORDS]).save_to_disk(
      str(tmp_path / "saved"))
  # A LLaMA-Factory entry with renamed columns, as in the authors' dataset_info.json.
  renamed = [{"q": r["instruction"], "q_en": r["instruction_en"], "a": r["output"],
              "lang": r.get("lang"), "system": r.get("system")} for r in RECORDS]
  _write_json_array(tmp_path / "aya.json", renamed)
  (tmp_path / "dataset_info.json").write_text(json.dumps({
      "aya": {"file_name": "aya.json",
              "columns": {"prompt": "q", "response": "a", "aux": "q_en", "system": "system"}},
      "other": {"file_name": "train.jsonl"}}))
  sources = [(tmp_path / "train.jsonl", {}), (tmp_path / "train.json", {}),
             (tmp_path / "train.parquet", {}), (tmp_path / "saved", {}),
             (tmp_path / "dataset_info.json", {"entry": "aya"}), (tmp_path, {"entry": "aya"})]
  for source, kwargs in sources:
    records = data.load_records(str(source), data.SourceOptions(**kwargs))
    assert _fields(records) == EXPECTED_FIELDS, source


def test_load_dataset_directory(tmp_path, monkeypatch):
  import pyarrow as pa
  import pyarrow.parquet as pq
  import datasets
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
  (tmp_path / "ds").mkdir()
  columns = ["instruction", "instruction_en", "output", "lang", "system"]
  pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in RECORDS]),
                 tmp_path / "ds" / "train.parquet")
  records = data.load_records(str(tmp_path / "ds"), data.SourceOptions(format="hf"))
  assert _fields(records) == EXPECTED_FIELDS
  assert records[1].source.endswith("[train]:record 1")


def test_tfds_source(tmp_path):
  import tensorflow_datasets as tfds  # a runtime requirement: fail, never skip

  class CcJaxTinySft(tfds.core.GeneratorBasedBuilder):
    # A one-part module name keeps TFDS 4.9.10 from looking up this class's source via
    # `importlib_resources`, a package it only declares for Python < 3.9.
    __module__ = "cc_jax_tfds_fixture"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {k: text for k in ("instruction", "instruction_en", "output", "lang", "system")}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, r in enumerate(RECORDS):  # TFDS has no nulls: "" stands for "absent"
        yield i, {k: r.get(k) or "" for k in ("instruction", "instruction_en", "output", "lang",
                                                "system")}

  # array_record is the format that TFDS reads without TensorFlow.
  CcJaxTinySft(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  by_name = data.load_records("cc_jax_tiny_sft", data.SourceOptions(format="tfds",
                                                                    data_dir=str(tmp_path)))
  by_dir = data.load_records(str(tmp_path / "cc_jax_tiny_sft" / "1.0.0"),
                             data.SourceOptions(format="tfds"))
  assert _fields(by_name) == _fields(by_dir) == EXPECTED_FIELDS


def test_shares_partition_the_records(tmp_path):
  path = _write_jsonl(tmp_path / "train.jsonl", RECORDS * 3)
  shares = [data.load_records(str(path), shard_index=i, shard_count=2) for i in range(2)]
  assert [len(s) for s in shares] == [5, 4]
  lines = sorted(int(r.source.rsplit(" ", 1)[1]) for s in shares for r in s)
  assert lines == list(range(1, 10))
  assert [r.source for r in shares[1]][:2] == [f"{path}:line 2", f"{path}:line 4"]


def test_query_is_appended_like_llama_factory(tmp_path):
  rows = [dict(RECORDS[0], input="Ответь кратко."), dict(RECORDS[1], input="")]
  records = data.load_records(str(_write_jsonl(tmp_path / "q.jsonl", rows)))
  assert records[0].prompt == "Привет! Как дела?\nОтветь кратко."
  assert records[0].prompt_en == "Hi! How are you?"
  assert records[1].prompt == RECORDS[1]["instruction"]


def test_sft_reads_records_without_the_english_field_that_cc_needs(tmp_path):
  """sft never runs the English pass: a record without instruction_en stands in its own
  prompt; cc still names the file and line of the record that lacks it."""
  path = _write_jsonl(tmp_path / "no_en.jsonl", [RECORDS[1], {"instruction": "Bonjour ?", "output": "Salut."}])
  records = data.load_records(str(path), data.SourceOptions(require_english=False))
  assert [r.prompt_en for r in records] == [RECORDS[1]["instruction_en"], "Bonjour ?"]
  with pytest.raises(data.BadRecordError, match=f"{path}:line 2: missing field 'instruction_en'"):
    data.load_records(str(path))


GOOD = RECORDS[0]
# (raw JSONL line, expected message fragment) for each kind of bad record.
BAD_LINES = {
    "missing": (json.dumps({"instruction": "x", "output": "y"}).encode(),
                "missing field 'instruction_en'"),
    "empty": (json.dumps({"instruction": "  ", "instruction_en": "x", "output": "y"}).encode(),
              "field 'instruction' is empty"),
    "type": (json.dumps({"instruction": "x", "instruction_en": "x", "output": 5}).encode(),
             "field 'output' is a int"),
    "invalid_json": (b'{"instruction": "x", "instruction_en": ', "invalid JSON"),
    "undecodable": (b'{"instruction": "\xff\xfe", "instruction_en": "x", "output": "y"}',
                    "not valid UTF-8"),
    "not_object": (b'["x", "y"]', "expected an object"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_jsonl_record_names_file_and_line(tmp_path, kind):
  line, message = BAD_LINES[kind]
  path = tmp_path / "bad.jsonl"
  good = json.dumps(GOOD, ensure_ascii=False).encode()
  path.write_bytes(good + b"\n\n" + good + b"\n" + line + b"\n" + good + b"\n")
  with pytest.raises(data.BadRecordError, match=f"{path}:line 4: .*{message}"):
    data.load_records(str(path))


def test_bad_json_array_record_names_file_and_line(tmp_path):
  path = _write_json_array(tmp_path / "bad.json",
                           [GOOD, GOOD, {"instruction": "x", "instruction_en": "x"}, GOOD])
  with pytest.raises(data.BadRecordError, match=f"{path}:line 4: missing field 'output'"):
    data.load_records(str(path))
  path.write_text('[\n  {"instruction": "x", "instruction_en": "x",\n   "output": "y"},\n'
                  '  {"instruction": \n]')
  with pytest.raises(data.BadRecordError, match=f"{path}:line 5: invalid JSON"):
    data.load_records(str(path))


def test_json_file_may_hold_json_lines(tmp_path):
  path = _write_jsonl(tmp_path / "lines.json", RECORDS)
  assert _fields(data.load_records(str(path))) == EXPECTED_FIELDS


def test_undecodable_json_file_names_line(tmp_path):
  path = tmp_path / "bad.json"
  path.write_bytes(b'[\n{"instruction": "x",\n "instruction_en": "\xff", "output": "y"}\n]')
  with pytest.raises(data.BadRecordError, match=f"{path}:line 3: not valid UTF-8"):
    data.load_records(str(path), data.SourceOptions(skip_bad_records=True))


def test_bad_parquet_record_names_file_and_record(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = [GOOD, dict(GOOD, instruction_en=None), GOOD]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
  with pytest.raises(data.BadRecordError, match="bad.parquet:record 1: missing field"):
    data.load_records(str(tmp_path / "bad.parquet"))


def test_skip_bad_records_logs_each_location(tmp_path, caplog):
  path = tmp_path / "bad.jsonl"
  good = json.dumps(GOOD, ensure_ascii=False).encode()
  lines = [good] + [BAD_LINES[k][0] for k in sorted(BAD_LINES)] + [good]
  path.write_bytes(b"\n".join(lines) + b"\n")
  with caplog.at_level("WARNING"):
    records = data.load_records(str(path), data.SourceOptions(skip_bad_records=True))
  assert [r.source for r in records] == [f"{path}:line 1", f"{path}:line {len(lines)}"]
  assert f"skipped {len(BAD_LINES)} bad records" in caplog.text
  for lineno in range(2, 2 + len(BAD_LINES)):
    assert f"{path}:line {lineno}:" in caplog.text


# ---------------------------------------------------------------------------------------------
# Tokenization


def _expected_prompt(tokenizer, prompt, system=None):
  messages = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": prompt}]
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=False)


def _records(tmp_path, rows, name="train.jsonl"):
  return data.load_records(str(_write_jsonl(tmp_path / name, rows)))


def test_chat_format(case):
  _, tokenizer, end, _, tail = case
  fmt = data.chat_format(tokenizer)
  assert fmt.end_ids == (tokenizer.convert_tokens_to_ids(end),)
  assert fmt.prompt_tail == tail


def test_prompt_labels_and_anchor(case, tmp_path):
  name, tokenizer, end, gen_prompt, _ = case
  records = _records(tmp_path, RECORDS)
  examples = data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=1024))
  end_id = tokenizer.convert_tokens_to_ids(end)
  for record, ex in zip(RECORDS, examples):
    prompt = _expected_prompt(tokenizer, record["instruction"], record.get("system"))
    response = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [end_id]
    assert ex.input_ids.tolist() == prompt + response
    assert ex.labels.tolist() == [-100] * len(prompt) + response
    assert ex.anchor == len(prompt) - 1 and ex.labels[ex.anchor + 1] != -100
    assert tokenizer.decode(ex.input_ids[:ex.anchor + 1]).endswith(gen_prompt)
    assert ex.input_ids[-1] == end_id and ex.num_label_tokens == len(response)
    # English side: the English prompt with the same template (and system), no response.
    en_prompt = _expected_prompt(tokenizer, record["instruction_en"], record.get("system"))
    assert ex.en_input_ids.tolist() == en_prompt
    assert ex.en_anchor == len(en_prompt) - 1
    assert tokenizer.decode(ex.en_input_ids).endswith(gen_prompt)
    if name == "llama3":  # exactly one BOS, first
      for ids in (ex.input_ids, ex.en_input_ids):
        assert ids[0] == tokenizer.bos_token_id and (ids == tokenizer.bos_token_id).sum() == 1


def test_encode_prompts_for_generation(case):
  _, tokenizer, _, _, _ = case
  fmt = data.chat_format(tokenizer)
  ids = fmt.encode_ids(["Hi", "Bye"], [None, "Be nice."])
  assert ids == [_expected_prompt(tokenizer, "Hi"), _expected_prompt(tokenizer, "Bye", "Be nice.")]


def test_fragmentwise_response_tokenization(smol_tokenizer, tmp_path):
  # A response starting with a space: LLaMA-Factory tokenizes it as its own fragment.
  records = _records(tmp_path, [dict(GOOD, output=" leading space")])
  (ex,) = data.tokenize_records(records, smol_tokenizer)
  response = smol_tokenizer(" leading space", add_special_tokens=False)["input_ids"]
  assert ex.input_ids[ex.prompt_len:-1].tolist() == response


def _untruncated(tokenizer, records):
  return data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=100_000))


def test_truncation_splits_budget_and_keeps_anchor(case, tmp_path):
  _, tokenizer, end, _, tail = case
  row = {"instruction": "lorem ipsum dolor " * 60, "instruction_en": "good morning to you " * 60,
         "output": "sit amet consectetur " * 40}
  records = _records(tmp_path, [row])
  (full,) = _untruncated(tokenizer, records)
  p, r = full.prompt_len, full.num_label_tokens
  cutoff = (p + r) // 2
  assert 2 * p >= cutoff and 2 * r >= cutoff  # LLaMA-Factory's "truncate both" branch
  (ex,) = data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=cutoff,
                                                                          en_cutoff_len=40))
  keep_r = int(cutoff * r / (p + r))
  assert ex.num_label_tokens == keep_r and len(ex.input_ids) == cutoff
  assert ex.labels[ex.prompt_len:].tolist() == full.labels[p:p + keep_r].tolist()
  assert ex.input_ids[ex.prompt_len:].tolist() == full.input_ids[p:p + keep_r].tolist()
  # The prompt keeps its head and its tail (end of user turn + generation prompt).
  tail_ids = full.input_ids[p - 3:p].tolist()
  assert ex.input_ids[ex.prompt_len - 3:ex.prompt_len].tolist() == tail_ids
  assert ex.input_ids[:10].tolist() == full.input_ids[:10].tolist()
  assert tokenizer.decode(ex.input_ids[:ex.prompt_len]).endswith(tail)
  assert ex.anchor == ex.prompt_len - 1 and (ex.labels[:ex.prompt_len] == -100).all()
  # The English prompt has its own budget, not the main sequence's.
  assert len(ex.en_input_ids) == 40 and ex.en_anchor == 39
  assert tokenizer.decode(ex.en_input_ids).endswith(tail)


def test_truncation_cuts_long_response_from_the_right(case, tmp_path):
  _, tokenizer, _, _, _ = case
  records = _records(tmp_path, [dict(GOOD, output="sit amet consectetur " * 60)])
  (full,) = _untruncated(tokenizer, records)
  cutoff = 3 * full.prompt_len  # short prompt: only the response is cut
  (ex,) = data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=cutoff))
  assert ex.input_ids.tolist() == full.input_ids[:cutoff].tolist()
  assert ex.prompt_len == full.prompt_len and ex.num_label_tokens == cutoff - full.prompt_len


def test_tail_wins_over_a_tiny_prompt_budget(case, tmp_path):
  _, tokenizer, _, _, tail = case
  records = _records(tmp_path, [{"instruction": "a b c " * 10, "instruction_en": "hi",
                                 "output": "d e f " * 200}])
  cutoff = 12
  (ex,) = data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=cutoff))
  assert len(ex.input_ids) <= cutoff and ex.num_label_tokens > 0
  assert tokenizer.decode(ex.input_ids[:ex.prompt_len]).endswith(tail)


def test_example_without_labels_is_excluded_and_reported(case, tmp_path, caplog):
  _, tokenizer, _, _, _ = case
  cutoff = 12
  rows = [dict(GOOD, output="Ok"), dict(GOOD, instruction="lorem ipsum " * 300,
                                        output="one two three four five six seven eight")]
  records = _records(tmp_path, rows)
  p_full, r_full = [(e.prompt_len, e.num_label_tokens) for e in _untruncated(tokenizer, records)][1]
  assert 2 * r_full >= cutoff and int(cutoff * r_full / (p_full + r_full)) == 0
  with caplog.at_level("WARNING"):
    examples = data.tokenize_records(records, tokenizer, data.TokenizeOptions(cutoff_len=cutoff))
  assert [e.source for e in examples] == [records[0].source]
  ok_ids = tokenizer("Ok", add_special_tokens=False)["input_ids"]
  assert examples[0].num_label_tokens == len(ok_ids) + 1
  assert "excluded 1 examples" in caplog.text and f"{records[1].source}" in caplog.text


def test_truncating_many_prompts_is_a_warning_with_the_count_and_the_key(smol_tokenizer, tmp_path, caplog):
  rows = [dict(GOOD, instruction="lorem ipsum dolor " * 40), GOOD, GOOD, GOOD]  # 1 of 4 cut: 25% > 2%
  with caplog.at_level("INFO"):
    data.tokenize_records(_records(tmp_path, rows), smol_tokenizer, data.TokenizeOptions(cutoff_len=64))
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any("truncated the prompt of 1 of 4 examples (25.0%) to data.cutoff_len=64; raise data.cutoff_len" in w
             for w in warnings), warnings
  caplog.clear()
  many = [GOOD] * 60 + [dict(GOOD, instruction="lorem ipsum dolor " * 40)]  # 1 of 61: an info line
  with caplog.at_level("INFO"):
    data.tokenize_records(_records(tmp_path, many, "many.jsonl"), smol_tokenizer, data.TokenizeOptions(cutoff_len=64))
  assert not [r for r in caplog.records if r.levelname == "WARNING"]
  assert "truncated the prompt of 1 of 61 examples" in caplog.text


def test_cutoff_must_exceed_the_generation_prompt(smol_tokenizer, tmp_path):
  with pytest.raises(ValueError, match="no room"):
    data.tokenize_records(_records(tmp_path, RECORDS), smol_tokenizer,
                          data.TokenizeOptions(cutoff_len=5))


def test_fallback_and_named_templates(llama3_tokenizer, tmp_path):
  records = _records(tmp_path, RECORDS[:1])
  no_template = _build_llama3_tokenizer()
  no_template.chat_template = None
  with pytest.raises(ValueError, match="no chat template"):
    data.chat_format(no_template, data.TokenizeOptions(fallback_template=None))
  # LLaMA-Factory's llama3 template writes what Meta's does for content without edge whitespace
  # (Meta's trims it; tests/test_templates.py compares with LLaMA-Factory itself).
  named = data.tokenize_records(records, no_template, data.TokenizeOptions(chat_template="llama3"))
  own = data.tokenize_records(records, llama3_tokenizer)
  assert named[0].input_ids.tolist() == own[0].input_ids.tolist()
  # The ChatML fallback on a vocabulary without ChatML tokens: its end of turn would be several
  # tokens, each of which would stop generation. That is an error, not a warning.
  with pytest.raises(ValueError, match="'<\\|im_end\\|>' is not a single token"):
    data.chat_format(no_template)


def test_default_system(smol_tokenizer, tmp_path):
  records = _records(tmp_path, RECORDS)
  examples = data.tokenize_records(records, smol_tokenizer,
                                   data.TokenizeOptions(default_system="Be terse."))
  assert examples[0].input_ids[:examples[0].prompt_len].tolist() == _expected_prompt(
      smol_tokenizer, RECORDS[0]["instruction"], "Be terse.")
  # A record's own system prompt wins over the default.
  assert examples[1].input_ids[:examples[1].prompt_len].tolist() == _expected_prompt(
      smol_tokenizer, RECORDS[1]["instruction"], RECORDS[1]["system"])


def test_infer_seqlen_matches_llama_factory():
  # Hand-computed cases of LLaMA-Factory 0.9.1's three branches.
  assert data.infer_seqlen(100, 10, 64) == (54, 10)  # short response: cut the prompt
  assert data.infer_seqlen(10, 100, 64) == (10, 54)  # short prompt: cut the response
  assert data.infer_seqlen(60, 40, 64) == (39, 25)  # both: int(64 * 40 / 100) = 25
  assert data.infer_seqlen(5, 5, 64) == (5, 5)


def test_options_from_config():
  import ml_collections  # a runtime requirement: a missing install must fail, not skip
  cfg = ml_collections.ConfigDict(dict(
      format="auto", split="train", subset="", entry="aya", tfds_data_dir="",
      skip_bad_records=True,
      columns=dict(prompt="q", prompt_en="q_en", response="a", query="", lang="lang", system=""),
      cutoff_len=512, en_cutoff_len=0, chat_template="", fallback_template="chatml",
      default_system="", end_of_turn=""))
  src = data.SourceOptions.from_config(cfg)
  assert src.entry == "aya" and src.subset is None and src.skip_bad_records
  assert src.columns == data.Columns(prompt="q", prompt_en="q_en", response="a", query=None,
                                     lang="lang", system=None)
  tok = data.TokenizeOptions.from_config(cfg)
  assert tok == data.TokenizeOptions(cutoff_len=512)
