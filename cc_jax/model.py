"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) in Flax Linen, with CC-Tuning's two hooks.

The hooks (docs/method.md §2) are explicit inputs and outputs of `Llama.__call__`:
`capture_at` returns every layer's MLP output at one position per example, and `inject`
adds a vector to one layer's MLP output at one position per example. Without them the
model computes exactly what transformers' `LlamaForCausalLM` (or Mistral/Qwen2) computes.

Shape legend: B batch, T query length, S key/cache length, D width, N query heads,
K key/value heads, E head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from cc_jax import sharding as sh
from cc_jax.lora import LoraConfig

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling: 'linear' (Llama 2 long-context) or 'llama3' (Llama 3.1+)."""
  rope_type: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a Llama-style decoder plus how to run it (dtypes, scan, remat)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: biases on q/k/v projections
  o_bias: bool = False  # Llama's `attention_bias` also puts one on o_proj
  mlp_bias: bool = False
  sliding_window: int | None = None  # Mistral: attend to the last `sliding_window` keys only
  model_type: str = "llama"
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # master weights
  scan_layers: bool = True  # nn.scan over layers: compile time flat in depth
  remat_policy: str = "none"  # one of REMAT_POLICIES
  attention_impl: str | None = None  # dot_product_attention implementation without a cache: xla, cudnn
  lora: LoraConfig | None = None  # adapters on the target projections (cc_jax/lora.py)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
    """Builds the config from a Hugging Face `config.json` dict (transformers 4.x or 5.x form)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
      raise ValueError(f"config.json: model_type={model_type!r} is not supported; "
                       f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
      if key not in hf:
        raise ValueError(f"config.json: missing key {key!r}")
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r}; only 'silu' is supported")
    # transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` and `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or {})
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if not rope.get("rope_type") or rope.get("rope_type") == "default":
      rope = dict(hf.get("rope_scaling") or rope)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in ("default", None):
      scaling = None
    elif rope_type in ("linear", "llama3"):
      fields = {f.name for f in dataclasses.fields(RopeScaling)}
      scaling = RopeScaling(**{k: v for k, v in rope.items() if k in fields and k != "rope_type"},
                            rope_type=rope_type)
    else:
      raise ValueError(f"config.json: rope type {rope_type!r} is not supported (default, linear, llama3)")
    sliding_window = hf.get("sliding_window")
    if model_type == "qwen2":
      # Qwen2 only applies its window when use_sliding_window is set (and then per layer).
      if hf.get("use_sliding_window"):
        raise ValueError("config.json: Qwen2 with use_sliding_window=true is not supported")
      sliding_window = None
    num_heads = hf["num_attention_heads"]
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=model_type == "qwen2" or hf.get("attention_bias", False),
        o_bias=model_type != "qwen2" and hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        sliding_window=sliding_window,
        model_type=model_type,
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The architecture as a transformers `config.json` dict."""
    rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
    if self.rope_scaling is not None:
      rope.update(dataclasses.asdict(self.rope_scaling))
    hf = {
        "architectures": [SUPPORTED_ARCHITECTURES[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "sliding_window": self.sliding_window,
    }
    if self.model_type == "llama":
      hf.update(attention_bias=self.o_bias, mlp_bias=self.mlp_bias)
    return hf

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for incremental decoding.

  With left padding all sequences of a batch share one write position, so one `index`
  serves the batch; `valid_BS` marks the slots that hold real (non-padding) tokens.

  `ring_start` set makes slots ring_start.. a ring that continuous batching writes round
  (cc_jax/continuous.py): every valid slot then precedes the one-token query, so attention
  masks by validity alone.
  """
  k_LBKES: jax.Array  # keys with the slot axis last, values with it before head_dim: the
  v_LBKSE: jax.Array  # layouts the two products of `cached_attention` read without a transpose
  valid_BS: jax.Array  # bool
  index: jax.Array  # int32 scalar: next slot to write
  ring_start: int | None = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def init(cls, cfg: LlamaConfig, batch: int, max_len: int) -> "KVCache":
    L, K, E = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    return cls(jnp.zeros((L, batch, K, E, max_len), cfg.jnp_dtype), jnp.zeros((L, batch, K, max_len, E), cfg.jnp_dtype),
               jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class ModelOutput:
  logits_BTV: jax.Array | None  # float32; None when compute_logits=False
  hidden_BTD: jax.Array  # after the final norm
  cache: KVCache | None
  captured_LBD: jax.Array | None  # MLP output of every layer at `capture_at`


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """Inverse rotary frequencies (E/2,), float32, as transformers computes them."""
  dim = cfg.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
  scaling = cfg.rope_scaling
  if scaling is None:
    return inv_freq
  if scaling.rope_type == "linear":
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
  # "llama3": keep high frequencies, divide low ones by `factor`, interpolate in between.
  old_len = scaling.original_max_position_embeddings
  low_freq_wavelen = old_len / scaling.low_freq_factor
  high_freq_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(cfg: LlamaConfig, positions_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables (B, T, E) in HF's split-half layout, float32."""
  freqs_BTh = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
  angles_BTE = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)
  return jnp.cos(angles_BTE), jnp.sin(angles_BTE)


def apply_rope(x_BTHE: jax.Array, cos_BTE: jax.Array, sin_BTE: jax.Array) -> jax.Array:
  half = x_BTHE.shape[-1] // 2
  rotated = jnp.concatenate([-x_BTHE[..., half:], x_BTHE[..., :half]], axis=-1)
  cos = cos_BTE[:, :, None, :].astype(x_BTHE.dtype)
  sin = sin_BTE[:, :, None, :].astype(x_BTHE.dtype)
  return x_BTHE * cos + rotated * sin


def _init(names: tuple[str, ...], std: float = 0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class RMSNorm(nn.Module):
  """RMSNorm with transformers' cast order: normalise in float32, cast, then scale.

  flax's nn.RMSNorm folds the scale in before the cast, which differs in bf16.
  """
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (sh.NORM,)),
                       (x.shape[-1],), self.cfg.jnp_param_dtype)
    x32 = x.astype(jnp.float32)  # statistics in float32 for bf16 stability
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return scale.astype(self.cfg.jnp_dtype) * normed.astype(x.dtype)


