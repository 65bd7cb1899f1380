"""Report outputs: predictions, per-language means and macro averages, markdown table, chart."""

import json
import logging
import os

import pytest

from cc_jax import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rec(method, benchmark, lang, index, scores, gold="1"):
  return {"benchmark": benchmark, "lang": lang, "method": method, "index": index,
          "prompt": f"prompt {index}", "prediction": f"pred {index}", "gold": gold,
          "scores": scores}


def records():
  """sft: XNLI en 1/2, ar 0/1; cc: XNLI en 2/2, ar 1/1; cc: XLSum en rougeL 0.2, 0.4."""
  return [
      rec("sft", "XNLI", "en", 0, {"accuracy": 1.0}),
      rec("sft", "XNLI", "en", 1, {"accuracy": 0.0}),
      rec("sft", "XNLI", "ar", 0, {"accuracy": 0.0}),
      rec("cc", "XNLI", "en", 1, {"accuracy": 1.0}),  # out of order on purpose
      rec("cc", "XNLI", "en", 0, {"accuracy": 1.0}),
      rec("cc", "XNLI", "ar", 0, {"accuracy": 1.0}),
      rec("cc", "XLSum", "en", 0, {"rougeL": 0.2, "rouge1": 0.5}, gold="A summary."),
      rec("cc", "XLSum", "en", 1, {"rougeL": 0.4, "rouge1": 0.7}, gold="Another."),
      rec("cc", "MKQA", "ja", 0, {"accuracy": 1.0}, gold=("3.0", "three")),
  ]


def test_outputs(tmp_path):
  written = report.write_report(tmp_path, records(), methods=["sft", "cc"])
  assert {p.relative_to(tmp_path).as_posix() for p in written} == {
      "predictions/sft/XNLI/en.jsonl", "predictions/sft/XNLI/ar.jsonl",
      "predictions/cc/XNLI/en.jsonl", "predictions/cc/XNLI/ar.jsonl",
      "predictions/cc/XLSum/en.jsonl", "predictions/cc/MKQA/ja.jsonl",
      "results/sft/XNLI.json", "results/cc/XNLI.json", "results/cc/XLSum.json",
      "results/cc/MKQA.json", "results.md", "results.png", "results_by_language.png"}

  # Predictions: every record with gold and scores, by index.
  lines = (tmp_path / "predictions/cc/XNLI/en.jsonl").read_text().splitlines()
  assert [json.loads(l)["index"] for l in lines] == [0, 1]
  assert json.loads(lines[0]) == {**rec("cc", "XNLI", "en", 0, {"accuracy": 1.0}), "prompt_cut": 0}
  mkqa = json.loads((tmp_path / "predictions/cc/MKQA/ja.jsonl").read_text())
  assert mkqa["gold"] == ["3.0", "three"]
  assert sorted(report.read_predictions(tmp_path), key=repr) == sorted(
      (report.ScoredPrediction.from_dict(r) for r in records()), key=repr)

  # Results: hand-computed means; the macro average is over languages.
  sft = json.loads((tmp_path / "results/sft/XNLI.json").read_text())
  assert sft["languages"] == {"en": {"count": 2, "prompts_cut": 0, "scores": {"accuracy": 0.5}},
                              "ar": {"count": 1, "prompts_cut": 0, "scores": {"accuracy": 0.0}}}
  assert sft["prompts_cut"] == 0 and "Prompts cut" not in (tmp_path / "results.md").read_text()
  assert sft["macro_average"] == {"accuracy": 0.25}  # not 1/3, the mean over examples
  assert (sft["count"], sft["primary_metric"], sft["predictions"]) == (
      3, "accuracy", "predictions/sft/XNLI")
  xlsum = json.loads((tmp_path / "results/cc/XLSum.json").read_text())
  assert xlsum["primary_metric"] == "rougeL"  # the paper's metric, though not listed first
  assert xlsum["macro_average"] == pytest.approx({"rougeL": 0.3, "rouge1": 0.6})

  # Markdown: languages (paper order) + avg as rows, methods as columns, percentages.
  md = (tmp_path / "results.md").read_text()
  assert ("## XNLI (accuracy)\n\n| lang | sft | cc |\n|---|---:|---:|\n"
          "| en | 50.00 | 100.00 |\n| ar | 0.00 | 100.00 |\n| avg | 25.00 | 100.00 |\n") in md
  assert "## XLSum (rougeL)\n\n| lang | sft | cc |\n|---|---:|---:|\n| en | – | 30.00 |" in md
  assert "| XNLI (accuracy) | 25.00 | 100.00 |" in md
  assert md.index("## XNLI") < md.index("## MKQA") < md.index("## XLSum")  # paper order

  # Chart: a real PNG.
  png = tmp_path / "results.png"
  assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 1000
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert not list(tmp_path.rglob("*.tmp"))


