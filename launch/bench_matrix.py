"""Benchmarks the Transform Matrix fit: host memory and time of the streaming fit (normal
equations accumulated during collection, the default) against the paper's stacked lstsq, at
several numbers of pairs N, side by side in one run.

  python launch/bench_matrix.py                        # SmolLM2-135M, N = 64 and 256
  python launch/bench_matrix.py --num_pairs=64,128,256 --out=

Both fits run `fit_for_run`'s steps on the same model and prompt pairs (the demo training
data's non-English instructions and their English originals, with SmolLM2's chat template):
streaming captures each batch, adds it to S^T S and S^T T, solves, and measures the fit on a
second pass; stacked keeps every pair's N x L x D activations per side and solves them with
lstsq. Peak memory is what numpy allocated on the host during the fit (tracemalloc); the
model's weights and JAX's device buffers are outside it and the same for both.
"""

import pathlib
import sys
import time
import tracemalloc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags  # noqa: E402

from shared_machine import write_doc_section  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("num_pairs", ["64", "256"], "Numbers of prompt pairs N to fit on (the demo data has 280).")
flags.DEFINE_integer("batch_size", 16, "Prompts per capture pass (matrix.batch_size).")
flags.DEFINE_string("out", "docs/benchmarks.md", "Markdown file whose marked section receives the results "
                    "('' writes nothing).")

SECTION_HEAD = """## Transform Matrix: streaming normal equations against stacked lstsq

The fit's host memory (numpy's peak during the fit, tracemalloc) and wall time at each number of
pairs N, on SmolLM2-135M-Instruct (30 layers, width 576), streaming (the default) beside the
paper's stacked lstsq (`matrix.streaming=False`, float32 as JAX computes), and how far each
matrix is from numpy's float64 lstsq on the stacked rows (max |X - X64| / max |X64|).
Streaming holds S^T S and S^T T (2 x D x D float64) whatever N and captures twice (the second
pass measures the fit); stacked holds 2 x N x L x D float32.

Rerun (writes this section): `python launch/bench_matrix.py` (`--num_pairs=64,128,256`).
"""


def load():
  """(model, params, pad id, demo records, chat format) of SmolLM2-135M-Instruct."""
  import transformers

  from cc_jax import convert, data, demo_data, smollm2
  from cc_jax.model import Llama
  model_dir = smollm2.converted_model_dir()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
  records = data.load_records(str(demo_data.TRAIN_FILE), data.SourceOptions(), shard_index=0, shard_count=1)
  model = Llama(convert.load_config(model_dir, dtype="float32"))
  return (model, convert.load_params(model_dir), data.pad_token_id(tokenizer), records,
          data.chat_format(tokenizer, data.TokenizeOptions()))


def streaming_fit(model, params, pad, buckets, source, target):  # as transform.fit_for_run
  from cc_jax import transform
  capture = transform.Capture(model, params, pad, FLAGS.batch_size, buckets)
  cfg = model.cfg
  equations = transform.NormalEquations(cfg.num_layers, cfg.hidden_size)
  for s, t in zip(capture.batches(source), capture.batches(target)):
    equations.add(s, t)
  matrix = equations.solve()
  stats = transform.FitStatistics(matrix, cfg.num_layers)
  for s, t in zip(capture.batches(source), capture.batches(target)):
    stats.add(s, t)
  return matrix, stats.result(), None


def stacked_fit(model, params, pad, buckets, source, target):
  from cc_jax import transform
  source_NLD = transform.collect_activations(model, params, source, pad, FLAGS.batch_size, buckets)
  target_NLD = transform.collect_activations(model, params, target, pad, FLAGS.batch_size, buckets)
  matrix = transform.solve(source_NLD, target_NLD, transform.SolveOptions(streaming=False))
  return matrix, transform.fit_statistics(source_NLD, target_NLD, matrix), (source_NLD, target_NLD)


def reference(source_NLD, target_NLD):
  """numpy's float64 lstsq on the stacked rows: the least-squares solution both approximate."""
  import numpy as np
  d = source_NLD.shape[-1]
  s, t = (x.reshape(-1, d).astype(np.float64) for x in (source_NLD, target_NLD))
  return np.linalg.lstsq(s, t, rcond=None)[0]


def measured(fit, *args):
  """(matrix, statistics, what else the fit returned, peak host MiB, seconds) of one fit."""
  tracemalloc.start()
  start = time.perf_counter()
  matrix, stats, kept = fit(*args)
  seconds = time.perf_counter() - start
  peak = tracemalloc.get_traced_memory()[1] / 2**20
  tracemalloc.stop()
  return matrix, stats, kept, peak, seconds


def main(argv):
  del argv
  import numpy as np

  from cc_jax import batching, transform, xla_flags
  xla_flags.set_cpu_defaults()
  model, params, pad, records, fmt = load()
  rows = []
  for n in map(int, FLAGS.num_pairs):
    picked = [records[i] for i in transform.sample_indices(len(records), n, seed=0)]
    source, target = fmt.encode_ids([r.prompt for r in picked]), fmt.encode_ids([r.prompt_en for r in picked])
    args = (model, params, pad, batching.prompt_buckets(max(map(len, source + target))), source, target)
    for _ in transform.Capture(model, params, pad, FLAGS.batch_size, args[3]).batches(source + target):  # compiles every shape before the timing
      pass
    streamed, streamed_stats, _, streamed_mib, streamed_s = measured(streaming_fit, *args)
    stacked, stacked_stats, activations, stacked_mib, stacked_s = measured(stacked_fit, *args)
    exact = reference(*activations)
    off = [float(np.abs(x - exact).max() / np.abs(exact).max()) for x in (streamed, stacked)]
    rows.append(f"| {n} | {streamed_mib:.1f} | {stacked_mib:.1f} | {streamed_s:.1f} | {stacked_s:.1f} | "
                f"{streamed_stats['r2']:.4f} | {stacked_stats['r2']:.4f} | {off[0]:.1e} | {off[1]:.1e} |")
    print(rows[-1], flush=True)
  text = ("| N | streaming MiB | stacked MiB | streaming s | stacked s | streaming R^2 | stacked R^2 | "
          "streaming off | stacked off |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
  print(text)
  if FLAGS.out:
    write_doc_section(FLAGS.out, "bench_matrix", f"{SECTION_HEAD}\n{text}")


if __name__ == "__main__":
  app.run(main)
