"""The CC-Tuning and SFT steps against an independent PyTorch implementation of docs/method.md §2."""

import re

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from cc_jax import connection, convert, model as M, optim, sharding as sh, train
from tests import hf_reference as ref

B, T, T_EN = 4, 12, 7


def synthetic_batch(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Right-padded non-English rows with labels after the anchor; English prompts only."""
  rng = np.random.default_rng(seed)
  lengths, prompt_lengths, en_lengths = [12, 10, 9, 12], [5, 4, 6, 3], [7, 5, 6, 4]
  batch = {k: np.zeros((B, T), np.int32) for k in ("input_ids", "attention_mask", "positions")}
  batch["labels"] = np.full((B, T), train.IGNORE_INDEX, np.int32)
  batch.update({k: np.zeros((B, T_EN), np.int32) for k in ("en_input_ids", "en_attention_mask", "en_positions")})
  for b in range(B):
    n, p, e = lengths[b], prompt_lengths[b], en_lengths[b]
    batch["input_ids"][b, :n] = rng.integers(1, vocab, n)
    batch["attention_mask"][b, :n] = 1
    batch["positions"][b, :n] = np.arange(n)
    batch["labels"][b, p:n] = batch["input_ids"][b, p:n]
    batch["en_input_ids"][b, :e] = rng.integers(1, vocab, e)
    batch["en_attention_mask"][b, :e] = 1
    batch["en_positions"][b, :e] = np.arange(e)
  batch["anchor"] = np.array(prompt_lengths, np.int32) - 1
  batch["en_anchor"] = np.array(en_lengths, np.int32) - 1
  return batch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  hf_model = ref.make_hf_model("llama3_rope_scaling")
  cc_dir = ref.convert_hf_model(hf_model, tmp_path_factory.mktemp("tiny"))
  cfg = convert.load_config(cc_dir)
  return hf_model, cfg, convert.load_params(cc_dir)


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|: the tolerance is relative to the tensor's scale."""
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def jax_grads_as_hf(cfg, grads):
  return dict(convert.hf_tensors_from_params(cfg, grads, np.float32))


# The English pass as the authors' trainer ran it (LLaMA-Factory's default reentrant gradient
# checkpointing: the English MLP outputs carry no gradient) and as the ablation (plain autograd).
ENGLISH_PASS = {"reentrant_checkpointing": True, "plain_autograd": False}  # -> stop_english_grad


@pytest.mark.parametrize("english_pass", sorted(ENGLISH_PASS))
@pytest.mark.parametrize("inject_layer", [0, 1])
def test_cc_loss_and_gradients_match_torch_reference(tiny, inject_layer, english_pass):
  hf_model, cfg, params = tiny
  batch = synthetic_batch(cfg.vocab_size)
  rng = np.random.default_rng(3)
  source_select_LD = rng.normal(0, 0.5, (cfg.num_layers, cfg.hidden_size)).astype(np.float32)
  noise = np.asarray(connection.gumbel_noise(jax.random.key(7), (B, cfg.num_layers)))
  params = {**params, connection.PARAM_NAME: {"kernel": source_select_LD.T.copy()}}

  model = M.Llama(cfg, inject_layer=inject_layer)
  detached = ENGLISH_PASS[english_pass]
  step_cfg = train.StepConfig(method="cc", connection=connection.ConnectionConfig(stop_english_grad=detached))
  if detached:  # the default is what the authors' runs did
    assert step_cfg == train.StepConfig(method="cc")

  def mean_loss(p):
    loss_sum, aux = train.loss_fn(p, batch, noise, model=model, cfg=step_cfg)
    return loss_sum / aux["tokens"]

  loss, grads = jax.value_and_grad(mean_loss)(params)
  hf_model.zero_grad()
  w = torch.tensor(source_select_LD, requires_grad=True)
  if detached:  # no explicit detach: torch's reentrant checkpoint runs its forward under no_grad
    hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hf_model.train()  # transformers checkpoints only in training mode (the tiny model has no dropout)
  try:
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    expected = ref.torch_cc_loss_and_backward(hf_model, lambda d: d @ w.T, t, noise, inject_layer=inject_layer)
  finally:
    hf_model.activation_checkpointing_disable()
    hf_model.eval()

  assert abs(float(loss) - expected.item()) / expected.item() <= 1e-5
  got = jax_grads_as_hf(cfg, grads)
  assert np.abs(w.grad.numpy()).max() > 1e-5, "the Decision Maker must receive a real gradient"
  assert relative_error(got[convert.SOURCE_SELECT], w.grad.numpy()) <= 1e-4
  torch_grads = dict(hf_model.named_parameters())
  for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
               "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight",
               "model.layers.1.post_attention_layernorm.weight", "lm_head.weight"):
    assert relative_error(got[name], torch_grads[name].grad.numpy()) <= 1e-4, name


