"""Ahead-of-time fit check: compile a config's programs for devices that are not here.

MaxText's train_compile.py idea. With libtpu installed, `jax.experimental.topologies` gives the
devices of a real TPU slice on any machine, and XLA's TPU compiler reports each program's memory
and FLOPs as it would on that slice. GPUs have no such path without a GPU, so N fake CPU devices
stand in for a GPU node: the sharding and the buffers are the same, XLA:CPU's fusion and
scheduling are not, and the figures are labelled an estimate.

Programs: the train step for `cc` and `sft` at the data settings' buckets (the largest pair by
default: memory grows with length), the matrix's capture pass, and the evaluation's CC generation
(prefill and decode in one program).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from cc_jax import batching, generate, optim, runtime, sharding as sh, train, transform
from cc_jax.loop import step_config
from cc_jax.model import Llama

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_flops: float  # dense bf16 FLOP/s

  @classmethod
  def for_topology(cls, topology: str) -> "Chip":
    generation = topology.split(":")[0]
    if generation not in TPU_CHIPS:
      raise ValueError(f"--topology={topology}: unknown TPU generation {generation!r}; known: {sorted(TPU_CHIPS)}")
    return TPU_CHIPS[generation]


TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12),
    "v6e": Chip("TPU v6e", int(31.25 * GIB), 918e12),  # what TPU XLA says is available of its 32 GB
}
# H100 SXM and H200: 989 TFLOP/s dense bf16; HBM 80 GB and 141 GB.
H100_PEAK_FLOPS = 989e12


def tpu_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of `num_slices` TPU slices of `topology` (e.g. "v6e:2x4"), from libtpu."""
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices).devices)
  except Exception as error:  # libtpu missing, or a name it does not know
    raise RuntimeError(f"--topology={topology}: libtpu gave no devices ({error}). Install it with "
                       "`pip install -r requirements-tpu.txt` and run with JAX_PLATFORMS=cpu") from error


# --- Model FLOPs ---------------------------------------------------------------------------------
# Counted, not read from XLA: its cost analysis counts a while loop's body once, so a scanned
# decoder's FLOPs come out ~L times too small. The convention is MaxText's and the MFU papers':
# 2 FLOPs per weight per token forward (x3 with the backward), plus causal attention; the
# recomputation of remat is not model FLOPs.


def matmul_weights(cfg, head: bool = True) -> int:
  """Weights that multiply every token: the projections of every layer, and the LM head."""
  attention = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  per_layer = attention + 3 * cfg.hidden_size * cfg.intermediate_size
  return cfg.num_layers * per_layer + (cfg.hidden_size * cfg.vocab_size if head else 0)


def forward_flops(cfg, batch: int, length: int, head: bool = True) -> float:
  """One forward pass over `batch` sequences of `length` tokens (causal: half the pairs)."""
  attention_per_token = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length / 2
  return batch * length * (2 * matmul_weights(cfg, head) + attention_per_token)


def train_flops(cfg, method: str, batch: int, T: int, T_en: int, english_grad: bool) -> float:
  """The non-English pass forward and backward; for cc also the English pass (no LM head), with
  its backward only when gradients flow through it. A backward is twice a forward (activation
  and weight gradients); with LoRA the frozen weights get no gradient, so once (the adapters'
  own few FLOPs are left out)."""
  backward = 1 if cfg.lora is not None else 2
  flops = (1 + backward) * forward_flops(cfg, batch, T)
  if method == "cc":
    flops += (1 + backward if english_grad else 1) * forward_flops(cfg, batch, T_en, head=False)
  return flops


def generate_flops(cfg, batch: int, T: int, new_tokens: int) -> float:
  """Prefill without the head, then one token per step against a cache of T + step entries."""
  decode_attention = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * (T + new_tokens / 2)
  return forward_flops(cfg, batch, T, head=False) + batch * new_tokens * (2 * matmul_weights(cfg) + decode_attention)


@dataclasses.dataclass
class ProgramReport:
  name: str
  arguments: int  # bytes per device
  outputs: int
  temporaries: int
  aliased: int  # outputs that reuse donated arguments
  flops: float  # model FLOPs per device (counted; see above)
  compile_seconds: float
  error: str = ""  # why XLA refused to compile it (TPU XLA stops a program that cannot fit)

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased


def compile_report(name: str, lowered, flops: float) -> ProgramReport:
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as error:  # XlaRuntimeError; only running out of memory is a result
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return ProgramReport(name, 0, 0, 0, 0, flops, time.perf_counter() - start,
                         error=str(error).split("\n")[0][:300])
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return ProgramReport(name, memory.argument_size_in_bytes, memory.output_size_in_bytes, memory.temp_size_in_bytes,
                       memory.alias_size_in_bytes, flops, seconds)


def _ints(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.int32)


def train_batch(B: int, T: int, T_en: int) -> dict:
  """Abstract inputs of the train step, as `batching.BatchIterator` yields them."""
  batch = {k: _ints((B, T)) for k in ("input_ids", "attention_mask", "positions", "labels")}
  batch.update({k: _ints((B, T_en)) for k in ("en_input_ids", "en_attention_mask", "en_positions")})
  batch.update(anchor=_ints((B,)), en_anchor=_ints((B,)))
  return batch


