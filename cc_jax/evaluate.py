"""Benchmark runs: load prompts, generate in fixed-shape batches (plain or with the CC
connection), score, and write predictions, results, a table and a chart (docs/method.md §5).

Modes of a trained run:
  plain     generation without the connection (the only mode of an `sft` run)
  matrix    CC with the Transform Matrix: E_hat = S X (the paper's inference)
  identity  CC with S in place of E_hat (ablation: no matrix)
  oracle    CC with the real activations of the parallel English prompt (an upper bound;
            needs the benchmark's `en` file, matched by index)
Decoding is greedy and selection argmax by default, so a run is deterministic.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

from absl import logging
import jax
import numpy as np
import tqdm

from cc_jax import batching, benchmarks, data, generate, metrics, report, runtime, transform
from cc_jax.benchmarks import EvalExample

MODES = ("plain", "matrix", "identity", "oracle")
PREFIX_STEP = 8  # shared prefixes are cut to a multiple of this


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  source: str  # a local benchmark root directory, or "hub"
  benchmarks: tuple[str, ...] = benchmarks.BENCHMARKS
  languages: tuple[str, ...] = ()  # () = each benchmark's paper languages that are present
  limit: int = 0  # examples per (benchmark, language); 0 = all
  seed: int = 0
  modes: tuple[str, ...] = ("matrix",)  # for cc runs; sft runs always use "plain"
  batch_size: int = 16
  max_new_tokens: int = 40  # the paper's
  max_prompt_len: int = 1024  # longer prompts keep their head and the generation prompt
  stop_strings: tuple[str, ...] = ()  # cut each prediction at the first of these
  shared_prefix: bool = True  # prefill the tokens every prompt opens with once per run, not per prompt
  label: str = ""  # method name in the tables; "" = the run's method (+ mode)

  def __post_init__(self):
    bad = [m for m in self.modes if m not in MODES]
    if bad:
      raise ValueError(f"eval.modes: unknown {bad}; expected some of {MODES}")


def _languages(options: EvalOptions) -> dict[str, tuple[str, ...]] | None:
  if str(options.source) == "hub":
    return {b: tuple(l for l in options.languages if l in benchmarks.LANGUAGES[benchmarks.canonical_benchmark(b)])
            or None for b in options.benchmarks} if options.languages else None
  chosen = {}
  for b in options.benchmarks:
    present = benchmarks.available_languages(options.source, b)
    if options.languages:
      present = tuple(l for l in present if l in options.languages)
    if not present:
      raise FileNotFoundError(f"{options.source}: no files for benchmark {b}"
                              f"{' in ' + ','.join(options.languages) if options.languages else ''}")
    chosen[b] = present
  return chosen


def load_examples(options: EvalOptions) -> list[EvalExample]:
  langs = _languages(options)
  return benchmarks.load(options.source, options.benchmarks, {k: v for k, v in (langs or {}).items() if v},
                         limit=options.limit or None, seed=options.seed)


def score(example: EvalExample, prediction: str) -> dict[str, float] | None:
  """The example's metrics; None for an unanswerable MKQA item (left out, as in MKQA)."""
  if example.kind == "choice":
    labels = example.option_labels or benchmarks.OPTION_LABELS[example.benchmark]
    markers = "digits" if labels[0].isdigit() else "letters"
    return metrics.score_choice(prediction, example.gold, example.options or labels, markers=markers)
  if example.kind == "qa":
    return metrics.score_qa(prediction, example.gold, unanswerable="skip")
  return metrics.score_summary(prediction, example.gold)


