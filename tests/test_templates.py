"""cc_jax's named templates against LLaMA-Factory 0.9.1 itself, on the real tokenizers of the
paper's model families (tests/real_tokenizers.py): token ids, label masks, English prompts,
anchors (both rules), truncation and the exported Jinja template."""

import pytest
import transformers

from cc_jax import data, templates
from tests import lf_reference, real_tokenizers

# Template -> the real tokenizer of its family.
FAMILIES = {"llama3": "llama3", "qwen": "qwen2", "mistral": "mistral", "llama2": "llama2", "chatml": "qwen2"}

# Edge whitespace, several lines, non-Latin scripts, with and without a system prompt.
RECORDS = [
    data.Record(prompt="  Привет!\nКак дела?  ", prompt_en="Hi!\nHow are you? ", response=" Хорошо, спасибо.\n",
                source="r0"),
    data.Record(prompt="写一首关于春天的诗\n\n要求：四句", prompt_en="Write a poem about spring\n\nFour lines",
                response="春风吹绿了柳树。\n燕子归来。", source="r1"),
    data.Record(prompt="\tमुझे एक चुटकुला सुनाओ", prompt_en="Tell me a joke", response="ठीक है! ",
                system="You are funny.", source="r2"),
    data.Record(prompt="ترجم: صباح الخير\n", prompt_en="Translate: good morning\n", response="Good morning",
                system=" Be brief.\n", source="r3"),
    data.Record(prompt="Lorem ipsum\n  - item one\n  - item two\n\n", prompt_en="List two items",
                response="  - one\n  - two", source="r4"),
    data.Record(prompt="Ποια είναι η πρωτεύουσα της Ελλάδας;", prompt_en="What is the capital of Greece?",
                response="Η Αθήνα.", source="r5"),
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
  """(template name, a tokenizer for cc_jax, a fresh tokenizer for LLaMA-Factory, which edits its eos)."""
  name = request.param
  directory = real_tokenizers.tokenizer_dir(FAMILIES[name])
  load = lambda: transformers.AutoTokenizer.from_pretrained(str(directory))
  return name, load(), load()


def lf_english_prompt(lf_tokenizer, name, record):
  """LLaMA-Factory's encoding of the English prompt alone (the English pass's input)."""
  template = lf_reference.template_module().TEMPLATES[name]
  messages = [{"role": "user", "content": record.prompt_en}, {"role": "assistant", "content": ""}]
  return template.encode_oneturn(lf_tokenizer, messages, record.system)[0]


def test_ids_labels_and_english_prompts_equal_llama_factory(family):
  name, tokenizer, lf_tokenizer = family
  examples = data.tokenize_records(RECORDS, tokenizer, data.TokenizeOptions(cutoff_len=4096, chat_template=name))
  for record, ex in zip(RECORDS, examples):
    ids, labels = lf_reference.encode(lf_tokenizer, name, record.prompt, record.response, record.system, 4096)
    assert ex.input_ids.tolist() == ids, record.source
    assert ex.labels.tolist() == labels, record.source
    assert ex.en_input_ids.tolist() == lf_english_prompt(lf_tokenizer, name, record), record.source
    # The anchor (cc_jax's rule) is the last prompt token: the last label LLaMA-Factory ignores.
    assert ex.anchor == max(i for i, label in enumerate(labels) if label == lf_reference.IGNORE_INDEX)
  # One BOS at most, first (a doubled BOS is a known pitfall of other trainers).
  bos = tokenizer.bos_token_id
  if bos is not None:
    assert all((ex.input_ids == bos).sum() == 1 and ex.input_ids[0] == bos for ex in examples)


@pytest.mark.parametrize("cutoff_len", [24, 40])
def test_right_truncation_equals_llama_factory(family, cutoff_len):
  """data.truncation=right is LLaMA-Factory's cut (infer_seqlen, then both parts from the right)."""
  name, tokenizer, lf_tokenizer = family
  options = data.TokenizeOptions(cutoff_len=cutoff_len, chat_template=name, truncation="right")
  long = [data.Record(prompt=r.prompt * 6, prompt_en=r.prompt_en, response=r.response * 6, system=r.system,
                      source=r.source) for r in RECORDS]
  examples = data.tokenize_records(long, tokenizer, options)
  for record, ex in zip(long, examples):
    ids, labels = lf_reference.encode(lf_tokenizer, name, record.prompt, record.response, record.system, cutoff_len)
    assert (ex.input_ids.tolist(), ex.labels.tolist()) == (ids, labels), record.source


def test_end_of_turn_and_stop_ids(family):
  name, tokenizer, _ = family
  fmt = templates.prompt_format(tokenizer, name)
  end = {"llama3": "<|eot_id|>", "qwen": "<|im_end|>", "chatml": "<|im_end|>"}.get(name, tokenizer.eos_token)
  assert fmt.end_ids == (tokenizer.convert_tokens_to_ids(end),)
  assert fmt.end_id in fmt.stop_ids and tokenizer.eos_token_id in fmt.stop_ids
  if name == "chatml":  # its second stop word
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in fmt.stop_ids


def test_exported_jinja_equals_llama_factory_and_renders_the_encoded_prompt(family):
  name, tokenizer, lf_tokenizer = family
  lf = lf_reference.template_module()
  lf_template = lf_reference.fix_tokenizer(lf_tokenizer, name)
  fmt = templates.prompt_format(tokenizer, name)
  assert fmt.jinja() == lf._get_jinja_template(lf_template, lf_tokenizer)  # pylint: disable=protected-access
  for record in RECORDS:
    messages = ([{"role": "system", "content": record.system}] if record.system else []) + [
        {"role": "user", "content": record.prompt}]
    text = tokenizer.apply_chat_template(messages, chat_template=fmt.jinja(), tokenize=False)
    assert text == fmt.render([record.prompt], [record.system])[0]


# The authors' marker rules, checked by what the anchor token is.
def _authors_anchor_ok(name, tokenizer, ids, anchor):
  token = lambda i: tokenizer.convert_ids_to_tokens(ids[i])
  if name == "llama3":  # the token after the second end of header (no system turn here)
    return token(anchor - 1) == "<|end_header_id|>" and [token(i) for i in range(anchor)].count("<|end_header_id|>") == 2
  if name in ("qwen", "chatml"):  # the role word after the third <|im_start|>
    return tokenizer.decode([ids[anchor]]) == "assistant" and token(anchor - 1) == "<|im_start|>"
  return token(anchor + 1) == "[/INST]" and "[/INST]" not in [token(i) for i in range(anchor)]  # mistral


def test_authors_anchor_rule(family):
  name, tokenizer, _ = family
  records = [r for r in RECORDS if r.system is None] if name == "llama3" else RECORDS
  if name == "chatml":  # no default system: the rule needs a third <|im_start|>
    records = [r for r in RECORDS if r.system]
  options = data.TokenizeOptions(cutoff_len=4096, chat_template=name, anchor="authors")
  if name == "llama2":
    with pytest.raises(ValueError, match="no anchor rule for the 'llama2' template"):
      data.tokenize_records(records, tokenizer, options)
    return
  examples = data.tokenize_records(records, tokenizer, options)
  for ex in examples:
    assert _authors_anchor_ok(name, tokenizer, ex.input_ids.tolist(), ex.anchor), ex.source
    assert _authors_anchor_ok(name, tokenizer, ex.en_input_ids.tolist(), ex.en_anchor), ex.source
    assert ex.anchor < ex.prompt_len
  offset = {"llama3": 0, "qwen": 1, "chatml": 1, "mistral": 1}[name]
  assert all(ex.prompt_len - 1 - ex.anchor == offset for ex in examples)


def test_authors_rule_without_its_marker_is_an_error(family):
  name, tokenizer, _ = family
  if name != "chatml":
    return
  with pytest.raises(ValueError, match=r"r0: cc.anchor=authors \(qwen rule\) needs 3 '<\|im_start\|>'"):
    data.tokenize_records(RECORDS[:1], tokenizer,
                          data.TokenizeOptions(chat_template="chatml", anchor="authors"))


@pytest.mark.parametrize("name,family_of", [("llama3", "mistral"), ("qwen", "llama2"), ("chatml", "llama3")])
def test_an_end_of_turn_that_is_not_one_token_is_an_error(name, family_of):
  tokenizer = real_tokenizers.load(family_of)
  with pytest.raises(ValueError, match=rf"the '{name}' template with tokenizer .*is not a single token"):
    templates.prompt_format(tokenizer, name)
  # The ChatML fallback for a tokenizer without a chat template fails the same way.
  if name == "chatml":
    with pytest.raises(ValueError, match="not a single token"):
      data.chat_format(tokenizer)