class Projection(nn.Module):
  """x @ kernel (+ bias), contracting the last `contract` input dims into `features`.

  Like nn.DenseGeneral, but the kernel is created at its final rank: DenseGeneral builds
  a flat kernel and reshapes it, which breaks logical sharding annotations under a mesh.
  """
  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  cfg: LlamaConfig
  use_bias: bool = False
  contract: int = 1

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    in_shape = x.shape[x.ndim - self.contract:]
    kernel = self.param("kernel", _init(self.kernel_axes), in_shape + self.features, cfg.jnp_param_dtype)
    # Cast while the kernel is still sharded, so FSDP all-gathers move compute-dtype weights (half
    # the bytes of float32 master weights in bf16). XLA's partitioner already places the cast
    # there; the constraint keeps it so (tests/test_train.py reads the partitioned program).
    kernel = nn.with_logical_constraint(kernel.astype(cfg.jnp_dtype), self.kernel_axes)
    x_dims = tuple(range(x.ndim - self.contract, x.ndim))
    x = x.astype(cfg.jnp_dtype)
    y = jax.lax.dot_general(x, kernel, ((x_dims, tuple(range(self.contract))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", _zeros(self.kernel_axes[self.contract:]), self.features, cfg.jnp_param_dtype)
      y = y + bias.astype(cfg.jnp_dtype)
    if cfg.lora is not None and self.name in cfg.lora.targets:
      y = y + self._adapter(x, x_dims, in_shape)
    return y

  def _adapter(self, x, x_dims, in_shape):
    """scale (dropout(x) A) B, as PEFT's LoRA Linear adds it (after the bias). A is drawn as PEFT
    draws lora_A (kaiming-uniform, bound 1/sqrt(fan_in)); B starts at zero. Dropout acts only when
    the caller passes a `dropout` rng (the train step), each adapter with its own mask."""
    cfg, r = self.cfg, self.cfg.lora.rank
    if cfg.lora.dropout and self.has_rng("dropout"):
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - cfg.lora.dropout, x.shape)
      x = jnp.where(keep, x / jnp.asarray(1.0 - cfg.lora.dropout, x.dtype), jnp.zeros_like(x))
    in_axes, out_axes = self.kernel_axes[:self.contract], self.kernel_axes[self.contract:]
    a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(self.contract)),
                                              out_axis=-1)
    a = self.param("lora_a", nn.with_logical_partitioning(a_init, in_axes + (sh.LORA_RANK,)), in_shape + (r,),
                   cfg.jnp_param_dtype)
    b = self.param("lora_b", _zeros((sh.LORA_RANK,) + out_axes), (r,) + self.features, cfg.jnp_param_dtype)
    xa = jax.lax.dot_general(x, a.astype(cfg.jnp_dtype), ((x_dims, tuple(range(self.contract))), ((), ())))
    xab = jax.lax.dot_general(xa, b.astype(cfg.jnp_dtype), (((xa.ndim - 1,), (0,)), ((), ())))
    return xab * jnp.asarray(cfg.lora.scale, cfg.jnp_dtype)


