"""The laptop demo (python -m cc_jax.main --config=configs/demo.py): SmolLM2-135M-Instruct, vanilla
SFT and CC-Tuning trained briefly on the shipped multilingual demo data, the Transform Matrix,
and both methods evaluated on held-out questions of every language. About 10 minutes on 2 CPU
cores; everything is written under ./cc_jax_demo (or --workdir)."""

from configs import smollm2


def get_config():
  c = smollm2.get_config()
  c.task = "demo"
  c.workdir = "cc_jax_demo"
  c.data.cutoff_len = 128  # the demo data's longest example is 106 tokens: none is cut
  c.data.min_bucket = 64
  c.data.batch_size = 8
  # Peak RAM (XLA's estimate of the train step's temporaries): 3.5 GB with the preset's stored
  # activations, 1.1 GB recomputing each layer in the backward (~1.3x step time) and taking the
  # 49k-vocabulary logits 32 positions at a time. Neither changes the results.
  c.model.remat_policy = "full"
  c.model.loss_chunk_len = 32
  c.optim.max_steps = 12  # 96 of the 280 records per method: keeps the demo near 10 minutes on 2 cores
  c.optim.learning_rate = 5e-5  # a few dozen steps need more than the paper's 1e-5 to show anything
  c.ckpt.keep = 1
  c.ckpt.final_with_optimizer = False  # 0.5 GB per method instead of 1.6 GB: the demo never trains on
  c.log.every_steps = 5
  c.matrix.num_samples = 64  # parallel prompt pairs for the least-squares fit
  c.eval.limit = 8  # held-out questions per language (of 16)
  c.eval.max_new_tokens = 12  # answers are one short sentence
  # 56 questions: continuous batching's extra compiled shapes cost more than refilling saves
  # (evaluation 63 s against 28 s on 2 cores); the predictions are the same either way.
  c.eval.continuous = "off"
  return c
