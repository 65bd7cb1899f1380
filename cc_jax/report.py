"""Evaluation results on disk: every scored prediction, per-language means, a table and a chart.

Layout under the output directory (all writes atomic, all paths inside it):

  predictions/<method>/<benchmark>/<lang>.jsonl   one scored prediction per line, by index
  results/<method>/<benchmark>.json               per-language means and counts, macro average
  results.md                                      per benchmark: languages x methods, in %
  results.png                                     grouped bars: benchmarks x methods, macro avg
  results_by_language.png                         per benchmark: languages x methods

`results.md` and the charts cover every `results/*/*.json` in the directory, so methods
evaluated in separate runs end up in one table.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

from absl import logging

from cc_jax import benchmarks as bm, files

# Method, benchmark and language names become path components: no separators, no dot files.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
BY_LANGUAGE_PNG = "results_by_language.png"


@dataclasses.dataclass(frozen=True)
class ScoredPrediction:
  """One model output with what it was scored against and its scores.

  Attributes:
    scores: metric name -> value, as fractions in [0, 1] (e.g. {"accuracy": 1.0} or
      {"rougeL": 0.31}); tables show them as percentages.
    prompt_cut: tokens cut from the middle of the prompt to fit eval.max_prompt_len (0: none).
  """
  benchmark: str
  lang: str
  method: str
  index: int
  prompt: str
  prediction: str
  gold: str | tuple[str, ...]
  scores: Mapping[str, float]
  prompt_cut: int = 0

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ScoredPrediction":
    gold = d["gold"]
    return cls(benchmark=d["benchmark"], lang=d["lang"], method=d["method"],
               index=int(d["index"]), prompt=d["prompt"], prediction=d["prediction"],
               gold=tuple(gold) if isinstance(gold, list) else gold, scores=dict(d["scores"]),
               prompt_cut=int(d.get("prompt_cut", 0)))

  def to_dict(self) -> dict[str, Any]:
    return {"benchmark": self.benchmark, "lang": self.lang, "method": self.method,
            "index": self.index, "prompt": self.prompt, "prediction": self.prediction,
            "gold": list(self.gold) if isinstance(self.gold, tuple) else self.gold,
            "scores": dict(self.scores), "prompt_cut": self.prompt_cut}


def _check_name(name: str, what: str) -> str:
  if not isinstance(name, str) or not _SAFE_NAME.match(name):
    raise ValueError(f"{what} {name!r} cannot be a file name: use letters, digits and ._+=- "
                     "(not starting with . or -)")
  return name


def _inside(root: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
  # Resolving catches a symlinked subdirectory that would lead out of the output directory.
  if not path.resolve().is_relative_to(root.resolve()):
    raise ValueError(f"{path} would be written outside {root}")
  return path


def _coerce(records: Iterable[ScoredPrediction | Mapping[str, Any]]) -> list[ScoredPrediction]:
  out, seen = [], set()
  for r in records:
    r = r if isinstance(r, ScoredPrediction) else ScoredPrediction.from_dict(r)
    where = f"{r.method}/{r.benchmark}/{r.lang} index {r.index}"
    _check_name(r.method, "method")
    _check_name(r.benchmark, "benchmark")
    _check_name(r.lang, "language")
    key = (r.method, r.benchmark, r.lang, r.index)
    if key in seen:
      raise ValueError(f"{where}: two predictions for the same example")
    seen.add(key)
    if not isinstance(r.prediction, str) or not isinstance(r.prompt, str):
      raise ValueError(f"{where}: prompt and prediction must be strings")
    if not r.scores:
      raise ValueError(f"{where}: no scores")
    scores = {}
    for name, value in r.scores.items():
      value = float(value)
      if not math.isfinite(value):
        raise ValueError(f"{where}: score {name!r} is {value}")
      scores[name] = value
    out.append(dataclasses.replace(r, scores=scores))
  return out


# ---------------------------------------------------------------------------------------------
# Aggregation


def _lang_order(benchmark: str, langs: Iterable[str]) -> list[str]:
  paper = bm.LANGUAGES.get(benchmark, ())
  return sorted(set(langs), key=lambda l: (paper.index(l) if l in paper else len(paper), l))


def _bench_order(names: Iterable[str]) -> list[str]:
  return sorted(set(names), key=lambda b: (
      bm.BENCHMARKS.index(b) if b in bm.BENCHMARKS else len(bm.BENCHMARKS), b))


def summarize(records: Iterable[ScoredPrediction | Mapping[str, Any]],
              primary_metrics: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
  """Aggregates scored predictions per (method, benchmark).

  The macro average is the mean over languages of the per-language means (the paper's
  "avg"), not the mean over all examples.

  Args:
    records: scored predictions (objects or their dicts).
    primary_metrics: benchmark -> the metric its table reports. Default: the paper's metric
      (`benchmarks.PRIMARY_METRIC`) when the scores hold it, else the first score name.

  Returns:
    One dict per (method, benchmark), as written to `results/<method>/<benchmark>.json`:
    benchmark, method, primary_metric, metrics, count, prompts_cut, languages {lang: {count,
    prompts_cut, scores}}, macro_average {metric: value}. Values are fractions; prompts_cut
    counts the prompts whose middle was cut to fit eval.max_prompt_len.
  """
  records = _coerce(records)
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r.method, r.benchmark)].append(r)
  results = []
  for (method, benchmark), group in groups.items():
    metrics = list(group[0].scores)
    for r in group:
      if set(r.scores) != set(metrics):
        raise ValueError(f"{method}/{benchmark}/{r.lang} index {r.index}: scores "
                         f"{sorted(r.scores)} differ from {sorted(metrics)} of the others")
    primary = (primary_metrics or {}).get(benchmark)
    if primary is None:
      paper = bm.PRIMARY_METRIC.get(benchmark)
      primary = paper if paper in metrics else metrics[0]
    elif primary not in metrics:
      raise ValueError(f"{method}/{benchmark}: primary metric {primary!r} not in {metrics}")
    by_lang = collections.defaultdict(list)
    for r in group:
      by_lang[r.lang].append(r)
    languages = {}
    for lang in _lang_order(benchmark, by_lang):
      rs = by_lang[lang]
      languages[lang] = {"count": len(rs), "prompts_cut": sum(r.prompt_cut > 0 for r in rs), "scores": {
          m: sum(r.scores[m] for r in rs) / len(rs) for m in metrics}}
    macro = {m: sum(v["scores"][m] for v in languages.values()) / len(languages)
             for m in metrics}
    results.append({"benchmark": benchmark, "method": method, "primary_metric": primary,
                    "metrics": metrics, "count": len(group),
                    "prompts_cut": sum(v["prompts_cut"] for v in languages.values()), "languages": languages,
                    "macro_average": macro})
  order = _bench_order(r["benchmark"] for r in results)
  return sorted(results, key=lambda d: (order.index(d["benchmark"]), d["method"]))


def read_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every `results/<method>/<benchmark>.json` under `out_dir`."""
  root = pathlib.Path(out_dir) / "results"
  return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("*/*.json"))]