def cached_attention(q_BTNE, k_BKES, v_BKSE, mask_B1TS, scale: float):
  """Grouped-query attention of a chunk over one layer's cache, computed as
  jax.nn.dot_product_attention's XLA path does (float32 scores and softmax, the same large
  negative for masked keys).

  Written out because the cache keeps keys as (B, K, E, S) and values as (B, K, S, E), the
  layouts the two batched products read directly. With dot_product_attention's (B, S, K, E)
  inputs XLA transposes every layer's keys and values at every decode step: on CPU, a
  SmolLM2 batch-16 decode step went from 126 to 105 ms with this layout (docs/benchmarks.md).
  """
  B, T, N, E = q_BTNE.shape
  K = k_BKES.shape[1]
  G = N // K  # query heads per kv head: query head n reads kv head n // G, as transformers' repeat_kv
  q_BKME = q_BTNE.reshape(B, T, K, G, E).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, E)  # M = (G, T)
  logits_dtype = jnp.promote_types(q_BTNE.dtype, jnp.float32)
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q_BTNE.dtype == jnp.bfloat16 else None
  batch = ((0, 1), (0, 1))
  scores_BKMS = jax.lax.dot_general(q_BKME, k_BKES, (((3,), (2,)), batch), precision=precision,
                                    preferred_element_type=logits_dtype) * jnp.asarray(scale, logits_dtype)
  S = scores_BKMS.shape[-1]
  mask_B1MS = jnp.broadcast_to(mask_B1TS[:, :, None], (B, 1, G, T, S)).reshape(B, 1, G * T, S)
  big_negative = jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, jnp.float32)
  scores_BKMS = jnp.where(mask_B1MS, scores_BKMS.astype(jnp.float32), big_negative)
  probs_BKMS = jax.nn.softmax(scores_BKMS, axis=-1).astype(k_BKES.dtype)
  out_BKME = jax.lax.dot_general(probs_BKMS, v_BKSE, (((3,), (2,)), batch))
  return out_BKME.reshape(B, K, G, T, E).transpose(0, 3, 1, 2, 4).reshape(B, T, N, E)


class Attention(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x_BTD, cos_BTE, sin_BTE, mask_B1TS, kv_cache, cache_index, layer_id):
    cfg = self.cfg
    q_BTNE = Projection((cfg.num_heads, cfg.head_dim), (sh.EMBED, sh.HEADS, sh.HEAD_DIM), cfg,
                        cfg.qkv_bias, name="q_proj")(x_BTD)
    kv_axes = (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM)
    k_BTKE = Projection((cfg.num_kv_heads, cfg.head_dim), kv_axes, cfg, cfg.qkv_bias, name="k_proj")(x_BTD)
    v_BTKE = Projection((cfg.num_kv_heads, cfg.head_dim), kv_axes, cfg, cfg.qkv_bias, name="v_proj")(x_BTD)
    q_BTNE = apply_rope(q_BTNE, cos_BTE, sin_BTE)
    k_BTKE = apply_rope(k_BTKE, cos_BTE, sin_BTE)
    q_BTNE = nn.with_logical_constraint(q_BTNE, (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_HEADS, None))

    if kv_cache is not None:  # write this chunk into this layer's slots, attend over all of them
      # Every layer's cache travels whole in the carry and is written in place. Scanning over
      # per-layer slices instead (xs in, ys out) copies the whole cache at every decode step:
      # about a quarter of a batch-16 step on CPU.
      k_LBKES, v_LBKSE = kv_cache
      k_LBKES = jax.lax.dynamic_update_slice(
          k_LBKES, k_BTKE.transpose(0, 2, 3, 1)[None].astype(k_LBKES.dtype), (layer_id, 0, 0, 0, cache_index))
      v_LBKSE = jax.lax.dynamic_update_slice(
          v_LBKSE, v_BTKE.transpose(0, 2, 1, 3)[None].astype(v_LBKSE.dtype), (layer_id, 0, 0, cache_index, 0))
      new_cache = (k_LBKES, v_LBKSE)
      out_BTNE = cached_attention(q_BTNE, k_LBKES[layer_id], v_LBKSE[layer_id], mask_B1TS, cfg.head_dim**-0.5)
    else:
      new_cache = None
      # Grouped-query attention is native to dot_product_attention (K divides N); softmax
      # runs in float32 inside it.
      out_BTNE = jax.nn.dot_product_attention(
          q_BTNE, k_BTKE, v_BTKE, mask=mask_B1TS, scale=cfg.head_dim**-0.5,
          implementation=cfg.attention_impl)
    out_BTD = Projection((cfg.hidden_size,), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), cfg, cfg.o_bias,
                         contract=2, name="o_proj")(out_BTNE)
    return out_BTD, new_cache


