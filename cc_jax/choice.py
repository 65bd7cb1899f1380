"""Which option a generated answer picks (XNLI, XStoryCloze, MMMLU): markers, keywords,
ordinals and option texts in the benchmarks' languages, and the accuracy record.

Scores are fractions in [0, 1]. Text normalisation lives in `textnorm.py`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Literal, Sequence

from cc_jax import textnorm


def _contains_tokens(haystack: Sequence[str], needle: Sequence[str]) -> bool:
  """Whether `needle` is a non-empty contiguous subsequence of `haystack`."""
  n = len(needle)
  if n == 0:
    return False
  return any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


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
_ORDINAL_BEFORE = 16  # characters before a keyword searched for an ordinal ("the third option")

# Ordinal words of the first four options in the benchmarks' languages, by option index: read
# next to an answer keyword only ("the 3rd option", "الخيار الثالث", "第三个选项", "세 번째 선택지").
ORDINALS = (
    ("first", "1st", "第一", "一番目", "첫 번째", "첫번째", "birinci", "الأول", "الأولى", "पहला", "पहली", "पहले",
     "แรก", "ที่หนึ่ง", "первый", "первая", "первое", "primera", "primero", "primeira", "premier", "première",
     "erste", "pertama", "kwanza", "πρώτη", "πρώτο"),
    ("second", "2nd", "第二", "二番目", "두 번째", "두번째", "ikinci", "الثاني", "الثانية", "दूसरा", "दूसरी",
     "दूसरे", "ที่สอง", "второй", "вторая", "второе", "segunda", "segundo", "deuxième", "seconde", "zweite",
     "kedua", "pili", "δεύτερη", "δεύτερο"),
    ("third", "3rd", "第三", "三番目", "세 번째", "세번째", "üçüncü", "الثالث", "الثالثة", "तीसरा", "तीसरी", "तीसरे",
     "ที่สาม", "третий", "третья", "третье", "tercera", "tercero", "terceira", "troisième", "dritte", "ketiga",
     "tatu", "τρίτη", "τρίτο"),
    ("fourth", "4th", "第四", "四番目", "네 번째", "네번째", "dördüncü", "الرابع", "الرابعة", "चौथा", "चौथी", "चौथे",
     "ที่สี่", "четвертый", "четвёртый", "четвертая", "четвёртая", "cuarta", "cuarto", "quarta", "quatrième",
     "vierte", "keempat", "nne", "τέταρτη", "τέταρτο"),
)
_ORDINAL_RE = re.compile("|".join(
    f"(?P<o{i}_{k}>{re.escape(word)})" for i, words in enumerate(ORDINALS) for k, word in enumerate(words)),
    re.IGNORECASE)
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
  ordinal: bool = False  # an ordinal word ("third"): trusted next to a keyword only


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


def _find_ordinals(text: str, num_options: int) -> list[_Marker]:
  """Ordinal words of in-range options, not inside a longer word of a spaced script."""
  found = []
  for m in _ORDINAL_RE.finditer(text):
    index = int(m.lastgroup[1:].split("_")[0])
    before = text[m.start() - 1] if m.start() else ""
    after = text[m.end()] if m.end() < len(text) else ""
    spaced = not textnorm.is_unspaced(m.group()[0]) and not _is_hangul(m.group()[0])
    if index >= num_options or (spaced and (before.isalnum() or after.isalnum())):
      continue
    found.append(_Marker(m.start(), m.end(), index, False, False, False, ordinal=True))
  return found


def _is_hangul(ch: str) -> bool:
  return "\uac00" <= ch <= "\ud7a3"


def _echoes_options(text: str, explicit: Sequence[_Marker], options: Sequence[str]) -> bool:
  """Whether explicit markers list the options in order from the first, each followed by its
  own text ("(1) Entailment (2) Neutral ...", also cut short): a copy of the prompt's list,
  which chooses nothing."""
  if len({m.index for m in explicit}) < 2:
    return False
  ordered = sorted(explicit, key=lambda m: m.start)
  if [m.index for m in ordered] != list(range(len(ordered))):
    return False
  for m, nxt in zip(ordered, ordered[1:] + [None]):
    said = textnorm.qa_tokens(text[m.end:nxt.start if nxt else len(text)])
    expected = textnorm.qa_tokens(options[m.index])
    if expected == textnorm.qa_tokens(text[m.start:m.end]):
      continue  # the options' texts are unknown (they are the labels): the run decides
    if expected and said[:len(expected)] != expected[:len(said)]:
      return False  # something other than the option's own text follows its marker
  return True


def extract_choice(output: str, options: Sequence[str], *,
                   markers: Literal["digits", "letters"]) -> int | None:
  """The option an output picks, as a 0-based index, or None if it cannot be told.

  Options are labelled (1), (2), ... (markers="digits": XNLI, XStoryCloze) or A, B, ...
  (markers="letters": MMMLU). Tiers are tried in order; the first that yields an answer
  decides:
    1. Keyword: the first marker or ordinal word within 24 characters after an answer
       keyword (`ANSWER_KEYWORDS`, several languages): "The answer is B.", "Option 2",
       "Answer: (2)", "答案是B", "الخيار الثالث"; else an ordinal just before one: "the 3rd
       option", "第三个选项", "세 번째 선택지" (`ORDINALS`). Earliest keyword that has one wins.
    2. Explicit marker, earliest wins: bracketed "(2)", "[B]", "(b)"; closed "B) Paris",
       "2)"; or at the start of a line: "B", "B. Paris", "2.", "2: Neutral", "B Paris".
       If these markers name every option, or list the options in order from the first,
       each followed by its own text ("(1) Entailment\n(2) Neutral", an echo of the
       prompt cut short), the output echoes the option list and this tier is skipped; an
       echo then chooses nothing unless a keyword (tier 1) said otherwise.
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
  text = textnorm.ascii_digits(unicodedata.normalize("NFKC", output))
  text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
  found = _find_markers(text, n, letters)

  # Tier 1: answer keywords, with a marker or an ordinal after them, or an ordinal just before.
  ordinals = _find_ordinals(text, n)
  for kw in _KEYWORD_RE.finditer(text):
    if kw.start() > 0 and text[kw.start() - 1].isalpha() and not textnorm.is_unspaced(kw.group()[0]):
      continue  # "adoption" is not "option"
    window_end = kw.end() + _KEYWORD_WINDOW
    after = [m for m in found + ordinals if kw.end() <= m.start and m.end <= window_end]
    if after:
      return min(after, key=lambda m: m.start).index
    before = [m for m in ordinals if kw.start() - _ORDINAL_BEFORE <= m.start and m.end <= kw.start()]
    if before:
      return max(before, key=lambda m: m.end).index

  # Tier 2: explicit markers.
  found = [m for m in found if not m.lowercase]
  explicit = [m for m in found
              if m.bracketed or (m.line_start and _line_start_ok(text, m, letters))]
  echo = _echoes_options(text, explicit, options)
  if explicit and not echo and (len({m.index for m in explicit}) < n or n == 1):
    return explicit[0].index

  # Tier 3: option text.
  out_tokens = textnorm.qa_tokens(output)
  option_tokens = [textnorm.qa_tokens(o) for o in options]
  hits = [i for i, toks in enumerate(option_tokens) if _contains_tokens(out_tokens, toks)]
  if echo and len(hits) > 1:
    return None
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
  normalized = textnorm.qa_tokens(gold)
  matches = [i for i, o in enumerate(options) if normalized and textnorm.qa_tokens(o) == normalized]
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
