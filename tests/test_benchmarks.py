"""Benchmark loaders: local files in both layouts, option parsing, errors, sampling, hub rows."""

import dataclasses
import json
import random
import sys
import types

import pytest

from cc_jax import benchmarks as bm, benchmarks_hub as hub

# The authors' Chinese XNLI prompt (instruction and options translated).
ZH_XNLI = ("前提：我们正在看电视。\n假设：我们当时正在看电视。\n\n你认为前提和假设之间的关系是什么？\n\n"
           "(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n如果你必须选择其中一个选项，你的答案是：")
EN_XSC = ("Bob wanted to be in the school play.He studied the part carefully.\n"
          "(1) Bob was very proud.\n(2) Bob was very ashamed.\n\n"
          "Which of the two options is more likely to be the ending of the given story.\n"
          "Your answer:")
EN_MMMLU = ("Please answer the following multiple choice question.\n\n"
            "Which of the following moons is NOT one of the Galilean moons?\n"
            "(A) Ganymede\n(B) Callisto\n(C) Europa\n(D) Dione\n\n"
            "If you have to choose one of these options, your answer would be:")


def write_lines(path, values):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values),
                  encoding="utf-8")


def authors_files(root, benchmark, lang, prompts, answers, sampled=True):
  inst_dir, ans_dir = ("split_sample", "ans_sample") if sampled else ("split", "ans")
  write_lines(root / benchmark / inst_dir / f"{lang}.json", [{"instruction": p} for p in prompts])
  write_lines(root / benchmark / ans_dir / f"{lang}.json", answers)


# ---------------------------------------------------------------------------------------------
# Language sets and names


def test_language_sets_are_the_papers():
  expected = {
      "XNLI": "en ar el hi ru sw th tr ur zh",
      "XStoryCloze": "ar en es eu hi id ru sw te zh",
      "MMMLU": "en ar bn es hi id ko pt sw yo",
      "XQuAD": "ar de el en hi ru th tr vi zh",
      "MKQA": "en ar de ja ko pt ru tr vi zh",
      "XLSum": "en ar fr hi id ru sw tr ur vi",
  }
  assert bm.BENCHMARKS == tuple(expected)
  assert {b: " ".join(v) for b, v in bm.LANGUAGES.items()} == expected
  assert len({l for v in bm.LANGUAGES.values() for l in v}) == 22  # "22 languages in all"
  assert set(bm.KIND) == set(bm.PRIMARY_METRIC) == set(bm.BENCHMARKS)


@pytest.mark.parametrize("name,canonical", [("xnli", "XNLI"), ("xstory_cloze", "XStoryCloze"),
                                            ("XL-Sum", "XLSum"), ("mmmlu", "MMMLU")])
def test_benchmark_names(name, canonical):
  assert bm.canonical_benchmark(name) == canonical


def test_unknown_benchmark_and_language():
  with pytest.raises(ValueError, match="unknown benchmark 'squad'"):
    bm.canonical_benchmark("squad")
  with pytest.raises(ValueError, match="XNLI has no language 'fr'"):
    bm.check_language("XNLI", "fr")


# ---------------------------------------------------------------------------------------------
# Option parsing


@pytest.mark.parametrize("text,labels,expected", [
    ("Q?\n\n(1) Entailment\n(2) Neutral\n(3) Contradiction\n\nAnswer:", "123",
     ("Entailment", "Neutral", "Contradiction")),
    (ZH_XNLI, "123", ("蕴涵", "中立", "矛盾")),
    ("问题\n（1）甲\n（2）乙\n答案：", "12", ("甲", "乙")),
    (EN_MMMLU, "ABCD", ("Ganymede", "Callisto", "Europa", "Dione")),
    ("Q\nA. one\nB. two\nC. three\nD. four", "ABCD", ("one", "two", "three", "four")),
    ("Q\nA) one\nB) two", "AB", ("one", "two")),
    # Numbered statements in the question come before the options; the last run wins.
    ("Statements:\n1. x is odd\n2. y is even\nChoose:\n1. True\n2. False", "12", ("True", "False")),
    ("(A) 1\n(B) 2\n(C) 3\n(D) 4\n(E) 5", "ABCD", None),  # five options are not four
    ("No options at all.", "123", None),
    ("(1) only one\n(3) skipped", "123", None),
])
def test_parse_options(text, labels, expected):
  assert bm.parse_options(text, tuple(labels)) == expected