class MLP(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.cfg
    up_axes = (sh.EMBED, sh.MLP)
    gate_BTF = Projection((cfg.intermediate_size,), up_axes, cfg, cfg.mlp_bias, name="gate_proj")(x_BTD)
    up_BTF = Projection((cfg.intermediate_size,), up_axes, cfg, cfg.mlp_bias, name="up_proj")(x_BTD)
    h_BTF = nn.with_logical_constraint(nn.silu(gate_BTF) * up_BTF, (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_MLP))
    return Projection((cfg.hidden_size,), (sh.MLP, sh.EMBED), cfg, cfg.mlp_bias, name="down_proj")(h_BTF)


class Block(nn.Module):
  """One decoder layer: (hidden, kv cache of all layers or None) -> the same, updated, and the
  captured MLP output (or None). The carry form is what `nn.scan` scans over."""
  cfg: LlamaConfig
  inject_layer: int = 0

  @nn.compact
  def __call__(self, carry, layer_id, cos_BTE, sin_BTE, mask_B1TS, cache_index, capture_at_B, inject):
    cfg = self.cfg
    h_BTD, kv_cache = carry
    attn_out, kv_cache = Attention(cfg, name="self_attn")(
        RMSNorm(cfg, name="input_layernorm")(h_BTD), cos_BTE, sin_BTE, mask_B1TS, kv_cache, cache_index,
        layer_id)
    h_BTD = h_BTD + attn_out
    mlp_BTD = MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attention_layernorm")(h_BTD))
    mlp_BTD = nn.with_logical_constraint(mlp_BTD, (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_EMBED))

    captured_BD = None
    if capture_at_B is not None:  # hook (a): read before any injection, as the paper's cache is
      captured_BD = jnp.take_along_axis(mlp_BTD, capture_at_B[:, None, None], axis=1)[:, 0]
    if inject is not None:  # hook (b): add vec_BD at one position, in layer `inject_layer` only
      vec_BD, at_B = inject
      hit_BT = (jnp.arange(h_BTD.shape[1])[None, :] == at_B[:, None]) & (layer_id == self.inject_layer)
      mlp_BTD = mlp_BTD + jnp.where(hit_BT[..., None], vec_BD[:, None, :], 0).astype(mlp_BTD.dtype)

    h_BTD = nn.with_logical_constraint(h_BTD + mlp_BTD, (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_EMBED))
    return (h_BTD, kv_cache), captured_BD


def attention_mask(valid_BS: jax.Array, query_slot_T: jax.Array, sliding_window: int | None) -> jax.Array:
  """Boolean mask (B, 1, T, S): key is real, not in the future, and inside the window."""
  key_slot_S = jnp.arange(valid_BS.shape[1])
  allowed_TS = key_slot_S[None, :] <= query_slot_T[:, None]
  if sliding_window is not None:  # transformers: key > query - window
    allowed_TS &= key_slot_S[None, :] > query_slot_T[:, None] - sliding_window
  return valid_BS[:, None, None, :] & allowed_TS[None, None]


def ring_attention_mask(valid_BS: jax.Array, query_len: int, sliding_window: int | None) -> jax.Array:
  """Mask (B, 1, 1, S) of a one-token step over a ring cache: every valid slot is in the past.
  A row spans at most the ring's slots, so a window at least as long never shuts a key out."""
  if query_len != 1:
    raise ValueError(f"a ring cache takes one token per step, not {query_len}")
  if sliding_window is not None and valid_BS.shape[1] > sliding_window:
    raise ValueError(f"a ring cache of {valid_BS.shape[1]} slots exceeds the sliding window ({sliding_window})")
  return valid_BS[:, None, None, :]


class Llama(nn.Module):
  """Decoder-only LM. Parameter names follow transformers, so conversion is a name map.

  Layers are either scanned (params stacked under `layers` with a leading L axis) or
  unrolled (`layers_0`, `layers_1`, ...); `stack_layers`/`unstack_layers` convert.
  `inject_layer` is the layer whose MLP output hook (b) adds to (0 in the paper).
  """
  cfg: LlamaConfig
  inject_layer: int = 0

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        embedding_init=_init((sh.VOCAB, sh.EMBED)))
    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(0,) + (nn.broadcast,) * 6, length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: sh.LAYERS},
      )(cfg, inject_layer=self.inject_layer)
    else:  # a list attribute names its modules layers_0, layers_1, ...
      self.layers = [block(cfg, inject_layer=self.inject_layer) for _ in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = Projection((cfg.vocab_size,), (sh.EMBED, sh.VOCAB), cfg)

  def __call__(self, tokens_BT, positions_BT, mask_BT, *, cache: KVCache | None = None,
               capture_at_B=None, inject=None, compute_logits: bool = True) -> ModelOutput:
    """Runs the decoder.

    Args:
      tokens_BT: int token ids.
      positions_BT: int positions for RoPE (left padding: count from the first real token).
      mask_BT: 1/True for real tokens, 0/False for padding.
      cache: a KVCache to extend; this chunk is written at `cache.index`.
      capture_at_B: int index into T per example; returns every layer's MLP output there.
      inject: (vec_BD, at_B): add vec_BD to layer `inject_layer`'s MLP output at position
        at_B (index into T).
      compute_logits: False skips the LM head (the English pass only needs captures).

    Returns:
      ModelOutput with float32 logits (B, T, V), the final hidden states, the updated
      cache and the captured activations (L, B, D).
    """
    cfg = self.cfg
    mask_BT = mask_BT.astype(bool)
    T = tokens_BT.shape[1]
    if cache is None:
      valid_BS, query_slot_T, index, layer_caches = mask_BT, jnp.arange(T), None, None
    else:
      index = cache.index
      valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, mask_BT, (0, index))
      query_slot_T = index + jnp.arange(T)
      layer_caches = (cache.k_LBKES, cache.v_LBKSE)
    if cache is not None and cache.ring_start is not None:
      mask_B1TS = ring_attention_mask(valid_BS, T, cfg.sliding_window)
    else:
      mask_B1TS = attention_mask(valid_BS, query_slot_T, cfg.sliding_window)
    cos_BTE, sin_BTE = rope_cos_sin(cfg, positions_BT)
    broadcast_args = (cos_BTE, sin_BTE, mask_B1TS, index, capture_at_B, inject)

    h_BTD = self.embed_tokens(tokens_BT)
    h_BTD = nn.with_logical_constraint(h_BTD, (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_EMBED))
    carry = (h_BTD, layer_caches)
    if cfg.scan_layers:
      carry, captured_LBD = self.layers(carry, jnp.arange(cfg.num_layers), *broadcast_args)
    else:
      captured = []
      for i, layer in enumerate(self.layers):
        carry, cap = layer(carry, i, *broadcast_args)
        captured.append(cap)
      captured_LBD = None if capture_at_B is None else jnp.stack(captured)
    h_BTD, new_caches = carry

    new_cache = None
    if cache is not None:
      new_cache = KVCache(new_caches[0], new_caches[1], valid_BS, index + T, cache.ring_start)
    hidden_BTD = self.norm(h_BTD)
    logits_BTV = self.logits(hidden_BTD) if compute_logits else None
    return ModelOutput(logits_BTV, hidden_BTD, new_cache, captured_LBD)

  def logits(self, hidden_BTD):
    """LM head on final-norm hidden states; float32 logits (computed in the compute dtype, as HF)."""
    if self.cfg.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden_BTD)
    else:
      logits = self.lm_head(hidden_BTD)
    return nn.with_logical_constraint(logits.astype(jnp.float32), (sh.ACT_BATCH, sh.ACT_LEN, sh.ACT_VOCAB))

  def embed(self, tokens):
    """Input embeddings (the hidden state before layer 0), in the compute dtype."""
    return self.embed_tokens(tokens)


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled params (`layers_0`, ...) -> scanned params (`layers`, leading L axis)."""
  params = dict(params)
  per_layer = [params.pop(f"layers_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return params


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Scanned params -> unrolled params."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def left_pad_positions(mask_BT: jax.Array) -> jax.Array:
  """Positions that count from each row's first real token (what HF generate uses)."""
  mask = mask_BT.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
