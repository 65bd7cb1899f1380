"""Seeded tiny transformers models of every supported family, the tests' reference."""

import contextlib
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


def torch_cc_loss_and_backward(hf_model, decision_maker, t: dict, noise_BL=None, temperature: float = 1.0,
                               inject_layer: int = 0, english_no_grad: bool = False):
  """docs/method.md §2 written directly on transformers with forward hooks (the authors'
  procedure): English pass -> Decision Maker -> straight-through selection -> the chosen vector
  added to layer `inject_layer`'s MLP output at the anchor -> mean token cross-entropy; then
  backward. Returns the loss.

  Args:
    hf_model: a transformers causal LM. Under reentrant gradient checkpointing (the authors'
      trainer) the English pass's captured outputs carry no gradient on their own.
    decision_maker: function (B, D) -> (B, L) scores (a Linear(D, L), or `lambda d: d @ W.T`).
    t: the batch as torch long tensors (cc_jax.batching's keys).
    noise_BL: Gumbel noise to add to the scores; None draws it with torch's gumbel_softmax.
    temperature: selection temperature.
    inject_layer: the layer whose MLP output receives the vector.
    english_no_grad: run the English pass under torch.no_grad (what reentrant checkpointing
      amounts to for it), for models that cannot checkpoint that way (PEFT's frozen base).
  """
  import torch.nn.functional as F
  layers = hf_model.model.layers
  rows = torch.arange(t["input_ids"].shape[0])
  captured = []
  hooks = [layer.mlp.register_forward_hook(lambda m, i, out: captured.append(out[rows, t["en_anchor"]]))
           for layer in layers]
  try:
    with torch.no_grad() if english_no_grad else contextlib.nullcontext():
      hf_model.model(input_ids=t["en_input_ids"], attention_mask=t["en_attention_mask"],
                     position_ids=t["en_positions"])  # English pass: no LM head, no explicit detach
  finally:
    for h in hooks:
      h.remove()
  english_LBD = torch.stack(captured)
  x0_BD = hf_model.model.embed_tokens(t["input_ids"][rows, t["anchor"]])
  scores_BL = decision_maker((english_LBD + x0_BD[None]).mean(0))  # mean over layers of (E[l] + x0)
  if noise_BL is None:
    weights_BL = F.gumbel_softmax(scores_BL, tau=temperature, hard=True)
  else:
    y_soft = torch.softmax((scores_BL + torch.tensor(np.array(noise_BL))) / temperature, dim=-1)
    y_hard = F.one_hot(y_soft.argmax(-1), y_soft.shape[-1]).to(y_soft.dtype)
    weights_BL = y_hard - y_soft.detach() + y_soft
  vector_BD = torch.einsum("bl,lbd->bd", weights_BL, english_LBD)

  def inject(module, inputs, output):
    output = output.clone()
    output[rows, t["anchor"]] = output[rows, t["anchor"]] + vector_BD
    return output

  # The hook stays until backward has run: reentrant checkpointing re-runs the forward then.
  handle = layers[inject_layer].mlp.register_forward_hook(inject)
  try:
    logits = hf_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                      position_ids=t["positions"]).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), t["labels"][:, 1:].reshape(-1),
                           ignore_index=-100)
    loss.backward()
  finally:
    handle.remove()
  return loss.detach()