# ---------------------------------------------------------------------------------------------
# Local files in the authors' layout


def test_authors_layout_all_benchmarks(tmp_path):
  authors_files(tmp_path, "XNLI", "zh", [ZH_XNLI, ZH_XNLI.replace("(3) 矛盾", "")], ["2", "1"])
  authors_files(tmp_path, "XStoryCloze", "en", [EN_XSC], ["1"], sampled=False)
  authors_files(tmp_path, "MMMLU", "en", [EN_MMMLU], ["D"])
  authors_files(tmp_path, "XQuAD", "de", ["Kontext ...\nFrage?\n\nYour answer:"], ["Paris"],
                sampled=False)
  authors_files(tmp_path, "MKQA", "ja", ["質問", "別の質問"], [["3.0"], ["アリシア", "アリシア2"]])
  authors_files(tmp_path, "XLSum", "sw", ["Summarize ..."], ["Muhtasari."])

  xnli = bm.load_local(tmp_path, "xnli", ["zh"])
  assert [e.gold for e in xnli] == ["2", "1"]
  assert xnli[0] == bm.EvalExample("XNLI", "zh", 0, ZH_XNLI, "2", "choice",
                                   ("蕴涵", "中立", "矛盾"), ("1", "2", "3"))
  assert xnli[1].options is None and xnli[1].option_labels == ("1", "2", "3")  # not parseable

  (xsc,) = bm.load_local(tmp_path, "XStoryCloze", ["en"])
  assert xsc.options == ("Bob was very proud.", "Bob was very ashamed.") and xsc.gold == "1"
  (mmmlu,) = bm.load_local(tmp_path, "MMMLU", ["en"])
  assert mmmlu.options[3] == "Dione" and mmmlu.option_labels == tuple("ABCD")
  (xquad,) = bm.load_local(tmp_path, "XQuAD", ["de"])
  assert (xquad.kind, xquad.gold, xquad.options) == ("qa", "Paris", None)
  mkqa = bm.load_local(tmp_path, "MKQA", ["ja"])
  assert [e.gold for e in mkqa] == [("3.0",), ("アリシア", "アリシア2")]
  (xlsum,) = bm.load_local(tmp_path, "XLSum", ["sw"])
  assert (xlsum.kind, xlsum.gold) == ("summary", "Muhtasari.")


def test_choice_answers_are_normalised(tmp_path):
  authors_files(tmp_path, "MMMLU", "ko", [EN_MMMLU] * 3, ["(B)", " C. ", "（A）"])
  assert [e.gold for e in bm.load_local(tmp_path, "MMMLU", ["ko"])] == ["B", "C", "A"]


def test_mkqa_accepts_a_bare_string(tmp_path):
  authors_files(tmp_path, "MKQA", "en", ["q"], ["yes"])
  assert bm.load_local(tmp_path, "MKQA", ["en"])[0].gold == ("yes",)


def test_available_languages_and_missing_language(tmp_path):
  authors_files(tmp_path, "XLSum", "fr", ["a"], ["b"])
  write_lines(tmp_path / "XLSum" / "ar.jsonl", [{"instruction": "a"}])
  write_lines(tmp_path / "XLSum" / "ar.answers.jsonl", ["b"])
  assert bm.available_languages(tmp_path, "XLSum") == ("ar", "fr")
  with pytest.raises(FileNotFoundError, match="no instruction file for 'en'"):
    bm.load_local(tmp_path, "XLSum")  # None means all ten, and en is missing
  assert len(bm.load_local(tmp_path, "XLSum", bm.available_languages(tmp_path, "XLSum"))) == 2


# ---------------------------------------------------------------------------------------------
# Errors name the file and line


def test_missing_benchmark_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="no directory for benchmark XQuAD"):
    bm.load_local(tmp_path, "XQuAD", ["en"])


