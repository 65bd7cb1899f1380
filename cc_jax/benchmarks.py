"""The paper's six evaluation benchmarks (docs/method.md §5) as uniform `EvalExample` lists.

Sources: local files in the authors' layout (this module), or Hugging Face `datasets` (hub rows
mapped to the authors' prompt style: `benchmarks_hub.py`). Scoring lives in `metrics.py` and
`choice.py`; this module only carries its data.

Local layout. `root/<Benchmark>/` holds, per language code `<lang>`, two parallel files with
one JSON value per line (line i of one file belongs to line i of the other):

  * instructions: one object per line, `{"instruction": "<prompt text>"}`. For choice tasks
    the object may also hold `"options"` and `"option_labels"` (lists of strings); without
    them the options are parsed from the instruction text (see `parse_options`).
  * answers: one JSON string per line (for choice tasks a label such as "2" or "B"; "(B)"
    and "B." are read as "B"), or for MKQA a list of acceptable strings (a bare string is
    read as a one-item list).

Three naming conventions are accepted, tried in this order (the first whose instruction file
exists is used, and its answer file must then exist too):

  1. `<lang>.jsonl` + `<lang>.answers.jsonl`          (cc_jax's own; `write_local` writes it)
  2. `split_sample/<lang>.json` + `ans_sample/<lang>.json`   (the authors' sampled files)
  3. `split/<lang>.json` + `ans/<lang>.json`          (the authors' full files: XQuAD, XStoryCloze)

`<Benchmark>` is matched case-insensitively, ignoring '_', '-' and spaces ("xstory_cloze"
finds "XStoryCloze"). Blank lines are allowed only at the end of a file.

The parallel English prompt of an item (the oracle mode's input) comes from:
  * XLSum: `split_sample_en/<lang>.json` (or `split_en/<lang>.json`, or cc_jax's
    `<lang>.english.jsonl`), line by line: the English version of the same articles. XLSum's
    `en` file is a different set of articles, so it is never used as the parallel English.
  * the other five: line i of the benchmark's `en` instruction file, for line i of any
    language. Their sets are translations of one English set, item for item (XNLI, XQuAD,
    XStoryCloze, MMMLU, MKQA).
  * the hub: the English row of the same index for those five (MMMLU's English is MMLU's test
    split, which openai/MMMLU translates row for row); none for XLSum.
An item without a parallel English prompt is left out of the oracle mode, with a warning.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

from cc_jax import files

# ---------------------------------------------------------------------------------------------
# The paper's benchmarks (docs/method.md §5 table, and the authors' `langs_all`)

BENCHMARKS = ("XNLI", "XStoryCloze", "MMMLU", "XQuAD", "MKQA", "XLSum")
LANGUAGES = {
    "XNLI": ("en", "ar", "el", "hi", "ru", "sw", "th", "tr", "ur", "zh"),
    "XStoryCloze": ("ar", "en", "es", "eu", "hi", "id", "ru", "sw", "te", "zh"),
    "MMMLU": ("en", "ar", "bn", "es", "hi", "id", "ko", "pt", "sw", "yo"),
    "XQuAD": ("ar", "de", "el", "en", "hi", "ru", "th", "tr", "vi", "zh"),
    "MKQA": ("en", "ar", "de", "ja", "ko", "pt", "ru", "tr", "vi", "zh"),
    "XLSum": ("en", "ar", "fr", "hi", "id", "ru", "sw", "tr", "ur", "vi"),
}
KINDS = ("choice", "qa", "summary")
KIND = {"XNLI": "choice", "XStoryCloze": "choice", "MMMLU": "choice",
        "XQuAD": "qa", "MKQA": "qa", "XLSum": "summary"}
# Labels the prompts number their options with; a choice task's gold is one of them.
OPTION_LABELS = {"XNLI": ("1", "2", "3"), "XStoryCloze": ("1", "2"),
                 "MMMLU": ("A", "B", "C", "D")}
# The score each benchmark is reported by (docs/method.md §5); `report.py` uses these names
# when the score dicts hold them. XQuAD/MKQA "accuracy": a gold answer is found in the output.
PRIMARY_METRIC = {"XNLI": "accuracy", "XStoryCloze": "accuracy", "MMMLU": "accuracy",
                  "XQuAD": "accuracy", "MKQA": "accuracy", "XLSum": "rougeL"}

# (instruction file, answer file) patterns, in lookup order; see the module docstring.
LAYOUTS = (("{lang}.jsonl", "{lang}.answers.jsonl"),
           ("split_sample/{lang}.json", "ans_sample/{lang}.json"),
           ("split/{lang}.json", "ans/{lang}.json"))
# XLSum's parallel English files, per layout above (see the module docstring).
ENGLISH_LAYOUTS = ("{lang}.english.jsonl", "split_sample_en/{lang}.json", "split_en/{lang}.json")
OWN_ENGLISH = ("XLSum",)  # benchmarks whose `en` file is not the other languages' parallel

_ALIASES = {re.sub(r"[\s_-]", "", b.lower()): b for b in BENCHMARKS}


class BenchmarkDataError(ValueError):
  """A benchmark file that cannot be used; the message starts with its location (file:line)."""


def canonical_benchmark(name: str) -> str:
  """Returns the canonical spelling of a benchmark name ("xstory_cloze" -> "XStoryCloze")."""
  key = re.sub(r"[\s_-]", "", str(name).lower())
  if key not in _ALIASES:
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
  return _ALIASES[key]


def check_language(benchmark: str, lang: str) -> None:
  """Raises ValueError unless `lang` is one of the paper's languages for `benchmark`."""
  benchmark = canonical_benchmark(benchmark)
  if lang not in LANGUAGES[benchmark]:
    raise ValueError(f"{benchmark} has no language {lang!r} in the paper's set; "
                     f"expected one of {', '.join(LANGUAGES[benchmark])}")


