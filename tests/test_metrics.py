"""Tests of cc_jax.metrics, choice and textnorm: option extraction, QA accuracy/EM/F1, ROUGE-L,
aggregation.

Expected values are worked out by hand in the comments; ROUGE-L is also checked against
the rouge-score package on English.
"""

import random

import pytest

from cc_jax import choice, metrics, textnorm

XNLI_EN = ["Entailment", "Neutral", "Contradiction"]
XNLI_ZH = ["蕴含", "中立", "矛盾"]
XNLI_AR = ["استلزام", "محايد", "تناقض"]
XNLI_HI = ["अनुगमन", "तटस्थ", "विरोधाभास"]
MMMLU = ["London", "Paris", "Rome", "Berlin"]


# ----------------------------------------------------------------------------------------
# Option extraction.


@pytest.mark.parametrize("output, expected", [
    ("(2)", 1),
    ("2", 1),
    ("Option 2", 1),
    ("Answer: 1", 0),
    ("The answer is (3) Contradiction", 2),
    ("2. Neutral", 1),
    ("**2**", 1),
    ("I would say 3.", 2),                 # tier 4: one bare marker
    ("Neutral", 1),                        # tier 3: option text
    ("There are 10 men, so it is neutral.", 1),  # "10" is not option 1
    ("10 people", None),
    ("2.5", None),                         # a decimal, not option 2
    ("4", None),                           # out of range
    ("（２）", 1),                          # fullwidth, via NFKC
    ("(٢)", 1),                            # Arabic-Indic digit
    ("(२) तटस्थ", 1),                       # Devanagari digit
    # The model echoes the option list: no marker tier decides, three texts -> None.
    ("(1) Entailment (2) Neutral (3) Contradiction", None),
    # ... but a keyword after the echo does.
    ("(1) Entailment (2) Neutral (3) Contradiction\n\nIf you have to choose one of these "
     "options, your answer would be: (2)", 1),
    # An echo of the list cut short (40 tokens) lists options in order: it chooses nothing.
    ("(1) Entailment\n(2) Neutral", None),
    ("(1) Entailment\n(2) Neutral\n(3", None),
    ("(1) Entailment\n(2) Neutral\n\nThe answer is (2)", 1),
    ("(1) Entailment", 0),                 # one labelled option is a choice, not a list
    ("Not entailment, it is neutral.", None),  # two option texts: ambiguous
    ("(3) Entailment", 2),                 # an explicit marker beats the option text
    ("2 or 3", None),                      # bare markers disagree
])
def test_extract_choice_digits(output, expected):
  assert choice.extract_choice(output, XNLI_EN, markers="digits") == expected


@pytest.mark.parametrize("output, options, expected", [
    ("中立", XNLI_ZH, 1),
    ("我认为是矛盾的。", XNLI_ZH, 2),
    ("答案是(1)", XNLI_ZH, 0),
    ("الإجابة: محايد", XNLI_AR, 1),          # keyword without marker, then option text
    ("الجواب هو (٣)", XNLI_AR, 2),
    ("उत्तर: विरोधाभास", XNLI_HI, 2),
    ("उत्तर (1) है", XNLI_HI, 0),
    ("Jawabannya adalah 2", ["Ending one", "Ending two"], 1),
    ("(1) 蕴含\n(2) 中立", XNLI_ZH, None),    # an echo of the list, in Chinese
    # Ordinals next to an answer keyword, in the evaluation's languages.
    ("the 3rd option", XNLI_EN, 2),
    ("The second option is right.", XNLI_EN, 1),
    ("First, I think it is neutral.", XNLI_EN, 1),  # "First" far from any keyword: the text decides
    ("第三个选项", XNLI_ZH, 2),
    ("答案是第二个", XNLI_ZH, 1),
    ("세 번째 선택지입니다", XNLI_EN, 2),
    ("Doğru cevap ikinci seçenek.", XNLI_EN, 1),
    ("الإجابة هي الخيار الثالث", XNLI_AR, 2),
    ("ตัวเลือกที่สาม", XNLI_EN, 2),
    ("सही उत्तर तीसरा विकल्प है", XNLI_HI, 2),
])
def test_extract_choice_multilingual(output, options, expected):
  assert choice.extract_choice(output, options, markers="digits") == expected


