"""Qwen2.5-7B with the paper's hyperparameters and LLaMA-Factory's qwen template (its default
system prompt "You are a helpful assistant.")."""

from configs import base


def get_config():
  c = base.paper_scale(base.get_config())
  arch = c.model.arch
  arch.model_type = "qwen2"
  arch.vocab_size = 152064
  arch.hidden_size = 3584
  arch.intermediate_size = 18944
  arch.num_layers = 28
  arch.num_heads = 28
  arch.num_kv_heads = 4
  arch.rope_theta = 1000000.0
  arch.rms_norm_eps = 1e-6
  c.data.chat_template = "qwen"
  return c