def read_predictions(out_dir: str | os.PathLike) -> list[ScoredPrediction]:
  """Every scored prediction under `out_dir/predictions`, e.g. to re-check the scores."""
  out = []
  for path in sorted((pathlib.Path(out_dir) / "predictions").glob("*/*/*.jsonl")):
    out += _read_prediction_file(path)
  return out


def _read_prediction_file(path: pathlib.Path) -> list[ScoredPrediction]:
  out = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      try:
        out.append(ScoredPrediction.from_dict(json.loads(line)))
      except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}:{number}: not a scored prediction ({error})") from error
  return out


# ---------------------------------------------------------------------------------------------
# Table and chart


def _pct(value: float | None) -> str:
  return "–" if value is None else f"{100 * value:.2f}"


def _method_order(results: Sequence[Mapping[str, Any]],
                  methods: Sequence[str] | None) -> list[str]:
  """`methods` first, in their order, then the other methods in `results` alphabetically."""
  first = list(methods or [])
  return first + sorted({r["method"] for r in results} - set(first))


def _metric_label(results: Sequence[Mapping[str, Any]], benchmark: str) -> str:
  return "/".join(sorted({r["primary_metric"] for r in results if r["benchmark"] == benchmark}))


def _primary(result: Mapping[str, Any] | None, lang: str | None = None) -> float | None:
  """The primary metric of a result: its macro average, or one language's mean."""
  if result is None:
    return None
  if lang is None:
    return result["macro_average"][result["primary_metric"]]
  entry = result["languages"].get(lang)
  return None if entry is None else entry["scores"][result["primary_metric"]]


