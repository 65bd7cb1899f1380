"""LoRA adapters (Hu et al., 2021) as PEFT defines them, for parameter-efficient CC-Tuning.

A target projection y = x W (+ b) becomes y = x W (+ b) + (alpha / r) (x A) B, with A
(in, r) drawn as PEFT draws lora_A and B (r, out) zero, so an adapted model starts equal to
its base. The base weights are frozen; the adapters and the Decision Maker are trained.

The adapters are two parameters of cc_jax's own `model.Projection` (a kernel at its final
rank with logical axes, cast to the compute dtype while sharded), so they scan with the layer
stack and shard by the same logical axis rules.

Why not qwix (the LoRA library of Tunix and MaxText), measured with qwix 0.1.8 by
launch/qwix_probe.py on CPU: it does find Projection's dot_general and, unlike MaxText's
report, adds no copy of the stacked base under nn.scan (extra temporaries are adapter-sized;
same memory as these adapters). But (1) initialising its adapters under cc_jax's mesh context
(jax.set_mesh + logical axis rules, as train.py and aot.py do) fails: it boxes a rank-2 adapter
with the 3-axis names of its kernel (qwix flax_util.py:395); (2) its adapters take the base's
param dtype, so bf16 compute over float32 master weights promotes the projection output to
float32 and the scanned decoder's carry no longer type-checks (unrolled, it runs in float32);
(3) it flattens head axes (B of q_proj is (r, N*E)) and drops their logical names, draws A
with he_uniform rather than as PEFT does, and names its params kernel_lora_a/kernel_lora_b.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_PARAMS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Attributes mirror `config.lora` (configs/base.py)."""
  rank: int
  alpha: float = 0.0  # 0 = 2 x rank (LLaMA-Factory's default)
  targets: tuple[str, ...] = TARGETS  # PEFT's target_modules, among TARGETS
  dropout: float = 0.0

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"lora.rank={self.rank} must be >= 1 (0 turns LoRA off)")
    unknown = [t for t in self.targets if t not in TARGETS]
    if unknown or not self.targets:
      raise ValueError(f"lora.targets={self.targets}: expected some of {TARGETS}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")

  @property
  def scale(self) -> float:
    return (self.alpha or 2 * self.rank) / self.rank

  @classmethod
  def from_config(cls, cfg) -> "LoraConfig | None":
    """None when `cfg` (config.lora) is absent or its rank is 0 (full fine-tuning)."""
    if cfg is None or not cfg.rank:
      return None
    return cls(rank=cfg.rank, alpha=float(cfg.alpha), targets=tuple(cfg.targets), dropout=float(cfg.dropout))


def merged(params: Mapping[str, Any], lora: LoraConfig) -> dict:
  """The params with every adapter folded into its kernel, W + scale A B, and removed: what a
  model without LoRA computes the same logits with."""
  def walk(tree):
    if not isinstance(tree, Mapping):
      return tree
    out = {k: walk(v) for k, v in tree.items() if k not in ADAPTER_PARAMS}
    if "lora_a" in tree:
      a, b, kernel = (np.asarray(jax.device_get(tree[k]), np.float32) for k in ("lora_a", "lora_b", "kernel"))
      out["kernel"] = (kernel + lora.scale * adapter_product(a, b, kernel.shape)).astype(tree["kernel"].dtype)
    return out
  return walk(dict(params))


def adapter_product(a, b, kernel_shape):
  """A B in the kernel's shape, for A (lead..., in dims..., r) and B (lead..., r, out dims...),
  `lead` being the scanned layer axis if any."""
  lead = a.ndim + b.ndim - 2 - len(kernel_shape)
  r = a.shape[-1]
  flat = a.reshape(a.shape[:lead] + (-1, r)) @ b.reshape(b.shape[:lead] + (r, -1))
  return flat.reshape(kernel_shape)


# --- PEFT's adapter format --------------------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Where each target sits in a transformers decoder layer.
MODULES = tuple(("self_attn", t) for t in TARGETS[:4]) + tuple(("mlp", t) for t in TARGETS[4:])


def _layers(params: Mapping, num_layers: int) -> list[Mapping]:
  """Each layer's params, from a scanned (`layers`, leading L axis) or unrolled tree."""
  if "layers" in params:
    stacked = jax.device_get(params["layers"])
    return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(num_layers)]
  return [jax.device_get(params[f"layers_{i}"]) for i in range(num_layers)]