def test_missing_answer_file(tmp_path):
  write_lines(tmp_path / "XQuAD" / "split" / "en.json", [{"instruction": "q"}])
  with pytest.raises(FileNotFoundError, match=r"ans/en\.json: missing answer file"):
    bm.load_local(tmp_path, "XQuAD", ["en"])


def test_unknown_language(tmp_path):
  authors_files(tmp_path, "XQuAD", "fr", ["q"], ["a"], sampled=False)
  with pytest.raises(ValueError, match="XQuAD has no language 'fr'"):
    bm.load_local(tmp_path, "XQuAD", ["fr"])


def test_line_count_mismatch(tmp_path):
  authors_files(tmp_path, "XNLI", "en", [ZH_XNLI] * 3, ["1", "2"])
  with pytest.raises(bm.BenchmarkDataError,
                     match=r"split_sample/en\.json has 3 lines but .*ans_sample/en\.json has 2"):
    bm.load_local(tmp_path, "XNLI", ["en"])


@pytest.mark.parametrize("inst_text,ans_text,match", [
    ('{"instruction": "a"}\n{"instruction": "b"\n', '"x"\n"y"\n',
     r"split_sample/en\.json:line 2: invalid JSON"),
    ('{"instruction": "a"}\n{"instruction": "b"}\n', '"x"\n[1]\n',
     r"ans_sample/en\.json:line 2: expected a non-empty string"),
    ('{"instruction": "a"}\n{"prompt": "b"}\n', '"x"\n"y"\n',
     r"split_sample/en\.json:line 2: field 'instruction'"),
    ('{"instruction": "a"}\n\n{"instruction": "b"}\n', '"x"\n"y"\n"z"\n',
     r"split_sample/en\.json:line 2: blank line"),
    ('["a"]\n', '"x"\n', r"split_sample/en\.json:line 1: expected an object"),
])
def test_bad_lines(tmp_path, inst_text, ans_text, match):
  (tmp_path / "XLSum" / "split_sample").mkdir(parents=True)
  (tmp_path / "XLSum" / "ans_sample").mkdir()
  (tmp_path / "XLSum" / "split_sample" / "en.json").write_text(inst_text)
  (tmp_path / "XLSum" / "ans_sample" / "en.json").write_text(ans_text)
  with pytest.raises(bm.BenchmarkDataError, match=match):
    bm.load_local(tmp_path, "XLSum", ["en"])


def test_bad_mkqa_answers_and_choice_labels(tmp_path):
  authors_files(tmp_path, "MKQA", "de", ["q1", "q2"], [["a"], ["b", 3]])
  with pytest.raises(bm.BenchmarkDataError, match=r"ans_sample/de\.json:line 2: an MKQA answer"):
    bm.load_local(tmp_path, "MKQA", ["de"])
  authors_files(tmp_path, "XNLI", "ar", [ZH_XNLI] * 2, ["1", "4"])
  with pytest.raises(bm.BenchmarkDataError,
                     match=r"ans_sample/ar\.json:line 2: answer '4' is not one of the labels"):
    bm.load_local(tmp_path, "XNLI", ["ar"])


# ---------------------------------------------------------------------------------------------
# Hub rows -> examples (hand-made rows; no network)

XNLI_ROW = {"premise": "A man plays.", "hypothesis": "A person plays.", "label": 0}
XSC_ROW = {"input_sentence_1": "S1.", "input_sentence_2": "S2.", "input_sentence_3": "S3.",
           "input_sentence_4": "S4.", "sentence_quiz1": "End one.", "sentence_quiz2": "End two.",
           "answer_right_ending": 2}
MMMLU_ROW = {"Question": "2+2?", "A": "3", "B": "4", "C": "5", "D": "6", "Answer": "B",
             "Subject": "math"}
