"""Probe: can qwix (Google's LoRA/quantization library for Flax) put LoRA adapters on cc_jax's
scanned decoder, without copying the stacked base weights and keeping the logical sharding boxes?

Measures, on a tiny Llama (4 layers, D=256), qwix.apply_lora_to_model + qwix.LoraProvider(rank 8)
against cc_jax's own LoRA (LlamaConfig.lora):
  1. which ops qwix intercepts and which of them get an adapter;
  2. the param tree qwix creates (names, shapes, boxes), and any base-weight-sized extra array;
  3. logits at init vs the base model (exact), and with random B vs merged kernels W + s A B;
  4. a jitted loss+grad step w.r.t. the adapters only: compiled memory_analysis (argument, temp,
     output bytes) for qwix vs cc_jax LoRA vs no LoRA, gradients of B equal after reshaping
     (qwix's A copied into cc_jax's), and HLO ops producing stacked-kernel-shaped arrays; the same
     memory at a 4x wider / 2x deeper size (4b) and with remat 'full' / 'save_dots' (4c);
  5. the adapters' logical shardings, and jit-init with out_shardings on a (1, 2, 2) and a (1, 1, 1)
     CPU mesh, both under cc_jax's context (jax.set_mesh + nn.logical_axis_rules) and under the rules
     alone; a sharded loss+grad step compiled under jax.set_mesh;
  6. scan_layers=False (control); bf16 compute with f32 params (scanned, unrolled), and bf16 params.

Needs qwix, which cc_jax does not depend on: pip install --no-deps qwix==0.1.8 (its declared
requirements are cc_jax's own). Run (CPU, ~80 s): nice -n 5 python launch/qwix_probe.py
The findings, and why cc_jax writes its adapters itself, are in cc_jax/lora.py's docstring.
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import collections
import contextlib
import dataclasses
import re
import traceback

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from cc_jax import lora as L
from cc_jax import model as M
from cc_jax import sharding as sh

RANK, ALPHA = 8, 16.0
TARGET_RE = r".*(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)"
TINY = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4,
            num_kv_heads=2, head_dim=64)
B, T = 2, 16


class RecordingLoraProvider(qwix.LoraProvider):
  """qwix.LoraProvider that records (module path, op, matched rule) of every op it intercepts."""

  def __init__(self, *a, **k):
    super().__init__(*a, **k)
    self.seen = collections.Counter()

  def _get_current_rule_and_op_id(self, op_name, *, only_rule=False, repeated_call=False):
    rule, op_id = super()._get_current_rule_and_op_id(op_name, only_rule=only_rule, repeated_call=repeated_call)
    if not repeated_call and not only_rule:
      from qwix._src.utils import flax_util
      path = "/".join(map(str, flax_util.get_current_module_path()))
      self.seen[(path, op_name, rule is not None)] += 1
    return rule, op_id


def inputs():
  tokens = jax.random.randint(jax.random.key(1), (B, T), 0, TINY["vocab_size"], jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask = jnp.ones((B, T), jnp.int32)
  return tokens, positions, mask


def flat(tree):
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def describe(leaf):
  if isinstance(leaf, nn.LogicallyPartitioned):
    return f"LogicallyPartitioned{tuple(leaf.names)}"
  if isinstance(leaf, nn.Partitioned):
    return f"{type(leaf).__name__}{tuple(leaf.names)}"
  return type(leaf).__name__


def is_adapter_key(key: str) -> bool:
  last = key.split("/")[-1]
  return last in ("lora_a", "lora_b") or last.endswith("_lora_a") or last.endswith("_lora_b")


def split(params):
  f = flat(nn.unbox(params))
  adapters = {k: v for k, v in f.items() if is_adapter_key(k)}
  frozen = {k: v for k, v in f.items() if not is_adapter_key(k)}
  return adapters, frozen


def unflat(d):
  return traverse_util.unflatten_dict(d, sep="/")


def loss_fn(model):
  def loss(adapters, frozen, tokens, positions, mask):
    params = unflat({**frozen, **adapters})
    logits = model.apply({"params": params}, tokens, positions, mask).logits_BTV
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return nll.mean()
  return loss


def compile_step(model, params, args, wrt_adapters=True):
  adapters, frozen = split(params)
  if wrt_adapters:
    fn = jax.jit(jax.value_and_grad(loss_fn(model)))
  else:  # no adapters: the forward loss alone, as a floor
    fn = jax.jit(loss_fn(model))
  compiled = fn.lower(adapters, frozen, *args).compile()
  return fn, compiled, adapters, frozen


def mem(compiled):
  ma = compiled.memory_analysis()
  return dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes, temp=ma.temp_size_in_bytes,
              alias=ma.alias_size_in_bytes)


def stacked_shape_ops(compiled, shapes):
  """Counts, per HLO opcode, instructions whose result has one of `shapes` (f32[...] strings)."""
  text = compiled.as_text()
  counts = collections.Counter()
  for line in text.splitlines():
    m = re.match(r"\s*(ROOT\s+)?%?[\w.\-]+\s*=\s*(f32\[[\d,]*\])(\{[^}]*\})?\s+([\w\-]+)\(", line)
    if m and m.group(2) in shapes:
      counts[m.group(4)] += 1
  return dict(sorted(counts.items()))


def section(title):
  print(f"\n=== {title} ===", flush=True)


def main():
  print(f"jax {jax.__version__}, flax {flax.__version__}, qwix {qwix.__version__}, devices {jax.devices()}")
  tokens, positions, mask = args = inputs()
  cfg = M.LlamaConfig(**TINY, scan_layers=True)
  base = M.Llama(cfg)
  base_vars = base.init(jax.random.key(0), *args)
  base_flat = flat(base_vars["params"])

  section("1. qwix.apply_lora_to_model(Llama(scan_layers=True), LoraProvider(rank=8, alpha=16))")
  provider = RecordingLoraProvider(module_path=TARGET_RE, rank=RANK, alpha=ALPHA)
  qmodel = qwix.apply_lora_to_model(base, provider)
  print("qwix model class:", type(qmodel), "bases:", type(qmodel).__mro__[1].__name__)
  try:
    q_vars = qmodel.init(jax.random.key(0), *args)
  except Exception:
    traceback.print_exc()
    print("RESULT: qwix init failed under nn.scan")
    return
  print("collections:", sorted(q_vars.keys()))
  print("intercepted ops at init (module path, op, matched a rule): count")
  for (path, op, matched), n in sorted(provider.seen.items()):
    print(f"  {path:40s} {op:12s} rule={matched} x{n}")
  print("unused rules:", provider.get_unused_rules())

  section("2. param tree (qwix) vs base")
  q_flat = flat(q_vars["params"])
  new = {k: v for k, v in q_flat.items() if k not in base_flat}
  missing = [k for k in base_flat if k not in q_flat]
  print(f"base leaves {len(base_flat)}, qwix leaves {len(q_flat)}, new {len(new)}, missing {missing}")
  for k, v in sorted(new.items()):
    print(f"  + {k:50s} {str(nn.unbox(v).shape):18s} {nn.unbox(v).dtype} {describe(v)}")
  same_base = [k for k in base_flat if not np.array_equal(np.asarray(nn.unbox(base_flat[k])),
                                                          np.asarray(nn.unbox(q_flat[k])))]
  print("base leaves whose init values differ from the plain model's:", same_base)
  lcfg = dataclasses.replace(cfg, lora=L.LoraConfig(rank=RANK, alpha=ALPHA))
  lmodel = M.Llama(lcfg)
  l_vars = lmodel.init(jax.random.key(0), *args)
  l_flat = flat(l_vars["params"])
  print("  ... equal to the base leaves of cc_jax's own LoRA model's init:",
        all(np.array_equal(np.asarray(nn.unbox(l_flat[k])), np.asarray(nn.unbox(q_flat[k]))) for k in base_flat),
        "(nn.scan draws the stacked kernels differently once the body makes more params; cc_jax LoRA too)")
  base_boxes_kept = all(describe(base_flat[k]) == describe(q_flat[k]) for k in base_flat)
  print("base leaves keep their boxes:", base_boxes_kept)
  kernel_sizes = {k: nn.unbox(v).size for k, v in base_flat.items() if k.endswith("kernel")}
  min_kernel = min(v for k, v in kernel_sizes.items() if k.startswith("layers/"))
  big_new = [k for k, v in new.items() if nn.unbox(v).size >= min_kernel]
  print(f"new leaves at least as large as the smallest stacked kernel ({min_kernel} elements):", big_new)
  other_colls = {c: jax.tree.map(lambda x: nn.unbox(x).shape, v) for c, v in q_vars.items() if c != "params"}
  print("non-params collections:", other_colls)
  ad_bytes = sum(nn.unbox(v).nbytes for v in new.values())
  print(f"qwix adapter bytes: {ad_bytes}")

  section("3. logits")
  out_b = base.apply(base_vars, *args).logits_BTV
  qb = {**flat(nn.unbox(q_vars["params"])), **flat(nn.unbox(base_vars["params"]))}  # plain base + qwix adapters
  out_q = qmodel.apply({"params": unflat(qb)}, *args).logits_BTV
  print("init logits equal to base exactly:", bool(jnp.array_equal(out_b, out_q)),
        "max|diff|", float(jnp.max(jnp.abs(out_b - out_q))))
  # random B: qwix must compute x (W + alpha/r A B)
  qp = dict(qb)
  rng = np.random.default_rng(0)
  for k in list(qp):
    if k.endswith("_lora_b"):
      qp[k] = jnp.asarray(rng.normal(0, 0.02, qp[k].shape), qp[k].dtype)
  merged = {k: v for k, v in qp.items() if not is_adapter_key(k)}
  for k in qp:
    if k.endswith("kernel_lora_a"):
      kern = k[: -len("_lora_a")]
      a, b = qp[k], qp[kern + "_lora_b"]  # (L, in, r), (L, r, out) flattened
      merged[kern] = merged[kern] + (ALPHA / RANK) * jnp.einsum("lir,lro->lio", a, b).reshape(merged[kern].shape)
  out_q2 = qmodel.apply({"params": unflat(qp)}, *args).logits_BTV
  out_m = base.apply({"params": unflat(merged)}, *args).logits_BTV
  print("random-B logits vs base with merged kernels W + s A B: max|diff|", float(jnp.max(jnp.abs(out_q2 - out_m))),
        " (logit scale", float(jnp.max(jnp.abs(out_m))), ")")

  section("cc_jax's own LoRA (same targets)")
  for k, v in sorted(l_flat.items()):
    if is_adapter_key(k) and ("q_proj" in k or "o_proj" in k):
      print(f"  {k:50s} {str(nn.unbox(v).shape):18s} {describe(v)}")
  print(f"cc_jax adapter bytes: {sum(nn.unbox(v).nbytes for k, v in l_flat.items() if is_adapter_key(k))}")

  section("4. jitted loss+grad w.r.t. adapters: compiled memory_analysis (bytes)")
  fn_q, comp_q, ad_q, fr_q = compile_step(qmodel, q_vars["params"], args)
  fn_l, comp_l, ad_l, fr_l = compile_step(lmodel, l_vars["params"], args)
  fn_0, comp_0, _, fr_0 = compile_step(base, base_vars["params"], args, wrt_adapters=False)
  m_q, m_l, m_0 = mem(comp_q), mem(comp_l), mem(comp_0)
  print(f"  {'':28s} {'argument':>10s} {'output':>10s} {'temp':>10s} {'alias':>8s}")
  for name, m in (("qwix LoRA value_and_grad", m_q), ("cc_jax LoRA value_and_grad", m_l),
                  ("no LoRA, loss only", m_0)):
    print(f"  {name:28s} {m['argument']:10d} {m['output']:10d} {m['temp']:10d} {m['alias']:8d}")
  stacked_bytes = sum(nn.unbox(v).nbytes for k, v in base_flat.items()
                      if k.startswith("layers/") and k.endswith("kernel"))
  print(f"  (stacked base kernels: {stacked_bytes} bytes; temp qwix - cc_jax = {m_q['temp'] - m_l['temp']})")
  shapes = {"f32[" + ",".join(map(str, nn.unbox(v).shape)) + "]" for k, v in base_flat.items()
            if k.startswith("layers/") and k.endswith("kernel")}
  print("  HLO instructions with a stacked-kernel result shape", sorted(shapes))
  print("    qwix  :", stacked_shape_ops(comp_q, shapes))
  print("    cc_jax:", stacked_shape_ops(comp_l, shapes))
  # equal math: copy qwix's A into cc_jax's layout, compare loss and dL/dB
  ad_l2 = dict(ad_l)
  for k in ad_l:
    qk = k.replace("/lora_a", "/kernel_lora_a").replace("/lora_b", "/kernel_lora_b")
    ad_l2[k] = ad_q[qk].reshape(ad_l[k].shape)
  (loss_q, g_q), (loss_l, g_l) = fn_q(ad_q, fr_q, *args), fn_l(ad_l2, fr_l, *args)
  gdiff = max(float(jnp.max(jnp.abs(g_l[k] - g_q[k.replace("/lora_b", "/kernel_lora_b")].reshape(g_l[k].shape))))
              for k in g_l if k.endswith("lora_b"))
  gscale = max(float(jnp.max(jnp.abs(g_l[k]))) for k in g_l if k.endswith("lora_b"))
  print(f"  loss qwix {float(loss_q):.7f}  cc_jax {float(loss_l):.7f}; max|dL/dB qwix - cc_jax| {gdiff:.3e}"
        f" (max|dL/dB| {gscale:.3e})")

  section("4b. memory_analysis at a 4x wider / 2x deeper size (does the qwix - cc_jax gap scale with the base?)")
  big = dict(TINY, hidden_size=512, intermediate_size=1024, num_heads=8, num_kv_heads=4, num_layers=8)
  bcfg_ = M.LlamaConfig(**big, scan_layers=True)
  bq_ = qwix.apply_lora_to_model(M.Llama(bcfg_), qwix.LoraProvider(module_path=TARGET_RE, rank=RANK, alpha=ALPHA))
  bl_ = M.Llama(dataclasses.replace(bcfg_, lora=L.LoraConfig(rank=RANK, alpha=ALPHA)))
  abs_q = jax.eval_shape(lambda: bq_.init(jax.random.key(0), *args))["params"]
  abs_l = jax.eval_shape(lambda: bl_.init(jax.random.key(0), *args))["params"]
  mq = mem(compile_step(bq_, abs_q, args)[1])
  ml = mem(compile_step(bl_, abs_l, args)[1])
  big_stacked = sum(v.size * 4 for k, v in flat(nn.unbox(abs_l)).items()
                    if k.startswith("layers/") and k.endswith("kernel"))
  print(f"  qwix  : {mq}\n  cc_jax: {ml}\n  stacked base kernels {big_stacked} bytes; temp qwix - cc_jax = "
        f"{mq['temp'] - ml['temp']}")

  section("4c. memory_analysis with remat_policy='full' and 'save_dots' (tiny size)")
  for policy in ("full", "save_dots"):
    rcfg = dataclasses.replace(cfg, remat_policy=policy)
    rq = qwix.apply_lora_to_model(M.Llama(rcfg), qwix.LoraProvider(module_path=TARGET_RE, rank=RANK, alpha=ALPHA))
    rl = M.Llama(dataclasses.replace(rcfg, lora=L.LoraConfig(rank=RANK, alpha=ALPHA)))
    mq = mem(compile_step(rq, jax.eval_shape(lambda: rq.init(jax.random.key(0), *args))["params"], args)[1])
    ml = mem(compile_step(rl, jax.eval_shape(lambda: rl.init(jax.random.key(0), *args))["params"], args)[1])
    print(f"  {policy:9s} qwix temp {mq['temp']:9d} argument {mq['argument']:9d} | cc_jax temp {ml['temp']:9d} "
          f"argument {ml['argument']:9d} | gap {mq['temp'] - ml['temp']}")

  section("5. logical sharding of qwix's adapters under a (data=1, fsdp=2, tensor=2) CPU mesh")
  rules = sh.DEFAULT_RULES
  abstract = jax.eval_shape(lambda: qmodel.init(jax.random.key(0), *args))["params"]
  for mesh_shape in ({"data": 1, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 1, "tensor": 1}):
    mesh = sh.make_mesh(mesh_shape, jax.devices()[:int(np.prod(list(mesh_shape.values())))])
    shardings = sh.logical_shardings(abstract, mesh, rules)
    sflat = flat(shardings)
    print(f" mesh {dict(mesh.shape)}: logical_shardings of the boxes (eval_shape'd outside the mesh):")
    for k in sorted(sflat):
      if is_adapter_key(k) and ("q_proj" in k or "o_proj" in k or "k_proj" in k or "down_proj" in k):
        print(f"  {k:50s} {describe(flat(abstract)[k]):55s} -> {sflat[k].spec}")
    init = jax.jit(lambda: nn.unbox(qmodel.init(jax.random.key(0), *args)["params"]),
                   out_shardings=nn.unbox(shardings))
    for ctx_name, use_set_mesh in (("jax.set_mesh(mesh) + nn.logical_axis_rules (cc_jax train.py/aot.py)", True),
                                   ("nn.logical_axis_rules only, no global mesh", False)):
      try:
        with (jax.set_mesh(mesh) if use_set_mesh else contextlib.nullcontext()), nn.logical_axis_rules(rules):
          placed = jax.block_until_ready(init())
        pflat = flat(placed)
        k = "layers/self_attn/q_proj/kernel_lora_b"
        diff = [k for k in pflat if is_adapter_key(k) and
                not np.array_equal(np.asarray(pflat[k]), np.asarray(nn.unbox(q_flat[k])))]
        print(f"  jit init with out_shardings under {ctx_name}: OK; {k} spec {pflat[k].sharding.spec} "
              f"shard {pflat[k].addressable_shards[0].data.shape}; adapters differing from eager init: {diff}")
      except Exception as e:
        print(f"  jit init with out_shardings under {ctx_name}: FAILED {type(e).__name__}: "
              f"{str(e).splitlines()[0][:300]}")
        tb = traceback.extract_tb(e.__traceback__)
        for fr in tb:
          if "qwix" in fr.filename and ("flax_util" in fr.filename or "lora.py" in fr.filename):
            print(f"    at {fr.filename.split('site-packages/')[-1]}:{fr.lineno} {fr.line}")
    # the loss+grad step itself (params already exist: no init path) under cc_jax's context
    try:
      ad, fr = split(abstract)
      ad_s = {k: v for k, v in flat(nn.unbox(shardings)).items() if k in ad}
      fr_s = {k: v for k, v in flat(nn.unbox(shardings)).items() if k in fr}
      fn = jax.jit(jax.value_and_grad(loss_fn(qmodel)), in_shardings=(ad_s, fr_s, None, None, None))
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        comp = fn.lower(ad, fr, *args).compile()
      fnl = jax.jit(jax.value_and_grad(loss_fn(lmodel)))
      l_abs = jax.eval_shape(lambda: lmodel.init(jax.random.key(0), *args))["params"]
      l_sh = flat(nn.unbox(sh.logical_shardings(l_abs, mesh, rules)))
      adl, frl = split(l_abs)
      fnl = jax.jit(jax.value_and_grad(loss_fn(lmodel)),
                    in_shardings=({k: l_sh[k] for k in adl}, {k: l_sh[k] for k in frl}, None, None, None))
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compl = fnl.lower(adl, frl, *args).compile()
      print(f"  sharded loss+grad step under jax.set_mesh: compiles; per-device memory qwix {mem(comp)} | "
            f"cc_jax {mem(compl)}")
    except Exception as e:
      print(f"  sharded loss+grad step under jax.set_mesh: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}")

  section("6a. control: scan_layers=False")
  ucfg = dataclasses.replace(cfg, scan_layers=False)
  try:
    uq = qwix.apply_lora_to_model(M.Llama(ucfg), qwix.LoraProvider(module_path=TARGET_RE, rank=RANK, alpha=ALPHA))
    u_vars = uq.init(jax.random.key(0), *args)
    uf = flat(u_vars["params"])
    print("  layers_0 adapters:", {k.split("layers_0/")[1]: (nn.unbox(v).shape, describe(v))
                                   for k, v in uf.items() if k.startswith("layers_0/") and is_adapter_key(k)
                                   and ("q_proj" in k or "o_proj" in k)})
    ubase = M.Llama(ucfg)
    u_base_params = unflat({k: v for k, v in flat(nn.unbox(u_vars["params"])).items() if not is_adapter_key(k)})
    print("  init logits equal base exactly:",
          bool(jnp.array_equal(uq.apply(u_vars, *args).logits_BTV,
                               ubase.apply({"params": u_base_params}, *args).logits_BTV)))
  except Exception:
    traceback.print_exc()

  for name, over in (("6b. bf16 compute, f32 params, scanned", dict(dtype="bfloat16")),
                     ("6c. bf16 compute, f32 params, unrolled", dict(dtype="bfloat16", scan_layers=False)),
                     ("6d. bf16 compute, bf16 params, scanned", dict(dtype="bfloat16", param_dtype="bfloat16"))):
    section(name)
    bcfg = dataclasses.replace(cfg, **over)
    try:
      bq = qwix.apply_lora_to_model(M.Llama(bcfg), qwix.LoraProvider(module_path=TARGET_RE, rank=RANK, alpha=ALPHA))
      b_vars = bq.init(jax.random.key(0), *args)
      out = bq.apply(b_vars, *args)
      bb = M.Llama(bcfg).apply({"params": unflat({k: v for k, v in flat(nn.unbox(b_vars["params"])).items()
                                                  if not is_adapter_key(k)})}, *args)
      ad_dt = {str(nn.unbox(v).dtype) for k, v in flat(b_vars["params"]).items() if is_adapter_key(k)}
      print("  ok; adapter dtypes", ad_dt, "hidden dtype", out.hidden_BTD.dtype, "(base:", bb.hidden_BTD.dtype, ")",
            "init logits equal base:", bool(jnp.array_equal(out.logits_BTV, bb.logits_BTV)),
            "max|diff|", float(jnp.max(jnp.abs(out.logits_BTV - bb.logits_BTV))))
    except Exception as e:
      print("  FAILED:", type(e).__name__, "\n   ", "\n    ".join(str(e).splitlines()[:6])[:1500])


if __name__ == "__main__":
  main()
