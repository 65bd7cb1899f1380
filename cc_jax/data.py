"""CC-Tuning training data: read parallel SFT records, encode them with a chat template (templates.py).

Follows LLaMA-Factory 0.9.1 SFT semantics (docs/method.md §1). Batching lives in `batching.py`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import jax
import numpy as np

from cc_jax import templates

IGNORE_INDEX = -100  # label value that the loss skips (the PyTorch/LLaMA-Factory convention)
FORMATS = ("auto", "json", "jsonl", "parquet", "hf", "tfds", "dataset_info")


class BadRecordError(ValueError):
  """A source record that cannot be used; the message starts with its location (file:line)."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(frozen=True)
class Record:
  """One parallel SFT example (docs/method.md §1)."""
  prompt: str  # non-English instruction (with LLaMA-Factory's `query` appended, if any)
  prompt_en: str  # its English translation; may equal `prompt` for English records
  response: str  # the (non-English) response
  lang: str | None = None
  system: str | None = None
  source: str = ""  # "file:line N" or "file:record I" (0-based), for messages


@dataclasses.dataclass(frozen=True)
class Columns:
  """Field names of a source record. Optional fields may be absent; None disables them."""
  prompt: str = "instruction"
  prompt_en: str = "instruction_en"
  response: str = "output"
  # LLaMA-Factory's alpaca `query`: appended to the non-English prompt after a newline when
  # present and non-empty. The English prompt is `prompt_en` alone (there is no English query).
  query: str | None = "input"
  lang: str | None = "lang"
  system: str | None = "system"


@dataclasses.dataclass(frozen=True)
class SourceOptions:
  """How to read a record source.

  Attributes:
    format: one of FORMATS. "auto" infers json/jsonl/parquet from the file extension,
      "dataset_info" from the name `dataset_info.json`, "hf" from a directory; a dataset name
      (HF or TFDS) needs an explicit format.
    split: split of an HF/TFDS dataset.
    subset: HF dataset config name, or TFDS builder config.
    entry: entry name in a LLaMA-Factory dataset_info.json (optional if it has one entry).
    data_dir: TFDS data_dir holding prepared datasets.
    columns: field names.
    skip_bad_records: skip (and log) bad records instead of raising BadRecordError.
    require_english: the English field must be present (cc); sft runs never read it, and a
      record without one stands in its own prompt.
  """
  format: str = "auto"
  split: str = "train"
  subset: str | None = None
  entry: str | None = None
  data_dir: str | None = None
  columns: Columns = Columns()
  skip_bad_records: bool = False
  require_english: bool = True

  @classmethod
  def from_config(cls, cfg: Any, method: str = "cc") -> "SourceOptions":
    """Builds options from `config.data` (and `config.cc.method`); empty strings stand for None."""
    cols = cfg.columns
    return cls(format=cfg.format, split=cfg.split, subset=cfg.subset or None,
               entry=cfg.entry or None, data_dir=cfg.tfds_data_dir or None,
               skip_bad_records=cfg.skip_bad_records, require_english=method == "cc",
               columns=Columns(prompt=cols.prompt, prompt_en=cols.prompt_en, response=cols.response,
                               query=cols.query or None, lang=cols.lang or None,
                               system=cols.system or None))


class _Share:
  """Picks this process's records: ordinal i (in source order, bad ones included) goes to
  process i % count, so shares are balanced and disjoint without reading other shares."""

  def __init__(self, index: int, count: int):
    if not 0 <= index < count:
      raise ValueError(f"shard index {index} is not in [0, {count})")
    self.index, self.count, self._ordinal = index, count, -1

  def take(self) -> bool:
    self._ordinal += 1
    return self._ordinal % self.count == self.index


def _read_jsonl(path: pathlib.Path, share: _Share) -> Iterator[tuple[str, Any]]:
  # Binary mode, so that one undecodable line is one bad record rather than a failed file.
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip() or not share.take():
        continue
      where = f"{path}:line {lineno}"
      try:
        yield where, json.loads(line.decode("utf-8"))
      except UnicodeDecodeError as e:
        yield where, BadRecordError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})")
      except json.JSONDecodeError as e:
        yield where, BadRecordError(f"{where}: invalid JSON ({e.msg}, column {e.colno})")


