"""Benchmark runs: load prompts, generate in fixed-shape batches (plain or with the CC
connection), score, and write predictions, results, a table and a chart (docs/method.md §5).

Modes of a trained run:
  plain     generation without the connection (the only mode of an `sft` run or a base model)
  matrix    CC with the Transform Matrix: E_hat = S X (the paper's inference)
  identity  CC with S in place of E_hat (ablation: no matrix)
  oracle    CC with the real activations of the parallel English prompt (an upper bound;
            where each benchmark's parallel English comes from: cc_jax/benchmarks.py)
Decoding is greedy and selection argmax by default, so a run is deterministic.

Protocols (`EvalOptions.protocol`, documented side by side in docs/method.md §7):
  cc_jax    the prompt encoded by the run's template once (one BOS); generation stops at the
            template's end of turn (and the tokenizer's eos).
  authors   the authors' inference scripts: the template rendered as text with the BOS text,
            then tokenized with the tokenizer's special tokens (two BOS for llama3 and
            mistral); generation stops only at the model config's eos_token_id.
Both: greedy, `max_new_tokens` (40 in the paper), special tokens skipped in decoding. Prompts
are never truncated unless they exceed `max_prompt_len` (default: the model's context less the
new tokens); then the middle of the content is cut and the prompt is counted in the results.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Sequence

from absl import logging
import jax
import numpy as np

from cc_jax import (batching, benchmarks, choice, console, continuous, convert, data, generate, metrics, report,
                    runtime, sharding as sh, transform, workdir_lock)
from cc_jax.benchmarks import EvalExample

MODES = ("plain", "matrix", "identity", "oracle")
PROTOCOLS = ("cc_jax", "authors")
PREFIX_STEP = 8  # shared prefixes are cut to a multiple of this


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  source: str  # a local benchmark root directory, or "hub"
  benchmarks: tuple[str, ...] = benchmarks.BENCHMARKS
  languages: tuple[str, ...] = ()  # () = each benchmark's paper languages that are present
  limit: int = 0  # examples per (benchmark, language); 0 = all
  seed: int = 0
  modes: tuple[str, ...] = ("matrix",)  # for cc runs; sft runs and base models always use "plain"
  batch_size: int = 16
  max_batch_tokens: int = 16384  # most prompt tokens (rows x padded length) per batch; 0 = no limit
  continuous: str = "auto"  # on | off | auto: a row whose answer ended takes the next prompt (cc_jax/continuous.py)
  decode_chunk: int = 8  # continuous: most decode steps between looks for ended rows
  max_new_tokens: int = 40  # the paper's
  max_prompt_len: int = 0  # 0 = the model's context less max_new_tokens; longer prompts lose their middle
  stop_strings: tuple[str, ...] = ()  # cut each prediction at the first of these
  shared_prefix: bool = True  # prefill the tokens every prompt opens with once per run, not per prompt
  label: str = ""  # method name in the tables; "" = the run's method (+ mode)
  protocol: str = "cc_jax"  # cc_jax | authors (module docstring)

  def __post_init__(self):
    bad = [m for m in self.modes if m not in MODES]
    if bad:
      raise ValueError(f"eval.modes: unknown {bad}; expected some of {MODES}")
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"eval.protocol={self.protocol!r}; expected one of {PROTOCOLS}")
    if self.max_batch_tokens < 0:
      raise ValueError(f"eval.max_batch_tokens={self.max_batch_tokens} must be >= 0 (0: no limit)")
    if self.max_prompt_len < 0:
      raise ValueError(f"eval.max_prompt_len={self.max_prompt_len} must be >= 0 (0: the model's context)")
    if self.continuous not in ("on", "off", "auto"):
      raise ValueError(f"eval.continuous={self.continuous!r}; expected on, off or auto")
    if self.decode_chunk < 1:
      raise ValueError(f"eval.decode_chunk={self.decode_chunk} must be >= 1")


def selected_languages(options: EvalOptions) -> dict[str, tuple[str, ...]]:
  """benchmark -> the languages to evaluate. With `options.languages`, a benchmark without any
  of them is skipped, and the skip is logged; naming a language no benchmark has is an error."""
  chosen, skipped = {}, []
  for b in options.benchmarks:
    b = benchmarks.canonical_benchmark(b)
    if str(options.source) == "hub":
      present = benchmarks.LANGUAGES[b]
    else:
      present = benchmarks.available_languages(options.source, b)
      if not present:
        raise FileNotFoundError(f"{options.source}: no files for benchmark {b}")
    if options.languages:
      present = tuple(l for l in present if l in options.languages)
      if not present:
        skipped.append(b)
        continue
    chosen[b] = present
  if options.languages:
    unknown = [l for l in options.languages if not any(l in langs for langs in chosen.values())]
    if not chosen or unknown:
      raise ValueError(f"eval.languages={options.languages}: no benchmark of {options.source} has "
                       f"{', '.join(unknown or options.languages)} (benchmarks: {', '.join(options.benchmarks)})")
    if skipped:
      logging.warning("eval.languages=%s: skipping %s (none of these languages); evaluating %s",
                      ",".join(options.languages), ", ".join(skipped),
                      ", ".join(f"{b} ({','.join(l)})" for b, l in chosen.items()))
  return chosen


def load_examples(options: EvalOptions) -> list[EvalExample]:
  langs = selected_languages(options)
  return benchmarks.load(options.source, list(langs), langs, limit=options.limit or None, seed=options.seed)


def score(example: EvalExample, prediction: str) -> dict[str, float] | None:
  """The example's metrics; None for an unanswerable MKQA item (left out, as in MKQA)."""
  if example.kind == "choice":
    labels = example.option_labels or benchmarks.OPTION_LABELS[example.benchmark]
    markers = "digits" if labels[0].isdigit() else "letters"
    return choice.score_choice(prediction, example.gold, example.options or labels, markers=markers)
  if example.kind == "qa":
    return metrics.score_qa(prediction, example.gold, unanswerable="skip")
  return metrics.score_summary(prediction, example.gold)


