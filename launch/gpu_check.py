"""A prepared check of cc_jax on one GPU (H100 or H200), in under 10 minutes; `launch/gpu_check.sh`
runs it. Four parts, each printed as it finishes, then written to docs/benchmarks.md:

1. parity: the logits of SmolLM2-135M-Instruct (a random model of its shape when its converted
   weights are not in the cache) on the GPU in float32 and in bfloat16, against the CPU in
   float32, for a batch of left-padded chat prompts: max |difference| relative to max |logit|,
   and how often the top token agrees.
2. attention: cuDNN's fused attention against XLA's, bfloat16, on the same prompts.
3. training: steps per second of a ~1B Llama-style model (Llama-3.2-1B's shape, random
   weights) at sequence 2048 in bfloat16 with fp32 master weights and AdamW, for `sft` and
   `cc` (English prompt 1024 tokens, detached as in the paper): tokens/s, MFU and cc/sft.
   Model FLOPs are MaxText's convention (cc_jax/aot.py): 6 x weights per token plus causal
   attention, and for cc the English forward (2 x weights per English token plus its
   attention); recomputation is not counted. Peak: 989 TFLOP/s dense bf16 (H100 SXM, H200).
4. generation: CC generation (the prompt's cache reused) against plain generation on the 1B
   model, batch 16, 512-token prompts, 40 new tokens.

`--dry_run` runs every part on the CPU at tiny sizes (the CPU as the "GPU", attention part
skipped) and writes nothing: the check of the check.
"""

import dataclasses
import datetime
import functools
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags  # noqa: E402

from shared_machine import write_doc_section  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("dry_run", False, "Every part on the CPU at tiny sizes; nothing written unless --out is given.")
flags.DEFINE_integer("batch", 8, "Training: sequences per step.")
flags.DEFINE_integer("seq", 2048, "Training: tokens per sequence (English prompt: half of it).")
flags.DEFINE_integer("steps", 10, "Training: timed steps per method, after two untimed ones.")
flags.DEFINE_float("peak_tflops", 989.0, "Dense bf16 peak of the GPU, for MFU (H100 SXM and H200: 989).")
flags.DEFINE_string("out", None, "Markdown file whose gpu_check section receives the results; "
                    "default docs/benchmarks.md, or nothing with --dry_run.")

TARGET_SFT_MFU = 0.45  # MaxText reports ~51% for Llama-2-7B on H100
ONE_B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
             num_kv_heads=8, head_dim=64, rope_theta=500000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16)


