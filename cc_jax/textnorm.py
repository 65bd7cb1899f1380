"""Text normalisation shared by the metrics: folding, numbers, tokens of any script.

  * Unicode NFKC, then `casefold` (Greek final sigma, German ß), and Turkish "İ" folds to
    "i" (casefold alone leaves a combining dot). Format characters (Cf: zero-width
    joiners, BOM) are removed, and so are Arabic short-vowel marks and tatweel, which
    writers use optionally ("مِصْرُ" = "مصر"). Decimal digits of every script
    (Arabic-Indic, Devanagari, Thai, ...) read as ASCII digits; U+2212 reads as "-".
  * Numbers are one canonical token: thousands separators go ("1,000" -> "1000"), a
    decimal point stays ("2.5"), trailing decimal zeros go ("3.0" -> "3", so MKQA's golds
    written "3.0" match "3"), and a minus sign that opens a number stays ("-1" is not "1").
  * Scripts written without spaces (Han, Hiragana, Katakana, Bopomofo, Thai, Lao, Khmer,
    Myanmar) are segmented into characters, each with its trailing combining marks (Thai
    "ที่" is one token). The decision is per character, by Unicode block, so no language
    code is needed and mixed text ("iPhone手机") segments correctly.
"""

from __future__ import annotations

import re
import string
import unicodedata

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


def is_unspaced(ch: str) -> bool:
  """Whether `ch` belongs to a script written without spaces between words."""
  cp = ord(ch)
  return any(lo <= cp <= hi for lo, hi in _UNSPACED_RANGES)


def _is_word_char(ch: str) -> bool:
  """Letters, numbers and combining marks (Devanagari vowel signs, Arabic harakat)."""
  return unicodedata.category(ch)[0] in "LNM"


def is_punct(ch: str) -> bool:
  # ASCII punctuation includes symbols ($, +, ~) that SQuAD's normaliser also strips.
  return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def ascii_digits(text: str) -> str:
  """Replaces decimal digits of any script (category Nd) with ASCII digits."""
  return "".join(
      str(unicodedata.digit(ch)) if not ch.isascii() and unicodedata.category(ch) == "Nd"
      else ch for ch in text)


def fold(text: str) -> str:
  """NFKC, case folding, ASCII digits; format characters and Arabic vowel marks removed."""
  text = unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i")
  text = "".join(ch for ch in text
                 if unicodedata.category(ch) != "Cf" and ch not in _ARABIC_OPTIONAL)
  return ascii_digits(text)


def segment_unspaced(chunk: str) -> list[str]:
  """Splits one whitespace-free chunk: unspaced-script characters (plus their trailing
  combining marks) become single tokens, runs of anything else stay whole."""
  tokens, run = [], ""
  for ch in chunk:
    if tokens and not run and unicodedata.category(ch).startswith("M") and is_unspaced(
        tokens[-1][0]):
      tokens[-1] += ch
    elif is_unspaced(ch):
      if run:
        tokens.append(run)
        run = ""
      tokens.append(ch)
    else:
      run += ch
  if run:
    tokens.append(run)
  return tokens


# A number after folding: an optional minus (not inside a word: "1-3" is a range), digit groups
# with thousands commas, an optional decimal part. Not glued to a further digit or letter-digit.
_NUMBER = re.compile(r"(?<![\w.])(-)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d])")


def _canonical_number(match: re.Match) -> str:
  minus, whole = match.group(1) or "", match.group(2).replace(",", "")
  fraction = (match.group(3) or "").rstrip("0")
  return minus + whole + ("." + fraction if fraction else "")


def split_numbers(text: str) -> list[tuple[str, bool]]:
  """Folded `text` as pieces (piece, is_number), numbers in canonical form (module docstring)."""
  text = fold(text).replace("\u2212", "-")
  pieces, end = [], 0
  for m in _NUMBER.finditer(text):
    pieces += [(text[end:m.start()], False), (_canonical_number(m), True)]
    end = m.end()
  return pieces + [(text[end:], False)]


def qa_tokens(text: str) -> list[str]:
  """Tokens of `text` after multilingual SQuAD-style normalisation.

  Folding and numbers as in the module docstring; other punctuation (Unicode P* and ASCII
  punctuation) becomes a space. Replacing rather than deleting (SQuAD deletes) keeps clitics
  apart: "İstanbul'da" -> "istanbul da", "l'Europe" -> "l europe". The English articles
  a/an/the are dropped (in every language, as SQuAD and MLQA do). Tokens are whitespace
  words, with unspaced scripts split into characters.
  """
  tokens = []
  for piece, number in split_numbers(text):
    if number:
      tokens.append(piece)
      continue
    words = "".join(" " if is_punct(ch) else ch for ch in piece).split()
    for word in words:
      if word not in _ARTICLES:
        tokens.extend(segment_unspaced(word))
  return tokens


def normalize_answer(text: str) -> str:
  """`qa_tokens(text)` joined by single spaces (the form exact match compares)."""
  return " ".join(qa_tokens(text))


def containment_form(text: str) -> str:
  """`text` as the paper's answer check compares it: folded, numbers canonical, punctuation
  turned into spaces, runs of whitespace made one space. Nothing else changes, so an answer
  glued to an affix stays findable ("서울입니다", "وباريس", "ankarada")."""
  pieces = [piece if number else "".join(" " if is_punct(ch) else ch for ch in piece)
            for piece, number in split_numbers(text)]
  return " ".join("".join(pieces).split())


# A canonical number inside a containment form (see split_numbers).
CANONICAL_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def rouge_tokens(text: str) -> list[str]:
  """ROUGE tokens: folded text split at every character that is not a letter, number or
  combining mark; unspaced scripts split into characters. No stemming (no stemmer covers
  all XLSum languages, and the paper names none).

  On plain ASCII this equals rouge_score's tokenizer (lowercase, split on [^a-z0-9]).
  """
  tokens, word = [], ""
  for ch in fold(text):
    if _is_word_char(ch):
      word += ch
    else:
      if word:
        tokens.extend(segment_unspaced(word))
      word = ""
  if word:
    tokens.extend(segment_unspaced(word))
  return tokens