@pytest.mark.parametrize("output, expected", [
    ("B", 1),
    ("(B)", 1),
    ("(b)", 1),
    ("[C]", 2),
    ("The answer is B.", 1),
    ("The answer is A because", 0),        # mid-sentence "A" after a keyword is a label
    ("answer is b.", 1),                   # lowercase, nothing after it
    ("the answer is a bit unclear", None),  # lowercase "a" before a word: an article
    ("B) Paris", 1),
    ("B. Paris", 1),
    ("A", 0),
    ("A. London", 0),
    ("A Paris", 0),                        # "A" before a capitalised word is a label
    ("A dog is a mammal.", None),          # sentence-initial article
    ("Yes. A man could say London.", 0),   # article after a full stop; then option text
    ("Paris", 1),
    ("The capital of France is Paris.", 1),
    ("(D) Paris", 3),                      # marker beats text
    ("答案是C", 2),
    ("正确答案是D。", 3),
    ("정답은 B입니다", 1),
    ("La respuesta correcta es la C", 2),
    ("Ответ: D", 3),
    ("Vitamin A is", 0),                   # bare mid-sentence capital letter
    ("I pick b", None),                    # a bare lowercase letter never counts
    ("U.S.A", None),
    ("B's", None),
    ("AB", None),
    ("E", None),                           # out of range for four options
    ("adoption B then (C)", 2),            # "adoption" is not the keyword "option"
])
def test_extract_choice_letters(output, expected):
  assert choice.extract_choice(output, MMMLU, markers="letters") == expected


def test_extract_choice_prefers_longer_option_text():
  options = ["Paris", "Paris, Texas", "Rome", "Oslo"]
  assert choice.extract_choice("It is Paris, Texas.", options, markers="letters") == 1
  assert choice.extract_choice("It is Paris.", options, markers="letters") == 0


def test_extract_choice_keeps_the_minus_sign_of_option_texts():
  options = ["0", "-1", "1", "2"]
  assert choice.extract_choice("-1", options, markers="letters") == 1
  assert choice.extract_choice("1", options, markers="letters") == 2
  assert choice.extract_choice("答案是 -1", options, markers="letters") == 1
  assert choice.extract_choice("The result is −1.", options, markers="letters") == 1  # U+2212


def test_extract_choice_numeric_option_texts():
  options = ["1", "10", "100", "1000"]
  # "10" is found as a whole token; "1" is not found inside it.
  assert choice.extract_choice("The result is 10.", options, markers="letters") == 1
  assert choice.extract_choice("C", options, markers="letters") == 2


def test_extract_choice_rejects_bad_arguments():
  with pytest.raises(ValueError):
    choice.extract_choice("1", XNLI_EN, markers="roman")
  with pytest.raises(ValueError):
    choice.extract_choice("1", [], markers="digits")


@pytest.mark.parametrize("gold, markers, options, expected", [
    (2, "digits", XNLI_EN, 1),
    ("3", "digits", XNLI_EN, 2),
    ("(1)", "digits", XNLI_EN, 0),
    ("neutral", "digits", XNLI_EN, 1),
    ("(3) Contradiction", "digits", XNLI_EN, 2),
    ("矛盾", "digits", XNLI_ZH, 2),
    ("C", "letters", MMMLU, 2),
    ("d", "letters", MMMLU, 3),
    ("Paris", "letters", MMMLU, 1),
])
def test_parse_gold_choice(gold, markers, options, expected):
  assert choice.parse_gold_choice(gold, options, markers=markers) == expected


@pytest.mark.parametrize("gold, markers", [
    (5, "digits"), (0, "digits"), (1, "letters"), ("E", "letters"), ("Madrid", "letters"),
    (True, "digits"),
])
def test_parse_gold_choice_rejects(gold, markers):
  with pytest.raises(ValueError):
    choice.parse_gold_choice(gold, MMMLU, markers=markers)


def test_score_choice():
  assert choice.score_choice("(2) Neutral", 2, XNLI_EN, markers="digits") == {
      "accuracy": 1.0, "parsed": 1.0}
  assert choice.score_choice("(1)", "Neutral", XNLI_EN, markers="digits") == {
      "accuracy": 0.0, "parsed": 1.0}
  assert choice.score_choice("I don't know", "B", MMMLU, markers="letters") == {
      "accuracy": 0.0, "parsed": 0.0}


# ----------------------------------------------------------------------------------------
# QA.


