"""Pure scoring of generated answers for the paper's six benchmarks (docs/method.md §5):
option extraction and accuracy (XNLI, XStoryCloze, MMMLU), answer accuracy / EM / F1
(XQuAD, MKQA), ROUGE-L (XLSum), and per-language aggregation. Standard library only.

Scores are fractions in [0, 1]; the paper reports them times 100. Every function takes
the decoded generation (special tokens already stripped) and is deterministic. Record
keys match `benchmarks.PRIMARY_METRIC` ("accuracy", "rougeL").

Text handling shared by all metrics:
  * Unicode NFKC, then `casefold` (Greek final sigma, German ß), and Turkish "İ" folds to
    "i" (casefold alone leaves a combining dot). Format characters (Cf: zero-width
    joiners, BOM) are removed, and so are Arabic short-vowel marks and tatweel, which
    writers use optionally ("مِصْرُ" = "مصر"). Decimal digits of every script
    (Arabic-Indic, Devanagari, Thai, ...) read as ASCII digits.
  * Scripts written without spaces (Han, Hiragana, Katakana, Bopomofo, Thai, Lao, Khmer,
    Myanmar) are segmented into characters, each with its trailing combining marks (Thai
    "ที่" is one token). The decision is per character, by Unicode block, so no language
    code is needed and mixed text ("iPhone手机") segments correctly.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import string
import unicodedata
from typing import Any, Iterable, Literal, Mapping, Sequence

# Code point ranges of scripts written without spaces between words.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31FF),  # Bopomofo extended, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA9E0, 0xA9FF),  # Myanmar extended B
    (0xAA60, 0xAA7F),  # Myanmar extended A
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)

_ASCII_PUNCTUATION = frozenset(string.punctuation)
# Arabic tatweel, harakat (fathatan .. sukun, extended marks) and superscript alef.
_ARABIC_OPTIONAL = frozenset(
    [chr(0x0640), chr(0x0670)] + [chr(c) for c in range(0x064B, 0x0660)])
_ARTICLES = frozenset({"a", "an", "the"})


def _is_unspaced(ch: str) -> bool:
  """Whether `ch` belongs to a script written without spaces between words."""
  cp = ord(ch)
  return any(lo <= cp <= hi for lo, hi in _UNSPACED_RANGES)


def _is_word_char(ch: str) -> bool:
  """Letters, numbers and combining marks (Devanagari vowel signs, Arabic harakat)."""
  return unicodedata.category(ch)[0] in "LNM"


def _is_punct(ch: str) -> bool:
  # ASCII punctuation includes symbols ($, +, ~) that SQuAD's normaliser also strips.
  return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def _ascii_digits(text: str) -> str:
  """Replaces decimal digits of any script (category Nd) with ASCII digits."""
  return "".join(
      str(unicodedata.digit(ch)) if not ch.isascii() and unicodedata.category(ch) == "Nd"
      else ch for ch in text)


def _fold(text: str) -> str:
  """NFKC, case folding, ASCII digits; format characters and Arabic vowel marks removed."""
  text = unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i")
  text = "".join(ch for ch in text
                 if unicodedata.category(ch) != "Cf" and ch not in _ARABIC_OPTIONAL)
  return _ascii_digits(text)


def _segment_unspaced(chunk: str) -> list[str]:
  """Splits one whitespace-free chunk: unspaced-script characters (plus their trailing
  combining marks) become single tokens, runs of anything else stay whole."""
  tokens, run = [], ""
  for ch in chunk:
    if tokens and not run and unicodedata.category(ch).startswith("M") and _is_unspaced(
        tokens[-1][0]):
      tokens[-1] += ch
    elif _is_unspaced(ch):
      if run:
        tokens.append(run)
        run = ""
      tokens.append(ch)
    else:
      run += ch
  if run:
    tokens.append(run)
  return tokens


# ----------------------------------------------------------------------------------------
# QA: answer accuracy, exact match, token F1.


def qa_tokens(text: str) -> list[str]:
  """Tokens of `text` after multilingual SQuAD-style normalisation.

  Folding as in the module docstring; punctuation (Unicode P* and ASCII punctuation)
  becomes a space, except between two digits, where it is deleted ("1,000" -> "1000",
  "2.5" -> "25"), so numbers stay one token. Replacing rather than deleting (SQuAD
  deletes) keeps clitics apart: "İstanbul'da" -> "istanbul da", "l'Europe" -> "l europe".
  The English articles a/an/the are dropped (in every language, as SQuAD and MLQA do).
  Tokens are whitespace words, with unspaced scripts split into characters.
  """
  text = _fold(text)
  chars = []
  for i, ch in enumerate(text):
    if _is_punct(ch):
      between_digits = (0 < i < len(text) - 1 and text[i - 1].isdigit()
                        and text[i + 1].isdigit())
      chars.append("" if between_digits else " ")
    else:
      chars.append(ch)
  tokens = []
  for word in "".join(chars).split():
    if word not in _ARTICLES:
      tokens.extend(_segment_unspaced(word))
  return tokens


def normalize_answer(text: str) -> str:
  """`qa_tokens(text)` joined by single spaces (the form exact match compares)."""
  return " ".join(qa_tokens(text))


def _contains_tokens(haystack: Sequence[str], needle: Sequence[str]) -> bool:
  """Whether `needle` is a non-empty contiguous subsequence of `haystack`."""
  n = len(needle)
  if n == 0:
    return False
  return any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def answer_in_output(output: str, golds: Sequence[str]) -> bool:
  """The paper's answer accuracy: some gold answer occurs in the output.

  "Occurs" means the gold's `qa_tokens` form a contiguous run of the output's tokens.
  This is stricter than a raw substring test: gold "no" is not found in "not", nor "10"
  in "100"; in unspaced scripts tokens are characters, so it equals a substring test
  there. The cost: an inflected form glued to the answer ("Ankarada", Arabic "وباريس")
  does not count.
  """
  out = qa_tokens(output)
  return any(_contains_tokens(out, qa_tokens(g)) for g in golds)


def exact_match(prediction: str, gold: str) -> float:
  """1.0 if both normalise to the same token sequence, else 0.0."""
  return float(qa_tokens(prediction) == qa_tokens(gold))


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD token F1 over `qa_tokens` (bag of tokens). 0.0 if either side is empty."""
  pred, ref = qa_tokens(prediction), qa_tokens(gold)
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
  golds = [g for g in golds if qa_tokens(g)]
  if not golds:
    if unanswerable == "skip":
      return None
    value = float(not qa_tokens(output))
    return {"accuracy": value, "exact_match": value, "f1": value}
  return {
      "accuracy": float(answer_in_output(output, golds)),
      "exact_match": max(exact_match(output, g) for g in golds),
      "f1": max(token_f1(output, g) for g in golds),
  }


