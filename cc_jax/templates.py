"""Chat prompt formats: how a (system, user prompt) pair becomes token ids, which id closes a
response, and where the anchor is (docs/method.md §1, §7).

Two kinds of format:
  * a named template of LLaMA-Factory 0.9.1 (`TEMPLATES`: llama3, qwen, mistral, llama2,
    chatml), encoded as LLaMA-Factory encodes it: each fragment (prefix, system turn, user
    turn, response, end token) is tokenized on its own and the ids are concatenated. The
    paper's runs used these templates on base models.
  * the tokenizer's own Jinja chat template (or Jinja text), rendered whole with
    `apply_chat_template` and tokenized once, as transformers does.

Both give one end-of-turn id (a template whose end of turn is not one token is an error), the
ids that stop generation, and the number of trailing prompt tokens that spell the generation
prompt (truncation keeps them, so the anchor survives a cut).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging

CONTENT = "{{content}}"


class _Special:
  """A slot that stands for a token id, not text (LLaMA-Factory's {"bos_token"} sets), so no
  user text can pass for it."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return self.name


BOS, EOS = _Special("<bos>"), _Special("<eos>")  # the tokenizer's bos id, the template's end-of-turn id


@dataclasses.dataclass(frozen=True)
class Template:
  """One of LLaMA-Factory 0.9.1's templates (llamafactory/data/template.py), for one turn.

  Slots are text with a CONTENT placeholder, or BOS / EOS.

  Attributes:
    name: the template's name in LLaMA-Factory.
    user: slots of the user turn, which also writes the generation prompt.
    system: slots of the system turn (LLaMA-Factory's default formatter writes the text bare).
    prefix: slots written once before everything.
    separator: written between an assistant turn and the next user turn (multi-turn only).
    default_system: system prompt of records that have none.
    stop_words: with `replace_eos`, the first replaces the tokenizer's eos (it closes every
      response); every one stops generation.
    replace_eos: see stop_words.
    system_in_user: Llama 2's layout: the system turn is written inside the first user turn.
  """
  name: str
  user: tuple[str | _Special, ...]
  system: tuple[str | _Special, ...] = (CONTENT,)
  prefix: tuple[str | _Special, ...] = ()
  separator: tuple[str | _Special, ...] = ()
  default_system: str = ""
  stop_words: tuple[str, ...] = ()
  replace_eos: bool = False
  system_in_user: bool = False


_CHATML_USER = ("<|im_start|>user\n" + CONTENT + "<|im_end|>\n<|im_start|>assistant\n",)
_CHATML_SYSTEM = ("<|im_start|>system\n" + CONTENT + "<|im_end|>\n",)
TEMPLATES = {t.name: t for t in (
    Template("llama3", user=("<|start_header_id|>user<|end_header_id|>\n\n" + CONTENT + "<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n",),
             system=("<|start_header_id|>system<|end_header_id|>\n\n" + CONTENT + "<|eot_id|>",),
             prefix=(BOS,), stop_words=("<|eot_id|>",), replace_eos=True),
    Template("qwen", user=_CHATML_USER, system=_CHATML_SYSTEM, separator=("\n",),
             default_system="You are a helpful assistant.", stop_words=("<|im_end|>",), replace_eos=True),
    Template("chatml", user=_CHATML_USER, system=_CHATML_SYSTEM, separator=("\n",),
             stop_words=("<|im_end|>", "<|im_start|>"), replace_eos=True),
    Template("mistral", user=("[INST] " + CONTENT + " [/INST]",), prefix=(BOS,)),
    Template("llama2", user=(BOS, "[INST] " + CONTENT + " [/INST]"),
             system=("<<SYS>>\n" + CONTENT + "\n<</SYS>>\n\n",), system_in_user=True),
)}

# The authors' anchor rules (their code finds the anchor by template markers): the token
# `offset` away from the n-th occurrence of `marker`. llama3: after the second end of header
# (the last prompt token, without a system turn); qwen: after the third <|im_start|> (the role
# word "assistant", not the final newline); mistral: before the first [/INST].
ANCHOR_RULES = {"llama3": ("<|end_header_id|>", 2, 1), "qwen": ("<|im_start|>", 3, 1),
                "mistral": ("[/INST]", 1, -1)}
ANCHORS = ("last_prompt_token", "authors")


@dataclasses.dataclass(frozen=True)
class AnchorRule:
  """The authors' rule for one tokenizer: marker id, occurrence, offset."""
  family: str
  marker: str
  marker_id: int
  occurrence: int
  offset: int

  def find(self, prompt_ids: Sequence[int], where: str = "prompt") -> int:
    """The anchor's index in `prompt_ids`; raises (naming `where`) when the marker is missing.
    (The authors' code silently took the last position then.)"""
    hits = [i for i, t in enumerate(prompt_ids) if t == self.marker_id]
    if len(hits) < self.occurrence:
      raise ValueError(f"{where}: cc.anchor=authors ({self.family} rule) needs {self.occurrence} "
                       f"{self.marker!r} tokens in the prompt, found {len(hits)}")
    index = hits[self.occurrence - 1] + self.offset
    if not 0 <= index < len(prompt_ids):
      raise ValueError(f"{where}: cc.anchor=authors ({self.family} rule) points outside the prompt")
    return index


def _single_token(tokenizer: Any, text: str) -> int | None:
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  return ids[0] if len(ids) == 1 else None


def _tokenizer_name(tokenizer: Any) -> str:
  return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An encoded prompt: ids (ending with the generation prompt) and how many trailing ids
  spell the generation prompt (truncation keeps them)."""
  ids: list[int]
  tail: int


class PromptFormat:
  """What both kinds of format provide (see the module docstring).

  Attributes:
    name: the template's name, or "tokenizer" / "jinja".
    tokenizer: the transformers tokenizer.
    end_id: the id that closes every response (a single token).
    stop_ids: ids that end generation: the end id, further stop words, the tokenizer's eos.
    anchor_family: which of ANCHOR_RULES the authors' code would apply, or None.
  """
  name: str
  tokenizer: Any
  end_id: int
  stop_ids: tuple[int, ...]
  anchor_family: str | None

  @property
  def end_ids(self) -> tuple[int, ...]:
    return (self.end_id,)

  def encode(self, prompts: Sequence[str], systems: Sequence[str | None] | None = None) -> list[Prompt]:
    raise NotImplementedError

  def render(self, prompts: Sequence[str], systems: Sequence[str | None] | None = None) -> list[str]:
    """The prompts as text, special tokens (BOS too) written out."""
    raise NotImplementedError

  def jinja(self) -> str | None:
    """A Jinja chat template that writes what `encode` encodes (for exported tokenizers), or
    None when it is the tokenizer's own."""
    raise NotImplementedError

  def encode_ids(self, prompts: Sequence[str], systems: Sequence[str | None] | None = None) -> list[list[int]]:
    return [p.ids for p in self.encode(prompts, systems)]

  def anchor_rule(self, anchor: str) -> AnchorRule | None:
    """None for the last prompt token (cc_jax's anchor), else the authors' rule (cc.anchor)."""
    if anchor not in ANCHORS:
      raise ValueError(f"cc.anchor={anchor!r}; expected one of {ANCHORS}")
    if anchor == "last_prompt_token":
      return None
    if self.anchor_family is None:
      raise ValueError(f"cc.anchor=authors: the authors' code has no anchor rule for the {self.name!r} "
                       f"template (rules exist for {sorted(ANCHOR_RULES)}); use cc.anchor=last_prompt_token")
    marker, occurrence, offset = ANCHOR_RULES[self.anchor_family]
    marker_id = _single_token(self.tokenizer, marker)
    if marker_id is None:
      raise ValueError(f"cc.anchor=authors: {marker!r} is not one token of {_tokenizer_name(self.tokenizer)}")
    return AnchorRule(self.anchor_family, marker, marker_id, occurrence, offset)

  def _systems(self, prompts, systems, default: str | None) -> list[str | None]:
    systems = list(systems) if systems is not None else [None] * len(prompts)
    if len(systems) != len(prompts):
      raise ValueError(f"{len(prompts)} prompts but {len(systems)} system prompts")
    return [s or default for s in systems]


def _tail_count(tokenizer: Any, head_text: str, ids: Sequence[int]) -> int:
  """Trailing ids of `ids` past their common prefix with the tokens of `head_text` (the text
  before the generation prompt), so a token straddling the border counts as tail."""
  head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
  common = 0
  for a, b in zip(ids, head):
    if a != b:
      break
    common += 1
  return len(ids) - common


class TemplateFormat(PromptFormat):
  """A named LLaMA-Factory template, encoded fragment by fragment as LLaMA-Factory does."""

  def __init__(self, template: Template, tokenizer: Any, default_system: str | None = None):
    self.template, self.tokenizer, self.name = template, tokenizer, template.name
    self.default_system = default_system if default_system is not None else template.default_system
    where = f"the {template.name!r} template with tokenizer {_tokenizer_name(tokenizer)}"
    if template.replace_eos:
      self.end_id = _single_token(tokenizer, template.stop_words[0])
      if self.end_id is None:
        raise ValueError(f"{where}: its end of turn {template.stop_words[0]!r} is not a single token of this "
                         "vocabulary; choose the template of the model's family (data.chat_template)")
    else:
      if tokenizer.eos_token_id is None:
        raise ValueError(f"{where}: the template closes responses with the eos token, and there is none")
      self.end_id = tokenizer.eos_token_id
    stops = [self.end_id] + [_single_token(tokenizer, w) for w in template.stop_words[1:]]
    self.stop_ids = tuple(dict.fromkeys(s for s in stops + [tokenizer.eos_token_id] if s is not None))
    self.anchor_family = {"llama3": "llama3", "qwen": "qwen", "chatml": "qwen", "mistral": "mistral"}.get(template.name)

  def _ids(self, element: str | _Special) -> list[int]:
    """LLaMA-Factory's _convert_elements_to_ids for one slot (no bos token: nothing)."""
    if element is BOS:
      return [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
    if element is EOS:
      return [self.end_id]
    return self.tokenizer.encode(element, add_special_tokens=False) if element else []

  def _elements(self, prompt: str, system: str | None) -> tuple[list[str | _Special], str]:
    """The slots of one prompt, filled, and the user turn's content."""
    t = self.template
    fill = lambda slots, content: [s if isinstance(s, _Special) else s.replace(CONTENT, content, 1) for s in slots]
    elements = list(t.prefix)
    if t.system_in_user:
      prompt = (fill(t.system, system)[0] if system else "") + prompt
    elif system:
      elements += fill(t.system, system)
    return elements + fill(t.user, prompt), prompt

  def encode(self, prompts, systems=None) -> list[Prompt]:
    user_slot = self.template.user[-1]  # holds the content, then the generation prompt
    before_content = user_slot[:user_slot.index(CONTENT)]
    out = []
    for prompt, system in zip(prompts, self._systems(prompts, systems, self.default_system)):
      elements, content = self._elements(prompt, system)
      ids = [i for e in elements for i in self._ids(e)]
      out.append(Prompt(ids, _tail_count(self.tokenizer, before_content + content, self._ids(elements[-1]))))
    return out

  def render(self, prompts, systems=None) -> list[str]:
    tok = self.tokenizer
    text = {BOS: tok.bos_token or "", EOS: tok.convert_ids_to_tokens(self.end_id)}
    return ["".join(text[e] if isinstance(e, _Special) else e for e in self._elements(p, s)[0])
            for p, s in zip(prompts, self._systems(prompts, systems, self.default_system))]

  def jinja(self) -> str:
    return template_jinja(self.template, self.tokenizer)


def template_jinja(template: Template, tokenizer: Any) -> str:
  """LLaMA-Factory 0.9.1's `_get_jinja_template` for `template`: the Jinja text that renders
  what the template encodes, multi-turn, for exported tokenizers."""
  end_text = tokenizer.convert_ids_to_tokens(TemplateFormat(template, tokenizer).end_id)

  def expr(slots, placeholder="content") -> str:
    items = []
    for slot in slots:
      if slot is BOS:
        if tokenizer.bos_token_id is not None:
          items.append("'" + _escape(tokenizer.bos_token) + "'")
      elif slot is EOS:
        items.append("'" + _escape(end_text) + "'")
      else:
        before, found, after = slot.partition(CONTENT)
        items += (["'" + _escape(before) + "'"] if before else []) + ([placeholder] if found else []) + (
            ["'" + _escape(after) + "'"] if after else [])
    return " + ".join(items)

  out = ""
  if (prefix := expr(template.prefix)):
    out += "{{ " + prefix + " }}"
  if template.default_system:
    out += "{% set system_message = '" + _escape(template.default_system) + "' %}"
  out += ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}")
  system = expr(template.system, placeholder="system_message")
  if not template.system_in_user:
    out += "{% if system_message is defined %}{{ " + system + " }}{% endif %}"
  out += "{% for message in loop_messages %}{% set content = message['content'] %}"
  if template.system_in_user:
    out += ("{% if loop.index0 == 0 and system_message is defined %}{% set content = " + system
            + " + message['content'] %}{% endif %}")
  out += "{% if message['role'] == 'user' %}{{ " + expr(template.user) + " }}"
  out += "{% elif message['role'] == 'assistant' %}{{ " + expr((CONTENT, EOS) + template.separator) + " }}"
  return out + "{% endif %}{% endfor %}"


def _escape(text: str) -> str:
  return text.replace("'", r"\'")


# Stands in for message content when probing what a Jinja template writes around it.
_SENTINEL = "CCJAXSENTINEL7f3a"


class JinjaFormat(PromptFormat):
  """The tokenizer's own chat template (template=None) or Jinja text: each prompt is rendered
  whole and tokenized once without added special tokens, so the only BOS is the template's."""

  def __init__(self, tokenizer: Any, template: str | None, default_system: str | None = None,
               end_of_turn: str | None = None):
    self.tokenizer, self.template, self.default_system = tokenizer, template, default_system
    self.name = "tokenizer" if template is None else "jinja"
    user_turn = [{"role": "user", "content": _SENTINEL}]
    self.prompt_tail = _after_sentinel(self._render([user_turn], True)[0])
    if end_of_turn is None:
      # The text after a reply, less whitespace (ChatML "<|im_end|>\n" -> "<|im_end|>"): as in
      # LLaMA-Factory, a turn ends with its stop word; the newline belongs to the next turn.
      reply = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]
      end_of_turn = _after_sentinel(self._render([reply], False)[0]).strip() or tokenizer.eos_token
    if not end_of_turn:
      raise ValueError("cannot find the end-of-turn text: the template writes nothing after a reply and the "
                       f"tokenizer {_tokenizer_name(tokenizer)} has no eos token; set data.end_of_turn")
    self.end_id = _single_token(tokenizer, end_of_turn)
    if self.end_id is None:
      raise ValueError(f"the {self.name} chat template's end of turn {end_of_turn!r} is not a single token of "
                       f"tokenizer {_tokenizer_name(tokenizer)}: each of its tokens would stop generation. Use a "
                       "template of the model's family (data.chat_template) or set data.end_of_turn")
    self.stop_ids = tuple(dict.fromkeys(i for i in (self.end_id, tokenizer.eos_token_id) if i is not None))
    markers = {"<|im_end|>": "qwen", "<|eot_id|>": "llama3"}
    self.anchor_family = markers.get(end_of_turn) or (
        "mistral" if _single_token(tokenizer, "[/INST]") is not None and "[/INST]" in self.prompt_tail else None)
    logging.info("chat format: end of turn %r (%d), prompt tail %r", end_of_turn, self.end_id, self.prompt_tail)

  def _render(self, conversations, add_generation_prompt: bool) -> list[str]:
    return self.tokenizer.apply_chat_template(conversations, chat_template=self.template, tokenize=False,
                                              add_generation_prompt=add_generation_prompt)

  def render(self, prompts, systems=None) -> list[str]:
    conversations = [([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": p}]
                     for p, s in zip(prompts, self._systems(prompts, systems, self.default_system))]
    texts = self._render(conversations, True)
    for text in texts:
      if not text.endswith(self.prompt_tail):
        raise ValueError(f"rendered prompt does not end with the generation prompt {self.prompt_tail!r}: "
                         f"{text[-200:]!r}")
    return texts

  def encode(self, prompts, systems=None) -> list[Prompt]:
    texts = self.render(prompts, systems)
    ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [Prompt(list(i), _tail_count(self.tokenizer, t[:len(t) - len(self.prompt_tail)], i))
            for t, i in zip(texts, ids)]

  def jinja(self) -> str | None:
    return self.template


def _after_sentinel(text: str) -> str:
  return text[text.rindex(_SENTINEL) + len(_SENTINEL):]


def prompt_format(tokenizer: Any, chat_template: str | None = None, fallback_template: str | None = "chatml",
                  default_system: str | None = None, end_of_turn: str | None = None) -> PromptFormat:
  """The prompt format a run uses.

  Args:
    tokenizer: a transformers tokenizer.
    chat_template: a name in TEMPLATES, Jinja text, or None for the tokenizer's own template.
    fallback_template: name used when chat_template is None and the tokenizer has none.
    default_system: system prompt for records without one; None keeps the template's default.
    end_of_turn: Jinja formats only: the text that closes a response, when not detectable.
  """
  name = chat_template
  if name is None:
    if tokenizer.chat_template:
      return JinjaFormat(tokenizer, None, default_system, end_of_turn)
    if fallback_template is None:
      raise ValueError(f"the tokenizer {_tokenizer_name(tokenizer)} has no chat template and "
                       "data.fallback_template is empty; set data.chat_template")
    logging.warning("tokenizer has no chat template; using the %r template", fallback_template)
    name = fallback_template
  if name in TEMPLATES:
    if end_of_turn is not None:
      raise ValueError(f"data.end_of_turn={end_of_turn!r}: the named template {name!r} fixes its own end of turn")
    return TemplateFormat(TEMPLATES[name], tokenizer, default_system)
  if "{{" in name or "{%" in name:
    return JinjaFormat(tokenizer, name, default_system, end_of_turn)
  raise ValueError(f"unknown chat template {name!r}; named templates: {sorted(TEMPLATES)} (or Jinja text)")
