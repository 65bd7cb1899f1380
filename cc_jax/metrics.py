"""Pure scoring of generated answers for the paper's six benchmarks (docs/method.md §5):
answer accuracy / EM / F1 (XQuAD, MKQA), ROUGE-L (XLSum), and per-language aggregation.
Option extraction for the choice tasks is in `choice.py`, text normalisation in
`textnorm.py`. Standard library only.

Scores are fractions in [0, 1]; the paper reports them times 100. Every function takes
the decoded generation (special tokens already stripped) and is deterministic. Record
keys match `benchmarks.PRIMARY_METRIC` ("accuracy", "rougeL").
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterable, Literal, Mapping, Sequence

from cc_jax import textnorm

# ----------------------------------------------------------------------------------------
# QA: answer accuracy, exact match, token F1.


def answer_in_output(output: str, golds: Sequence[str]) -> bool:
  """The paper's answer accuracy: some gold answer is found in the output.

  Both sides are compared in `textnorm.containment_form` (folded, canonical numbers,
  punctuation as spaces), and the gold must occur as a substring, so an answer with an affix
  glued to it counts: Korean "서울입니다" contains 서울, Arabic "وباريس" contains باريس,
  Turkish "Ankarada" contains Ankara. One guard: a gold that starts or ends with a digit must
  not be part of a longer number there ("3" is not found in "30" or "3.5", "10" not in "100").

  Known false positives of containment, kept because they are the paper's metric: a short
  gold inside a longer word ("no" in "not", "Rome" in "Romeo"), and an output that lists
  several candidates ("Paris or Rome" contains both).
  """
  out = textnorm.containment_form(output)
  numbers = [m.span() for m in textnorm.CANONICAL_NUMBER.finditer(out)]

  def splits_a_number(start: int, end: int, gold: str) -> bool:
    return any((gold[0].isdigit() and a < start < b) or (gold[-1].isdigit() and a < end < b) for a, b in numbers)

  for gold in golds:
    gold = textnorm.containment_form(gold)
    if not gold:
      continue
    start = out.find(gold)
    while start >= 0:
      if not splits_a_number(start, start + len(gold), gold):
        return True
      start = out.find(gold, start + 1)
  return False


def exact_match(prediction: str, gold: str) -> float:
  """1.0 if both normalise to the same token sequence, else 0.0."""
  return float(textnorm.qa_tokens(prediction) == textnorm.qa_tokens(gold))


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD token F1 over `qa_tokens` (bag of tokens). 0.0 if either side is empty."""
  pred, ref = textnorm.qa_tokens(prediction), textnorm.qa_tokens(gold)
  common = collections.Counter(pred) & collections.Counter(ref)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(pred), num_same / len(ref)
  return 2 * precision * recall / (precision + recall)


def score_qa(output: str, golds: str | Sequence[str], *,
             unanswerable: Literal["skip", "empty"]) -> dict[str, float] | None:
  """Scores one QA generation (XQuAD: one gold; MKQA: several, best one counts).

  Golds that normalise to nothing ("", ".") are dropped. An item left with no gold is
  unanswerable (MKQA), and the caller must say how to score it:
    "skip":  return None; the caller leaves the item out of every mean. With substring
             scoring an empty gold matches every output, which would count all
             unanswerable items as correct.
    "empty": MKQA's official convention: every metric is 1.0 if the output normalises to
             nothing, else 0.0.

  Args:
    output: the generated text.
    golds: one gold answer or a list of acceptable answers.
    unanswerable: what to do when no gold remains (see above).

  Returns:
    {"accuracy": answer contained (max over golds), "exact_match": max over golds,
     "f1": max over golds}, or None for a skipped unanswerable item.
  """
  if unanswerable not in ("skip", "empty"):
    raise ValueError(f"unanswerable must be 'skip' or 'empty', got {unanswerable!r}")
  if isinstance(golds, str):
    golds = [golds]
  golds = [g for g in golds if textnorm.qa_tokens(g)]
  if not golds:
    if unanswerable == "skip":
      return None
    value = float(not textnorm.qa_tokens(output))
    return {"accuracy": value, "exact_match": value, "f1": value}
  return {
      "accuracy": float(answer_in_output(output, golds)),
      "exact_match": max(exact_match(output, g) for g in golds),
      "f1": max(token_f1(output, g) for g in golds),
  }