@pytest.mark.parametrize("text, tokens", [
    ("The Eiffel Tower!", ["eiffel", "tower"]),
    ("北京是中国的首都。", ["北", "京", "是", "中", "国", "的", "首", "都"]),
    ("iPhone手机", ["iphone", "手", "机"]),
    ("東京タワー", ["東", "京", "タ", "ワ", "ー"]),
    # Thai: vowel and tone marks stay on their consonant (ที่ = ท + ี + ่).
    ("กรุงเทพ ที่", ["ก", "รุ", "ง", "เ", "ท", "พ", "ที่"]),
    ("भारत की राजधानी नई दिल्ली है।", ["भारत", "की", "राजधानी", "नई", "दिल्ली", "है"]),
    ("عاصمة مصر هي القاهرة.", ["عاصمة", "مصر", "هي", "القاهرة"]),
    ("مِصْرُ", ["مصر"]),                       # optional Arabic vowel marks dropped
    ("İstanbul'da 1,000 kişi", ["istanbul", "da", "1000", "kişi"]),
    ("2.5 kg", ["2.5", "kg"]),                 # a decimal stays one number
    ("3.0", ["3"]),                            # MKQA writes numeric golds "3.0": not "30"
    ("1,234.50", ["1234.5"]),
    ("-1 or 1", ["-1", "or", "1"]),            # a minus sign opening a number is kept
    ("−5", ["-5"]),                            # U+2212 MINUS SIGN
    ("pages 1-3", ["pages", "1", "3"]),        # a dash between numbers is a range
    ("3개", ["3", "개"]),
    ("Größe ΣΟΦΟΣ", ["grösse", "σοφοσ"]),      # casefold: ß -> ss is NFKC-safe, final sigma
    ("ＡＢＣ　１２", ["abc", "12"]),              # fullwidth
    ("١٩٩٨", ["1998"]),
    ("zero\u200bwidth", ["zerowidth"]),         # format characters removed
])
def test_qa_tokens(text, tokens):
  assert textnorm.qa_tokens(text) == tokens


def test_exact_match_and_f1_by_hand():
  assert metrics.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
  assert metrics.exact_match("İSTANBUL", "istanbul") == 1.0
  assert metrics.exact_match("北京 市", "北京市") == 1.0
  assert metrics.exact_match("Paris", "Rome") == 0.0
  # pred {capital, is, paris, france}, gold {paris}: P = 1/4, R = 1, F1 = 2/5.
  assert metrics.token_f1("The capital is Paris, France.", "Paris") == pytest.approx(0.4)
  # Repeated tokens are counted as a bag: pred [a1, a1], gold [a1] -> P 1/2, R 1 -> 2/3.
  assert metrics.token_f1("x x", "x") == pytest.approx(2 / 3)
  assert metrics.token_f1("", "x") == 0.0
  assert metrics.token_f1("y", "x") == 0.0


def test_answer_in_output_is_containment_with_number_boundaries():
  assert metrics.answer_in_output("No, it is not.", ["no"])
  assert metrics.answer_in_output("I think it's Paris.", ["PARIS"])
  assert metrics.answer_in_output("İstanbul'da yaşıyor", ["İstanbul"])
  assert metrics.answer_in_output("about 1,000 people", ["1000"])
  assert not metrics.answer_in_output("about 100 people", ["10"])  # numbers are never split
  assert not metrics.answer_in_output("2.5 kg", ["2"])
  assert not metrics.answer_in_output("30 seasons", ["3.0"])
  assert not metrics.answer_in_output("anything", [""])
  # The known false positives of containment (the paper's metric), documented in metrics.py.
  assert metrics.answer_in_output("It is not known.", ["no"])
  assert metrics.answer_in_output("Romeo", ["Rome"])


