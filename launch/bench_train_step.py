"""Benchmarks one training step of `cc` against `sft`: step time and peak memory, side by side.

  # the issue's shape (batch 4, prompt 128 + response 128, English prompt 112), SmolLM2-135M
  python launch/bench_train_step.py
  # more shapes (BATCHxPROMPT+RESPONSE:ENGLISH), more timed steps, no PyTorch reference
  python launch/bench_train_step.py --shapes=4x128+128:112,2x256+256:224 --steps=8 --notorch
  # a quick smoke run on a tiny random model, nothing written
  python launch/bench_train_step.py --model=tiny --out=

Three variants run interleaved in one process, on the same weights and synthetic batch:
`sft`, `cc` with the English pass detached (`stop_english_grad`, the default: what the
authors' runs did) and `cc` with English gradients (the ablation). Step time is
the median of the timed steps after compilation and warm-up. Peak memory is XLA's compiled
memory analysis of the jitted step (arguments + outputs + temporaries - donated aliases),
which is deterministic; `--rss` adds each variant's peak RSS from a fresh subprocess.
The PyTorch reference (transformers' LlamaForCausalLM with forward hooks, the authors'
procedure, AdamW) runs its SFT and CC steps interleaved in the same process.

The arithmetic floor of the cc/sft ratio is 1 + T_en/(3 T_full) with the English pass
detached and 1 + T_en/T_full with English gradients (T = tokens per step; the English pass is a
prompt-only forward, plus its backward when gradients flow); the target is at most 5% above.
"""

import datetime
import functools
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags  # noqa: E402

from cc_jax import console  # noqa: E402

from shared_machine import Quiet, timed_rounds, write_doc_section  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "smollm2", ["smollm2", "tiny"],
                  "smollm2: the real SmolLM2-135M-Instruct (converted once, cached); "
                  "tiny: a random 2-layer model for a smoke run.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "cc_jax compute dtype (master weights stay float32; the PyTorch reference is float32).")
flags.DEFINE_list("shapes", ["4x128+128:112"],
                  "Shapes BATCHxPROMPT+RESPONSE:ENGLISH_PROMPT (full rows, no padding).")
flags.DEFINE_integer("steps", 5, "Timed steps per variant (after warm-up).")
flags.DEFINE_integer("warmup", 1, "Untimed steps per variant after compilation.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference of the authors' procedure.")
flags.DEFINE_integer("threads", os.cpu_count(), "torch.set_num_threads for the PyTorch reference.")
flags.DEFINE_bool("flops", True, "Also report XLA's FLOP count of each step (cost analysis, unrolled).")
flags.DEFINE_bool("rss", False, "Also measure each variant's peak RSS in a fresh subprocess (slow).")
flags.DEFINE_string("out", "docs/benchmarks.md",
                    "Markdown file whose marked section receives the results ('' writes nothing). "
                    "Relative paths are relative to the repository root.")
flags.DEFINE_integer("quiet_wait", 300, "Most seconds (in all) to wait for other processes to leave "
                     "the CPUs before timed rounds (0: neither wait nor re-run disturbed rounds).")
flags.DEFINE_string("rss_child", None, "Internal: run one variant and print its peak RSS.")

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("sft", "cc_stop", "cc")  # cc_stop: the default (English pass detached); cc: English grads
TARGET = 1.05  # a ratio may be at most 5% above its floor
TINY_HF = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
               tie_word_embeddings=True)


# --- Shapes and batches --------------------------------------------------------------------
def parse_shape(text: str) -> dict:
  """'4x128+128:112' -> {batch: 4, prompt: 128, response: 128, english: 112}."""
  try:
    batch, rest = text.split("x")
    lengths, english = rest.split(":")
    prompt, response = lengths.split("+")
    shape = dict(batch=int(batch), prompt=int(prompt), response=int(response), english=int(english))
  except ValueError:
    raise app.UsageError(f"--shapes: {text!r} is not BATCHxPROMPT+RESPONSE:ENGLISH (e.g. 4x128+128:112)")
  shape["name"] = text
  shape["t_full"] = shape["batch"] * (shape["prompt"] + shape["response"])
  shape["t_en"] = shape["batch"] * shape["english"]
  return shape


