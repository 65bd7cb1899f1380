"""Llama-2-7B with the paper's hyperparameters (docs/method.md §2). Convert the weights first:
  python launch/convert.py --from=hf --src=/models/Llama-2-7b-hf --out=/ckpt/llama2_7b
then pass --config.model.path=/ckpt/llama2_7b --config.data.source=... --workdir=..."""

from configs import base


def get_config():
  c = base.paper_scale(base.get_config())
  arch = c.model.arch
  arch.vocab_size = 32000
  arch.hidden_size = 4096
  arch.intermediate_size = 11008
  arch.num_layers = 32
  arch.num_heads = 32
  arch.num_kv_heads = 32
  arch.rms_norm_eps = 1e-5
  c.data.chat_template = "llama2"  # LLaMA-Factory's, for Llama 2's 32k vocabulary (the base model has none)
  return c