# ---------------------------------------------------------------------------------------------
# Examples


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """One benchmark prompt and what its answer is scored against.

  Attributes:
    benchmark: canonical benchmark name (one of BENCHMARKS).
    lang: language code of the prompt.
    index: position in its language's source (line of the local file, or row of the hub
      split), so that the same index is the same item across languages of a parallel set.
    prompt: the instruction given to the model, in the paper's prompt style.
    gold: the reference: an option label for choice tasks, an answer string for XQuAD, a
      tuple of acceptable answers for MKQA, the reference summary for XLSum.
    kind: "choice", "qa" or "summary".
    options: option texts in label order (choice tasks), in the prompt's language; None if
      they could not be recovered from the prompt.
    option_labels: the labels the prompt uses for the options ("1".."3", "A".."D").
    english_prompt: the parallel English prompt of the same item (see the module docstring),
      or None when the source has none.
  """
  benchmark: str
  lang: str
  index: int
  prompt: str
  gold: str | tuple[str, ...]
  kind: str
  options: tuple[str, ...] | None = None
  option_labels: tuple[str, ...] | None = None
  english_prompt: str | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
    gold_ok = isinstance(self.gold, str) or (
        isinstance(self.gold, tuple) and all(isinstance(g, str) for g in self.gold))
    if not gold_ok:
      raise TypeError(f"gold must be a str or a tuple of str, got {self.gold!r}")
    if (self.options is not None and self.option_labels is not None
        and len(self.options) != len(self.option_labels)):
      raise ValueError(f"{len(self.options)} options but {len(self.option_labels)} labels")


# ---------------------------------------------------------------------------------------------
# Options inside a prompt

# One option per line: "(1) text", "1. text", "1) text", "(A) text", "A. text", "A: text";
# full-width brackets and punctuation too, as Chinese/Japanese prompts write them.
_OPTION_LINE = re.compile(r"^\s*[(（]?\s*([0-9]{1,2}|[A-Z])\s*[)）.．:：]\s*(\S.*?)\s*$")


def _next_label(label: str) -> str:
  return str(int(label) + 1) if label.isdigit() else chr(ord(label) + 1)


def parse_options(text: str, labels: Sequence[str]) -> tuple[str, ...] | None:
  """Recovers option texts from a prompt.

  Rule: the options are the last run of consecutive lines whose labels are exactly `labels`
  in order (each line in one of the forms "(1) text", "1. text", "1) text", "(A) text",
  "A. text", "A: text"), and the line after the run must not carry the next label (so a
  five-option list does not pass for four). Taking the last run skips numbered lines in a
  passage or question above the options.

  Args:
    text: the prompt.
    labels: the expected labels, e.g. ("1", "2", "3") or ("A", "B", "C", "D").

  Returns:
    The option texts in label order, or None when no such run exists.
  """
  labels = tuple(labels)
  if not labels:
    return None
  parsed = []
  for line in text.splitlines():
    m = _OPTION_LINE.match(line)
    parsed.append((m.group(1), m.group(2)) if m else None)
  n = len(labels)
  for start in range(len(parsed) - n, -1, -1):
    window = parsed[start:start + n]
    if not all(p is not None and p[0] == label for p, label in zip(window, labels)):
      continue
    after = parsed[start + n] if start + n < len(parsed) else None
    if after is not None and after[0] == _next_label(labels[-1]):
      return None
    return tuple(p[1] for p in window)
  return None