def synthetic_batch(shape: dict, vocab: int, seed: int = 0) -> dict:
  """Full (unpadded) rows in cc_jax.batching's format: labels on the response only, the
  anchor on the last prompt token, the English prompt only."""
  import numpy as np
  rng = np.random.default_rng(seed)
  B, P, R, E = shape["batch"], shape["prompt"], shape["response"], shape["english"]
  ids = rng.integers(1, vocab, (B, P + R)).astype(np.int32)
  labels = ids.copy()
  labels[:, :P] = -100
  return {
      "input_ids": ids, "attention_mask": np.ones((B, P + R), np.int32),
      "positions": np.broadcast_to(np.arange(P + R, dtype=np.int32), (B, P + R)).copy(),
      "labels": labels, "anchor": np.full((B,), P - 1, np.int32),
      "en_input_ids": rng.integers(1, vocab, (B, E)).astype(np.int32),
      "en_attention_mask": np.ones((B, E), np.int32),
      "en_positions": np.broadcast_to(np.arange(E, dtype=np.int32), (B, E)).copy(),
      "en_anchor": np.full((B,), E - 1, np.int32),
  }


# --- Models ------------------------------------------------------------------------------
def load_jax_model():
  """(LlamaConfig, float32 params) of the chosen model."""
  from cc_jax import convert, smollm2
  if FLAGS.model == "smollm2":
    model_dir = smollm2.converted_model_dir()
    return convert.load_config(model_dir, dtype=FLAGS.dtype), convert.load_params(model_dir)
  import numpy as np
  from cc_jax.model import LlamaConfig
  hf = tiny_hf_model()
  cfg = LlamaConfig.from_hf(hf.config.to_dict(), dtype=FLAGS.dtype)
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  return cfg, convert.params_from_tensors(cfg, list(state), state.__getitem__, np.float32)


def tiny_hf_model():
  import torch
  import transformers
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_HF)).float()


def load_torch_model():
  """transformers' float32 model with the same weights as load_jax_model()."""
  if FLAGS.model == "tiny":
    return tiny_hf_model()
  import torch
  import transformers
  from cc_jax import smollm2
  gguf = smollm2.fetch_gguf()
  return transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                           dtype=torch.float32)


# --- cc_jax ------------------------------------------------------------------------------
def jitted_step(name: str, cfg, trainable: str = "all"):
  """The jitted (state-donating) train step of one variant, and its TrainState initialiser."""
  import flax.linen as nn
  import jax
  from cc_jax import connection, optim, train
  from cc_jax.model import Llama
  model = Llama(cfg)
  step_cfg = train.StepConfig(method="sft" if name == "sft" else "cc", trainable=trainable,
                              connection=connection.ConnectionConfig(stop_english_grad=name == "cc_stop"))
  # Plain AdamW at a constant 1e-5, as the PyTorch reference steps (no warmup, no clipping).
  tx, schedule = optim.make_optimizer(
      optim.OptimConfig(schedule="constant", warmup_ratio=0.0, grad_clip_norm=0.0), total_steps=1000)
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule, cfg=step_cfg),
                 donate_argnums=0)
  # init_train_state boxes the Decision Maker with its logical axes; a mesh-less jit wants plain arrays.
  init = lambda params: nn.unbox(train.init_train_state(jax.random.key(0), params, model=model, tx=tx,
                                                        cfg=step_cfg))
  return step, init


def step_flops(name: str, cfg, params, batch, trainable: str = "all") -> float:
  """XLA's FLOP count of one step, from the unrolled model: cost analysis counts a scanned
  loop body once, so the scanned step would hide the per-layer work. Nothing is compiled."""
  import dataclasses
  import jax
  from cc_jax.model import unstack_layers
  unrolled = dataclasses.replace(cfg, scan_layers=False)
  step, init = jitted_step(name, unrolled, trainable)
  state = jax.eval_shape(lambda p: init(unstack_layers(p, cfg.num_layers)), params)
  return step.lower(state, batch, jax.random.key(1)).cost_analysis()["flops"]


class JaxVariant:
  """One jitted, state-donating train step of one variant, compiled ahead of time."""

  def __init__(self, name: str, cfg, params, batch, trainable: str = "all"):
    import jax
    import jax.numpy as jnp
    self.name = name
    step, init = jitted_step(name, cfg, trainable)
    self.state = init(jax.tree.map(lambda x: jnp.array(x, copy=True), params))  # donated: one copy each
    self.batch, self.rng = batch, jax.random.key(1)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, batch, self.rng).compile()
    self.compile_s = time.perf_counter() - start
    stats = self.compiled.memory_analysis()
    self.memory = {  # bytes
        "peak": (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                 - stats.alias_size_in_bytes),
        "temp": stats.temp_size_in_bytes,
        "argument": stats.argument_size_in_bytes,
    }
    self.flops = step_flops(name, cfg, params, batch, trainable) if FLAGS.flops else None
    self.wall, self.cpu = [], []

  def run(self) -> None:
    import jax
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    self.loss = float(metrics["loss"])