def timed(fn, repeats: int) -> float:
  """Median seconds of `fn()` (which blocks until its result is ready) over `repeats` runs."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --- 1 and 2: parity -------------------------------------------------------------------------
def smollm2_weights():
  """(LlamaConfig, host params, what they are): the cached SmolLM2, else a random model of its shape."""
  import flax.linen as nn
  import jax
  import numpy as np

  from cc_jax import convert, smollm2
  from cc_jax.model import Llama, LlamaConfig
  cached = smollm2.cache_root() / "smollm2" / "cc_jax-float32"
  if not FLAGS.dry_run and (cached / convert.META_FILE).exists():
    return convert.load_config(cached), convert.load_params(cached), "SmolLM2-135M-Instruct"
  shape = TINY if FLAGS.dry_run else dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                          num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)
  cfg = LlamaConfig(**shape)
  ones = np.ones((1, 4), np.int32)
  with jax.default_device(jax.devices("cpu")[0]):
    params = jax.device_get(nn.unbox(Llama(cfg).init(jax.random.key(0), ones, ones, ones))["params"])
  what = "a tiny random model" if FLAGS.dry_run else "a random model of SmolLM2-135M's shape"
  return cfg, params, f"{what} ({cfg.num_layers} layers, width {cfg.hidden_size})"


def prompts(cfg, batch: int = 8):
  """Left-padded token ids of `batch` prompts of 24 to 128 tokens, with their mask."""
  import numpy as np

  from cc_jax import generate
  rng = np.random.default_rng(0)
  rows = [rng.integers(1, cfg.vocab_size, int(n)).tolist() for n in np.linspace(24, 128, batch)]
  return generate.left_pad(rows, pad_id=0)


def logits_on(device, cfg, params, tokens, mask):
  import jax
  import numpy as np

  from cc_jax.model import Llama, left_pad_positions
  model = Llama(cfg)
  with jax.default_device(device):
    placed = jax.device_put(params, device)
    run = jax.jit(lambda p, t, m: model.apply({"params": p}, t, left_pad_positions(m), m).logits_BTV)
    return np.asarray(run(placed, tokens, mask), np.float32)


def compare(logits, reference, mask) -> str:
  import numpy as np
  real = mask.astype(bool)
  worst = float(np.abs(logits - reference)[real].max() / np.abs(reference[real]).max())
  top = float((logits.argmax(-1) == reference.argmax(-1))[real].mean())
  return f"max |diff| / max |logit| {worst:.1e}, top-1 agreement {top:.1%}"


def parity(accelerator) -> list[str]:
  import jax
  cfg, params, what = smollm2_weights()
  tokens, mask = prompts(cfg)
  reference = logits_on(jax.devices("cpu")[0], cfg, params, tokens, mask)
  lines = [f"model: {what}; {tokens.shape[0]} prompts of up to {tokens.shape[1]} tokens"]
  for dtype in ("float32", "bfloat16"):
    got = logits_on(accelerator, dataclasses.replace(cfg, dtype=dtype), params, tokens, mask)
    lines.append(f"{accelerator.platform} {dtype} against CPU float32: {compare(got, reference, mask)}")
  if accelerator.platform != "gpu":
    lines.append("cuDNN attention against XLA's: skipped (no GPU)")
    return lines
  bf16 = dataclasses.replace(cfg, dtype="bfloat16")
  xla = logits_on(accelerator, dataclasses.replace(bf16, attention_impl="xla"), params, tokens, mask)
  cudnn = logits_on(accelerator, dataclasses.replace(bf16, attention_impl="cudnn"), params, tokens, mask)
  lines.append(f"cuDNN attention against XLA's (bfloat16): {compare(cudnn, xla, mask)}")
  return lines


# --- 3: training throughput ---------------------------------------------------------------------
def train_throughput(mesh) -> tuple[list[str], dict]:
  import jax
  import numpy as np

  from cc_jax import aot, connection, optim, train
  from cc_jax import sharding as sh
  from cc_jax.model import Llama, LlamaConfig
  dry = FLAGS.dry_run
  cfg = LlamaConfig(**(TINY if dry else ONE_B), dtype="bfloat16", remat_policy="full",
                    max_position_embeddings=max(FLAGS.seq, 4096))
  B, T, steps = (2, 128, 2) if dry else (FLAGS.batch, FLAGS.seq, FLAGS.steps)
  B = sh.round_up_batch(mesh, B)  # the rows are split over every device
  T_en = T // 2
  model, rules = Llama(cfg), sh.rules_from_config()
  tx, schedule = optim.make_optimizer(optim.OptimConfig(schedule="constant", warmup_ratio=0.0), total_steps=1000)
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(1, cfg.vocab_size, (B, T)), "attention_mask": np.ones((B, T)),
           "positions": np.broadcast_to(np.arange(T), (B, T)), "anchor": np.full((B,), T // 2 - 1),
           "en_input_ids": rng.integers(1, cfg.vocab_size, (B, T_en)), "en_attention_mask": np.ones((B, T_en)),
           "en_positions": np.broadcast_to(np.arange(T_en), (B, T_en)), "en_anchor": np.full((B,), T_en - 1)}
  batch["labels"] = np.where(np.arange(T) >= T // 2, batch["input_ids"], -100)
  batch = {k: np.asarray(v, np.int32) for k, v in batch.items()}
  seconds, lines = {}, [f"model: {model_size(cfg) / 1e6:,.0f}M parameters ({cfg.num_layers} layers, width "
                        f"{cfg.hidden_size}), batch {B} x {T} tokens, English prompt {T_en}, bfloat16, remat full"]
  peak = FLAGS.peak_tflops * 1e12 * mesh.size
  for method in ("sft", "cc"):
    cfg_step = train.StepConfig(method=method, connection=connection.ConnectionConfig(stop_english_grad=True))
    state, shardings = train.create_sharded_state(jax.random.key(0), model=model, tx=tx, cfg=cfg_step, mesh=mesh,
                                                  rules=rules)
    step = train.make_train_step(model, tx, schedule, cfg_step, mesh, rules, shardings)
    inputs = train.step_inputs(batch, method)
    for _ in range(2):  # compile, warm up
      state, metrics = step(state, inputs, jax.random.key(1))
    jax.block_until_ready(metrics)

    def one_step():
      nonlocal state
      state, out = step(state, inputs, jax.random.key(1))
      jax.block_until_ready(out)
    seconds[method] = timed(one_step, steps)
    flops = aot.train_flops(cfg, method, B, T, T_en, english_grad=False)
    mfu = "n/a on a CPU" if dry else f"{flops / seconds[method] / peak:.1%} (target for sft: {TARGET_SFT_MFU:.0%})"
    lines.append(f"{method}: {seconds[method] * 1e3:.0f} ms/step, {B * T / seconds[method]:,.0f} tokens/s, MFU {mfu}")
    del state
  floor = 1 + T_en / (3 * T)  # the English forward over the non-English forward and backward
  lines.append(f"cc/sft step time: {seconds['cc'] / seconds['sft']:.3f} (arithmetic floor {floor:.3f})")
  return lines, cfg


def model_size(cfg) -> int:
  from cc_jax import aot
  return aot.matmul_weights(cfg, head=not cfg.tie_word_embeddings) + cfg.vocab_size * cfg.hidden_size


# --- 4: generation -----------------------------------------------------------------------------
def generation(cfg) -> list[str]:
  import flax.linen as nn
  import jax
  import numpy as np

  from cc_jax import connection, generate
  from cc_jax.model import Llama
  B, T, new = (2, 32, 4) if FLAGS.dry_run else (16, 512, 40)
  model = Llama(cfg)
  ones = np.ones((1, 4), np.int32)
  params = nn.unbox(jax.jit(lambda r: model.init(r, ones, ones, ones)["params"])(jax.random.key(0)))
  params[connection.PARAM_NAME] = {"kernel": 0.02 * jax.random.normal(jax.random.key(1),
                                                                      (cfg.hidden_size, cfg.num_layers))}
  rng = np.random.default_rng(0)
  tokens, mask = rng.integers(1, cfg.vocab_size, (B, T)).astype(np.int32), np.ones((B, T), np.int32)
  eos = np.zeros((0,), np.int32)  # none: both generate all `new` tokens
  matrix = np.eye(cfg.hidden_size, dtype=np.float32)
  variants = {"plain": functools.partial(generate.generate, model, params, tokens, mask, eos, max_new_tokens=new),
              "cc": functools.partial(generate.cc_generate, model, params, tokens, mask, eos, matrix,
                                      max_new_tokens=new)}
  for fn in variants.values():  # compile
    jax.block_until_ready(fn())
  times = {name: timed(lambda: jax.block_until_ready(fn()), 5) for name, fn in variants.items()}
  return [f"batch {B}, {T}-token prompts, {new} new tokens: plain {times['plain'] * 1e3:.0f} ms, "
          f"cc {times['cc'] * 1e3:.0f} ms, cc/plain {times['cc'] / times['plain']:.3f}"]


SECTION_HEAD = """## GPU check