def choice_label(value: str, labels: Sequence[str]) -> str | None:
  """Reads "B", " (B) ", "B." or "（B）" as the label "B"; None if it is none of `labels`."""
  label = value.strip().strip("()（）").strip().rstrip(".．").strip()
  return label if label in labels else None


# ---------------------------------------------------------------------------------------------
# Sampling


def _sample_key(seed: int, benchmark: str, index: int) -> bytes:
  return hashlib.blake2b(f"{seed}\0{benchmark}\0{index}".encode(), digest_size=8).digest()


def _order(examples: Iterable[EvalExample]) -> list[EvalExample]:
  bench_rank = {b: i for i, b in enumerate(BENCHMARKS)}

  def key(e):
    langs = LANGUAGES.get(e.benchmark, ())
    return (bench_rank.get(e.benchmark, len(BENCHMARKS)), e.benchmark,
            langs.index(e.lang) if e.lang in langs else len(langs), e.lang, e.index)
  return sorted(examples, key=key)


def sample(examples: Iterable[EvalExample], limit: int | None, seed: int = 0) -> list[EvalExample]:
  """Keeps at most `limit` examples per (benchmark, language), deterministically.

  An example's rank is a keyed hash of (seed, benchmark, index), not of its language or its
  position in the input: the same seed keeps the same indices in every language (parallel
  items stay parallel), in any input order, and a larger limit keeps a superset.

  Returns:
    The kept examples in the stable order: benchmark (paper order), language (paper order),
    index.
  """
  examples = list(examples)
  if limit is None:
    return _order(examples)
  if limit < 1:
    raise ValueError(f"limit must be positive or None, got {limit}")
  groups = collections.defaultdict(list)
  for e in examples:
    groups[(e.benchmark, e.lang)].append(e)
  kept = []
  for group in groups.values():
    kept.extend(sorted(group, key=lambda e: _sample_key(seed, e.benchmark, e.index))[:limit])
  return _order(kept)


# ---------------------------------------------------------------------------------------------
# Local files


def _benchmark_dir(root: pathlib.Path, benchmark: str) -> pathlib.Path:
  if (root / benchmark).is_dir():
    return root / benchmark
  if root.is_dir():
    matches = [p for p in sorted(root.iterdir()) if p.is_dir()
               and _ALIASES.get(re.sub(r"[\s_-]", "", p.name.lower())) == benchmark]
    if len(matches) == 1:
      return matches[0]
    if matches:
      raise FileNotFoundError(f"{root}: several directories for {benchmark}: "
                              f"{', '.join(p.name for p in matches)}")
  raise FileNotFoundError(f"{root}: no directory for benchmark {benchmark} "
                          f"(expected {root / benchmark})")


def _language_files(bdir: pathlib.Path, lang: str) -> tuple[tuple[pathlib.Path, pathlib.Path], int]:
  """((instruction file, answer file), index of their layout in LAYOUTS)."""
  for layout, (inst_pattern, ans_pattern) in enumerate(LAYOUTS):
    inst = bdir / inst_pattern.format(lang=lang)
    if inst.is_file():
      ans = bdir / ans_pattern.format(lang=lang)
      if not ans.is_file():
        raise FileNotFoundError(f"{ans}: missing answer file for {inst}")
      return (inst, ans), layout
  tried = ", ".join(str(bdir / p.format(lang=lang)) for p, _ in LAYOUTS)
  raise FileNotFoundError(f"{bdir}: no instruction file for {lang!r} (tried {tried})")


def available_languages(root: str | os.PathLike, benchmark: str) -> tuple[str, ...]:
  """The paper's languages of `benchmark` that have an instruction file under `root`."""
  benchmark = canonical_benchmark(benchmark)
  bdir = _benchmark_dir(pathlib.Path(root), benchmark)
  return tuple(lang for lang in LANGUAGES[benchmark]
               if any((bdir / p.format(lang=lang)).is_file() for p, _ in LAYOUTS))


