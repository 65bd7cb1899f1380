"""Seeded tiny transformers models of every supported family, the tests' reference."""

import pathlib

import numpy as np
import torch
import transformers

from cc_jax import convert, model as M

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
FAMILIES = {
    "llama2_mha": lambda: transformers.LlamaConfig(**{**TINY, "num_key_value_heads": 4}),
    "llama3_rope_scaling": lambda: transformers.LlamaConfig(
        **TINY, rope_theta=500000.0, rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16)),
    "llama_attention_bias": lambda: transformers.LlamaConfig(**TINY, attention_bias=True, mlp_bias=True),
    "mistral": lambda: transformers.MistralConfig(**TINY, sliding_window=None),
    "mistral_sliding_window": lambda: transformers.MistralConfig(**TINY, sliding_window=4),
    "qwen2_bias": lambda: transformers.Qwen2Config(**TINY),
    "tied_embeddings": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=True),
}


def make_hf_model(family: str, seed: int = 0, dtype=torch.float32):
  """A random transformers model; every weight (biases and norms too) is perturbed off its init
  so that a wrongly mapped tensor cannot hide behind zeros or ones."""
  torch.manual_seed(seed)
  config = FAMILIES[family]()
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.to(dtype)


def convert_hf_model(hf_model, tmp_path: pathlib.Path, **kwargs) -> pathlib.Path:
  """Saves a transformers model as safetensors and converts it; returns the cc_jax dir."""
  hf_dir = tmp_path / "hf"
  hf_model.save_pretrained(hf_dir)
  return convert.hf_to_cc_jax(hf_dir, tmp_path / "cc_jax", **kwargs)


def mixed_batch(vocab: int, batch: int = 3, length: int = 12, seed: int = 0):
  """Token ids and a mask mixing a full row, a right-padded row and a left-padded row."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, length - 4:] = 0
  mask[2, :5] = 0
  positions = np.asarray(M.left_pad_positions(mask))
  return tokens, mask, positions


def hf_forward(hf_model, tokens, mask, positions, **kwargs):
  with torch.no_grad():
    return hf_model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions, dtype=torch.long), **kwargs)