MMLU_ROW = {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
XQUAD_ROW = {"id": "x", "context": "Paris is in France.", "question": "Where is Paris?",
             "answers": {"text": ["France"], "answer_start": [12]}}
MKQA_ROW = {"example_id": 1, "query": "who?", "queries": {"en": "who?", "zh_cn": "谁？"},
            "answers": {"en": [{"type": "entity", "text": "Bob", "aliases": ["Robert", "Bob"]}],
                        "zh_cn": [{"type": "entity", "text": "鲍勃", "aliases": []}]}}
XLSUM_ROW = {"id": "1", "url": "u", "title": "t", "summary": "Short.", "text": "Long article."}


def test_xnli_row_gives_the_papers_prompt():
  e = hub.example_from_row("XNLI", "en", 7, XNLI_ROW)
  assert e.prompt == (
      "Premise: A man plays.\nHypothesis: A person plays.\n\nWhat do you think is the "
      "relationship between the premise and the hypothesis?\n\n(1) Entailment\n(2) Neutral\n"
      "(3) Contradiction\n\nIf you have to choose one of these options, your answer would be:")
  assert (e.index, e.gold, e.kind) == (7, "1", "choice")
  assert e.options == ("Entailment", "Neutral", "Contradiction")
  assert e.option_labels == ("1", "2", "3")
  with pytest.raises(bm.BenchmarkDataError, match="row 7: label -1"):
    hub.example_from_row("XNLI", "en", 7, dict(XNLI_ROW, label=-1))


def test_xstorycloze_and_mmmlu_rows():
  e = hub.example_from_row("XStoryCloze", "sw", 0, XSC_ROW)
  assert e.prompt.startswith("S1. S2. S3. S4.\n(1) End one.\n(2) End two.\n\n")
  assert (e.gold, e.options) == ("2", ("End one.", "End two."))
  a = hub.example_from_row("MMMLU", "yo", 0, MMMLU_ROW)
  b = hub.example_from_row("MMMLU", "en", 0, MMLU_ROW)
  assert a.prompt == b.prompt and "(B) 4\n" in a.prompt
  assert a.gold == b.gold == "B" and a.options == ("3", "4", "5", "6")


def test_hub_prompts_parse_back():
  # The options of every choice prompt are recoverable from its text.
  for bench, row in (("XNLI", XNLI_ROW), ("XStoryCloze", XSC_ROW), ("MMMLU", MMMLU_ROW)):
    e = hub.example_from_row(bench, "en", 0, row)
    assert bm.parse_options(e.prompt, e.option_labels) == e.options


def test_qa_and_summary_rows():
  e = hub.example_from_row("XQuAD", "en", 3, XQUAD_ROW)
  assert e.prompt == ("Please answer these questions only based on the given context.\n\n"
                      "Context: Paris is in France.\nQuestion: Where is Paris?\n\nYour answer:")
  assert (e.gold, e.kind) == ("France", "qa")
  en = hub.example_from_row("MKQA", "en", 0, MKQA_ROW)
  zh = hub.example_from_row("MKQA", "zh", 0, MKQA_ROW)
  assert en.gold == ("Bob", "Robert") and zh.gold == ("鲍勃",)
  assert zh.prompt == "Please answer the following question.\n\n谁？\n\nYour answer:"
  unanswerable = dict(MKQA_ROW, answers={"en": [{"type": "unanswerable", "text": None,
                                                  "aliases": []}]})
  assert hub.example_from_row("MKQA", "en", 0, unanswerable) is None
  s = hub.example_from_row("XLSum", "fr", 0, XLSUM_ROW)
  assert s.prompt.startswith("Summarize the following article in one sentence.")
  assert "Long article." in s.prompt and (s.gold, s.kind) == ("Short.", "summary")


def test_load_hub_with_a_fake_datasets(monkeypatch):
  calls = []

  def load_dataset(path, config, split, cache_dir=None, revision=None):
    calls.append((path, config, split))
    return [dict(XNLI_ROW, label=i % 3) for i in range(20)]
  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  examples = hub.load_hub("XNLI", ["ar", "th"], limit=5, seed=3)
  assert calls == [("facebook/xnli", "ar", "test"), ("facebook/xnli", "th", "test")]
  assert [e.lang for e in examples] == ["ar"] * 5 + ["th"] * 5
  assert [e.index for e in examples[:5]] == [e.index for e in examples[5:]]  # parallel
  assert all(e.gold == str(e.index % 3 + 1) for e in examples)


def test_hub_sources():
  assert hub.hub_source("MMMLU", "en") == ("cais/mmlu", "all", "test")
  assert hub.hub_source("MMMLU", "sw") == ("openai/MMMLU", "SW_KE", "test")
  assert hub.hub_source("XQuAD", "th") == ("google/xquad", "xquad.th", "validation")
  assert hub.hub_source("XLSum", "ur") == ("csebuetnlp/xlsum", "urdu", "test")
  with pytest.raises(ValueError, match="MKQA has no language 'fr'"):
    hub.hub_source("MKQA", "fr")


# ---------------------------------------------------------------------------------------------
# Round trip and sampling


def all_kinds_examples():
  rows = {"XNLI": XNLI_ROW, "XStoryCloze": XSC_ROW, "MMMLU": MMMLU_ROW, "XQuAD": XQUAD_ROW,
          "MKQA": MKQA_ROW, "XLSum": XLSUM_ROW}
  return [hub.example_from_row(b, lang, i, row) for b, row in rows.items()
          for lang in ("en", "zh" if b == "MKQA" else "ar") for i in range(3)]


def test_write_then_load_round_trip(tmp_path):
  examples = all_kinds_examples()
  paths = bm.write_local(tmp_path, examples)
  assert tmp_path / "MKQA" / "zh.answers.jsonl" in paths
  assert json.loads((tmp_path / "MKQA" / "zh.answers.jsonl").read_text().splitlines()[0]) == ["鲍勃"]
  loaded = []
  for b in bm.BENCHMARKS:
    loaded += bm.load_local(tmp_path, b, bm.available_languages(tmp_path, b))
  # Loading adds each item's parallel English prompt: the `en` item of the same index, except
  # for XLSum, whose English versions come from their own file (none was written here).
  english = {(e.benchmark, e.index): e.prompt for e in examples if e.lang == "en"}
  for e in loaded:
    assert e.english_prompt == (None if e.benchmark == "XLSum" else english[(e.benchmark, e.index)]), e
  stripped = [dataclasses.replace(e, english_prompt=None) for e in loaded]
  assert sorted(stripped, key=repr) == sorted(examples, key=repr)
  assert not list(tmp_path.rglob("*.tmp"))


def test_write_renumbers_and_rejects_duplicates(tmp_path):
  e = hub.example_from_row("XLSum", "en", 5, XLSUM_ROW)
  bm.write_local(tmp_path, [e])
  assert bm.load_local(tmp_path, "XLSum", ["en"])[0].index == 0
  with pytest.raises(ValueError, match="two examples with index 5"):
    bm.write_local(tmp_path, [e, e])


def test_sampling_is_deterministic_parallel_and_order_free(tmp_path):
  rows = [dict(XLSUM_ROW, summary=f"s{i}") for i in range(40)]
  examples = [hub.example_from_row("XLSum", lang, i, r) for lang in ("en", "fr")
              for i, r in enumerate(rows)]
  a = bm.sample(examples, 10, seed=1)
  shuffled = list(examples)
  random.Random(0).shuffle(shuffled)
  assert bm.sample(shuffled, 10, seed=1) == a
  en = [e.index for e in a if e.lang == "en"]
  fr = [e.index for e in a if e.lang == "fr"]
  assert en == fr and len(en) == 10 and en == sorted(en)
  assert [e.lang for e in a] == ["en"] * 10 + ["fr"] * 10  # paper order: en before fr
  assert [e.index for e in bm.sample(examples, 10, seed=2) if e.lang == "en"] != en
  assert set(en) <= {e.index for e in bm.sample(examples, 20, seed=1)}  # larger limit: superset
  assert bm.sample(examples, 100, seed=1) == bm.sample(examples, None)
  with pytest.raises(ValueError, match="limit must be positive"):
    bm.sample(examples, 0)
  bm.write_local(tmp_path, examples)
  assert bm.load_local(tmp_path, "XLSum", ["en", "fr"], limit=10, seed=1) == a


def test_load_several_benchmarks(tmp_path):
  bm.write_local(tmp_path, all_kinds_examples())
  got = bm.load(tmp_path, ["mkqa", "XNLI"], {"MKQA": ["zh"], "XNLI": ["ar", "en"]}, limit=2)
  assert [(e.benchmark, e.lang) for e in got] == (
      [("MKQA", "zh")] * 2 + [("XNLI", "ar")] * 2 + [("XNLI", "en")] * 2)