def cut_middle(prompt_ids: Sequence[int], keep: int) -> list[int]:
  """Keeps `keep` tokens of a long prompt: its first ceil(keep/2) and last floor(keep/2). The
  opening (template head, instruction) and the end (question or options, the generation
  prompt) survive; the middle of the content (a passage, an article) is what goes."""
  if len(prompt_ids) <= keep:
    return list(prompt_ids)
  tail = keep // 2
  return list(prompt_ids[:keep - tail]) + list(prompt_ids[len(prompt_ids) - tail:])


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  """An encoded prompt: ids, the anchor's index in them, and how many tokens were cut."""
  ids: list[int]
  anchor: int
  cut: int = 0

  @property
  def anchor_offset(self) -> int:
    return len(self.ids) - 1 - self.anchor


def _stop_ids(trained: runtime.TrainedModel, fmt, protocol: str) -> np.ndarray:
  """What ends generation: the template's stop ids, or (authors) the model config's eos."""
  if protocol == "cc_jax":
    return np.asarray(fmt.stop_ids, np.int32)
  base = runtime.model_dir(trained.train_config)
  eos = convert.read_model_meta(base)["hf_config"].get("eos_token_id") if base else None
  eos = trained.tokenizer.eos_token_id if eos is None else eos
  return np.asarray(eos if isinstance(eos, list) else [eos], np.int32)