def test_stop_english_grad_detaches_only_the_english_pass(tiny):
  """With the English pass detached, weights get only the non-English gradient."""
  hf_model, cfg, params = tiny
  batch = synthetic_batch(cfg.vocab_size)
  kernel = np.random.default_rng(0).normal(0, 0.5, (cfg.hidden_size, cfg.num_layers)).astype(np.float32)
  params = {**params, connection.PARAM_NAME: {"kernel": kernel}}
  model = M.Llama(cfg)
  noise = np.zeros((B, cfg.num_layers), np.float32)

  def grads(stop):
    cfg_ = train.StepConfig(connection=connection.ConnectionConfig(stop_english_grad=stop))
    return jax.grad(lambda p: train.loss_fn(p, batch, noise, model=model, cfg=cfg_)[0])(params)

  attached, detached = grads(False), grads(True)
  # The last layer's MLP only reaches the loss through the English capture at layer 0+...
  # so its gradient differs; the Decision Maker still learns in both.
  a = attached["layers"]["mlp"]["down_proj"]["kernel"]
  d = detached["layers"]["mlp"]["down_proj"]["kernel"]
  assert not np.allclose(a, d)
  assert np.abs(detached[connection.PARAM_NAME]["kernel"]).max() > 0


def test_sft_loss_matches_transformers_masked_loss(tiny):
  hf_model, cfg, params = tiny
  batch = synthetic_batch(cfg.vocab_size)
  model = M.Llama(cfg)
  loss_sum, aux = train.loss_fn(params, batch, None, model=model, cfg=train.StepConfig(method="sft"))
  t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
  with torch.no_grad():
    expected = hf_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                        position_ids=t["positions"], labels=t["labels"]).loss.item()
  assert abs(float(loss_sum / aux["tokens"]) - expected) / expected <= 1e-5


@pytest.mark.parametrize("method", ["cc", "sft"])
def test_gradient_accumulation_equals_one_big_batch(tiny, method):
  """Microbatches with different label counts: sum-then-divide equals the full batch."""
  _, cfg, params = tiny
  if method == "cc":
    params = {**params, connection.PARAM_NAME: {
        "kernel": np.random.default_rng(0).normal(0, 0.5, (cfg.hidden_size, cfg.num_layers)).astype(np.float32)}}
  batch = synthetic_batch(cfg.vocab_size)
  model = M.Llama(cfg)

  def accumulate(microbatches):
    step_cfg = train.StepConfig(method=method, num_microbatches=microbatches,
                                connection=connection.ConnectionConfig(selection="argmax"))
    return jax.jit(lambda p: train.accumulate_gradients(p, batch, jax.random.key(1), 0, model=model,
                                                        cfg=step_cfg))(params)

  loss1, aux1, grads1 = accumulate(1)
  loss2, aux2, grads2 = accumulate(2)
  label_tokens = (batch["labels"][:, 1:] != -100).sum()
  assert float(aux1["tokens"]) == float(aux2["tokens"]) == label_tokens
  # The two microbatches (rows 0,2 and 1,3) hold 15 and 13 label tokens: a mean of
  # per-microbatch means would differ from the big-batch mean.
  np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads2)):
    assert relative_error(np.asarray(b), np.asarray(a)) <= 1e-5


def test_decay_mask_and_trainable_mask(tiny):
  _, cfg, params = tiny
  params = {**params, connection.PARAM_NAME: {"kernel": np.zeros((cfg.hidden_size, cfg.num_layers), np.float32)}}
  mask = optim.decay_mask(params)
  assert mask["layers"]["mlp"]["up_proj"]["kernel"] and not mask["norm"]["scale"]
  assert not mask["layers"]["input_layernorm"]["scale"]
  trainable, frozen = optim.split_trainable(params, "decision_maker")
  assert list(trainable) == [connection.PARAM_NAME] and connection.PARAM_NAME not in frozen
  assert optim.join(trainable, frozen).keys() == params.keys()
  assert optim.split_trainable(params, "all") == (params, {})


def test_schedule_warms_up_then_decays_to_zero():
  _, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-5, warmup_ratio=0.1), 100)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 1e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(55)), 0.5e-5, rtol=1e-3)  # cosine midpoint
  assert float(schedule(100)) < 1e-9


