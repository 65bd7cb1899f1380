"""Optimizer: AdamW with warmup + cosine decay, global-norm clipping and a decay mask; which params train."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import optax
from flax import traverse_util

from cc_jax import lora
from cc_jax.connection import PARAM_NAME as DECISION_MAKER

TRAINABLE = ("all", "decision_maker", "lora")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Attributes mirror `config.optim` (see configs/base.py for meanings)."""
  learning_rate: float = 1e-5
  schedule: str = "cosine"  # cosine | linear | constant
  warmup_ratio: float = 0.1
  end_learning_rate: float = 0.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 1.0  # <= 0 disables clipping

  @classmethod
  def from_config(cls, cfg) -> "OptimConfig":
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
  """ceil(warmup_ratio x total_steps): the Hugging Face Trainer's rule (LLaMA-Factory 0.9.1)."""
  return math.ceil(warmup_ratio * total_steps)


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """The Hugging Face Trainer's schedules, step for step (transformers'
  get_{cosine,linear,constant}_schedule_with_warmup, as the paper's LLaMA-Factory runs used).

  Step s (0-based, the s-th optimizer update) of W = ceil(warmup_ratio x total) warmup steps
  gets peak x s / W, so the first update has a learning rate of 0; after warmup, the decay
  runs over the remaining total - W steps to `end_learning_rate` (0 in transformers; a
  non-zero end is the cosine_with_min_lr form).
  """
  if cfg.schedule not in ("cosine", "linear", "constant"):
    raise ValueError(f"optim.schedule={cfg.schedule!r}; expected cosine, linear or constant")
  warmup = warmup_steps(cfg.warmup_ratio, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  peak, end = cfg.learning_rate, cfg.end_learning_rate
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:  # optax warns about a zero-length warmup; there is none to join
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _dict_keys(path) -> list[str]:
  """The dict keys of a pytree path (skipping attribute steps such as flax boxes' `.value`)."""
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: not on norm scales or biases (HF Trainer's rule)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _dict_keys(path)[-1] not in ("scale", "bias"), params)


def is_trainable(keys: tuple[str, ...], trainable: str) -> bool:
  """Whether the param at `keys` trains: everything, only the Decision Maker, or (lora) the
  adapters and the Decision Maker."""
  if trainable not in TRAINABLE:
    raise ValueError(f"optim.trainable={trainable!r}; expected one of {TRAINABLE}")
  if trainable == "all" or keys[0] == DECISION_MAKER:
    return True
  return trainable == "lora" and keys[-1] in lora.ADAPTER_PARAMS


def trainable_from_config(config) -> str:
  """optim.trainable, which is "lora" whenever lora.rank > 0 (a run.json from before LoRA has no
  lora group)."""
  chosen, rank = config.optim.trainable, config.get("lora", {}).get("rank", 0)
  if rank and chosen not in ("all", "lora"):
    raise ValueError(f"lora.rank={rank} trains the adapters and the Decision Maker; "
                     f"optim.trainable={chosen!r} contradicts it (leave it 'all')")
  if chosen == "lora" and not rank:
    raise ValueError("optim.trainable='lora' needs lora.rank > 0")
  return "lora" if rank else chosen


def split_trainable(params: Mapping, trainable: str) -> tuple[dict, dict]:
  """(trainable, frozen) halves of a (possibly boxed) params tree; `join` puts them back. The
  optimizer and the gradients only ever see the trainable half."""
  flat = traverse_util.flatten_dict(dict(params))
  halves = ({}, {})
  for keys, leaf in flat.items():
    halves[0 if is_trainable(keys, trainable) else 1][keys] = leaf
  return tuple(traverse_util.unflatten_dict(h) for h in halves)


def join(trainable: Mapping, frozen: Mapping) -> dict:
  flat = traverse_util.flatten_dict(dict(trainable))
  flat.update(traverse_util.flatten_dict(dict(frozen)))
  return traverse_util.unflatten_dict(flat)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for the trainable params (`split_trainable`).
  The optimizer expects already-averaged grads."""
  schedule = learning_rate_schedule(cfg, total_steps)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
  return optax.chain(*chain, adamw), schedule