class Generator:
  """Encodes prompts with the run's chat template and generates in fixed-shape batches, after
  prefilling the prompts' shared opening once (`shared_prefix`).

  Every process runs the same batches; each batch's rows are split over the mesh's batch axes
  (all devices of all processes), so a prompt is generated once, and every process gets all
  the predictions back. `rows_generated` counts the prompts this process's devices generated;
  `decode_steps` is (row-steps that produced a token of a real prompt, row-steps run): in a
  static batch a row that has ended waits, padding, for the batch's last one; with continuous
  batching it waits at most until the end of the decode chunk, then takes the next prompt.
  """

  def __init__(self, trained: runtime.TrainedModel, options: EvalOptions, matrix=None):
    self.trained, self.options, self.matrix = trained, options, matrix
    tokenizer, train_config = trained.tokenizer, trained.train_config
    self.fmt = data.chat_format(tokenizer, data.TokenizeOptions.from_config(train_config.data))
    self.rule = self.fmt.anchor_rule(train_config.cc.get("anchor", "last_prompt_token"))
    self.pad_id = data.pad_token_id(tokenizer)
    self.eos = _stop_ids(trained, self.fmt, options.protocol)
    context = trained.model.cfg.max_position_embeddings
    self.max_prompt_len = options.max_prompt_len or max(context - options.max_new_tokens, 1)
    self.mesh = sh.mesh_of(trained.params)
    self.batch_size = sh.round_up_batch(self.mesh, options.batch_size)
    if self.batch_size != options.batch_size:
      logging.info("eval.batch_size=%d rounded up to %d: a multiple of the %d devices the batch is split over",
                   options.batch_size, self.batch_size, sh.batch_devices(self.mesh))
    self.rows_generated = 0
    self.decode_steps = [0, 0]

  def encode(self, prompts: Sequence[str]) -> list[EvalPrompt]:
    if self.options.protocol == "authors":  # the template as text, tokenized with special tokens
      texts = self.fmt.render(list(prompts))
      ids = [list(i) for i in self.trained.tokenizer(texts)["input_ids"]]
    else:
      ids = self.fmt.encode_ids(list(prompts))
    out = []
    for i in ids:
      kept = cut_middle(i, self.max_prompt_len)
      anchor = len(kept) - 1 if self.rule is None else self.rule.find(kept)
      out.append(EvalPrompt(kept, anchor, len(i) - len(kept)))
    return out

  def shared_prefix(self, prompts: Sequence[EvalPrompt]) -> list[int]:
    """The tokens all `prompts` open with, cut to a multiple of PREFIX_STEP (fewer compiled
    shapes) and ending before every anchor; [] when off."""
    if not (self.options.shared_prefix and prompts):
      return []
    common = os.path.commonprefix([p.ids for p in prompts])
    length = min(len(common), min(p.anchor for p in prompts))
    length -= length % PREFIX_STEP
    window = self.trained.model.cfg.sliding_window  # the cache must fit in it (generate.fresh_cache)
    longest = max(len(p.ids) for p in prompts)
    if window is not None and length + longest + self.options.max_new_tokens > window:
      return []
    return common[:length]

  def run(self, prompts: list[EvalPrompt], mode: str, english: list[EvalPrompt] | None = None,
          progress=None) -> list[str]:
    """Predictions for `prompts`, in order.

    Prompts go in order of length (less padding), as many rows at a time as `max_batch_tokens`
    allows at their padded length (long prompts in fewer rows: prefill cost and attention
    memory grow with rows x length^2). With `continuous` (the default) the prompts of each
    padded length share one decode batch whose ended rows take the next prompt; otherwise each
    batch decodes until its last row ends, and a batch short of its size is filled with copies,
    so each length has one shape.
    """
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i].ids), i))
    texts: list[str | None] = [None] * len(prompts)
    buckets = batching.prompt_buckets(max(len(p.ids) for p in prompts + (english or [])))
    prefix_ids = self.shared_prefix(prompts)
    prefix = None
    if prefix_ids:
      prefix = generate.prefill_prefix(self.trained.model, self.trained.params, np.asarray(prefix_ids, np.int32))
    batch = functools.partial(self._batch, prompts=prompts, english=english, skip=len(prefix_ids), buckets=buckets)

    def finish(i: int, ids: list[int]):
      if ids and ids[-1] in self.eos and self.options.protocol == "cc_jax":
        ids = ids[:-1]  # the authors' scripts decode the stopping token too (skipped if special)
      texts[i] = self._cut(self.trained.tokenizer.decode(ids, skip_special_tokens=True))
      if progress is not None:
        progress.update(1)

    def width(i: int) -> int:  # the padded length of prompt i after the prefix
      return int(batching.bucket_length(len(prompts[i].ids) - len(prefix_ids), buckets))

    groups = continuous.length_groups(order, width)
    if self._continuous(groups, width, prefix):
      for group in groups:
        self._run_continuous(group, width(group[-1]), batch, prefix, mode, finish)
    else:
      self._run_static(order, width, batch, prefix, mode, finish)
    return texts

  def _continuous(self, groups: list[list[int]], width, prefix) -> bool:
    """Whether to batch continuously: `eval.continuous` on, or auto when some length group has
    more prompts than a batch holds (otherwise no row would ever be refilled)."""
    choice = self.options.continuous
    if choice == "off" or not continuous.fits(self.trained.model, width(groups[-1][-1]),
                                                self.options.max_new_tokens, prefix):
      return False
    return choice == "on" or any(len(g) > self.batch_size for g in groups)

  def _batch(self, rows: list[int], *, prompts, english, skip: int, buckets) -> dict:
    """Host arrays of the prompts `rows` (left-padded, less the `skip` prefix tokens): tokens,
    mask, anchor columns, recompute width, and (oracle) the English prompts' (tokens, mask, anchors)."""
    batch = [prompts[i] for i in rows]
    tokens, mask = generate.left_pad([p.ids[skip:] for p in batch], self.pad_id, buckets)
    T = tokens.shape[1]
    out = dict(tokens=tokens, mask=mask, anchor=_anchor_columns(batch, T), english=None,
               recompute=generate.recompute_width([p.anchor_offset for p in batch], T))
    if english is not None:
      en = [english[i] for i in rows]
      en_tokens, en_mask = generate.left_pad([p.ids for p in en], self.pad_id, buckets)
      out["english"] = (en_tokens, en_mask, _anchor_columns(en, en_tokens.shape[1]))
    return out

  def _run_continuous(self, group: list[int], length: int, batch, prefix, mode: str, finish):
    """The prompts `group` (a `continuous.length_groups` group, none wider than `length`) in one
    continuously refilled batch."""
    trained, mesh = self.trained, self.mesh
    # No more rows than prompts (rounded to the devices): an empty row would idle throughout.
    rows = min(self._rows_at(length), sh.round_up_batch(mesh, len(group)))

    def admission(items):
      b = batch(items)
      if mode == "plain":
        return dict(tokens_RT=b["tokens"], mask_RT=b["mask"], cc=False)
      return dict(tokens_RT=b["tokens"], mask_RT=b["mask"], anchor_R=b["anchor"], english=b["english"], cc=True,
                  matrix=self.matrix if mode == "matrix" else None, recompute=b["recompute"])

    stats = continuous.run(trained.model, trained.params, group, admission, rows=rows, prompt_len=length,
                           max_new_tokens=self.options.max_new_tokens, eos_ids=self.eos, prefix=prefix,
                           chunk=self.options.decode_chunk, mesh=mesh, on_done=finish)
    self.rows_generated += stats["local"]
    self.decode_steps = [a + b for a, b in zip(self.decode_steps, stats["row_steps"])]

  def _run_static(self, order: list[int], width, batch, prefix, mode: str, finish):
    """Batches of prompts in `order`, each decoded until its last row ends."""
    start = 0
    while start < len(order):
      rows = order[start:start + self.batch_size]
      rows = rows[:self._rows_at(width(rows[-1]))]
      start += len(rows)
      size = self._rows_at(width(rows[-1]))  # >= len(rows): the longest of these is no longer
      mine = sh.local_rows(self.mesh, size)
      real = len(rows)
      rows = rows + [rows[-1]] * (size - real)
      new, lengths = self._generate(batch(rows), mode, prefix)
      new, lengths = sh.to_host(new), sh.to_host(lengths)
      self.rows_generated += sum(j < real for j in mine)
      self.decode_steps[0] += int(lengths[:real].sum())
      self.decode_steps[1] += size * int(lengths.max())  # the decode loop runs until every row ends
      for j in range(real):
        finish(rows[j], new[j, :lengths[j]].tolist())

  def _rows_at(self, padded_length: int) -> int:
    """Rows of a batch padded to `padded_length` columns: the batch size, or fewer as
    `max_batch_tokens` requires (a multiple of the devices, at least one each)."""
    ways, budget = sh.batch_devices(self.mesh), self.options.max_batch_tokens
    if not budget:
      return self.batch_size
    fit = budget // padded_length // ways * ways
    return min(self.batch_size, max(ways, fit))

  def _generate(self, b: dict, mode: str, prefix):
    trained, n = self.trained, self.options.max_new_tokens
    rows = functools.partial(sh.rows_to_devices, self.mesh)
    tokens, mask = rows(b["tokens"]), rows(b["mask"])
    if mode == "plain":
      return generate.generate(trained.model, trained.params, tokens, mask, self.eos, prefix=prefix, max_new_tokens=n)
    english = None if b["english"] is None else tuple(map(rows, b["english"]))
    matrix = self.matrix if mode == "matrix" else None
    return generate.cc_generate(trained.model, trained.params, tokens, mask, self.eos, matrix, english,
                                prefix=prefix, anchor_B=rows(b["anchor"]), max_new_tokens=n, recompute=b["recompute"])

  def _cut(self, text: str) -> str:
    for stop in self.options.stop_strings:
      if stop and stop in text:
        text = text[:text.index(stop)]
    return text.strip()