`launch/gpu_check.sh` on one GPU (the method: `launch/gpu_check.py`'s docstring). Figures of
the latest run that had a GPU; rerun it there to replace them.
"""


def main(argv):
  del argv
  import jax

  from cc_jax import sharding as sh
  accelerator = jax.devices()[0]
  if not FLAGS.dry_run and accelerator.platform != "gpu":
    raise app.UsageError(f"no GPU: JAX's first device is {accelerator}; --dry_run runs the steps on the CPU")
  device = f"{jax.device_count()} x {accelerator.device_kind}"
  print(f"gpu_check on {device}{' (dry run)' if FLAGS.dry_run else ''}, jax {jax.__version__}", flush=True)
  mesh = sh.make_mesh({"fsdp": -1})
  sections, cfg = {}, None
  for name in ("parity", "training", "generation"):
    start = time.perf_counter()
    if name == "parity":
      sections[name] = parity(accelerator)
    elif name == "training":
      sections[name], cfg = train_throughput(mesh)
    else:
      sections[name] = generation(cfg)
    print(f"{name} ({time.perf_counter() - start:.0f} s):\n  " + "\n  ".join(sections[name]), flush=True)
  out = FLAGS.out if FLAGS.out is not None else ("" if FLAGS.dry_run else "docs/benchmarks.md")
  if out:
    text = f"Run on {device}, jax {jax.__version__}, {datetime.date.today()}.\n\n" + "".join(
        f"- **{name}**: " + "; ".join(lines) + "\n" for name, lines in sections.items())
    write_doc_section(out, "gpu_check", f"{SECTION_HEAD}\n{text}")
    print(f"written to {out}")


if __name__ == "__main__":
  app.run(main)