# (total steps, warmup ratio): warmups of 10, 1 (0.7 and 0.25 round up), 3 (2.5 rounds up, not
# to even), 0 and 1 of 1 step.
SCHEDULE_CASES = [(100, 0.1), (7, 0.1), (5, 0.05), (25, 0.1), (10, 0.0), (1, 0.1), (3, 0.5)]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("total,ratio", SCHEDULE_CASES)
def test_schedule_equals_transformers_step_for_step(total, ratio, kind):
  """The learning rate of every optimizer step equals the Hugging Face Trainer's, whose
  scheduler the paper's LLaMA-Factory runs stepped once per update (warmup = ceil)."""
  import transformers
  make = {"cosine": transformers.get_cosine_schedule_with_warmup,
          "linear": transformers.get_linear_schedule_with_warmup,
          "constant": lambda opt, w, _: transformers.get_constant_schedule_with_warmup(opt, w)}[kind]
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
  scheduler = make(opt, optim.warmup_steps(ratio, total), total)
  expected = []
  for _ in range(total):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step()
  schedule = optim.learning_rate_schedule(optim.OptimConfig(learning_rate=1e-5, warmup_ratio=ratio, schedule=kind),
                                          total)
  got = [float(schedule(s)) for s in range(total)]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)  # float32 rounding: ~1e-7 x peak


@pytest.mark.parametrize("method", ["cc", "sft"])
@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"fsdp": 8}, {"fsdp": 4, "tensor": 2}])
def test_sharded_training_matches_one_device(tiny, method, mesh_shape):
  """3 optimizer steps on 8 fake CPU devices give the single-device losses."""
  assert jax.device_count() >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)"
  _, cfg, params = tiny
  batch = {k: np.concatenate([v, v]) for k, v in synthetic_batch(cfg.vocab_size).items()}  # 8 rows
  model = M.Llama(cfg)
  step_cfg = train.StepConfig(method=method)
  tx, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3, warmup_ratio=0.0), 10)
  rules = sh.rules_from_config()

  def losses(mesh):
    state, shardings = train.create_sharded_state(
        jax.random.key(0), model=model, tx=tx, cfg=step_cfg, mesh=mesh, rules=rules,
        load_params=lambda target: jax.device_put(params, jax.tree.map(lambda t: t.sharding, target)))
    step = train.make_train_step(model, tx, schedule, step_cfg, mesh, rules, shardings)
    out = []
    for _ in range(3):
      state, metrics = step(state, batch, jax.random.key(1))
      out.append(float(metrics["loss"]))
    return out, state

  single, _ = losses(sh.make_mesh({"data": 1}, devices=jax.devices()[:1]))
  sharded, state = losses(sh.make_mesh(mesh_shape))
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  assert single[2] < single[0]
  if "fsdp" in mesh_shape:  # weights really are split over the devices
    kernel = state.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape)[1] == cfg.hidden_size // mesh_shape["fsdp"]


def test_fsdp_gathers_move_compute_dtype_weights(tmp_path):
  """With bf16 compute over float32 master weights, every all-gather XLA's partitioner emits for
  an FSDP-sharded step moves bf16: weights are cast before they are gathered. Read right after
  SPMD partitioning: XLA:CPU has no bf16 collectives and later rewrites them as f32 (GPU and
  TPU keep them), so the final CPU program cannot show it."""
  cfg = M.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=64, dtype="bfloat16")
  model, mesh, rules = M.Llama(cfg), sh.make_mesh({"fsdp": 8}), sh.rules_from_config()
  step_cfg = train.StepConfig(method="sft")
  tx, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3), 10)
  state, shardings = train.abstract_train_state(model=model, tx=tx, cfg=step_cfg, mesh=mesh, rules=rules)
  batch = {k: np.concatenate([v, v]) for k, v in synthetic_batch(cfg.vocab_size).items()}
  step = train.jit_train_step(model, tx, schedule, step_cfg, mesh, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step.lower(state, batch, jax.random.key(0)).compile(compiler_options={
        "xla_dump_to": str(tmp_path), "xla_dump_hlo_pass_re": "spmd-partitioning",
        "xla_dump_hlo_module_re": "train_step"})
  (partitioned,) = tmp_path.glob("*after_spmd-partitioning*")
  gathered = re.findall(r"= (\w+)\[[\d,]*\]\{[\d,]*\} all-gather\(", partitioned.read_text())
  float_gathers = [dtype for dtype in gathered if dtype.startswith(("f", "bf"))]
  assert len(float_gathers) >= 8, gathered  # 7 projections per layer and the LM head, at least
  assert set(float_gathers) == {"bf16"}, gathered