def _anchor_columns(prompts: Sequence[EvalPrompt], length: int) -> np.ndarray:
  """Each left-padded prompt's anchor column in a batch of `length` columns."""
  return np.asarray([length - 1 - p.anchor_offset for p in prompts], np.int32)


def evaluate_run(workdir, options: EvalOptions, out_dir=None, step: int | None = None,
                 progress: bool = True) -> list[report.ScoredPrediction]:
  """Evaluates a training run on the benchmarks and writes the report into `out_dir`
  (default `<workdir>/eval`). Returns the scored predictions."""
  trained = runtime.load_trained(workdir, step)
  return _evaluate_and_write(trained, options, workdir, out_dir or pathlib.Path(workdir) / "eval", progress)


def evaluate_model(config, options: EvalOptions, out_dir, progress: bool = True) -> list[report.ScoredPrediction]:
  """Evaluates the model of `config.model.path` itself (a converted or base model, no training
  run) in plain mode and writes the report into `out_dir`."""
  return _evaluate_and_write(runtime.load_model(config), options, None, out_dir, progress)


def _evaluate_and_write(trained, options, workdir, out_dir, progress) -> list[report.ScoredPrediction]:
  with workdir_lock.hold(out_dir, "eval"):  # one writer per output directory
    records = evaluate_examples(trained, load_examples(options), options, workdir, progress)
    if jax.process_index() == 0:  # every process generated the same predictions; one writes
      report.write_report(out_dir, records)
  return records


