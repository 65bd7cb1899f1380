"""Llama-3.1-8B, the paper's main model, with its hyperparameters (docs/method.md §2):
full fine-tuning, AdamW 1e-5, cosine with 10% warmup, 3 epochs, cutoff 1024, bf16,
the llama3 chat template. Global batch 128, the paper's 16 per device on 8 devices, with the
memory settings of `base.paper_scale` (docs/fit.md)."""

from configs import base


def get_config():
  c = base.paper_scale(base.get_config())
  arch = c.model.arch
  arch.vocab_size = 128256
  arch.hidden_size = 4096
  arch.intermediate_size = 14336
  arch.num_layers = 32
  arch.num_heads = 32
  arch.num_kv_heads = 8
  arch.rope_theta = 500000.0
  c.data.chat_template = "llama3"
  return c