def test_per_language_chart_is_readable_for_ten_languages_and_three_methods(tmp_path):
  """The chart beside the macro one: one panel per benchmark, a bar per (language, method), its
  values those of the results JSON, at a size where 30 bars per panel stay legible."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  langs = ["en", "zh", "ar", "hi", "ru", "sw", "fr", "de", "ja", "th"]
  methods = ["sft", "cc-plain", "cc-matrix"]
  records = [rec(m, "MKQA", lang, i, {"accuracy": float((i + j + k) % 3 == 0)})
             for j, m in enumerate(methods) for k, lang in enumerate(langs) for i in range(3)]
  records += [rec(m, "XNLI", lang, 0, {"accuracy": float(k % 2)}) for m in methods for k, lang in enumerate(langs[:4])]
  report.write_report(tmp_path, records, methods=methods)

  results = {(r["method"], r["benchmark"]): r for r in report.read_results(tmp_path)}
  panels = report.language_chart_data(report.read_results(tmp_path), methods)
  assert [p["benchmark"] for p in panels] == ["XNLI", "MKQA"]
  for panel in panels:
    assert sorted(panel["languages"]) == sorted(results[("sft", panel["benchmark"])]["languages"])
    assert list(panel["values"]) == methods
    for m, values in panel["values"].items():
      expected = [100 * results[(m, panel["benchmark"])]["languages"][l]["scores"]["accuracy"]
                  for l in panel["languages"]]
      assert values == pytest.approx(expected)
  assert panels[1]["values"]["sft"][:2] == pytest.approx([100 / 3, 100 / 3])  # en: index 0 right; zh: index 2

  png = tmp_path / report.BY_LANGUAGE_PNG
  assert png.read_bytes().startswith(PNG_SIGNATURE)
  height, width, _ = matplotlib.image.imread(png).shape
  assert 900 <= width <= 2000 and 500 <= height <= 1400  # about 30 px per bar; two panels
  assert width / 30 >= 25


def test_later_runs_merge_by_language_and_say_what_they_kept(tmp_path, caplog):
  report.write_report(tmp_path, records(), chart=False)
  assert not (tmp_path / "results.png").exists()
  en_before = (tmp_path / "predictions/sft/XNLI/en.jsonl").read_bytes()
  # A new run of sft on XNLI with only "ar" replaces sft's "ar" and keeps its "en" (was: deleted,
  # with exit 0 and no message; issue 16), and cc's results.
  with caplog.at_level(logging.INFO):
    report.write_report(tmp_path, [rec("sft", "XNLI", "ar", 0, {"accuracy": 1.0}),
                                   rec("base", "XNLI", "ar", 0, {"accuracy": 0.0})])
  assert (tmp_path / "predictions/sft/XNLI/en.jsonl").read_bytes() == en_before
  sft = json.loads((tmp_path / "results/sft/XNLI.json").read_text())
  assert list(sft["languages"]) == ["en", "ar"]
  assert sft["languages"]["ar"]["scores"] == {"accuracy": 1.0} and sft["macro_average"] == {"accuracy": 0.75}
  md = (tmp_path / "results.md").read_text()
  assert "| lang | base | cc | sft |" in md  # default: alphabetical, all methods on disk
  assert "| en | – | 100.00 | 50.00 |" in md and "| ar | 0.00 | 100.00 | 100.00 |" in md
  assert (tmp_path / "results/cc/XLSum.json").exists()
  assert "replaced sft/XNLI/ar; kept sft/XNLI/en" in caplog.text


def test_primary_metric_override_and_fallback(tmp_path):
  rs = [rec("m", "XQuAD", "de", 0, {"contains": 1.0, "f1": 0.5})]
  (result,) = report.summarize(rs)
  assert result["primary_metric"] == "contains"  # no "accuracy": the first score name
  (result,) = report.summarize(rs, {"XQuAD": "f1"})
  assert result["primary_metric"] == "f1"
  with pytest.raises(ValueError, match="primary metric 'em' not in"):
    report.summarize(rs, {"XQuAD": "em"})


@pytest.mark.parametrize("field,value,match", [
    ("method", "../escape", "method '../escape' cannot be a file name"),
    ("method", "a/b", "cannot be a file name"),
    ("benchmark", ".hidden", "cannot be a file name"),
    ("lang", "", "cannot be a file name"),
])
def test_unsafe_names_write_nothing(tmp_path, field, value, match):
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=match):
    report.write_report(out, [dict(rec("m", "XNLI", "en", 0, {"accuracy": 1.0}), **{field: value})])
  assert not tmp_path.joinpath("escape").exists() and not out.exists()


def test_symlink_out_of_the_directory_is_refused(tmp_path):
  out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
  elsewhere.mkdir()
  out.mkdir()
  os.symlink(elsewhere, out / "predictions")
  with pytest.raises(ValueError, match="outside"):
    report.write_report(out, [rec("m", "XNLI", "en", 0, {"accuracy": 1.0})])
  assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("rs,match", [
    ([rec("m", "XNLI", "en", 0, {"accuracy": 1.0})] * 2, "two predictions for the same example"),
    ([rec("m", "XNLI", "en", 0, {"accuracy": float("nan")})], "score 'accuracy' is nan"),
    ([rec("m", "XNLI", "en", 0, {})], "no scores"),
    ([rec("m", "XNLI", "en", 0, {"accuracy": 1.0}), rec("m", "XNLI", "ar", 0, {"em": 1.0})],
     r"scores \['em'\] differ"),
    ([dict(rec("m", "XNLI", "en", 0, {"accuracy": 1.0}), prediction=None)], "must be strings"),
    ([], "no records"),
])
def test_bad_records(tmp_path, rs, match):
  with pytest.raises(ValueError, match=match):
    report.write_report(tmp_path, rs)


def test_a_crash_mid_write_leaves_no_partial_json(tmp_path, monkeypatch):
  report.write_report(tmp_path, records(), chart=False)
  before = (tmp_path / "results/cc/XNLI.json").read_bytes()
  real_replace = os.replace

  def crash_on_results(src, dst):
    if str(dst).endswith("XNLI.json"):
      raise OSError("disk died")
    return real_replace(src, dst)
  monkeypatch.setattr(os, "replace", crash_on_results)
  with pytest.raises(OSError, match="disk died"):
    report.write_report(tmp_path, [rec("cc", "XNLI", "en", 0, {"accuracy": 0.0})], chart=False)
  assert (tmp_path / "results/cc/XNLI.json").read_bytes() == before  # old and complete
  assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_outputs_get_the_permissions_of_a_plain_open(tmp_path, umask):
  # mkstemp makes 0o600 files; results on a shared filesystem must stay readable by the team.
  old = os.umask(umask)
  try:
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("reference")
    written = report.write_report(tmp_path / "out", records(), methods=["sft", "cc"])
  finally:
    os.umask(old)
  expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
  assert expected == 0o666 & ~umask
  assert {str(p): p.stat().st_mode & 0o777 for p in written} == {
      str(p): expected for p in written}