def markdown_table(results: Sequence[Mapping[str, Any]],
                   methods: Sequence[str] | None = None) -> str:
  """Renders results (as from `summarize`) as markdown: an overview of macro averages, then
  per benchmark a table with languages and "avg" as rows and methods as columns, in percent
  with two decimals ("–" where a method has no result)."""
  methods = _method_order(results, methods)
  index = {(r["benchmark"], r["method"]): r for r in results}
  benches = _bench_order(r["benchmark"] for r in results)

  def row(label, cells):
    return "| " + " | ".join([label] + cells) + " |"
  rule = "|---|" + "---:|" * len(methods)
  lines = ["# Results", "", "Scores in percent; \"avg\" is the macro average over languages.",
           "", "## Overview (macro averages)", "", row("benchmark", methods), rule]
  for b in benches:
    lines.append(row(f"{b} ({_metric_label(results, b)})",
                     [_pct(_primary(index.get((b, m)))) for m in methods]))
  for b in benches:
    langs = _lang_order(b, (l for r in results if r["benchmark"] == b for l in r["languages"]))
    lines += ["", f"## {b} ({_metric_label(results, b)})", "", row("lang", methods), rule]
    for lang in langs:
      lines.append(row(lang, [_pct(_primary(index.get((b, m)), lang)) for m in methods]))
    lines.append(row("avg", [_pct(_primary(index.get((b, m)))) for m in methods]))
    cut = [f"{r['method']} {lang} {v['prompts_cut']}/{v['count']}" for r in results if r["benchmark"] == b
           for lang, v in r["languages"].items() if v.get("prompts_cut")]
    if cut:
      lines += ["", f"Prompts cut to fit eval.max_prompt_len (middle of the content removed): {', '.join(cut)}."]
  return "\n".join(lines) + "\n"


