"""Benchmarks LoRA against full fine-tuning, for `sft` and `cc`: step time and peak memory of
the jitted train step, side by side in one run.

  python launch/bench_lora.py --notorch                    # SmolLM2-135M, rank 8, batch 4 x (128+128), English 112
  python launch/bench_lora.py --notorch --rank=16 --dtype=bfloat16
  python launch/bench_lora.py --notorch --model=tiny --out=  # a smoke run that writes nothing

The four variants (sft and cc, each full and LoRA) run interleaved on the same weights and
synthetic batch, with launch/bench_train_step.py's machinery (its flags: --model, --dtype,
--shapes (the first is used), --steps, --warmup, --quiet_wait, --out; cc is the default
variant, English pass detached). Full fine-tuning trains every weight with AdamW; LoRA trains
adapters on all seven projections and the Decision Maker, the base frozen in the compute
dtype. Peak memory is XLA's compiled memory analysis (arguments + outputs + temporaries -
donated), so it counts weights, AdamW state and gradients as well as activations.
"""

import dataclasses
import datetime
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from absl import flags  # noqa: E402

import bench_train_step as bts  # noqa: E402  (defines the shared flags)
from cc_jax import console  # noqa: E402
from shared_machine import Quiet, write_doc_section  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rank", 8, "LoRA rank (alpha = 2 x rank).")

SECTION_HEAD = """## Training step: LoRA against full fine-tuning

One jitted train step of `sft` and of `cc` (English pass detached), each with every weight
trained (AdamW, float32 master weights) and with LoRA (adapters on the seven projections and
the Decision Maker trained, the base frozen in the compute dtype, no gradients or optimizer
state for it), interleaved in one process on the same weights and batch. Peak memory is XLA's
compiled memory analysis of the step. Rerun: `python launch/bench_lora.py --notorch`.
"""


def lora_params(cfg, params):
  """(LoRA config, the base params plus freshly initialised adapters)."""
  import flax.linen as nn
  import jax
  import numpy as np
  from cc_jax import lora, optim
  from cc_jax.model import Llama
  lora_cfg = dataclasses.replace(cfg, lora=lora.LoraConfig(rank=FLAGS.rank))
  dummy = np.zeros((1, 4), np.int32)
  init = nn.unbox(Llama(lora_cfg).init(jax.random.key(0), dummy, dummy, dummy + 1)["params"])
  return lora_cfg, optim.join(optim.split_trainable(init, "lora")[0], params)


def trainable_count(params, trainable: str) -> int:
  import jax
  from cc_jax import optim
  return sum(x.size for x in jax.tree.leaves(optim.split_trainable(params, trainable)[0]))


def main(argv):
  del argv
  import jax
  start, quiet = time.perf_counter(), Quiet(FLAGS.quiet_wait)
  shape = bts.parse_shape(FLAGS.shapes[0])
  cfg, params = bts.load_jax_model()
  lora_cfg, with_adapters = lora_params(cfg, params)
  batch = jax.device_put(bts.synthetic_batch(shape, cfg.vocab_size))
  variants = {}
  for method in ("sft", "cc_stop"):
    for kind in ("full", "lora"):
      trainable = "all" if kind == "full" else "lora"
      v = bts.JaxVariant(method, cfg if kind == "full" else lora_cfg, params if kind == "full" else with_adapters,
                         batch, trainable=trainable)
      v.count = trainable_count(v.state.params, trainable)
      variants[(method, kind)] = v
      print(f"compiled {method} {kind} in {v.compile_s:.1f} s; memory {v.memory}", flush=True)
  bts.run_interleaved(list(variants.values()), FLAGS.steps, FLAGS.warmup, quiet)
  rows = []
  for (method, kind), v in variants.items():
    full = variants[(method, "full")]
    ms, full_ms = bts.median_ms(v.wall), bts.median_ms(full.wall)
    rows.append(f"| {'sft' if method == 'sft' else 'cc'} | {kind} | {v.count / 1e6:,.2f} M | {ms:,.0f} "
                f"({min(v.wall) * 1e3:,.0f}) | {ms / full_ms:.2f} | {bts.mib(v.memory['peak'])} | "
                f"{v.memory['peak'] / full.memory['peak']:.2f} | {bts.mib(v.memory['temp'])} |")
  text = "\n".join([
      f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {bts.machine()}.",
      f"Model: {FLAGS.model}, compute dtype {FLAGS.dtype}, LoRA rank {FLAGS.rank} (alpha {2 * FLAGS.rank}); shape "
      f"{shape['name']} (batch x prompt + response : English prompt); {FLAGS.steps} timed steps per variant "
      f"after {FLAGS.warmup} warm-up, interleaved; whole run {(time.perf_counter() - start) / 60:.1f} min; "
      f"{quiet.summary()}.",
      "",
      "| method | tuning | trained params | wall ms/step, median (min) | / full | peak MiB (XLA) | / full | temp MiB |",
      "|---|---|---|---|---|---|---|---|",
      *rows, ""])
  print("\n" + text)
  if FLAGS.out:
    write_doc_section(FLAGS.out, "bench_lora", f"{SECTION_HEAD}\n{text}")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  console.run(main)