def run_interleaved(variants, steps: int, warmup: int, quiet: Quiet) -> None:
  """Warm-up steps, then `steps` rounds over the variants (rotating who goes first), each
  recording every variant's wall time and process CPU time (all threads) for one step.
  A round during which other processes used the CPUs is re-run (see `shared_machine`)."""
  for _ in range(warmup):
    for v in variants:
      v.run()

  def record(v, wall: float, cpu: float) -> None:
    v.wall.append(wall)
    v.cpu.append(cpu)

  def run_round(round_):
    k, kept = round_ % len(variants), []
    for v in variants[k:] + variants[:k]:
      wall, cpu = time.perf_counter(), time.process_time()
      v.run()
      kept.append(functools.partial(record, v, time.perf_counter() - wall, time.process_time() - cpu))
    return kept

  timed_rounds(quiet, "steps", steps, run_round)


def median_ms(values) -> float:
  return statistics.median(values) * 1e3


# --- PyTorch reference (the authors' procedure: tests/hf_reference.py) ----------------------
class TorchVariant:
  """SFT or CC step of the PyTorch reference: forward, backward, AdamW step."""

  def __init__(self, name: str, hf_model, batch):
    import torch
    self.name, self.model, self.wall, self.cpu = name, hf_model, [], []
    self.t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    params = list(hf_model.parameters())
    if name == "cc":
      cfg = hf_model.config
      self.source_select = torch.nn.Linear(cfg.hidden_size, cfg.num_hidden_layers, bias=False)
      torch.nn.init.normal_(self.source_select.weight, std=0.02)
      params += list(self.source_select.parameters())
    self.optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

  def run(self) -> None:
    from tests import hf_reference
    self.optimizer.zero_grad(set_to_none=True)
    if self.name == "cc":
      loss = hf_reference.torch_cc_loss_and_backward(self.model, self.source_select, self.t)
    else:
      loss = self.model(input_ids=self.t["input_ids"], attention_mask=self.t["attention_mask"],
                        position_ids=self.t["positions"], labels=self.t["labels"]).loss
      loss.backward()
    self.optimizer.step()
    self.loss = loss.item()


# --- Report ------------------------------------------------------------------------------
def floors(shape: dict) -> dict:
  ratio = shape["t_en"] / shape["t_full"]
  return {"cc": 1 + ratio, "cc_stop": 1 + ratio / 3}


def verdict(ratio: float, floor: float) -> str:
  return "pass" if ratio <= TARGET * floor else "FAIL"


def machine() -> str:
  import jax
  import jaxlib
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  versions = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
  if FLAGS.torch:
    import torch
    import transformers
    versions += f", torch {torch.__version__}, transformers {transformers.__version__}"
  return f"{os.cpu_count()} CPU cores ({cpu}), JAX backend {jax.devices()[0].platform}; {versions}"


def mib(n: float) -> str:
  return f"{n / 2**20:,.0f}"


LABELS = {"sft": "sft", "cc_stop": "cc (default: English detached, as the paper's runs)",
          "cc": "cc + English grads (ablation)"}