# ----------------------------------------------------------------------------------------
# ROUGE-L.


def rouge_tokens(text: str) -> list[str]:
  """ROUGE tokens: folded text split at every character that is not a letter, number or
  combining mark; unspaced scripts split into characters. No stemming (no stemmer covers
  all XLSum languages, and the paper names none).

  On plain ASCII this equals rouge_score's tokenizer (lowercase, split on [^a-z0-9]).
  """
  tokens, word = [], ""
  for ch in _fold(text):
    if _is_word_char(ch):
      word += ch
    else:
      if word:
        tokens.extend(_segment_unspaced(word))
      word = ""
  if word:
    tokens.extend(_segment_unspaced(word))
  return tokens


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
  pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
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
# Multiple choice: option extraction.

# Words after which the next option marker is the answer ("The answer is (2)", "Ответ: B",
# "答案是B", "Jawabannya adalah C"). Matched case-insensitively, with any word suffix.
ANSWER_KEYWORDS = (
    "answer", "option", "choice",                        # en
    "respuesta", "opción", "opcion",                     # es
    "resposta", "opção", "opcao",                        # pt
    "réponse", "antwort",                                # fr, de
    "ответ", "вариант",                                  # ru
    "απάντηση", "επιλογή",                               # el
    "cevap", "yanıt", "seçenek",                         # tr
    "jawaban", "pilihan", "opsi",                        # id
    "jibu", "chaguo",                                    # sw
    "erantzun", "aukera",                                # eu
    "ìdáhùn", "idahun",                                  # yo
    "उत्तर", "विकल्प",                                     # hi
    "উত্তর", "సమాధానం", "جواب", "الجواب", "إجابة", "الإجابة", "الخيار",  # bn, te, ur/ar
    "정답", "답", "선택",                                   # ko
    "คำตอบ", "ตัวเลือก",                                   # th
    "答案", "选项", "選項", "选择", "選擇", "回答",          # zh, ja
)
_KEYWORD_RE = re.compile(
    "|".join(re.escape(k) for k in sorted(ANSWER_KEYWORDS, key=len, reverse=True)),
    re.IGNORECASE)
