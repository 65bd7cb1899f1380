"""Benchmarks evaluation throughput on a realistic mix: every prompt of a benchmark root in the
authors' layout (all six benchmarks and their languages), generated as `task=eval` does, at
batch 1 and at larger batches, side by side in one run.

  python launch/bench_eval.py --source=../shared/eval-sample          # 360 prompts, 51-5004 tokens
  python launch/bench_eval.py --source=../shared/eval-sample --limit=1 --batch_sizes=8  # 60 of them (docs)
  python launch/bench_eval.py --source=/data/benchmarks --limit=10 --batch_sizes=16,32 --out=
  python launch/bench_eval.py --source=../shared/eval-sample --benchmarks=XNLI,MKQA,XStoryCloze --limit=3 \
      --batch_sizes=8 --section=bench_eval_short   # short prompts, many of each length

Each pass runs `evaluate.Generator` in plain mode (chat template, the prompts' shared opening
prefilled once, length buckets, batches sorted by length, greedy, 40 new tokens, stopping at the
template's end of turn, at most `--max_batch_tokens` prompt tokens per batch) over all
prompts; each batch size runs with static batches (a batch decodes until its last row ends)
and with continuous batching (a row that ended takes the next prompt, cc_jax/continuous.py);
the passes alternate, after a warm-up pass per setting that compiles its shapes, and a pass
disturbed by other processes is re-run (launch/shared_machine.py). `decode busy` is the share
of decode row-steps that produced a token of a real prompt.
"""

import datetime
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags  # noqa: E402

from shared_machine import Quiet, timed_rounds, write_doc_section  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "A benchmark root in the authors' layout (cc_jax/benchmarks.py).", required=True)
flags.DEFINE_integer("limit", 0, "Prompts per benchmark and language; 0 = all.")
flags.DEFINE_list("benchmarks", [], "Only these benchmarks (default: all six).")
flags.DEFINE_string("section", "bench_eval", "Name of the docs section the results replace.")
flags.DEFINE_list("batch_sizes", ["8", "16"], "Batch sizes timed beside batch 1, each with static and continuous "
                  "batching.")
flags.DEFINE_integer("repeats", 1, "Timed passes per batch size.")
flags.DEFINE_integer("new_tokens", 40, "eval.max_new_tokens (the paper's 40).")
flags.DEFINE_integer("max_batch_tokens", 16384, "eval.max_batch_tokens (0: batches of batch_size whatever the length).")
flags.DEFINE_integer("quiet_wait", 600, "Most seconds (in all) to wait for other processes to leave the CPUs.")
flags.DEFINE_string("out", "docs/benchmarks.md", "Markdown file whose bench_eval section receives the results "
                    "('' writes nothing).")

SECTION_HEAD = """## Evaluation throughput on a realistic mix

Examples per second of `evaluate.Generator` over every prompt of a benchmark root (six
benchmarks, their languages, prompt lengths as they come), at batch 1 and larger batches, side
by side in one run; `decode busy` is the share of decode row-steps spent on a prompt that had
not ended (the method: `launch/bench_eval.py`'s docstring).
"""


def main(argv):
  del argv
  from configs import base
  from cc_jax import convert, evaluate, runtime, smollm2, xla_flags
  from cc_jax.model import Llama
  import jax
  import transformers

  xla_flags.set_cpu_defaults()
  start_all = time.perf_counter()
  model_dir = smollm2.converted_model_dir()
  trained = runtime.TrainedModel(
      train_config=base.get_config(), model=Llama(convert.load_config(model_dir)),
      params=jax.device_put(convert.load_params(model_dir)),
      tokenizer=transformers.AutoTokenizer.from_pretrained(str(model_dir / "tokenizer")), checkpoint="")
  chosen = dict(benchmarks=tuple(FLAGS.benchmarks)) if FLAGS.benchmarks else {}
  examples = evaluate.load_examples(evaluate.EvalOptions(source=FLAGS.source, limit=FLAGS.limit, **chosen))
  sizes = [(1, "static")] + [(b, kind) for b in sorted({int(b) for b in FLAGS.batch_sizes} - {1})
                              for kind in ("static", "continuous")]
  generators = {(b, kind): evaluate.Generator(trained, evaluate.EvalOptions(
      source=FLAGS.source, batch_size=b, max_batch_tokens=FLAGS.max_batch_tokens, max_new_tokens=FLAGS.new_tokens,
      continuous="on" if kind == "continuous" else "off")) for b, kind in sizes}
  first = sizes[0]
  prompts = generators[first].encode([e.prompt for e in examples])
  lengths = sorted(len(p.ids) for p in prompts)
  benchmarks = sorted({e.benchmark for e in examples})
  print(f"{len(prompts)} prompts of {', '.join(benchmarks)}; {lengths[0]}-{lengths[-1]} tokens "
        f"(median {lengths[len(lengths) // 2]})", flush=True)
  predictions, busy = {}, {}
  for b, generator in generators.items():  # warm-up: compiles every shape, and counts the decode steps
    start = time.perf_counter()
    predictions[b] = generator.run(prompts, "plain")
    live, run = generator.decode_steps
    busy[b] = live / run
    print(f"warm-up batch {b[0]} {b[1]}: {time.perf_counter() - start:.0f} s, decode busy {busy[b]:.0%}", flush=True)
  times = {b: [] for b in sizes}

  def run_round(round_):
    kept = []
    for b in (sizes if round_ % 2 == 0 else sizes[::-1]):
      start = time.perf_counter()
      generators[b].run(prompts, "plain")
      kept.append(lambda b=b, seconds=time.perf_counter() - start: times[b].append(seconds))
    return kept

  quiet = Quiet(FLAGS.quiet_wait)
  timed_rounds(quiet, "passes", FLAGS.repeats, run_round)
  rate = {b: len(prompts) / statistics.median(times[b]) for b in sizes}
  best = max(sizes, key=rate.get)
  rows = [f"| {b[0]} | {b[1]} | {statistics.median(times[b]):.0f} | {rate[b]:.2f} | {rate[b] / rate[first]:.2f} | "
          f"{busy[b]:.0%} | {sum(p == q for p, q in zip(predictions[b], predictions[first]))}/{len(prompts)} |"
          for b in sizes]
  where = f"{platform.node() or 'this machine'} ({jax.devices()[0].device_kind}, {jax.device_count()} device(s))"
  waited = f"; {quiet.summary()}" if quiet.summary() else ""
  text = "\n".join([
      f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {where}; SmolLM2-135M-Instruct "
      f"float32; {len(prompts)} prompts of {', '.join(benchmarks)} from `{FLAGS.source}`, {lengths[0]}-{lengths[-1]} "
      f"tokens (median {lengths[len(lengths) // 2]}); {FLAGS.new_tokens} new tokens; at most {FLAGS.max_batch_tokens} "
      f"prompt tokens per batch; median of {FLAGS.repeats} pass(es); whole run "
      f"{(time.perf_counter() - start_all) / 60:.0f} min{waited}.",
      "",
      "| batch | batching | s per pass | examples/s | / batch 1 | decode busy | same text as batch 1 |",
      "|---|---|---|---|---|---|---|",
      *rows,
      "",
      f"Best: batch {best[0]} {best[1]}, {rate[best]:.2f} examples/s, {rate[best] / rate[first]:.2f}x batch 1.",
      ""])
  print(text)
  if FLAGS.out:
    write_doc_section(FLAGS.out, FLAGS.section, f"{SECTION_HEAD}\n{text}")


if __name__ == "__main__":
  app.run(main)