def _english_prompts(examples: Sequence[EvalExample]) -> dict[tuple[str, str, int], str]:
  """(benchmark, lang, index) -> the parallel English prompt: the example's own, else (hub
  sources) the English example of the same index, for benchmarks whose sets are parallel."""
  english = {(e.benchmark, e.index): e.prompt for e in examples
             if e.lang == "en" and e.benchmark not in benchmarks.OWN_ENGLISH}
  out = {}
  for e in examples:
    prompt = e.english_prompt or english.get((e.benchmark, e.index))
    if prompt is not None:
      out[(e.benchmark, e.lang, e.index)] = prompt
  return out


def evaluate_examples(trained: runtime.TrainedModel, examples: Sequence[EvalExample], options: EvalOptions,
                      workdir=None, progress: bool = True) -> list[report.ScoredPrediction]:
  """Generates and scores `examples` with every mode of `options` (a cc run's matrix is read
  from `<workdir>/matrix` and must belong to the same checkpoint)."""
  method = trained.method
  modes = options.modes if method == "cc" else ("plain",)
  matrix = None
  if "matrix" in modes:
    cfg = trained.model.cfg
    matrix, _ = transform.load(pathlib.Path(workdir) / "matrix", num_layers=cfg.num_layers,
                               hidden_size=cfg.hidden_size, checkpoint=trained.checkpoint)
  generator = Generator(trained, options, matrix)
  english = _english_prompts(examples)
  records, generated = [], 0
  for bench in dict.fromkeys(e.benchmark for e in examples):
    items = [e for e in examples if e.benchmark == bench]
    prompts = generator.encode([e.prompt for e in items])
    cut = sum(p.cut > 0 for p in prompts)
    if cut:
      logging.warning("%s: %d of %d prompts exceed eval.max_prompt_len=%d tokens; the middle of their content "
                      "was cut (counted as prompts_cut in the results)", bench, cut, len(prompts),
                      generator.max_prompt_len)
    for mode in modes:
      label = options.label or (method if method != "cc" else f"{method}-{mode}")
      run_items, run_prompts, en_prompts = items, prompts, None
      if mode == "oracle":
        keep = [k for k, e in enumerate(items) if (bench, e.lang, e.index) in english]
        if len(keep) < len(items):
          logging.warning("%s: oracle mode skips %d examples without a parallel English prompt", bench,
                          len(items) - len(keep))
        run_items, run_prompts = [items[k] for k in keep], [prompts[k] for k in keep]
        if not run_items:
          continue
        en_prompts = generator.encode([english[(bench, e.lang, e.index)] for e in run_items])
      with console.bar(progress, total=len(run_items), desc=f"{bench} [{label}]") as bar:
        predictions = generator.run(run_prompts, mode, en_prompts, bar)
      generated += len(run_items)
      for example, prompt, prediction in zip(run_items, run_prompts, predictions):
        scores = score(example, prediction)
        if scores is None:
          continue
        records.append(report.ScoredPrediction(bench, example.lang, label, example.index, example.prompt,
                                               prediction, example.gold, scores, prompt_cut=prompt.cut))
  logging.info("process %d of %d generated %d of the %d prompts", jax.process_index(), jax.process_count(),
               generator.rows_generated, generated)
  return records
