"""CC-Tuning's cross-lingual connection (docs/method.md §2, steps 2-3): the Decision Maker
and the straight-through selection of one English feed-forward activation.

The Decision Maker is a bias-free linear map D -> L, stored in the parameter tree as
`source_select/kernel` (D, L): the authors' `model.source_select` (torch Linear(D, L)).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cc_jax import sharding as sh

PARAM_NAME = "source_select"
SELECTIONS = ("gumbel", "argmax")


@dataclasses.dataclass(frozen=True)
class ConnectionConfig:
  """How the English activation is chosen.

  Attributes:
    selection: "gumbel" (straight-through hard Gumbel-softmax, the paper's training) or
      "argmax" (deterministic; cc_jax's default at inference, docs/method.md §4).
    temperature: softmax temperature of the relaxation (1.0 in the paper).
    stop_english_grad: detach the English activations. True is what the authors' runs did:
      their trainer ran every decoder layer under LLaMA-Factory's default reentrant gradient
      checkpointing, whose forward runs under no_grad, and read the English MLP outputs from
      inside it, so those tensors carried no gradient (docs/method.md §2 step 1). False
      backpropagates into the English pass too: an ablation, about 1.3x the step's cost.
  """
  selection: str = "gumbel"
  temperature: float = 1.0
  stop_english_grad: bool = True

  def __post_init__(self):
    if self.selection not in SELECTIONS:
      raise ValueError(f"cc.selection={self.selection!r}; expected one of {SELECTIONS}")
    if self.temperature <= 0:
      raise ValueError(f"cc.temperature={self.temperature} must be > 0")


def init_decision_maker(rng: jax.Array, hidden_size: int, num_layers: int, dtype=jnp.float32):
  """{kernel: (D, L)} ~ N(0, 0.02), like the model's other linear layers (paper §2)."""
  init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (sh.EMBED, sh.LAYER_CHOICE))
  return {"kernel": init(rng, (hidden_size, num_layers), dtype)}


def gumbel_from_uniform(u: jax.Array) -> jax.Array:
  """Standard Gumbel samples -log(-log u) from uniform draws u in [0, 1], always finite.

  u is clipped to [tiny, 1 - 2^-24] first: -log(Exp(1)), torch's recipe, is +inf whenever the
  exponential draw is exactly 0 (about once in 2^23 float32 draws), and one infinite noise
  value makes the straight-through weights NaN. Clipped, the noise lies in (-4.5, 16.7).
  """
  finfo = jnp.finfo(jnp.float32)
  u = jnp.clip(u.astype(jnp.float32), finfo.tiny, 1.0 - finfo.epsneg)
  return -jnp.log(-jnp.log(u))


def gumbel_noise(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard Gumbel samples of `shape` (float32), finite for every key."""
  return gumbel_from_uniform(jax.random.uniform(rng, shape, jnp.float32))


def decision_scores(kernel_DL: jax.Array, english_LBD: jax.Array, anchor_embed_BD: jax.Array) -> jax.Array:
  """Scores s = W d with d = mean_l(E[l] + x0) = mean_l E[l] + x0 (paper §2, step 2). float32."""
  d_BD = jnp.mean(english_LBD.astype(jnp.float32), axis=0) + anchor_embed_BD.astype(jnp.float32)
  return d_BD @ kernel_DL.astype(jnp.float32)


def select(scores_BL: jax.Array, noise_BL: jax.Array | None, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Straight-through hard selection: forward one-hot, backward soft probabilities.

  Args:
    scores_BL: Decision Maker scores.
    noise_BL: Gumbel noise (the "gumbel" selection), or None for plain argmax.
    temperature: relaxation temperature.

  Returns:
    (weights_BL, soft_BL): weights are `hard - stop_gradient(soft) + soft`, the formula of
    torch's gumbel_softmax(hard=True), so values equal the one-hot up to rounding.
  """
  logits = scores_BL if noise_BL is None else scores_BL + noise_BL
  soft_BL = jax.nn.softmax(logits / temperature, axis=-1)
  hard_BL = jax.nn.one_hot(jnp.argmax(soft_BL, axis=-1), scores_BL.shape[-1], dtype=soft_BL.dtype)
  return hard_BL - jax.lax.stop_gradient(soft_BL) + soft_BL, soft_BL


def connect(kernel_DL, english_LBD, anchor_embed_BD, noise_BL, cfg: ConnectionConfig):
  """English activations -> the vector to inject at the non-English anchor (steps 2-3).

  Args:
    kernel_DL: Decision Maker weights.
    english_LBD: every layer's MLP output at the English anchor.
    anchor_embed_BD: input embedding of the non-English anchor token.
    noise_BL: Gumbel noise, ignored unless cfg.selection == "gumbel".
    cfg: selection settings.

  Returns:
    (vector_BD in english's dtype, weights_BL, scores_BL).
  """
  if cfg.stop_english_grad:
    english_LBD = jax.lax.stop_gradient(english_LBD)
  scores_BL = decision_scores(kernel_DL, english_LBD, anchor_embed_BD)
  weights_BL, _ = select(scores_BL, noise_BL if cfg.selection == "gumbel" else None, cfg.temperature)
  vector_BD = jnp.einsum("bl,lbd->bd", weights_BL, english_LBD.astype(jnp.float32))
  return vector_BD.astype(english_LBD.dtype), weights_BL, scores_BL


def selection_stats(weights_BL: jax.Array, scores_BL: jax.Array, example_mask_B: jax.Array):
  """Per-step diagnostics: histogram of selected layers (L,) and mean decision entropy."""
  chosen_BL = jax.nn.one_hot(jnp.argmax(weights_BL, -1), weights_BL.shape[-1]) * example_mask_B[:, None]
  log_p = jax.nn.log_softmax(scores_BL, axis=-1)
  entropy_B = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  count = jnp.maximum(jnp.sum(example_mask_B), 1)
  return jnp.sum(chosen_BL, axis=0), jnp.sum(entropy_B * example_mask_B) / count
