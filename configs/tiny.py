"""A randomly initialised model of ~3.3M parameters (SmolLM2's tokenizer and vocabulary) that
trains on the shipped demo data in seconds on a CPU: for tests and smoke runs."""

from cc_jax import demo_data
from configs import base


def get_config():
  c = base.get_config()
  c.model.path = ""  # random init from model.arch
  c.model.tokenizer = "smollm2"
  c.model.dtype = "float32"
  arch = c.model.arch
  arch.vocab_size = 49152
  arch.hidden_size = 64
  arch.intermediate_size = 128
  arch.num_layers = 2
  arch.num_heads = 4
  arch.num_kv_heads = 2
  arch.rope_theta = 100000.0
  arch.tie_word_embeddings = True
  c.data.source = str(demo_data.TRAIN_FILE)
  c.data.cutoff_len = 128  # the demo data's longest example is 106 SmolLM2 tokens: none is cut
  c.data.min_bucket = 32
  c.data.batch_size = 8
  c.data.num_epochs = 1
  c.optim.learning_rate = 3e-3
  c.optim.max_steps = 12
  c.ckpt.every_steps = 6
  c.log.every_steps = 1
  return c