def plot_results(results: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None,
                 title: str = "Macro average over languages") -> bytes:
  """Draws grouped bars (benchmarks on the x axis, one bar per method, primary metric's macro
  average in percent) and returns the PNG bytes."""
  # The object-oriented API with the Agg canvas: no pyplot, so no global backend switch.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  methods = _method_order(results, methods)
  index = {(r["benchmark"], r["method"]): r for r in results}
  benches = _bench_order(r["benchmark"] for r in results)
  fig = Figure(figsize=(max(6.0, 1.0 + len(benches) * (0.6 + 0.35 * len(methods))), 4.5),
               dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(1, len(methods))
  for j, m in enumerate(methods):
    xs, ys = [], []
    for i, b in enumerate(benches):
      if (b, m) in index:
        xs.append(i - 0.4 + width * (j + 0.5))
        ys.append(100 * _primary(index[(b, m)]))
    bars = ax.bar(xs, ys, width=width, label=m)
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
  ax.set_xticks(range(len(benches)))
  ax.set_xticklabels([f"{b}\n({_metric_label(results, b)})" for b in benches], fontsize=8)
  ax.set_ylabel("score (%)")
  ax.set_ylim(0, 105)
  ax.set_title(title)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # clear of the bars
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def language_chart_data(results: Sequence[Mapping[str, Any]],
                        methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """What `plot_by_language` draws: per benchmark, its languages (paper order), and per method
  the primary metric of each language in percent (None where the method has no result).

  Returns:
    [{"benchmark", "metric", "languages": [lang], "values": {method: [percent | None]}}].
  """
  methods = _method_order(results, methods)
  index = {(r["benchmark"], r["method"]): r for r in results}
  out = []
  for b in _bench_order(r["benchmark"] for r in results):
    langs = _lang_order(b, (l for r in results if r["benchmark"] == b for l in r["languages"]))
    values = {}
    for m in methods:
      if (b, m) in index:
        values[m] = [None if (v := _primary(index[(b, m)], lang)) is None else 100 * v for lang in langs]
    out.append({"benchmark": b, "metric": _metric_label(results, b), "languages": langs, "values": values})
  return out


def plot_by_language(results: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None) -> bytes:
  """Draws one panel per benchmark: languages on the x axis, one bar per method (primary metric
  in percent), and returns the PNG bytes. The y axis stops just above the highest bar, so
  differences of a few points between methods stay visible."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  panels = language_chart_data(results, methods)
  methods = _method_order(results, methods)
  widest = max(len(p["languages"]) for p in panels)
  fig = Figure(figsize=(max(6.0, 1.5 + widest * (0.3 + 0.22 * len(methods))), 0.6 + 2.8 * len(panels)), dpi=100)
  FigureCanvasAgg(fig)
  colors = {m: f"C{j}" for j, m in enumerate(methods)}  # a method keeps its colour in every panel
  width = 0.8 / max(1, len(methods))
  for row, panel in enumerate(panels):
    ax = fig.add_subplot(len(panels), 1, row + 1)
    top = 0.0
    for j, m in enumerate(methods):
      if m not in panel["values"]:
        continue
      pairs = [(i - 0.4 + width * (j + 0.5), v) for i, v in enumerate(panel["values"][m]) if v is not None]
      xs, ys = zip(*pairs) if pairs else ((), ())
      ax.bar(xs, ys, width=width, label=m, color=colors[m])
      top = max([top, *ys])
    ax.set_xticks(range(len(panel["languages"])))
    ax.set_xticklabels(panel["languages"], fontsize=9)
    ax.set_xlim(-0.6, len(panel["languages"]) - 0.4)
    ax.set_ylim(0, min(100.0, max(5.0, 1.12 * top)))
    ax.set_ylabel(f"{panel['metric']} (%)", fontsize=8)
    ax.set_title(panel["benchmark"], fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Writing


def write_report(out_dir: str | os.PathLike,
                 records: Iterable[ScoredPrediction | Mapping[str, Any]], *,
                 primary_metrics: Mapping[str, str] | None = None,
                 methods: Sequence[str] | None = None, chart: bool = True) -> list[pathlib.Path]:
  """Writes predictions and results for `records`, then the table and chart of everything in
  `out_dir` (layout: module docstring), and logs what it replaced and what it kept.

  Results merge by (method, benchmark, language): a language in `records` replaces that
  method's earlier predictions for it; the method's other languages stay and count in its
  benchmark results again. Predictions are written before the results computed from them.

  Args:
    out_dir: output directory (created if missing).
    records: scored predictions (objects or dicts with their fields).
    primary_metrics: benchmark -> reported metric (see `summarize`).
    methods: column order of the table and chart (unnamed methods follow, alphabetically).
    chart: also write results.png and results_by_language.png (needs matplotlib).

  Returns:
    The paths written.
  """
  root = pathlib.Path(out_dir)
  records = _coerce(records)
  if not records:
    raise ValueError("no records to report")
  root.mkdir(parents=True, exist_ok=True)
  written = []
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r.method, r.benchmark, r.lang)].append(r)
  by_pair = collections.defaultdict(set)
  for method, benchmark, lang in groups:
    by_pair[(method, benchmark)].add(lang)
  replaced, kept = [], []
  for (method, benchmark), langs in sorted(by_pair.items()):
    for earlier in sorted((root / "predictions" / method / benchmark).glob("*.jsonl")):
      (replaced if earlier.stem in langs else kept).append(f"{method}/{benchmark}/{earlier.stem}")
      if earlier.stem not in langs:
        records += _read_prediction_file(earlier)
  for (method, benchmark, lang), group in sorted(groups.items()):
    path = _inside(root, root / "predictions" / method / benchmark / f"{lang}.jsonl")
    text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                   for r in sorted(group, key=lambda r: r.index))
    files.write_atomic(path, text.encode("utf-8"))
    written.append(path)
  if replaced or kept:
    logging.info("%s already held results: replaced %s; kept %s", root, ", ".join(replaced) or "none",
                 ", ".join(kept) or "none")
  for result in summarize(records, primary_metrics):
    method, benchmark = result["method"], result["benchmark"]
    result = dict(result, predictions=f"predictions/{method}/{benchmark}")
    path = _inside(root, root / "results" / method / f"{benchmark}.json")
    files.write_atomic(path, (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())
    written.append(path)
  everything = read_results(root)
  path = _inside(root, root / "results.md")
  files.write_atomic(path, markdown_table(everything, methods).encode("utf-8"))
  written.append(path)
  if chart:
    path = _inside(root, root / "results.png")
    files.write_atomic(path, plot_results(everything, methods))
    written.append(path)
    path = _inside(root, root / BY_LANGUAGE_PNG)
    files.write_atomic(path, plot_by_language(everything, methods))
    written.append(path)
  return written