class Generator:
  """Encodes prompts with the run's chat template and generates in fixed-shape batches, after
  prefilling the prompts' shared opening once (`shared_prefix`)."""

  def __init__(self, trained: runtime.TrainedModel, options: EvalOptions, matrix=None):
    self.trained, self.options, self.matrix = trained, options, matrix
    tokenizer = trained.tokenizer
    self.fmt = data.chat_format(tokenizer, data.TokenizeOptions.from_config(trained.train_config.data))
    self.tail = len(tokenizer(self.fmt.prompt_tail, add_special_tokens=False)["input_ids"])
    self.pad_id = data.pad_token_id(tokenizer)
    self.eos = np.asarray(self.fmt.end_ids + ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None
                                              else ()), np.int32)
    self.buckets = batching.prompt_buckets(options.max_prompt_len)

  def encode(self, prompts: Sequence[str]) -> list[list[int]]:
    ids = data.encode_prompts(self.trained.tokenizer, self.fmt, list(prompts))
    return [data.cut_prompt(p, self.options.max_prompt_len, self.tail) for p in ids]

  def shared_prefix(self, prompt_ids: Sequence[Sequence[int]]) -> list[int]:
    """The tokens all `prompt_ids` open with, cut to a multiple of PREFIX_STEP (fewer compiled
    shapes) and leaving each prompt at least its last token (the anchor); [] when off."""
    if not (self.options.shared_prefix and prompt_ids):
      return []
    common = os.path.commonprefix([list(p) for p in prompt_ids])
    length = min(len(common), min(len(p) for p in prompt_ids) - 1)
    length -= length % PREFIX_STEP
    window = self.trained.model.cfg.sliding_window  # the cache must fit in it (generate._fresh_cache)
    if window is not None and length + self.options.max_prompt_len + self.options.max_new_tokens > window:
      return []
    return common[:length]

  def run(self, prompt_ids: list[list[int]], mode: str, english_ids: list[list[int]] | None = None,
          progress=None) -> list[str]:
    """Predictions for `prompt_ids`, in order. Batches are sorted by length (less padding);
    the last batch is filled with copies so every batch has the same shape."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    size = self.options.batch_size
    texts: list[str | None] = [None] * len(prompt_ids)
    prefix_ids = self.shared_prefix(prompt_ids)
    prefix = None
    if prefix_ids:
      prefix = generate.prefill_prefix(self.trained.model, self.trained.params, np.asarray(prefix_ids, np.int32))
    for start in range(0, len(order), size):
      rows = order[start:start + size]
      real = len(rows)
      rows = rows + [rows[-1]] * (size - real)
      tokens, mask = generate.left_pad([prompt_ids[i][len(prefix_ids):] for i in rows], self.pad_id, self.buckets)
      english = None
      if mode == "oracle":
        english = generate.left_pad([english_ids[i] for i in rows], self.pad_id, self.buckets)
      new, lengths = self._generate(tokens, mask, mode, english, prefix)
      new, lengths = np.asarray(new), np.asarray(lengths)
      for j in range(real):
        ids = new[j, :lengths[j]].tolist()
        if ids and ids[-1] in self.eos:
          ids = ids[:-1]
        texts[rows[j]] = self._cut(self.trained.tokenizer.decode(ids, skip_special_tokens=True))
      if progress is not None:
        progress.update(real)
    return texts

  def _generate(self, tokens, mask, mode: str, english, prefix):
    trained, n = self.trained, self.options.max_new_tokens
    if mode == "plain":
      return generate.generate(trained.model, trained.params, tokens, mask, self.eos, prefix=prefix, max_new_tokens=n)
    matrix = self.matrix if mode == "matrix" else None
    return generate.cc_generate(trained.model, trained.params, tokens, mask, self.eos, matrix, english,
                                prefix=prefix, max_new_tokens=n)

  def _cut(self, text: str) -> str:
    for stop in self.options.stop_strings:
      if stop and stop in text:
        text = text[:text.index(stop)]
    return text.strip()


def evaluate_run(workdir, options: EvalOptions, out_dir=None, step: int | None = None,
                 progress: bool = True) -> list[report.ScoredPrediction]:
  """Evaluates a training run on the benchmarks and writes the report into `out_dir`
  (default `<workdir>/eval`). Returns the scored predictions."""
  trained = runtime.load_trained(workdir, step)
  records = evaluate_examples(trained, load_examples(options), options, workdir, progress)
  if jax.process_index() == 0:  # every process generated the same predictions; one writes
    report.write_report(out_dir or pathlib.Path(workdir) / "eval", records)
  return records


def evaluate_examples(trained: runtime.TrainedModel, examples: Sequence[EvalExample], options: EvalOptions,
                      workdir=None, progress: bool = True) -> list[report.ScoredPrediction]:
  """Generates and scores `examples` with every mode of `options` (a cc run's matrix is read
  from `<workdir>/matrix` and must belong to the same checkpoint)."""
  method = trained.train_config.cc.method
  modes = ("plain",) if method == "sft" else options.modes
  matrix = None
  if "matrix" in modes:
    cfg = trained.model.cfg
    matrix, _ = transform.load(pathlib.Path(workdir) / "matrix", num_layers=cfg.num_layers,
                               hidden_size=cfg.hidden_size, checkpoint=trained.checkpoint)
  generator = Generator(trained, options, matrix)
  english = {(e.benchmark, e.index): e for e in examples if e.lang == "en"}
  records = []
  for bench in dict.fromkeys(e.benchmark for e in examples):
    items = [e for e in examples if e.benchmark == bench]
    prompt_ids = generator.encode([e.prompt for e in items])
    for mode in modes:
      label = options.label or (method if method == "sft" else f"{method}-{mode}")
      run_items, run_ids, en_ids = items, prompt_ids, None
      if mode == "oracle":
        keep = [k for k, e in enumerate(items) if (bench, e.index) in english]
        if len(keep) < len(items):
          logging.warning("%s: oracle mode skips %d examples without a parallel English prompt", bench,
                          len(items) - len(keep))
        run_items, run_ids = [items[k] for k in keep], [prompt_ids[k] for k in keep]
        en_ids = generator.encode([english[(bench, e.index)].prompt for e in run_items])
      with tqdm.tqdm(total=len(run_items), desc=f"{bench} [{label}]", disable=not progress) as bar:
        predictions = generator.run(run_ids, mode, en_ids, bar)
      for example, prediction in zip(run_items, predictions):
        scores = score(example, prediction)
        if scores is None:
          continue
        records.append(report.ScoredPrediction(bench, example.lang, label, example.index, example.prompt,
                                               prediction, example.gold, scores))
  return records