# Answers glued to an affix, and numbers, in seven languages: containment (the paper's
# accuracy) finds them; token exact match and F1 score what they score.
@pytest.mark.parametrize("output, gold, expected", [
    # ko: one token "서울입니다" (Seoul + copula): contained; no common token.
    ("서울입니다", "서울", {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.0}),
    # ar: "وباريس" (and Paris): contained; one token, not the gold's.
    ("وباريس", "باريس", {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.0}),
    # tr: "Ankarada" (in Ankara), and the locative after an apostrophe, which splits off.
    ("Ankarada", "Ankara", {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.0}),
    # tr: tokens [ankara, da]: P 1/2, R 1 -> F1 2/3.
    ("Ankara'da", "Ankara", {"accuracy": 1.0, "exact_match": 0.0, "f1": 2 / 3}),
    # zh: tokens 答 案 是 北 京 (5), gold 北 京 (2): P 2/5, R 1 -> F1 4/7.
    ("答案是北京。", "北京", {"accuracy": 1.0, "exact_match": 0.0, "f1": 4 / 7}),
    # th: the gold's characters run inside the output's.
    ("คำตอบคือกรุงเทพ", "กรุงเทพ", {"accuracy": 1.0, "exact_match": 0.0}),
    # hi: Devanagari digits read as ASCII; "३.०" is the number 3: tokens [उत्तर, 3, है]: P 1/3 -> F1 1/2.
    ("उत्तर ३.० है", "3", {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.5}),
    # en: MKQA's "3.0" is 3: tokens [there, are, 3, seasons]: P 1/4, R 1 -> F1 2/5.
    ("There are 3 seasons.", "3.0", {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.4}),
    ("3", "3.0", {"accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}),
    ("30", "3.0", {"accuracy": 0.0, "exact_match": 0.0, "f1": 0.0}),
    # ko: a counter glued to a number: tokens [3, 개입니다]: P 1/2, R 1 -> F1 2/3.
    ("3개입니다", "3.0", {"accuracy": 1.0, "exact_match": 0.0, "f1": 2 / 3}),
])
def test_score_qa_containment_affixes_and_numbers(output, gold, expected):
  scores = metrics.score_qa(output, gold, unanswerable="skip")
  assert {k: scores[k] for k in expected} == pytest.approx(expected)


def test_score_qa_chinese():
  # 8 output characters, gold 北京 (2): P = 2/8, R = 1, F1 = 2 * 0.25 / 1.25 = 0.4.
  assert metrics.score_qa("北京是中国的首都。", "北京", unanswerable="skip") == pytest.approx(
      {"accuracy": 1.0, "exact_match": 0.0, "f1": 0.4})


def test_score_qa_arabic_and_hindi():
  # 4 output words, one is the gold: F1 = 2 * (1/4) / (5/4) = 0.4.
  assert metrics.score_qa("عاصمة مصر هي القاهرة.", "القاهرة", unanswerable="skip") == (
      pytest.approx({"accuracy": 1.0, "exact_match": 0.0, "f1": 0.4}))
  assert metrics.score_qa("القاهرة.", "القاهرة", unanswerable="skip") == {
      "accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}
  assert metrics.score_qa("नई दिल्ली", "नई दिल्ली।", unanswerable="skip") == {
      "accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}


def test_score_qa_thai():
  # Output 6 tokens (ก รุ ง เ ท พ), gold 12 (those + ม ห า น ค ร): common 6,
  # P = 1, R = 1/2, F1 = 2/3; the gold is not contained in the shorter output.
  assert metrics.score_qa("กรุงเทพ", "กรุงเทพมหานคร", unanswerable="skip") == pytest.approx(
      {"accuracy": 0.0, "exact_match": 0.0, "f1": 2 / 3})
  assert metrics.score_qa("เมืองหลวงคือกรุงเทพมหานคร", "กรุงเทพมหานคร",
                          unanswerable="skip")["accuracy"] == 1.0


def test_score_qa_mkqa_several_golds():
  golds = ["1998", "September 4, 1998", "sept. 1998"]
  # Output tokens [it was founded in 1998 by larry page] (8).
  # gold 1: [1998]: P 1/8, R 1 -> F1 2/9. gold 2: [september 4 1998]: P 1/8, R 1/3 -> 2/11.
  # gold 3: [sept 1998]: P 1/8, R 1/2 -> 1/5. Max: 2/9.
  out = "It was founded in 1998 by Larry Page."
  assert metrics.score_qa(out, golds, unanswerable="skip") == pytest.approx(
      {"accuracy": 1.0, "exact_match": 0.0, "f1": 2 / 9})
  assert metrics.score_qa("September 4, 1998.", golds, unanswerable="skip") == {
      "accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}
  # 2 of the 3 tokens of gold 2 -> P 1, R 2/3 -> F1 0.8; the gold is not contained.
  assert metrics.score_qa("September 1998", golds[1:2], unanswerable="skip") == pytest.approx(
      {"accuracy": 0.0, "exact_match": 0.0, "f1": 0.8})


@pytest.mark.parametrize("golds", ["", [], ["", " . "]])
def test_score_qa_unanswerable(golds):
  assert metrics.score_qa("Paris", golds, unanswerable="skip") is None
  assert metrics.score_qa("Paris", golds, unanswerable="empty") == {
      "accuracy": 0.0, "exact_match": 0.0, "f1": 0.0}
  assert metrics.score_qa(" ... ", golds, unanswerable="empty") == {
      "accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}


def test_score_qa_empty_golds_are_dropped_not_matched():
  # A "" among real golds must not make every output correct.
  assert metrics.score_qa("Rome", ["", "Paris"], unanswerable="skip")["accuracy"] == 0.0


def test_score_qa_requires_explicit_unanswerable_policy():
  with pytest.raises(TypeError):
    metrics.score_qa("Paris", "Paris")  # pylint: disable=missing-kwoa
  with pytest.raises(ValueError):
    metrics.score_qa("Paris", "Paris", unanswerable="correct")


# ----------------------------------------------------------------------------------------
# ROUGE-L.


def test_lcs_length_by_hand():
  # CLRS 15.4: LCS(ABCBDAB, BDCABA) = 4 (e.g. BCBA).
  assert metrics.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
  assert metrics.lcs_length(list("BDCABA"), list("ABCBDAB")) == 4
  assert metrics.lcs_length([], ["a"]) == 0
  assert metrics.lcs_length(["a", "b"], ["b", "a"]) == 1


@pytest.mark.parametrize("prediction, reference, p, r", [
    # LCS "the cat on the mat" = 5 of 6 and 6 tokens.
    ("The cat sat on the mat.", "the cat is on the mat", 5 / 6, 5 / 6),
    # zh: pred 北京是首都 (5 chars), ref 中国的首都是北京 (8); LCS 首都 = 2.
    ("北京是首都", "中国的首都是北京", 2 / 5, 2 / 8),
    # th: pred [ที่, นี่], ref [ที่, นั่, น]; LCS [ที่] = 1.
    ("ที่นี่", "ที่นั่น", 1 / 2, 1 / 3),
    # hi: LCS "भारत की राजधानी है" = 4 of 6 and 6.
    ("नई दिल्ली भारत की राजधानी है", "भारत की राजधानी नई दिल्ली है", 4 / 6, 4 / 6),
    # ar: pred [القاهرة هي عاصمة مصر], ref [عاصمة مصر هي القاهرة]; LCS "عاصمة مصر" = 2.
    ("القاهرة هي عاصمة مصر", "عاصمة مصر هي القاهرة", 2 / 4, 2 / 4),
    ("", "anything", 0.0, 0.0),
    ("...", "anything", 0.0, 0.0),
])
def test_rouge_l_by_hand(prediction, reference, p, r):
  f = 2 * p * r / (p + r) if p + r else 0.0
  assert metrics.rouge_l(prediction, reference) == pytest.approx(
      {"precision": p, "recall": r, "fmeasure": f}, abs=1e-12)


def test_rouge_l_zh_value():
  # F = 2 (2/5)(1/4) / (2/5 + 1/4) = 4/13.
  assert metrics.score_summary("北京是首都", "中国的首都是北京")["rougeL"] == pytest.approx(4 / 13)


def test_rouge_tokens():
  assert textnorm.rouge_tokens("Don't stop_now, 2.5!") == ["don", "t", "stop", "now", "2", "5"]
  assert textnorm.rouge_tokens("कल बारिश होगी।") == ["कल", "बारिश", "होगी"]
  assert textnorm.rouge_tokens("GPT-4发布了") == ["gpt", "4", "发", "布", "了"]


def _random_english(rng, words):
  n = rng.randint(0, 25)
  seps = [" ", " ", " ", ", ", ". ", "-", "_", "'", " (", ") ", "! "]
  return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n))


def test_rouge_l_matches_rouge_score_on_english():
  from rouge_score import rouge_scorer  # test-only dependency (requirements-test)
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  pairs = [
      ("The quick brown fox jumps over the lazy dog.", "A quick brown dog jumps on the fox!"),
      ("Police arrested 3 men on Tuesday, officials said.",
       "Three men were arrested by police on Tuesday."),
      ("It's a 2.5% rise in Q3_2024 GDP", "GDP rose 2.5 percent in the third quarter"),
      ("", "non-empty reference"),
      ("the the the", "the"),
  ]
  rng = random.Random(0)
  words = ["the", "The", "cat", "CAT", "sat", "on", "mat", "a", "dog", "2024", "ran",
           "x1", "fast", "slow", "and", "it's"]
  pairs += [(_random_english(rng, words), _random_english(rng, words)) for _ in range(300)]
  for prediction, reference in pairs:
    expected = scorer.score(reference, prediction)["rougeL"]
    ours = metrics.rouge_l(prediction, reference)
    assert ours["precision"] == pytest.approx(expected.precision, abs=1e-9, rel=0)
    assert ours["recall"] == pytest.approx(expected.recall, abs=1e-9, rel=0)
    assert ours["fmeasure"] == pytest.approx(expected.fmeasure, abs=1e-9, rel=0)


# ----------------------------------------------------------------------------------------
# Aggregation.


def test_summarize_by_hand():
  records = [
      {"lang": "en", "accuracy": 1.0, "f1": 1.0, "id": "a", "prediction": "x"},
      {"lang": "en", "accuracy": 0.0, "f1": 0.5, "id": "b", "prediction": "y"},
      {"lang": "en", "accuracy": True, "f1": 0.0, "id": "c", "prediction": "z"},
      {"lang": "zh", "accuracy": 0.0, "f1": 0.25, "id": "d", "prediction": "w"},
      {"lang": "zh", "accuracy": 1.0, "f1": 0.75, "id": "e", "prediction": "v"},
  ]
  summary = metrics.summarize(records)
  assert summary["languages"] == ["en", "zh"]
  assert summary["count"] == 5
  assert summary["per_language"]["en"] == pytest.approx(
      {"count": 3, "accuracy": 2 / 3, "f1": 0.5})
  assert summary["per_language"]["zh"] == pytest.approx(
      {"count": 2, "accuracy": 0.5, "f1": 0.5})
  # Macro: mean of language means; micro: mean over the 5 examples.
  assert summary["macro"] == pytest.approx({"accuracy": 7 / 12, "f1": 0.5})
  assert summary["micro"] == pytest.approx({"accuracy": 3 / 5, "f1": 2.5 / 5})


def test_summarize_options_and_errors():
  records = [{"language": "ar", "rougeL": 0.2, "n": 1}, {"language": "ar", "rougeL": 0.4, "n": 3}]
  summary = metrics.summarize(records, lang_key="language", metrics=["rougeL"])
  assert summary["macro"] == pytest.approx({"rougeL": 0.3})
  assert "n" not in summary["per_language"]["ar"]
  with pytest.raises(ValueError):
    metrics.summarize([{"lang": "en", "accuracy": None}], metrics=["accuracy"])
  with pytest.raises(ValueError):
    metrics.summarize([{"lang": "en", "accuracy": float("nan")}])
  with pytest.raises(KeyError):
    metrics.summarize([{"lang": "en", "f1": 1.0}], metrics=["accuracy"])
  assert metrics.summarize([]) == {"per_language": {}, "macro": {}, "micro": {}, "count": 0,
                                   "languages": []}


def test_summarize_of_scored_records():
  outputs = [("en", "(2)", 2), ("en", "(1)", 2), ("zh", "中立", 2)]
  records = [dict(lang=lang, **choice.score_choice(out, gold, XNLI_EN if lang == "en"
                                                     else XNLI_ZH, markers="digits"))
             for lang, out, gold in outputs]
  summary = metrics.summarize(records)
  assert summary["macro"] == pytest.approx({"accuracy": 0.75, "parsed": 1.0})


def test_records_carry_the_reported_metric():
  from cc_jax import benchmarks
  records = {
      "XNLI": choice.score_choice("(1)", 1, XNLI_EN, markers="digits"),
      "XStoryCloze": choice.score_choice("(1)", 1, ["a", "b"], markers="digits"),
      "MMMLU": choice.score_choice("A", "A", MMMLU, markers="letters"),
      "XQuAD": metrics.score_qa("a b", "b", unanswerable="skip"),
      "MKQA": metrics.score_qa("a b", ["b", "c"], unanswerable="skip"),
      "XLSum": metrics.score_summary("a", "a"),
  }
  for benchmark, scores in records.items():
    assert scores[benchmarks.PRIMARY_METRIC[benchmark]] == 1.0, benchmark