def shape_table(shape: dict, jax_variants: dict, torch_variants: dict | None, rss: dict | None) -> str:
  f = floors(shape)
  sft = jax_variants["sft"]
  flops = sft.flops is not None
  time_rows = ["| variant | wall ms/step, median (min) | CPU ms/step, median | wall ratio | CPU ratio "
               + ("| FLOP ratio (XLA) " if flops else "") + "| floor | wall vs floor | CPU vs floor |",
               "|---|---|---|---|---|---|---|---|" + ("---|" if flops else "")]
  memory_rows = ["| variant | peak MiB (XLA) | temp MiB | peak ratio | floor | peak vs floor |"
                 + (" peak RSS MiB |" if rss else ""),
                 "|---|---|---|---|---|---|" + ("---|" if rss else "")]
  for name in VARIANTS:
    v = jax_variants[name]
    wall, cpu = median_ms(v.wall), median_ms(v.cpu)
    wr, cr, mr = wall / median_ms(sft.wall), cpu / median_ms(sft.cpu), v.memory["peak"] / sft.memory["peak"]
    fl = f.get(name)
    t = [LABELS[name], f"{wall:,.0f} ({min(v.wall) * 1e3:,.0f})", f"{cpu:,.0f}", f"{wr:.3f}", f"{cr:.3f}"]
    t += [f"{v.flops / sft.flops:.3f}"] if flops else []
    t += [f"{fl:.3f}", f"{wr / fl:.3f} {verdict(wr, fl)}", f"{cr / fl:.3f} {verdict(cr, fl)}"] if fl else ["", "", ""]
    m = [LABELS[name], mib(v.memory["peak"]), mib(v.memory["temp"]), f"{mr:.3f}"]
    m += [f"{fl:.3f}", f"{mr / fl:.3f} {verdict(mr, fl)}"] if fl else ["", ""]
    m += [mib(rss[name])] if rss else []
    time_rows.append("| " + " | ".join(t) + " |")
    memory_rows.append("| " + " | ".join(m) + " |")
  lines = [
      f"**Shape {shape['name']}**: batch {shape['batch']}, prompt {shape['prompt']} + response "
      f"{shape['response']}, English prompt {shape['english']}; T_full = {shape['t_full']}, "
      f"T_en = {shape['t_en']}, T_en/T_full = {shape['t_en'] / shape['t_full']:.3f}.",
      "", *time_rows, "", *memory_rows]
  if torch_variants:
    ts, tc = (torch_variants[k] for k in ("sft", "cc"))
    wr, cr = median_ms(tc.wall) / median_ms(ts.wall), median_ms(tc.cpu) / median_ms(ts.cpu)
    jr = median_ms(jax_variants["cc"].wall) / median_ms(sft.wall)
    jc = median_ms(jax_variants["cc"].cpu) / median_ms(sft.cpu)
    lines += ["", f"PyTorch reference of the authors' procedure with English gradients (transformers + "
              f"forward hooks + AdamW, "
              f"float32): sft {median_ms(ts.wall):,.0f} ms ({min(ts.wall) * 1e3:,.0f}), "
              f"cc {median_ms(tc.wall):,.0f} ms ({min(tc.wall) * 1e3:,.0f}); "
              f"**reference cc/sft = {wr:.3f} wall / {cr:.3f} CPU**, against cc_jax's "
              f"{jr:.3f} wall / {jc:.3f} CPU with English grads (floor {f['cc']:.3f})."]
  return "\n".join(lines)


def report(shapes, results, total_s: float, quiet: Quiet) -> str:
  head = [
      f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}.",
      f"Model: {FLAGS.model}{' (SmolLM2-135M-Instruct)' if FLAGS.model == 'smollm2' else ''}, "
      f"compute dtype {FLAGS.dtype}, AdamW at a constant 1e-5; {FLAGS.steps} timed steps per "
      f"variant after {FLAGS.warmup} warm-up, interleaved; whole run {total_s / 60:.1f} min; "
      f"{quiet.summary()}.",
      f"Command: `{' '.join(['python launch/bench_train_step.py'] + sys.argv[1:])}`",
      "",
  ]
  body = [shape_table(s, *results[s["name"]]) for s in shapes]
  return "\n".join(head) + "\n" + "\n\n".join(body) + "\n"


SECTION_HEAD = """## Training step: `cc` against `sft`

A `cc` step adds an English pass to the `sft` step: a forward pass over the English prompt
(no LM head), detached by default as in the authors' runs (docs/method.md §2), and with the
`cc.stop_english_grad=False` ablation also its backward pass. Counting a backward pass as
twice a forward, the arithmetic floor of the cc/sft ratio (of step time and of peak memory)
is 1 + T_en/(3 T_full) detached and 1 + T_en/T_full with English gradients (T = tokens per
step). Because the English pass skips the LM head, the
real arithmetic is a little below the floor: the `FLOP ratio` column is XLA's count for the
compiled step. The target is a ratio at most 5% above its floor at every measured shape
(`pass`). Wall time is the primary figure; process CPU time (all threads) is given beside
it as a check. The machine is shared, so timed rounds wait for other processes to leave the
CPUs and a disturbed round is re-run (the run notes how often). Peak
memory is XLA's compiled memory analysis of the jitted step: arguments + outputs +
temporaries - donated buffers, so it includes the parameters and AdamW state both methods
share; `temp` is the temporaries alone. The PyTorch reference times the authors' procedure
(transformers' `LlamaForCausalLM`, forward hooks, AdamW) on the same weights and batch, with
plain autograd (English gradients), so it compares with the ablation row.

Rerun (rewrites the section between the markers): `python launch/bench_train_step.py`; add
`--shapes=4x128+128:112,2x256+256:224` (BATCHxPROMPT+RESPONSE:ENGLISH), `--steps=N`,
`--rss` (peak RSS of each variant in a fresh process), `--notorch`, `--quiet_wait=S`;
`--model=tiny --out=` is a smoke run that writes nothing.
"""