def bucket_pairs(data: ConfigDict, which: str) -> list[tuple[int, int]]:
  """(T, T_en) pairs the batcher can produce: all of them, or only the largest."""
  options = batching.BatchOptions.from_config(data, seed=0)
  if which == "largest":
    return [(max(options.buckets), max(options.en_buckets))]
  return list(itertools.product(options.buckets, options.en_buckets))


def train_programs(config: ConfigDict, model: Llama, mesh, rules, buckets: str) -> Iterator[tuple]:
  tx, schedule = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), total_steps=1000)
  key = jax.eval_shape(lambda: jax.random.key(0))
  for method in ("cc", "sft"):
    method_config = ConfigDict(config.to_dict())
    method_config.cc.method = method
    cfg = step_config(method_config)
    state, shardings = train.abstract_train_state(model=model, tx=tx, cfg=cfg, mesh=mesh, rules=rules)
    step = train.jit_train_step(model, tx, schedule, cfg, mesh, shardings)
    pairs = bucket_pairs(config.data, buckets)
    if method == "sft":  # no English pass (step_inputs drops its fields): one program per length
      pairs = sorted({(T, 0) for T, _ in pairs})
    for T, T_en in pairs:
      B = config.data.batch_size
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        lowered = step.lower(state, train.step_inputs(train_batch(B, T, T_en), method), key)
      flops = train_flops(model.cfg, method, B, T, T_en, english_grad=not config.cc.stop_english_grad)
      yield f"train {method} T={T}" + (f" T_en={T_en}" if method == "cc" else ""), lowered, flops


def inference_programs(config: ConfigDict, model: Llama, mesh, rules) -> Iterator[tuple]:
  """The matrix's capture pass and CC generation, at prompts of data.cutoff_len tokens."""
  params = runtime.abstract_params(model, "cc", config.mesh.rules.to_dict(), mesh)
  decoder = train.model_params(params)
  T = config.data.cutoff_len
  B = config.matrix.batch_size
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield (f"matrix capture B={B} T={T}",
           transform.capture_at_anchors.lower(model, decoder, _ints((B, T)), _ints((B, T)), _ints((B,))),
           forward_flops(model.cfg, B, T, head=False))
    B, new = config.eval.batch_size, config.eval.max_new_tokens
    D = model.cfg.hidden_size
    matrix = jax.ShapeDtypeStruct((D, D), jnp.float32)
    yield (f"eval cc generate B={B} T={T}+{new}",
           generate.cc_generate.lower(model, params, _ints((B, T)), _ints((B, T)), _ints((1,)), matrix,
                                      max_new_tokens=new),
           generate_flops(model.cfg, B, T, new))


PROGRAMS = ("train", "matrix", "eval")


def check(config: ConfigDict, devices: list, buckets: str = "largest",
          programs: tuple[str, ...] = PROGRAMS) -> list[ProgramReport]:
  """Compiles the `programs` of `config` for `devices` (on the config's mesh); per-device figures."""
  mesh = sh.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor},
                      devices=devices)
  rules = sh.rules_from_config(config.mesh.rules.to_dict())
  model = Llama(runtime.model_config(config), inject_layer=config.cc.inject_layer)
  if unknown := set(programs) - set(PROGRAMS):
    raise ValueError(f"programs {sorted(unknown)}: expected some of {PROGRAMS}")
  # Lower only what was asked for: tracing an 8B program takes seconds.
  lowered = itertools.chain(train_programs(config, model, mesh, rules, buckets) if "train" in programs else (),
                            inference_programs(config, model, mesh, rules)
                            if {"matrix", "eval"} & set(programs) else ())
  return [compile_report(name, program, flops / len(devices))
          for name, program, flops in lowered if name.split()[0] in programs]


LEVERS = ("model.remat_policy=full (recompute activations in the backward)",
          "optim.grad_accum_steps=N (N microbatches per step; data.batch_size must divide)",
          "model.loss_chunk_len=512 (the vocabulary logits a chunk of positions at a time)",
          "a larger mesh.fsdp (weights and optimizer state over more devices)")


def table(reports: list[ProgramReport], *, hbm_bytes: int, peak_flops: float, mfu: float) -> str:
  """Markdown: one row per program, memory in GiB per device."""
  lines = [f"| program (GiB per device) | arguments | outputs | temporaries | peak | of {hbm_bytes / GIB:.1f} GiB | "
           f"model TFLOP/device | step at {mfu:.0%} MFU | compile |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    if r.error:
      lines.append(f"| {r.name} | | | | | **does not fit**: {r.error} | | | {r.compile_seconds:.0f} s |")
      continue
    fits = "fits" if r.peak <= hbm_bytes else "**does not fit**"
    step = f"{r.flops / (peak_flops * mfu):.3g} s" if r.flops else "n/a"
    lines.append(f"| {r.name} | {r.arguments / GIB:.3g} | {r.outputs / GIB:.3g} | {r.temporaries / GIB:.3g} | "
                 f"{r.peak / GIB:.3g} | {r.peak / hbm_bytes:.0%} {fits} | {r.flops / 1e12:.3g} | {step} | "
                 f"{r.compile_seconds:.0f} s |")
  return "\n".join(lines)


def fits(reports: list[ProgramReport], hbm_bytes: int) -> bool:
  return all(not r.error and r.peak <= hbm_bytes for r in reports)