def _read_json_lines(path: pathlib.Path) -> list[tuple[int, Any]]:
  """(line number, decoded value) for each line; blank lines only at the end."""
  lines = path.read_bytes().split(b"\n")
  while lines and not lines[-1].strip():
    lines.pop()
  out = []
  for lineno, raw in enumerate(lines, start=1):
    where = f"{path}:line {lineno}"
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise BenchmarkDataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if lineno == 1:
      text = text.lstrip("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
      raise BenchmarkDataError(f"{where}: blank line (lines must pair up with the other file)")
    try:
      out.append((lineno, json.loads(text)))
    except json.JSONDecodeError as e:
      raise BenchmarkDataError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from e
  return out


def _string_tuple(value: Any, where: str, what: str) -> tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
    raise BenchmarkDataError(f"{where}: {what} must be a list of non-empty strings")
  return tuple(value)


def _local_example(benchmark: str, lang: str, index: int, inst: Any, answer: Any,
                   inst_where: str, ans_where: str) -> EvalExample:
  if not isinstance(inst, dict):
    raise BenchmarkDataError(f"{inst_where}: expected an object, got a {type(inst).__name__}")
  prompt = inst.get("instruction")
  if not isinstance(prompt, str) or not prompt.strip():
    raise BenchmarkDataError(f"{inst_where}: field 'instruction' must be a non-empty string")
  kind = KIND[benchmark]
  if benchmark == "MKQA":
    gold = [answer] if isinstance(answer, str) else answer
    gold = _string_tuple(gold, ans_where, "an MKQA answer")
    if not gold:
      raise BenchmarkDataError(f"{ans_where}: empty list of answers")
    return EvalExample(benchmark, lang, index, prompt, gold, kind)
  if not isinstance(answer, str) or not answer.strip():
    raise BenchmarkDataError(f"{ans_where}: expected a non-empty string, got {answer!r}")
  if kind != "choice":
    return EvalExample(benchmark, lang, index, prompt, answer, kind)
  labels = OPTION_LABELS[benchmark]
  if "option_labels" in inst:
    labels = _string_tuple(inst["option_labels"], inst_where, "option_labels")
  if "options" in inst:
    options = _string_tuple(inst["options"], inst_where, "options")
    if len(options) != len(labels):
      raise BenchmarkDataError(f"{inst_where}: {len(options)} options for labels {labels}")
  else:
    options = parse_options(prompt, labels)
  gold = choice_label(answer, labels)
  if gold is None:
    raise BenchmarkDataError(f"{ans_where}: answer {answer!r} is not one of the labels "
                             f"{', '.join(labels)}")
  return EvalExample(benchmark, lang, index, prompt, gold, kind, options, labels)


def _english_prompts(bdir: pathlib.Path, benchmark: str, lang: str, layout: int, count: int,
                     inst_path: pathlib.Path) -> list[str | None]:
  """The parallel English prompt of each of `count` lines of `lang` (module docstring)."""
  if benchmark in OWN_ENGLISH:
    path = bdir / ENGLISH_LAYOUTS[layout].format(lang=lang)
  else:
    path = bdir / LAYOUTS[layout][0].format(lang="en")
  if not path.is_file():
    return [None] * count
  lines = _read_json_lines(path)
  if len(lines) != count:
    raise BenchmarkDataError(f"{path} has {len(lines)} lines but {inst_path} has {count}; the parallel English "
                             "file must pair up with it line by line")
  prompts = []
  for lineno, inst in lines:
    prompt = inst.get("instruction") if isinstance(inst, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
      raise BenchmarkDataError(f"{path}:line {lineno}: field 'instruction' must be a non-empty string")
    prompts.append(prompt)
  return prompts


def load_local(root: str | os.PathLike, benchmark: str, langs: Sequence[str] | None = None, *,
               limit: int | None = None, seed: int = 0) -> list[EvalExample]:
  """Reads one benchmark from local files (layout: module docstring).

  Args:
    root: directory holding one directory per benchmark.
    benchmark: benchmark name (any spelling `canonical_benchmark` accepts).
    langs: languages to read; each must be in the paper's set and have files. None: all the
      paper's languages (every one must have files; see `available_languages`).
    limit: at most this many examples per language, chosen by `sample` with `seed`.
    seed: sampling seed.

  Returns:
    Examples in the order of `langs`, then index, each with its parallel English prompt
    when the files have one.

  Raises:
    FileNotFoundError: a missing directory or file, named.
    BenchmarkDataError: a bad line (file:line in the message), or files of unequal length.
    ValueError: an unknown benchmark or language.
  """
  benchmark = canonical_benchmark(benchmark)
  langs = LANGUAGES[benchmark] if langs is None else tuple(langs)
  for lang in langs:
    check_language(benchmark, lang)
  if len(set(langs)) != len(langs):
    raise ValueError(f"{benchmark}: a language is listed twice in {langs}")
  bdir = _benchmark_dir(pathlib.Path(root), benchmark)
  examples = []
  for lang in langs:
    (inst_path, ans_path), layout = _language_files(bdir, lang)
    insts, answers = _read_json_lines(inst_path), _read_json_lines(ans_path)
    if len(insts) != len(answers):
      raise BenchmarkDataError(f"{inst_path} has {len(insts)} lines but {ans_path} has "
                               f"{len(answers)}; they must pair up line by line")
    english = _english_prompts(bdir, benchmark, lang, layout, len(insts), inst_path)
    lang_examples = [
        dataclasses.replace(_local_example(benchmark, lang, i, inst, answer, f"{inst_path}:line {li}",
                                           f"{ans_path}:line {la}"), english_prompt=english[i])
        for i, ((li, inst), (la, answer)) in enumerate(zip(insts, answers))]
    examples.extend(sample(lang_examples, limit, seed))
  return examples


def write_local(root: str | os.PathLike, examples: Iterable[EvalExample]) -> list[pathlib.Path]:
  """Writes examples as a local benchmark directory in cc_jax's layout (`<lang>.jsonl` +
  `<lang>.answers.jsonl`), one file pair per (benchmark, language), replacing existing pairs.

  Lines are written in index order, so after a round trip an example's index is its line
  number: a sampled subset comes back renumbered 0..n-1. Choice examples store their options
  and labels next to the instruction, so they load back unchanged even if unparseable. XLSum
  examples that carry their parallel English prompts also get `<lang>.english.jsonl`.

  Returns:
    The paths written.
  """
  groups = collections.defaultdict(list)
  for e in examples:
    benchmark = canonical_benchmark(e.benchmark)
    if benchmark != e.benchmark:
      raise ValueError(f"example has benchmark {e.benchmark!r}; use {benchmark!r}")
    check_language(benchmark, e.lang)
    if e.kind != KIND[benchmark]:
      raise ValueError(f"{benchmark} examples have kind {KIND[benchmark]!r}, got {e.kind!r}")
    if isinstance(e.gold, tuple) != (benchmark == "MKQA"):
      raise ValueError(f"{benchmark}/{e.lang} index {e.index}: gold must be "
                       f"{'a tuple' if benchmark == 'MKQA' else 'a string'}")
    groups[(benchmark, e.lang)].append(e)
  root = pathlib.Path(root)
  written = []
  for (benchmark, lang), group in sorted(groups.items()):
    group.sort(key=lambda e: e.index)
    for a, b in zip(group, group[1:]):
      if a.index == b.index:
        raise ValueError(f"{benchmark}/{lang}: two examples with index {a.index}")
    inst_lines, ans_lines, en_lines = [], [], []
    for e in group:
      inst = {"instruction": e.prompt}
      if e.options is not None:
        inst["options"] = list(e.options)
      if e.option_labels is not None:
        inst["option_labels"] = list(e.option_labels)
      inst_lines.append(json.dumps(inst, ensure_ascii=False))
      gold = list(e.gold) if isinstance(e.gold, tuple) else e.gold
      ans_lines.append(json.dumps(gold, ensure_ascii=False))
      en_lines.append(json.dumps({"instruction": e.english_prompt}, ensure_ascii=False))
    inst_pattern, ans_pattern = LAYOUTS[0]
    pairs = [(inst_pattern, inst_lines), (ans_pattern, ans_lines)]
    if benchmark in OWN_ENGLISH and all(e.english_prompt for e in group):
      pairs.append((ENGLISH_LAYOUTS[0], en_lines))
    for pattern, lines in pairs:
      path = root / benchmark / pattern.format(lang=lang)
      files.write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
      written.append(path)
  return written


def load(source: str | os.PathLike, benchmarks: Sequence[str] | None = None,
         langs: Mapping[str, Sequence[str]] | None = None, *, limit: int | None = None,
         seed: int = 0) -> list[EvalExample]:
  """Reads several benchmarks from `source`: "hub", or a local root directory.

  Args:
    source: "hub" for `benchmarks_hub.load_hub`, else a directory for `load_local`.
    benchmarks: names; None for all six.
    langs: benchmark -> languages; a benchmark not in it gets all its paper languages.
    limit: at most this many examples per (benchmark, language).
    seed: sampling seed.

  Returns:
    Examples in benchmark order (as given), then language, then index.
  """
  names = [canonical_benchmark(b) for b in (benchmarks or BENCHMARKS)]
  chosen = {canonical_benchmark(b): tuple(v) for b, v in (langs or {}).items()}
  examples = []
  for name in names:
    if str(source) == "hub":
      from cc_jax import benchmarks_hub  # pylint: disable=g-import-not-at-top (imports this module)
      examples.extend(benchmarks_hub.load_hub(name, chosen.get(name), limit=limit, seed=seed))
    else:
      examples.extend(load_local(source, name, chosen.get(name), limit=limit, seed=seed))
  return examples
