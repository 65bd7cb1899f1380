"""The paper's six benchmarks from the Hugging Face hub (`datasets`): each hub row mapped to an
`EvalExample` in the authors' prompt style. Local files in the authors' layout: `benchmarks.py`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cc_jax.benchmarks import (LANGUAGES, OPTION_LABELS, BenchmarkDataError, EvalExample, choice_label,
                               canonical_benchmark, check_language, sample)

# Prompts for hub rows, in the authors' style (XNLI's is the paper's, docs/method.md §5; the
# others are the English instructions of the authors' evaluation files). The authors' files
# translate the instruction into the target language; these templates keep it in English and
# only the content is in the target language, so local files give the paper's exact prompts.

XNLI_PROMPT = (
    "Premise: {premise}\nHypothesis: {hypothesis}\n\n"
    "What do you think is the relationship between the premise and the hypothesis?\n\n"
    "(1) Entailment\n(2) Neutral\n(3) Contradiction\n\n"
    "If you have to choose one of these options, your answer would be:")
XNLI_OPTIONS = ("Entailment", "Neutral", "Contradiction")
XSTORYCLOZE_PROMPT = (
    "{story}\n(1) {ending1}\n(2) {ending2}\n\n"
    "Which of the two options is more likely to be the ending of the given story.\nYour answer:")
MMMLU_PROMPT = (
    "Please answer the following multiple choice question.\n\n{question}\n"
    "(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}\n\n"
    "If you have to choose one of these options, your answer would be:")
XQUAD_PROMPT = ("Please answer these questions only based on the given context.\n\n"
                "Context: {context}\nQuestion: {question}\n\nYour answer:")
MKQA_PROMPT = "Please answer the following question.\n\n{question}\n\nYour answer:"
XLSUM_PROMPT = "Summarize the following article in one sentence.\n\nArticle: {article}\n\nSummary:"

# Hub sources: benchmark -> (dataset path, config for a language, split). MMMLU's English is
# the original MMLU; MMMLU and XLSum name their configs by locale and language name.
_MMMLU_CONFIGS = {"ar": "AR_XA", "bn": "BN_BD", "es": "ES_LA", "hi": "HI_IN", "id": "ID_ID",
                  "ko": "KO_KR", "pt": "PT_BR", "sw": "SW_KE", "yo": "YO_NG"}
_XLSUM_CONFIGS = {"en": "english", "ar": "arabic", "fr": "french", "hi": "hindi",
                  "id": "indonesian", "ru": "russian", "sw": "swahili", "tr": "turkish",
                  "ur": "urdu", "vi": "vietnamese"}
_MKQA_KEYS = {"zh": "zh_cn"}  # MKQA keys Simplified Chinese as zh_cn


def hub_source(benchmark: str, lang: str) -> tuple[str, str | None, str]:
  """Returns (dataset path, config name or None, split) of a benchmark language on the hub."""
  benchmark = canonical_benchmark(benchmark)
  check_language(benchmark, lang)
  if benchmark == "XNLI":
    return "facebook/xnli", lang, "test"
  if benchmark == "XStoryCloze":
    return "juletxara/xstory_cloze", lang, "eval"
  if benchmark == "MMMLU":
    return ("cais/mmlu", "all", "test") if lang == "en" else (
        "openai/MMMLU", _MMMLU_CONFIGS[lang], "test")
  if benchmark == "XQuAD":
    return "google/xquad", f"xquad.{lang}", "validation"
  if benchmark == "MKQA":
    return "apple/mkqa", None, "train"
  return "csebuetnlp/xlsum", _XLSUM_CONFIGS[lang], "test"


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in row:
    raise BenchmarkDataError(f"{where}: missing field {key!r}")
  return row[key]


def _choice_example(benchmark: str, lang: str, index: int, prompt: str, gold: str,
                    options: tuple[str, ...]) -> EvalExample:
  return EvalExample(benchmark, lang, index, prompt, gold, "choice", options,
                     OPTION_LABELS[benchmark])


def example_from_row(benchmark: str, lang: str, index: int,
                     row: Mapping[str, Any]) -> EvalExample | None:
  """Maps one hub row to an EvalExample with the authors' prompt style.

  Row shapes: XNLI `premise, hypothesis, label` (0 entailment, 1 neutral, 2 contradiction);
  XStoryCloze `input_sentence_1..4, sentence_quiz1, sentence_quiz2, answer_right_ending`;
  MMMLU `Question, A..D, Answer` (openai/MMMLU) or `question, choices, answer` (cais/mmlu);
  XQuAD `context, question, answers.text`; MKQA `queries[lang], answers[lang]` (each answer's
  text and aliases are acceptable); XLSum `text, summary`.

  Returns:
    The example, or None for an MKQA row without an answer in `lang` (unanswerable).
  """
  benchmark = canonical_benchmark(benchmark)
  where = f"{benchmark}/{lang} row {index}"
  if benchmark == "XNLI":
    label = _field(row, "label", where)
    if label not in (0, 1, 2):
      raise BenchmarkDataError(f"{where}: label {label!r} is not 0, 1 or 2")
    prompt = XNLI_PROMPT.format(premise=_field(row, "premise", where),
                                hypothesis=_field(row, "hypothesis", where))
    return _choice_example(benchmark, lang, index, prompt, str(label + 1), XNLI_OPTIONS)
  if benchmark == "XStoryCloze":
    story = " ".join(str(_field(row, f"input_sentence_{i}", where)).strip() for i in range(1, 5))
    endings = (str(_field(row, "sentence_quiz1", where)).strip(),
               str(_field(row, "sentence_quiz2", where)).strip())
    gold = str(_field(row, "answer_right_ending", where))
    if gold not in ("1", "2"):
      raise BenchmarkDataError(f"{where}: answer_right_ending {gold!r} is not 1 or 2")
    prompt = XSTORYCLOZE_PROMPT.format(story=story, ending1=endings[0], ending2=endings[1])
    return _choice_example(benchmark, lang, index, prompt, gold, endings)
  if benchmark == "MMMLU":
    if "Question" in row:  # openai/MMMLU
      question = row["Question"]
      options = tuple(str(_field(row, k, where)) for k in "ABCD")
      gold = choice_label(str(_field(row, "Answer", where)), OPTION_LABELS["MMMLU"])
    else:  # cais/mmlu
      question = _field(row, "question", where)
      options = tuple(str(c) for c in _field(row, "choices", where))
      answer = _field(row, "answer", where)
      gold = "ABCD"[answer] if answer in (0, 1, 2, 3) else None
    if len(options) != 4 or gold is None:
      raise BenchmarkDataError(f"{where}: expected 4 choices and an answer in A-D")
    prompt = MMMLU_PROMPT.format(question=question, a=options[0], b=options[1], c=options[2],
                                 d=options[3])
    return _choice_example(benchmark, lang, index, prompt, gold, options)
  if benchmark == "XQuAD":
    texts = list(_field(row, "answers", where).get("text", []))
    if not texts:
      raise BenchmarkDataError(f"{where}: no answer text")
    prompt = XQUAD_PROMPT.format(context=_field(row, "context", where),
                                 question=_field(row, "question", where))
    return EvalExample(benchmark, lang, index, prompt, texts[0], "qa")
  if benchmark == "MKQA":
    key = _MKQA_KEYS.get(lang, lang)
    queries = _field(row, "queries", where)
    if key not in queries:
      raise BenchmarkDataError(f"{where}: no query in {key!r}")
    gold = []
    for answer in _field(row, "answers", where).get(key) or []:
      for text in [answer.get("text")] + list(answer.get("aliases") or []):
        if text and text not in gold:
          gold.append(text)
    if not gold:
      return None
    prompt = MKQA_PROMPT.format(question=queries[key])
    return EvalExample(benchmark, lang, index, prompt, tuple(gold), "qa")
  prompt = XLSUM_PROMPT.format(article=_field(row, "text", where))
  return EvalExample(benchmark, lang, index, prompt, _field(row, "summary", where), "summary")


def load_hub(benchmark: str, langs: Sequence[str] | None = None, *, limit: int | None = None,
             seed: int = 0, cache_dir: str | None = None,
             revision: str | None = None) -> list[EvalExample]:
  """Reads one benchmark through `datasets.load_dataset` (needs the hub or a warm cache).

  Sources are given by `hub_source`; rows are mapped by `example_from_row`, and an example's
  index is its row in the split. Some of these datasets are script-based on the hub, which
  recent `datasets` versions refuse; `revision="refs/convert/parquet"` reads the hub's
  parquet conversion instead.

  Args:
    benchmark: benchmark name.
    langs: languages (each in the paper's set); None for all ten.
    limit: at most this many examples per language (`sample`).
    seed: sampling seed.
    cache_dir: `datasets` cache directory.
    revision: dataset revision.

  Returns:
    Examples in the order of `langs`, then index.
  """
  import datasets  # pylint: disable=g-import-not-at-top (only this path needs it)
  benchmark = canonical_benchmark(benchmark)
  langs = LANGUAGES[benchmark] if langs is None else tuple(langs)
  examples = []
  for lang in langs:
    path, config, split = hub_source(benchmark, lang)
    rows = datasets.load_dataset(path, config, split=split, cache_dir=cache_dir,
                                 revision=revision)
    mapped = (example_from_row(benchmark, lang, i, row) for i, row in enumerate(rows))
    examples.extend(sample([e for e in mapped if e is not None], limit, seed))
  return examples