_WHITESPACE = re.compile(r"\s*")


def _read_json(path: pathlib.Path, share: _Share) -> Iterator[tuple[str, Any]]:
  """A JSON array, decoded element by element so each record knows its line. A file whose
  text does not start with `[` is read as JSON lines, as `datasets`' json loader does."""
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise BadRecordError(f"{path}:line {line}: not valid UTF-8; the file cannot be read") from e
  pos = _WHITESPACE.match(text).end()
  if not text.startswith("[", pos):
    yield from _read_jsonl(path, share)
    return
  decoder, line, counted = json.JSONDecoder(), 1, 0
  pos = _WHITESPACE.match(text, pos + 1).end()
  while not text.startswith("]", pos):
    line += text.count("\n", counted, pos)
    counted = pos
    try:
      obj, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      # The array cannot be resynchronised after a syntax error, so this is never skippable.
      raise BadRecordError(f"{path}:line {e.lineno}: invalid JSON ({e.msg}); the file cannot be "
                           "read past this point") from e
    if share.take():
      yield f"{path}:line {line}", obj
    pos = _WHITESPACE.match(text, end).end()
    if text.startswith(",", pos):
      pos = _WHITESPACE.match(text, pos + 1).end()
    elif not text.startswith("]", pos):
      line += text.count("\n", counted, pos)
      raise BadRecordError(f"{path}:line {line}: invalid JSON (expected ',' or ']')")


def _read_parquet(path: pathlib.Path, share: _Share) -> Iterator[tuple[str, Any]]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top (optional dependency)
  for i, row in enumerate(pq.read_table(path).to_pylist()):
    if share.take():
      yield f"{path}:record {i}", row


def _read_rows(name: str, rows: Any, share: _Share) -> Iterator[tuple[str, Any]]:
  """Rows of a random-access dataset (HF `datasets`, TFDS data source); reads only the share."""
  for i in range(len(rows)):
    if share.take():
      yield f"{name}:record {i}", rows[i]


def _read_hf(source: str, split: str, subset: str | None, share: _Share,
             data_dir: str | None = None) -> Iterator[tuple[str, Any]]:
  import datasets  # pylint: disable=g-import-not-at-top (optional dependency)
  path = pathlib.Path(source)
  if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
    ds = datasets.load_from_disk(str(path))  # a directory written by save_to_disk
    if isinstance(ds, datasets.DatasetDict):
      ds = ds[split]
  else:
    ds = datasets.load_dataset(source, name=subset, split=split, data_dir=data_dir)
  return _read_rows(f"{source}[{split}]", ds, share)