_KEYWORD_WINDOW = 24  # characters after a keyword searched for its marker
_DIGIT_MARKER_RE = re.compile(r"([(\[【]\s*)?([0-9]+)(\s*[)\]】])?")
_LETTER_MARKER_RE = re.compile(r"([(\[【]\s*)?([A-Za-z])(\s*[)\]】])?")
# Characters that may precede a marker at the start of a line (markdown, quotes, bullets).
_LINE_PREFIX = set(" \t*_\"'“‘「『#>-•")
_LINE_SUFFIX = set("*_\"'”’」』")
_SENTENCE_END = set(".!?。！？\n")


def _glued(ch: str) -> bool:
  """Whether a neighbour `ch` would make a marker part of a longer token: any digit, or a
  Latin letter (other scripts may touch a marker: "答案是B")."""
  if not ch:
    return False
  if ch.isascii():
    return ch.isalnum()
  return ch.isdigit() or (ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN"))


@dataclasses.dataclass(frozen=True)
class _Marker:
  """One candidate option marker found in an output (character span and option)."""
  start: int
  end: int
  index: int  # 0-based option
  bracketed: bool  # "(2)", "[B]", "B)"
  line_start: bool  # only whitespace, bullets or markdown before it on its line
  lowercase: bool  # an unbracketed lowercase letter: trusted after a keyword only


def _find_markers(text: str, num_options: int, letters: bool) -> list[_Marker]:
  """Every standalone, in-range option marker in `text`, in order of position.

  Standalone: not glued to a Latin letter or digit ("10", "2nd", "AB", "B2"), nor part
  of a dotted or decimal token ("2.5", "U.S.A", "B's"). Neighbours from other scripts
  are fine ("答案是B", "정답은 B입니다"). An unbracketed lowercase letter is kept (flagged
  `lowercase`, for the keyword tier only) when no word follows it ("answer is b."); an
  uppercase "A" that opens a sentence before a lowercase word is the English article.
  """
  found = []
  pattern = _LETTER_MARKER_RE if letters else _DIGIT_MARKER_RE
  for m in pattern.finditer(text):
    opened, value, closed = m.group(1), m.group(2), m.group(3)
    start, end = m.start(), m.end()
    before = text[start - 1] if start > 0 else ""
    before2 = text[start - 2] if start > 1 else ""
    after = text[end] if end < len(text) else ""
    after2 = text[end + 1] if end + 1 < len(text) else ""
    if _glued(before) or _glued(after):
      continue
    if (after in ".,'’" and _glued(after2)) or (before in ".,'’" and _glued(before2)):
      continue
    index = ord(value.upper()) - ord("A") if letters else int(value) - 1
    if not 0 <= index < num_options:
      continue
    bracketed = bool(opened or closed)
    following = text[end:]
    lowercase = letters and value.islower() and not bracketed
    if lowercase and re.match(r"\s*\w", following):
      continue  # "is a cat", "a b c": an English word, not a label
    if letters and value == "A" and not bracketed:
      head = text[:start].rstrip()
      sentence_start = not head or head[-1] in _SENTENCE_END
      if sentence_start and following[:1].isspace() and following.lstrip()[:1].islower():
        continue  # "A man is walking."
    line_start = all(ch in _LINE_PREFIX for ch in text[:start].rsplit("\n", 1)[-1])
    found.append(_Marker(start, end, index, bracketed, line_start, lowercase))
  return found


def _line_start_ok(text: str, marker: _Marker, letters: bool) -> bool:
  """A marker opening a line counts when it is alone on the line or followed by ".", ":"
  (digits: "2. Neutral") or, for letters, by a space ("B Paris")."""
  rest = text[marker.end:]
  i = 0
  while i < len(rest) and rest[i] in _LINE_SUFFIX:
    i += 1
  rest = rest[i:]
  if not rest.split("\n", 1)[0].strip():
    return True
  if rest[0] in ".:：":
    return True
  return letters and rest[0] in " \t"


def extract_choice(output: str, options: Sequence[str], *,
                   markers: Literal["digits", "letters"]) -> int | None:
  """The option an output picks, as a 0-based index, or None if it cannot be told.

  Options are labelled (1), (2), ... (markers="digits": XNLI, XStoryCloze) or A, B, ...
  (markers="letters": MMMLU). Tiers are tried in order; the first that yields an answer
  decides:
    1. Keyword: the first marker within 24 characters after an answer keyword
       (`ANSWER_KEYWORDS`, several languages): "The answer is B.", "Option 2",
       "Answer: (2)", "答案是B". Earliest keyword with a marker wins.
    2. Explicit marker, earliest wins: bracketed "(2)", "[B]", "(b)"; closed "B) Paris",
       "2)"; or at the start of a line: "B", "B. Paris", "2.", "2: Neutral", "B Paris".
       If these markers name every option, the output echoes the option list and this
       tier is skipped.
    3. Option text: exactly one option's text occurs in the output (token containment,
       as `answer_in_output`); an option found only inside a longer found option
       ("Paris" in "Paris, Texas") does not count. Texts in any language work, so pass
       the texts shown in the prompt.
    4. Bare marker anywhere ("I pick B because", "2"), if all bare markers agree.
  Markers must be standalone (see `_find_markers`): "10" is not "1", "2.5" not "2", and
  "A" opening a sentence before a lowercase word ("A man is ...") is the article.
  Fullwidth ("（２）") and non-ASCII digits ("(٢)", "(२)") are read after NFKC.

  Args:
    output: the generated text.
    options: the option texts (len = number of options; "" disables text matching
      for that option).
    markers: "digits" or "letters".

  Returns:
    The 0-based option index, or None.
  """
  if markers not in ("digits", "letters"):
    raise ValueError(f"markers must be 'digits' or 'letters', got {markers!r}")
  if not options:
    raise ValueError("options must not be empty")
  letters = markers == "letters"
  n = len(options)
  text = _ascii_digits(unicodedata.normalize("NFKC", output))
  text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
  found = _find_markers(text, n, letters)

  # Tier 1: answer keywords.
  for kw in _KEYWORD_RE.finditer(text):
    if kw.start() > 0 and text[kw.start() - 1].isalpha() and not _is_unspaced(kw.group()[0]):
      continue  # "adoption" is not "option"
    window_end = kw.end() + _KEYWORD_WINDOW
    for marker in found:
      if kw.end() <= marker.start and marker.end <= window_end:
        return marker.index

  # Tier 2: explicit markers.
  found = [m for m in found if not m.lowercase]
  explicit = [m for m in found
              if m.bracketed or (m.line_start and _line_start_ok(text, m, letters))]
  if explicit and (len({m.index for m in explicit}) < n or n == 1):
    return explicit[0].index

  # Tier 3: option text.
  out_tokens = qa_tokens(output)
  option_tokens = [qa_tokens(o) for o in options]
  hits = [i for i, toks in enumerate(option_tokens) if _contains_tokens(out_tokens, toks)]
  hits = [i for i in hits if not any(
      j != i and len(option_tokens[j]) > len(option_tokens[i])
      and _contains_tokens(option_tokens[j], option_tokens[i]) for j in hits)]
  if len(hits) == 1:
    return hits[0]
  if len(hits) > 1:
    return None

  # Tier 4: bare markers, if unanimous.
  bare = {m.index for m in found}
  if len(bare) == 1:
    return bare.pop()
  return None


def parse_gold_choice(gold: int | str, options: Sequence[str], *,
                      markers: Literal["digits", "letters"]) -> int:
  """0-based index of a gold answer given as a 1-based int (digits markers only), a
  marker string ("2", "(2)", "B"), an option text ("Neutral") or a labelled option
  ("(2) Neutral"). Raises ValueError if it names no option."""
  n = len(options)
  if isinstance(gold, bool):
    raise ValueError(f"gold must be int or str, got {gold!r}")
  if isinstance(gold, int):
    # For letter markers an int could be 0- or 1-based (HF MMMLU uses letters anyway).
    if markers != "digits" or not 1 <= gold <= n:
      raise ValueError(f"int gold {gold} is not a 1-based option number of {n} (markers={markers})")
    return gold - 1
  stripped = gold.strip().strip("()[]").strip()
  if markers == "digits" and stripped.isdigit() and 1 <= int(stripped) <= n:
    return int(stripped) - 1
  if markers == "letters" and len(stripped) == 1 and stripped.isalpha():
    index = ord(stripped.upper()) - ord("A")
    if 0 <= index < n:
      return index
  normalized = qa_tokens(gold)
  matches = [i for i, o in enumerate(options) if normalized and qa_tokens(o) == normalized]
  if len(matches) == 1:
    return matches[0]
  index = extract_choice(gold, options, markers=markers)
  if index is None:
    raise ValueError(f"gold {gold!r} names none of the options {list(options)}")
  return index


def score_choice(output: str, gold: int | str, options: Sequence[str], *,
                 markers: Literal["digits", "letters"]) -> dict[str, float]:
  """Classification / multiple-choice record.

  Returns:
    {"accuracy": 1.0 if the extracted option is the gold one, "parsed": 1.0 if any
     option could be extracted (a format-compliance diagnostic)}.
  """
  predicted = extract_choice(output, options, markers=markers)
  target = parse_gold_choice(gold, options, markers=markers)
  return {"accuracy": float(predicted == target), "parsed": float(predicted is not None)}


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