# --- Peak RSS in a fresh process ------------------------------------------------------------
def rss_child(name: str) -> None:
  import jax
  shape = parse_shape(FLAGS.shapes[0])
  cfg, params = load_jax_model()
  batch = jax.device_put(synthetic_batch(shape, cfg.vocab_size))
  variant = JaxVariant(name, cfg, params, batch)
  del params
  for _ in range(2):
    variant.run()
  print(f"RSS_MAX_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


def measure_rss(shape: dict) -> dict:
  out = {}
  for name in VARIANTS:
    cmd = [sys.executable, __file__, f"--rss_child={name}", f"--shapes={shape['name']}",
           f"--model={FLAGS.model}", f"--dtype={FLAGS.dtype}", "--notorch"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kib = [line for line in result.stdout.splitlines() if line.startswith("RSS_MAX_KIB=")][-1]
    out[name] = int(kib.split("=")[1]) * 1024
  return out


# --- Main ----------------------------------------------------------------------------------
def progress(kind: str, v) -> None:
  print(f"{kind} {v.name}: wall median {median_ms(v.wall):.0f} ms ({', '.join(f'{t * 1e3:.0f}' for t in v.wall)}); "
        f"CPU median {median_ms(v.cpu):.0f} ms; last loss {v.loss:.4f}", flush=True)


def bench_shape(shape: dict, cfg, params, hf_model, quiet: Quiet):
  """Times and sizes the three cc_jax variants (and the PyTorch reference) at one shape."""
  import jax
  f = floors(shape)
  print(f"\n== {shape['name']}: T_full={shape['t_full']} T_en={shape['t_en']} "
        f"floor(cc)={f['cc']:.3f} floor(cc_stop)={f['cc_stop']:.3f}", flush=True)
  batch_np = synthetic_batch(shape, cfg.vocab_size)
  batch = jax.device_put(batch_np)
  jax_variants = {}
  for name in VARIANTS:
    v = jax_variants[name] = JaxVariant(name, cfg, params, batch)
    print(f"compiled {name} in {v.compile_s:.1f} s; memory {v.memory}; flops {v.flops}", flush=True)
  run_interleaved(list(jax_variants.values()), FLAGS.steps, FLAGS.warmup, quiet)
  for v in jax_variants.values():
    progress("cc_jax", v)
    del v.state, v.compiled  # free the donated state before the next shape / the reference
  torch_variants = None
  if hf_model is not None:
    torch_variants = {name: TorchVariant(name, hf_model, batch_np) for name in ("sft", "cc")}
    run_interleaved(list(torch_variants.values()), FLAGS.steps, FLAGS.warmup, quiet)
    for v in torch_variants.values():
      progress("torch", v)
      del v.optimizer
  rss = measure_rss(shape) if FLAGS.rss else None
  return jax_variants, torch_variants, rss


def main(argv):
  del argv
  if FLAGS.rss_child:
    return rss_child(FLAGS.rss_child)
  start, quiet = time.perf_counter(), Quiet(FLAGS.quiet_wait)
  shapes = [parse_shape(s) for s in FLAGS.shapes]
  cfg, params = load_jax_model()
  hf_model = None
  if FLAGS.torch:
    import torch
    torch.set_num_threads(FLAGS.threads)
    hf_model = load_torch_model()
    hf_model.train()  # Llama has no dropout; train mode is what fine-tuning runs in
  results = {s["name"]: bench_shape(s, cfg, params, hf_model, quiet) for s in shapes}
  text = report(shapes, results, time.perf_counter() - start, quiet)
  print("\n" + text)
  if FLAGS.out:
    write_doc_section(FLAGS.out, "bench_train_step", f"{SECTION_HEAD}\n{text}")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  console.run(main)