# ----------------------------------------------------------------------------------------
# ROUGE-L.


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
  """Length of the longest common subsequence of two token sequences."""
  if len(a) < len(b):
    a, b = b, a
  row = [0] * (len(b) + 1)
  for x in a:
    prev_diag = 0
    for j, y in enumerate(b, start=1):
      prev_diag, row[j] = row[j], (prev_diag + 1 if x == y else max(row[j], row[j - 1]))
  return row[-1]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
  """Sentence-level ROUGE-L of one prediction against one reference.

  Same formulas as rouge_score: precision = LCS / len(prediction tokens), recall =
  LCS / len(reference tokens), F = 2PR / (P + R); all 0.0 if either side has no token.

  Returns:
    {"precision", "recall", "fmeasure"}, floats in [0, 1].
  """
  pred, ref = textnorm.rouge_tokens(prediction), textnorm.rouge_tokens(reference)
  if not pred or not ref:
    return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
  lcs = lcs_length(ref, pred)
  precision, recall = lcs / len(pred), lcs / len(ref)
  fmeasure = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
  return {"precision": precision, "recall": recall, "fmeasure": fmeasure}


def score_summary(output: str, reference: str) -> dict[str, float]:
  """XLSum record: {"rougeL": F, "rougeL_precision": P, "rougeL_recall": R}."""
  s = rouge_l(output, reference)
  return {"rougeL": s["fmeasure"], "rougeL_precision": s["precision"],
          "rougeL_recall": s["recall"]}


# ----------------------------------------------------------------------------------------
# Aggregation.


def summarize(records: Iterable[Mapping[str, Any]], *, lang_key: str = "lang",
              metrics: Sequence[str] | None = None) -> dict[str, Any]:
  """Per-language means, their macro average, and the micro average over examples.

  Args:
    records: one mapping per example, e.g. {"lang": "zh", "accuracy": 1.0, "f1": 0.5,
      "id": ...}. Every record must carry each metric as a finite number (bools count);
      drop skipped items (score_qa -> None) before calling.
    lang_key: the key holding the language code.
    metrics: metric keys to average; default: every key whose values are all numbers.

  Returns:
    {"per_language": {lang: {"count": n, metric: mean, ...}}, "macro": {metric: mean of
     the per-language means}, "micro": {metric: mean over all examples}, "count": total
     examples, "languages": sorted language codes}. Empty input gives empty dicts.
  """
  records = list(records)
  if metrics is None:
    keys = sorted({k for r in records for k in r if k != lang_key})
    metrics = [k for k in keys if all(isinstance(r.get(k), (int, float)) for r in records)]
  by_lang: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
  for r in records:
    for k in metrics:
      value = r[k]
      if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metric {k!r} must be a finite number, got {value!r} in {dict(r)}")
    by_lang[r[lang_key]].append(r)
  languages = sorted(by_lang)
  per_language = {}
  for lang in languages:
    rows = by_lang[lang]
    per_language[lang] = {"count": len(rows)}
    for k in metrics:
      per_language[lang][k] = math.fsum(float(r[k]) for r in rows) / len(rows)
  macro, micro = {}, {}
  for k in metrics:
    if languages:
      macro[k] = math.fsum(per_language[lang][k] for lang in languages) / len(languages)
      micro[k] = math.fsum(float(r[k]) for r in records) / len(records)
  return {"per_language": per_language, "macro": macro, "micro": micro,
          "count": len(records), "languages": languages}
