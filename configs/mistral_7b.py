"""Mistral-7B-v0.3 with the paper's hyperparameters and LLaMA-Factory's mistral template, as the paper's
runs used."""

from configs import base


def get_config():
  c = base.paper_scale(base.get_config())
  arch = c.model.arch
  arch.model_type = "mistral"
  arch.vocab_size = 32768
  arch.hidden_size = 4096
  arch.intermediate_size = 14336
  arch.num_layers = 32
  arch.num_heads = 32
  arch.num_kv_heads = 8
  arch.rope_theta = 1000000.0
  c.data.chat_template = "mistral"
  return c