def _read_tfds(source: str, options: SourceOptions, share: _Share) -> Iterator[tuple[str, Any]]:
  """A prepared TFDS dataset in array_record format, read with `as_data_source`, which needs
  no TensorFlow. `source` is a prepared version directory or a name (`name[/config][:version]`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top (optional dependency)
  if pathlib.Path(source).is_dir():
    builder = tfds.builder_from_directory(source)
  else:
    name = f"{source}/{options.subset}" if options.subset else source
    builder = tfds.builder(name, data_dir=options.data_dir)
  return _read_rows(f"tfds:{source}[{options.split}]", builder.as_data_source(split=options.split),
                    share)


_FILE_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
# LLaMA-Factory column names (dataset_info.json) -> Columns fields. "aux" is the authors' name
# for the English instruction.
_LF_COLUMNS = {"prompt": "prompt", "aux": "prompt_en", "response": "response", "query": "query",
               "system": "system", "lang": "lang"}
_LF_KEYS = {"file_name", "hf_hub_url", "script_url", "subset", "split", "folder", "formatting",
            "columns", "tags", "ranking", "load_from"}


def _read_files(path: pathlib.Path, share: _Share) -> Iterator[tuple[str, Any]]:
  files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
  for file in files:
    if file.suffix not in _FILE_READERS:
      raise ValueError(f"{file}: unsupported file type {file.suffix!r} (json, jsonl, parquet)")
    yield from _FILE_READERS[file.suffix](file, share)


def _dataset_info_entry(path: pathlib.Path, options: SourceOptions) -> tuple[str, dict[str, Any]]:
  info = json.loads(path.read_text(encoding="utf-8"))
  if options.entry is None and len(info) != 1:
    raise ValueError(f"{path}: has entries {sorted(info)}; set the entry to read")
  name = options.entry if options.entry is not None else next(iter(info))
  if name not in info:
    raise ValueError(f"{path}: no entry {name!r}; it has {sorted(info)}")
  attrs = info[name]
  # Refuse what would change the data silently (sampling, other formats, multi-turn).
  unsupported = set(attrs) - _LF_KEYS
  if attrs.get("formatting", "alpaca") != "alpaca" or attrs.get("ranking"):
    unsupported.add("formatting/ranking")
  unsupported |= {f"columns.{k}" for k in attrs.get("columns", {}) if k not in _LF_COLUMNS}
  if unsupported:
    raise NotImplementedError(f"{path}: entry {name!r} uses unsupported keys {sorted(unsupported)}")
  return name, attrs


def _read_dataset_info(path: pathlib.Path, options: SourceOptions,
                       share: _Share) -> tuple[Columns, Iterator[tuple[str, Any]]]:
  """An entry of a LLaMA-Factory dataset_info.json: its column mapping and its rows."""
  if path.is_dir():
    path = path / "dataset_info.json"
  name, attrs = _dataset_info_entry(path, options)
  mapped = {_LF_COLUMNS[k]: v for k, v in attrs.get("columns", {}).items()}
  columns = dataclasses.replace(options.columns, **mapped)
  split = attrs.get("split", "train")
  if "file_name" in attrs:
    return columns, _read_files(path.parent / attrs["file_name"], share)
  hub = attrs.get("hf_hub_url") or attrs.get("script_url")
  if hub is None:
    raise NotImplementedError(f"{path}: entry {name!r} has no file_name, hf_hub_url or script_url")
  if attrs.get("script_url") and (path.parent / hub).exists():
    hub = str(path.parent / hub)
  return columns, _read_hf(hub, split, attrs.get("subset"), share, data_dir=attrs.get("folder"))


def _infer_format(source: str, options: SourceOptions) -> str:
  if options.format not in FORMATS:
    raise ValueError(f"unknown data format {options.format!r}; expected one of {FORMATS}")
  if options.format != "auto":
    return options.format
  path = pathlib.Path(source)
  if path.name == "dataset_info.json" or (path.is_dir() and options.entry is not None):
    return "dataset_info"
  if path.suffix in _FILE_READERS:
    return path.suffix[1:]
  if path.is_dir():
    return "hf"
  raise ValueError(f"cannot infer the format of {source!r}; set it ('hf' or 'tfds' for a name)")


def _text(raw: Mapping[str, Any], key: str | None, where: str, required: bool) -> str | None:
  """A string field: bytes (TFDS) are decoded; a missing/null optional field gives None."""
  value = raw.get(key) if key is not None else None
  if value is None:
    if required:
      raise BadRecordError(f"{where}: missing field {key!r}")
    return None
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRecordError(f"{where}: field {key!r} is not valid UTF-8") from e
  if not isinstance(value, str):
    raise BadRecordError(f"{where}: field {key!r} is a {type(value).__name__}, expected a string")
  if not value.strip():
    if required:
      raise BadRecordError(f"{where}: field {key!r} is empty")
    return None
  return str(value)


def _to_record(raw: Any, where: str, columns: Columns, require_english: bool = True) -> Record:
  if isinstance(raw, BadRecordError):
    raise raw
  if not isinstance(raw, Mapping):
    raise BadRecordError(f"{where}: expected an object, got a {type(raw).__name__}")
  prompt = _text(raw, columns.prompt, where, required=True)
  query = _text(raw, columns.query, where, required=False)
  prompt = f"{prompt}\n{query}" if query else prompt
  return Record(
      prompt=prompt,
      prompt_en=_text(raw, columns.prompt_en, where, required=require_english) or prompt,
      # An empty response would train on the end token alone; treated as bad data.
      response=_text(raw, columns.response, where, required=True),
      lang=_text(raw, columns.lang, where, required=False),
      system=_text(raw, columns.system, where, required=False),
      source=where)


def load_records(source: str, options: SourceOptions = SourceOptions(), *,
                 shard_index: int | None = None, shard_count: int | None = None) -> list[Record]:
  """Reads this process's share of a parallel SFT source.

  Args:
    source: a .json (array or JSON lines) / .jsonl / .parquet file, a LLaMA-Factory
      dataset_info.json (or its directory, with `options.entry`), an HF dataset name or
      directory (`datasets.load_dataset` or `load_from_disk`), or a TFDS name / prepared
      directory (format "tfds").
    options: format, split, column names, bad-record policy.
    shard_index, shard_count: which share to read; default `jax.process_index()` of
      `jax.process_count()`. Record i (in source order) belongs to share i % shard_count.

  Returns:
    The records of the share, in source order.

  Raises:
    BadRecordError: naming the file and line (or record index) of the first bad record,
      unless `options.skip_bad_records`, which skips and logs each one.
  """
  share = _Share(jax.process_index() if shard_index is None else shard_index,
                 jax.process_count() if shard_count is None else shard_count)
  fmt, columns = _infer_format(source, options), options.columns
  if fmt == "dataset_info":
    columns, rows = _read_dataset_info(pathlib.Path(source), options, share)
  elif fmt == "hf":
    rows = _read_hf(source, options.split, options.subset, share)
  elif fmt == "tfds":
    rows = _read_tfds(source, options, share)
  else:
    rows = _FILE_READERS["." + fmt](pathlib.Path(source), share)
  records, bad = [], []
  for where, raw in rows:
    try:
      records.append(_to_record(raw, where, columns, options.require_english))
    except BadRecordError as e:
      if not options.skip_bad_records:
        raise
      bad.append(str(e))
  if bad:
    logging.warning("%s: skipped %d bad records:\n  %s", source, len(bad), "\n  ".join(bad))
  logging.info("%s: read %d records (share %d of %d)", source, len(records), share.index,
               share.count)
  if not records:
    raise ValueError(f"{source}: no usable records in share {share.index} of {share.count}")
  return records


# ---------------------------------------------------------------------------------------------
# Tokenization

TRUNCATIONS = ("keep_generation_prompt", "right")
_WARN_FRACTION = 0.02  # truncating more of the examples than this is a warning, not an info line


@dataclasses.dataclass(frozen=True)
class TokenizeOptions:
  """How records become token ids.

  Attributes:
    cutoff_len: most tokens of a non-English sequence (prompt + response + end token).
    en_cutoff_len: most tokens of an English prompt; None means `cutoff_len`.
    chat_template: a name in templates.TEMPLATES or Jinja text, overriding the tokenizer's.
    fallback_template: name in templates.TEMPLATES used when the tokenizer has no template;
      None: error.
    default_system: system prompt for records without one; None keeps the template's default.
    end_of_turn: Jinja templates only: the text closing the response; None detects it.
    anchor: "last_prompt_token" (cc_jax) or "authors" (the authors' template-marker rule).
    truncation: "keep_generation_prompt" cuts a long prompt's end of content but keeps the
      end of the user turn and the generation prompt, so the anchor survives; "right" cuts
      from the right as LLaMA-Factory does (the generation prompt may be cut away).
  """
  cutoff_len: int = 1024
  en_cutoff_len: int | None = None
  chat_template: str | None = None
  fallback_template: str | None = "chatml"
  default_system: str | None = None
  end_of_turn: str | None = None
  anchor: str = "last_prompt_token"
  truncation: str = "keep_generation_prompt"

  def __post_init__(self):
    if self.truncation not in TRUNCATIONS:
      raise ValueError(f"data.truncation={self.truncation!r}; expected one of {TRUNCATIONS}")
    if self.anchor not in templates.ANCHORS:
      raise ValueError(f"cc.anchor={self.anchor!r}; expected one of {templates.ANCHORS}")

  @classmethod
  def from_config(cls, cfg: Any, anchor: str = "last_prompt_token") -> "TokenizeOptions":
    """From `config.data` (and `config.cc.anchor`)."""
    return cls(cutoff_len=cfg.cutoff_len, en_cutoff_len=cfg.en_cutoff_len or None,
               chat_template=cfg.chat_template or None, fallback_template=cfg.fallback_template or None,
               default_system=cfg.default_system or None, end_of_turn=cfg.end_of_turn or None,
               anchor=anchor, truncation=cfg.get("truncation", "keep_generation_prompt"))


def chat_format(tokenizer: Any, options: TokenizeOptions = TokenizeOptions()) -> templates.PromptFormat:
  """The prompt format the options name (see cc_jax.templates)."""
  return templates.prompt_format(tokenizer, options.chat_template, options.fallback_template,
                                 options.default_system, options.end_of_turn)


def pad_token_id(tokenizer: Any) -> int:
  """The id used for padding: the tokenizer's pad token, else its eos token."""
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  if pad is None:
    raise ValueError("the tokenizer has neither a pad nor an eos token")
  return int(pad)


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
  """LLaMA-Factory 0.9.1's budget split: (kept prompt tokens, kept response tokens)."""
  if target_len * 2 < cutoff_len:  # short response: only the prompt is cut
    max_target_len = cutoff_len
  elif source_len * 2 < cutoff_len:  # short prompt: only the response is cut
    max_target_len = cutoff_len - source_len
  else:  # both long: split in proportion to their lengths
    max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
  new_target_len = min(max_target_len, target_len)
  new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
  return new_source_len, new_target_len


def cut_prompt(prompt_ids: Sequence[int], keep: int, tail: int) -> list[int]:
  """Keeps `keep` tokens of a prompt: its head and its last `tail` tokens (the end of the user
  turn and the generation prompt). This is LLaMA-Factory's right cut with the generation
  prompt put back, so the last prompt token (the anchor) is still the generation prompt's."""
  if keep >= len(prompt_ids):
    return list(prompt_ids)
  keep = max(keep, tail)
  return list(prompt_ids[:keep - tail]) + list(prompt_ids[len(prompt_ids) - tail:])


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """A tokenized record. Labels are aligned with input_ids (not shifted), as in HF/LLaMA-Factory:
  the loss predicts labels[t] from logits[t - 1]."""
  input_ids: np.ndarray  # (T,) int32: prompt, response, end of turn
  labels: np.ndarray  # (T,) int32: IGNORE_INDEX on the prompt, input_ids elsewhere
  prompt_len: int  # number of prompt tokens
  en_input_ids: np.ndarray  # (T_en,) int32: English prompt only
  source: str = ""
  lang: str | None = None
  anchor_index: int | None = None  # None: the last prompt token (see `anchor`)
  en_anchor_index: int | None = None

  @property
  def anchor(self) -> int:
    """Where the English vector goes (docs/method.md notation): the last prompt token, the
    token after which the answer starts, unless cc.anchor=authors chose another."""
    return self.prompt_len - 1 if self.anchor_index is None else self.anchor_index

  @property
  def en_anchor(self) -> int:
    return len(self.en_input_ids) - 1 if self.en_anchor_index is None else self.en_anchor_index

  @property
  def num_label_tokens(self) -> int:
    return len(self.input_ids) - self.prompt_len


def _make_example(record: Record, prompt: list[int], target: list[int], en: list[int],
                  rule: templates.AnchorRule | None) -> Example:
  ids = np.asarray(prompt + target, np.int32)
  labels = np.concatenate([np.full(len(prompt), IGNORE_INDEX, np.int32), ids[len(prompt):]])
  anchors = {}
  if rule is not None:
    anchors = dict(anchor_index=rule.find(prompt, record.source or "prompt"),
                   en_anchor_index=rule.find(en, f"{record.source or 'prompt'} (English)"))
  return Example(input_ids=ids, labels=labels, prompt_len=len(prompt), en_input_ids=np.asarray(en, np.int32),
                 source=record.source, lang=record.lang, **anchors)


def _truncate(prompt: templates.Prompt, keep: int, truncation: str) -> list[int]:
  if truncation == "right":
    return prompt.ids[:keep]
  return cut_prompt(prompt.ids, keep, prompt.tail)


def tokenize_records(records: Sequence[Record], tokenizer: Any,
                     options: TokenizeOptions = TokenizeOptions(),
                     fmt: templates.PromptFormat | None = None) -> list[Example]:
  """Tokenizes records as LLaMA-Factory SFT does, keeping the anchor through truncation.

  Prompt and response (+ end of turn) are encoded separately and concatenated, as
  LLaMA-Factory encodes template fragments (a named template encodes each of its fragments
  on its own too, see cc_jax.templates). The non-English sequence is cut to `cutoff_len`
  with `infer_seqlen`; the English prompt to `en_cutoff_len`. An example whose response is
  cut away entirely is excluded and logged with its source location. Cutting more than 2% of
  the prompts is a warning that names the key to raise.

  Args:
    records: from `load_records`.
    tokenizer: a `transformers` tokenizer.
    options: cutoffs, template choices, anchor rule.
    fmt: a prompt format; default `chat_format(tokenizer, options)`.

  Returns:
    One Example per kept record, in record order.
  """
  fmt = fmt or chat_format(tokenizer, options)
  rule = fmt.anchor_rule(options.anchor)
  en_cutoff = options.en_cutoff_len or options.cutoff_len
  systems = [r.system or options.default_system for r in records]
  prompts = fmt.encode([r.prompt for r in records], systems)
  en_prompts = fmt.encode([r.prompt_en for r in records], systems)
  min_tail = min(p.tail for p in prompts + en_prompts)
  if options.truncation == "keep_generation_prompt" and min(options.cutoff_len, en_cutoff) <= min_tail:
    raise ValueError(f"data.cutoff_len {options.cutoff_len} / data.en_cutoff_len {en_cutoff} leaves no room "
                     f"beyond the {min_tail}-token generation prompt")
  responses = tokenizer([r.response for r in records], add_special_tokens=False)["input_ids"]
  examples, empty, cut, en_cut = [], [], 0, 0
  for record, prompt, en, response in zip(records, prompts, en_prompts, responses):
    target = list(response) + list(fmt.end_ids)
    keep_prompt, keep_target = infer_seqlen(len(prompt.ids), len(target), options.cutoff_len)
    prompt_ids = prompt.ids
    if keep_prompt < len(prompt.ids):
      cut += 1
      prompt_ids = _truncate(prompt, keep_prompt, options.truncation)
      # Keeping the tail may exceed the prompt's share; the response gives way.
      keep_target = min(keep_target, options.cutoff_len - len(prompt_ids))
    en_ids = en.ids
    if len(en.ids) > en_cutoff:
      en_cut += 1
      en_ids = _truncate(en, en_cutoff, options.truncation)
    if keep_target <= 0:
      empty.append(record.source)
      continue
    examples.append(_make_example(record, list(prompt_ids), target[:keep_target], list(en_ids), rule))
  for count, what, key, limit in ((cut, "prompt", "data.cutoff_len", options.cutoff_len),
                                  (en_cut, "English prompt", "data.en_cutoff_len", en_cutoff)):
    if count:
      log = logging.warning if count > _WARN_FRACTION * len(records) else logging.info
      log("truncated the %s of %d of %d examples (%.1f%%) to %s=%d; raise %s to keep them whole", what, count,
          len(records), 100 * count / len(records), key, limit, key)
  if empty:
    logging.warning("excluded %d examples left with no label tokens by cutoff_len %d:\n  %s",
                    len(empty), options.cutoff_len, "\n  ".join(empty))
  if not examples:
    raise ValueError("no example has label tokens left")
  return examples