def peft_tensors(params: Mapping, num_layers: int, dtype=np.float32):
  """Yields (PEFT name, tensor) of every adapter: lora_A.weight (r, in), lora_B.weight (out, r)
  of the transformers module, in PEFT's `base_model.model.` namespace."""
  for i, layer in enumerate(_layers(params, num_layers)):
    for block, name in MODULES:
      node = layer[block].get(name, {})  # the grads of only the trainable params lack the others
      if "lora_a" not in node:
        continue
      a, b = np.asarray(node["lora_a"], np.float32), np.asarray(node["lora_b"], np.float32)
      r = a.shape[-1]
      prefix = f"base_model.model.model.layers.{i}.{block}.{name}"
      yield f"{prefix}.lora_A.weight", np.ascontiguousarray(a.reshape(-1, r).T.astype(dtype))
      yield f"{prefix}.lora_B.weight", np.ascontiguousarray(b.reshape(r, -1).T.astype(dtype))


def peft_config(lora: LoraConfig, base_model: str = "") -> dict:
  """adapter_config.json: the fields PEFT's LoraConfig reads (the rest take PEFT's defaults)."""
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model or None,
          "r": lora.rank, "lora_alpha": lora.alpha or 2 * lora.rank, "lora_dropout": lora.dropout,
          "target_modules": sorted(lora.targets), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
          "modules_to_save": None, "inference_mode": True}


def export_peft(lora: LoraConfig, params: Mapping, num_layers: int, out_dir, *, base_model: str = "",
                dtype: str = "float32", overwrite: bool = False):
  """Writes a PEFT adapter directory that `peft.PeftModel.from_pretrained` loads onto the base
  model. The Decision Maker (if any) rides in the same file as `model.source_select.weight`,
  outside PEFT's namespace: PEFT 0.21 skips it without a warning, cc_jax and the authors' code
  read it."""
  import json
  import pathlib

  from safetensors.numpy import save_file

  from cc_jax import convert
  dtype_ = convert.DTYPES[dtype]
  tensors = dict(peft_tensors(params, num_layers, dtype_))
  if "source_select" in params:
    kernel = np.asarray(jax.device_get(params["source_select"]["kernel"]), np.float32)
    tensors[convert.SOURCE_SELECT] = np.ascontiguousarray(kernel.T.astype(dtype_))
  with convert.atomic_dir(pathlib.Path(out_dir), overwrite) as tmp:
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config(lora, base_model), indent=2))
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
  return pathlib.Path(out_dir)


def import_peft(adapter_dir, lora: LoraConfig, params: Mapping) -> dict:
  """`params` (a LoRA model's, scanned or unrolled) with every adapter, and the Decision Maker if
  the file has one, read from a PEFT adapter directory; each array keeps its sharding. The
  adapter's rank, alpha and target modules must be the run's."""
  import json
  import pathlib

  from flax import traverse_util
  from safetensors.numpy import load_file

  from cc_jax import convert
  adapter_dir = pathlib.Path(adapter_dir)
  config_file, weights_file = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
  for f in (config_file, weights_file):
    if not f.exists():
      raise FileNotFoundError(f"lora.init_from: {f} does not exist (a PEFT adapter directory holds "
                              f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
  theirs, ours = json.loads(config_file.read_text()), peft_config(lora)
  for key in ("r", "lora_alpha", "target_modules"):
    value = sorted(theirs.get(key) or []) if key == "target_modules" else theirs.get(key)
    if value != ours[key]:
      raise ValueError(f"{config_file}: {key}={theirs.get(key)!r}, but this run's LoRA has {ours[key]!r} "
                       "(set lora.rank, lora.alpha and lora.targets to the adapter's)")
  tensors = load_file(str(weights_file))

  def read(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{weights_file}: no tensor {name}")
    return tensors[name]

  flat = traverse_util.flatten_dict(dict(params))
  for keys, leaf in flat.items():
    if keys[-1] not in ADAPTER_PARAMS:
      continue
    peft_name = "lora_A" if keys[-1] == "lora_a" else "lora_B"
    block, name = keys[-3], keys[-2]
    layers = range(leaf.shape[0]) if keys[0] == "layers" else [int(keys[0].removeprefix("layers_"))]
    per_layer = []
    for i in layers:
      x = read(f"base_model.model.model.layers.{i}.{block}.{name}.{peft_name}.weight").T
      shape = leaf.shape[1:] if keys[0] == "layers" else leaf.shape
      if x.size != np.prod(shape):
        raise ValueError(f"{weights_file}: {peft_name} of layer {i} {block}.{name} has {x.T.shape} values, "
                         f"expected {shape}")
      per_layer.append(x.reshape(shape))
    value = np.stack(per_layer) if keys[0] == "layers" else per_layer[0]
    flat[keys] = jax.device_put(value.astype(leaf.dtype), leaf.sharding)
  if convert.SOURCE_SELECT in tensors and ("source_select", "kernel") in flat:
    leaf = flat[("source_select", "kernel")]
    flat[("source_select", "kernel")] = jax.device_put(tensors[convert.SOURCE_SELECT].T.astype(leaf.dtype),
                                                       leaf.sharding)
  return traverse_util.unflatten_dict(flat)
