"""LoRA: an adapted model with B = 0 computes its base model's logits exactly; trained adapters
exported in PEFT's format give, loaded by PEFT onto transformers' model, the logits cc_jax
computes (and so does the merged export); training updates only the adapters and the
Decision Maker; the CC loss and its gradients match PEFT's LoRA on transformers with the CC hooks."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
import torch
import transformers

from cc_jax import connection, convert, lora, model as M, optim, train
from tests import hf_reference as ref
from tests.test_train import relative_error, synthetic_batch

RANK = 4
TARGETS = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")  # a subset: the others stay plain


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(hf model, its HF directory, cc_jax config, params) of a tiny Llama with biases everywhere."""
  tmp = tmp_path_factory.mktemp("lora")
  hf_model = ref.make_hf_model("llama_attention_bias")
  cc_dir = ref.convert_hf_model(hf_model, tmp)
  return hf_model, tmp / "hf", convert.load_config(cc_dir), convert.load_params(cc_dir)


def adapted(cfg, params, scanned=True, seed=0, b_scale=0.0, alpha=16.0):
  """(LoRA model, base params + adapters): A drawn by the model's init; B zero, or random x b_scale."""
  cfg = dataclasses.replace(cfg, lora=lora.LoraConfig(rank=RANK, alpha=alpha, targets=TARGETS), scan_layers=scanned)
  model = M.Llama(cfg)
  dummy = np.zeros((1, 4), np.int32)
  init = nn.unbox(model.init(jax.random.key(seed), dummy, dummy, dummy + 1)["params"])
  adapters, _ = optim.split_trainable(init, "lora")
  rng = np.random.default_rng(seed)
  adapters = jax.tree_util.tree_map_with_path(
      lambda path, x: x + b_scale * rng.normal(0, 1, x.shape).astype(x.dtype)
      if path[-1].key == "lora_b" else x, adapters)
  base_params = params if scanned else M.unstack_layers(params, cfg.num_layers)
  return model, optim.join(adapters, base_params)


def logits(model, params, tokens, mask, positions):
  return np.asarray(model.apply({"params": params}, tokens, positions, mask).logits_BTV)


@pytest.mark.parametrize("scanned", [True, False])
def test_zero_b_gives_the_base_logits_exactly(base, scanned):
  _, _, cfg, params = base
  tokens, mask, positions = ref.mixed_batch(cfg.vocab_size)
  model, with_adapters = adapted(cfg, params, scanned)
  adapters = jax.tree.leaves(optim.split_trainable(with_adapters, "lora")[0])
  assert len(adapters) == 2 * len(TARGETS) * (1 if scanned else cfg.num_layers)
  plain = M.Llama(dataclasses.replace(cfg, scan_layers=scanned))
  plain_params = params if scanned else M.unstack_layers(params, cfg.num_layers)
  np.testing.assert_array_equal(logits(model, with_adapters, tokens, mask, positions),
                                logits(plain, plain_params, tokens, mask, positions))


def peft_model(hf_dir, adapter_dir, trainable=False):
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  return peft.PeftModel.from_pretrained(hf, adapter_dir, is_trainable=trainable).eval()


@pytest.mark.parametrize("scanned", [True, False])
def test_peft_loads_the_exported_adapter_with_the_same_logits_and_the_merged_export_too(base, tmp_path, scanned):
  _, hf_dir, cfg, params = base
  model, trained = adapted(cfg, params, scanned, b_scale=0.05)
  trained[connection.PARAM_NAME] = {"kernel": np.ones((cfg.hidden_size, cfg.num_layers), np.float32)}
  tokens, mask, positions = ref.mixed_batch(cfg.vocab_size)
  ours = logits(model, trained, tokens, mask, positions)
  assert np.abs(ours - logits(M.Llama(cfg), params, tokens, mask, positions)).max() > 1e-2, "B must matter"

  lora.export_peft(model.cfg.lora, trained, cfg.num_layers, tmp_path / "adapter", base_model=str(hf_dir))
  theirs = peft_model(hf_dir, tmp_path / "adapter")
  with torch.no_grad():
    peft_logits = ref.hf_forward(theirs, tokens, mask, positions).logits.numpy()
  real = mask.astype(bool)  # padding positions are not compared (their outputs are arbitrary)
  np.testing.assert_allclose(peft_logits[real], ours[real], atol=1e-4, rtol=0)
  dm = safetensors.numpy.load_file(tmp_path / "adapter" / lora.ADAPTER_WEIGHTS)
  np.testing.assert_array_equal(dm[convert.SOURCE_SELECT], np.ones((cfg.num_layers, cfg.hidden_size)))

  plain_cfg = dataclasses.replace(model.cfg, lora=None)
  merged_params = lora.merged(trained, model.cfg.lora)
  if not scanned:
    merged_params = M.stack_layers(merged_params, cfg.num_layers)
  convert.export_hf(plain_cfg, merged_params, tmp_path / "merged")
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
  with torch.no_grad():
    merged_logits = ref.hf_forward(merged, tokens, mask, positions).logits.numpy()
  np.testing.assert_allclose(merged_logits[real], ours[real], atol=1e-4, rtol=0)


def test_training_updates_only_the_adapters_and_the_decision_maker(base):
  """Two CC steps: the frozen weights are bit-identical, every adapter B and the Decision Maker
  moved, and the optimizer holds state for those alone."""
  _, _, cfg, params = base
  model, start = adapted(cfg, params)
  step_cfg = train.StepConfig(method="cc", trainable="lora")
  tx, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0), 10)
  state = nn.unbox(train.init_train_state(jax.random.key(1), start, model=model, tx=tx, cfg=step_cfg))
  before = jax.device_get(state.params)
  step = jax.jit(lambda s, b, r: train.train_step(s, b, r, model=model, tx=tx, schedule=schedule, cfg=step_cfg))
  for i in range(2):
    state, metrics = step(state, synthetic_batch(cfg.vocab_size, seed=i), jax.random.key(2))
  after = jax.device_get(state.params)
  trained_keys = 0
  for (path, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after)):
    keys = tuple(k.key for k in path)
    if optim.is_trainable(keys, "lora"):
      trained_keys += 1
      if keys[-1] != "lora_a":  # A moves too, but B started at 0 and must have left it
        assert np.abs(np.asarray(new) - np.asarray(old)).max() > 0, keys
    else:
      assert np.asarray(new).tobytes() == np.asarray(old).tobytes(), f"{keys} is frozen but changed"
  assert trained_keys == 2 * len(TARGETS) + 1
  adam_state = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert len(adam_state) == 2 * trained_keys  # mu and nu of the trainable leaves only
  assert np.isfinite(float(metrics["loss"]))


def test_frozen_weights_are_held_in_the_compute_dtype_without_optimizer_state(base):
  """bf16 compute, float32 master weights: the frozen base is stored in bf16 (half the bytes),
  the adapters and the Decision Maker in float32 with Adam's two moments each."""
  _, _, cfg, params = base
  model, start = adapted(dataclasses.replace(cfg, dtype="bfloat16"), params)
  tx, _ = optim.make_optimizer(optim.OptimConfig(), 10)
  state = nn.unbox(train.init_train_state(jax.random.key(0), start, model=model, tx=tx,
                                          cfg=train.StepConfig(method="cc", trainable="lora")))
  trainable, frozen = optim.split_trainable(state.params, "lora")
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jax.numpy.dtype("bfloat16")}
  assert {x.dtype for x in jax.tree.leaves(trainable)} == {jax.numpy.dtype("float32")}
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(trainable))


@pytest.mark.parametrize("english_pass", ["no_grad", "plain_autograd"])
def test_cc_loss_and_adapter_gradients_match_peft_lora_with_the_cc_hooks(base, tmp_path, english_pass):
  """cc_jax's CC loss and gradients with LoRA against transformers + PEFT LoRA with the same
  adapters and the CC hooks of the PyTorch reference (tests/hf_reference.py), with the English
  pass detached (the authors' runs) and not; the full fine-tuning test's tolerances."""
  _, hf_dir, cfg, params = base
  model, trained = adapted(cfg, params, b_scale=0.05)
  dm = np.random.default_rng(3).normal(0, 0.5, (cfg.hidden_size, cfg.num_layers)).astype(np.float32)
  trained[connection.PARAM_NAME] = {"kernel": dm}
  batch = synthetic_batch(cfg.vocab_size)
  noise = np.asarray(connection.gumbel_noise(jax.random.key(4), (batch["input_ids"].shape[0], cfg.num_layers)))
  detached = english_pass == "no_grad"
  step_cfg = train.StepConfig(method="cc", trainable="lora",
                              connection=connection.ConnectionConfig(stop_english_grad=detached))
  adapters, frozen = optim.split_trainable(trained, "lora")

  def mean_loss(a):
    loss_sum, aux = train.loss_fn(optim.join(a, frozen), batch, noise, model=model, cfg=step_cfg)
    return loss_sum / aux["tokens"]
  loss, grads = jax.value_and_grad(mean_loss)(adapters)

  lora.export_peft(model.cfg.lora, trained, cfg.num_layers, tmp_path / "adapter")
  theirs = peft_model(hf_dir, tmp_path / "adapter", trainable=True)
  decision_maker = torch.nn.Linear(cfg.hidden_size, cfg.num_layers, bias=False)
  with torch.no_grad():
    decision_maker.weight.copy_(torch.from_numpy(dm.T))
  t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
  expected = ref.torch_cc_loss_and_backward(theirs.get_base_model(), decision_maker, t, noise,
                                            english_no_grad=detached)
  assert abs(float(loss) - expected.item()) / expected.item() <= 1e-5
  torch_grads = {name.replace(".default", ""): p.grad.numpy() for name, p in theirs.named_parameters()
                 if p.requires_grad}
  ours = dict(lora.peft_tensors(grads, cfg.num_layers))
  assert ours.keys() == torch_grads.keys() and len(ours) == 2 * len(TARGETS) * cfg.num_layers
  for name, grad in torch_grads.items():
    if name.endswith("lora_A.weight"):  # B = random: A's gradient is real too
      assert np.abs(grad).max() > 1e-6, name
    assert relative_error(ours[name], grad) <= 1e-4, name
  dm_grad = np.asarray(grads[connection.PARAM_NAME]["kernel"]).T
  assert relative_error(dm_grad, decision_maker.weight.grad.numpy()) <= 1e-4


def test_a_lora_run_trains_resumes_fits_the_matrix_evaluates_and_exports(tmp_path):
  """`--config.lora.rank=8` (with adapter dropout) on configs/tiny.py through the CLI, as a user runs it."""
  import json
  import subprocess
  import sys

  from tests.test_loop import read_metrics
  from tests.test_pipeline import REPO, cli, small_benchmark_dir
  workdir, lora_flags = tmp_path / "run", ("--config.lora.rank=8", "--config.lora.dropout=0.1")
  cli(workdir, *lora_flags, "--config.optim.max_steps=2", "--config.ckpt.every_steps=2")
  cli(workdir, *lora_flags, "--config.optim.max_steps=3")
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3]  # resumed at 2: step 3 alone ran again
  assert (workdir / "checkpoints" / "3").exists()
  # the random base is saved once in the workdir, by a path relative to it; checkpoints leave it out
  assert json.loads((workdir / "run.json").read_text())["base"] == {"path": "base"}
  assert all(optim.is_trainable(keys[1:], "lora") for keys in _saved_leaves(workdir / "checkpoints" / "3")
             if keys[0] == "params")
  workdir = workdir.rename(tmp_path / "moved")  # and the run, moved, still finds it

  done = subprocess.run([sys.executable, "-m", "cc_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                         "--config.task=matrix", "--config.lora.rank=4"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode != 0 and "lora.rank: the run has 8, this command 4" in done.stderr, done.stderr[-2000:]

  # matrix and eval read the run's settings (LoRA included) from its run.json
  assert "Transform Matrix from 16 pairs" in cli(workdir, "--config.task=matrix", "--config.matrix.num_samples=16")
  bench = small_benchmark_dir(tmp_path / "bench")
  out = cli(workdir, "--config.task=eval", f"--config.eval.source={bench}",
            "--config.eval.benchmarks=('XNLI',)", "--config.eval.max_new_tokens=4")
  assert "predictions scored" in out

  for as_adapter, out_dir in ((True, tmp_path / "adapter"), (False, tmp_path / "merged")):
    done = subprocess.run([sys.executable, "launch/convert.py", "--from=run", f"--src={workdir}", f"--out={out_dir}",
                           f"--peft={as_adapter}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
  adapter = json.loads((tmp_path / "adapter" / lora.ADAPTER_CONFIG).read_text())
  assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and len(adapter["target_modules"]) == 7
  assert adapter["lora_dropout"] == 0.1
  tensors = safetensors.numpy.load_file(tmp_path / "adapter" / lora.ADAPTER_WEIGHTS)
  assert len(tensors) == 2 * 7 * 2 + 1 and sum(".lora_" in name for name in tensors) == 2 * 7 * 2
  assert tensors[convert.SOURCE_SELECT].shape == (2, 64)  # the Decision Maker, (L, D)
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
  assert not any("lora" in name for name, _ in merged.named_parameters())

  # a new run continues from the exported adapter (its state sharded over the 8 test devices)
  again = tmp_path / "again"
  cli(again, *lora_flags, f"--config.lora.init_from={tmp_path / 'adapter'}", "--config.optim.max_steps=1")
  assert [m["step"] for m in read_metrics(again)] == [1]


@pytest.mark.parametrize("scanned", [True, False])
def test_an_exported_adapter_imports_back_exactly_and_a_mismatched_one_is_named(base, tmp_path, scanned):
  _, _, cfg, params = base
  model, trained = adapted(cfg, params, scanned, b_scale=0.05)
  trained[connection.PARAM_NAME] = {"kernel": np.arange(cfg.hidden_size * cfg.num_layers, dtype=np.float32).reshape(
      cfg.hidden_size, cfg.num_layers)}
  lora.export_peft(model.cfg.lora, trained, cfg.num_layers, tmp_path / "adapter")
  _, fresh = adapted(cfg, params, scanned, seed=1)
  fresh[connection.PARAM_NAME] = {"kernel": np.zeros((cfg.hidden_size, cfg.num_layers), np.float32)}
  fresh = jax.device_put(fresh)
  imported = lora.import_peft(tmp_path / "adapter", model.cfg.lora, fresh)
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(trained)[0], jax.tree.leaves(imported)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
  other = dataclasses.replace(model.cfg.lora, rank=8)
  with pytest.raises(ValueError, match=r"adapter_config.json: r=4, but this run's LoRA has 8"):
    lora.import_peft(tmp_path / "adapter", other, fresh)
  with pytest.raises(FileNotFoundError, match="adapter_model.safetensors does not exist"):
    (tmp_path / "adapter" / lora.ADAPTER_WEIGHTS).unlink()
    lora.import_peft(tmp_path / "adapter", model.cfg.lora, fresh)


def _saved_leaves(step_dir) -> list[tuple[str, ...]]:
  """The key paths of the arrays a checkpoint step holds (read from Orbax's metadata)."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as reader:
    tree = reader.metadata(step_dir / "state").item_metadata
  return [tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _bytes(directory) -> int:
  return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


@pytest.mark.parametrize("trainable", ["lora", "decision_maker"])
def test_checkpoints_leave_the_frozen_base_out_resume_exactly_and_refuse_a_changed_base(tmp_path, monkeypatch,
                                                                                        trainable):
  """A run on a converted base: its checkpoints hold the trained params and their Adam moments only
  (a fraction of the base's bytes); resuming equals running straight through, the frozen weights are
  the base's bit for bit, and a base converted again since (same weights, new files) is refused."""
  import json

  from cc_jax import checkpoint, frozen, loop, runtime
  from tests.test_loop import StopAt, read_metrics, tiny_config

  config = tiny_config(**{"optim.max_steps": 4, "ckpt.every_steps": 100, "optim.learning_rate": 1e-2})
  cfg = runtime.model_config(config)
  dummy = np.zeros((1, 4), np.int32)
  base_params = nn.unbox(M.Llama(cfg).init(jax.random.key(7), dummy, dummy, dummy + 1)["params"])
  base_dir = convert.save_model_dir(tmp_path / "base", cfg, base_params, tokenizer=runtime.load_tokenizer(config))
  config.model.path, config.model.tokenizer = str(base_dir), ""
  if trainable == "lora":
    config.lora.rank = 4
  else:
    config.optim.trainable = "decision_maker"

  loop.train_loop(config, tmp_path / "straight")
  monkeypatch.setattr(checkpoint, "install_sigterm_handler", lambda: StopAt(2))
  assert loop.train_loop(config, tmp_path / "resumed")["status"] == "preempted"
  step_dir = tmp_path / "resumed" / "checkpoints" / "2"
  leaves = _saved_leaves(step_dir)
  params = [keys for keys in leaves if keys[0] == "params"]
  assert params and all(optim.is_trainable(keys[1:], trainable) for keys in params), params
  for moment in ("mu", "nu"):  # Adam's moments of exactly those; the rest of opt_state is step counts
    assert sorted(k[k.index(moment) + 1:] for k in leaves if moment in k) == sorted(k[1:] for k in params)
  assert {k[-1] for k in leaves if k[0] == "opt_state" and "mu" not in k and "nu" not in k} == {"count"}
  assert _bytes(step_dir) < 0.05 * _bytes(base_dir / "params")
  monkeypatch.setattr(checkpoint, "install_sigterm_handler", lambda: StopAt(10**9))
  assert loop.train_loop(config, tmp_path / "resumed")["step"] == 4

  straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
  np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in straight], rtol=1e-6)
  a, b = runtime.load_trained(tmp_path / "straight").params, runtime.load_trained(tmp_path / "resumed").params
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path))
  trained, kept = optim.split_trainable(jax.device_get(b), trainable)
  for x, y in zip(jax.tree.leaves(kept), jax.tree.leaves(optim.split_trainable(base_params, trainable)[1])):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

  # a run saved before checkpoints left the base out: no `base` in run.json, every param in its checkpoint
  old = tmp_path / "before"
  run = json.loads((tmp_path / "straight" / "run.json").read_text())
  del run["base"]
  old.mkdir()
  (old / "run.json").write_text(json.dumps(run))
  with checkpoint.Checkpointer(checkpoint.CheckpointConfig(str(old / "checkpoints"), async_save=False)) as saver:
    saver.save(4, {"step": np.int32(4), "params": jax.device_get(b)}, {loop.PARAMS_ONLY: True}, force=True)
  for x, y in zip(jax.tree.leaves(runtime.load_trained(old).params), jax.tree.leaves(b)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

  convert.save_model_dir(base_dir, cfg, base_params, tokenizer=runtime.load_tokenizer(config), overwrite=True)
  with pytest.raises(frozen.BaseChangedError, match=f"{base_dir} is not the base model"):
    runtime.load_trained(tmp_path / "straight")
  config.optim.max_steps = 5
  with pytest.raises(frozen.BaseChangedError, match="converted again or replaced"):
    loop.train_loop(config, tmp_path / "resumed")


def test_adapter_dropout_masks_each_adapters_input_as_peft_does_and_only_when_given_a_key():
  """Zero kernels, A = B = I (rank = width): a projection outputs scale x dropout(x), so the mask is
  read off the output. Kept entries are x / (1 - p), a fraction 1 - p of them (PEFT: nn.Dropout on
  lora_A's input); q_proj and k_proj draw their own masks; without a dropout key nothing is dropped."""
  from cc_jax import sharding as sh
  width, p = 16, 0.25
  cfg = M.LlamaConfig(vocab_size=8, hidden_size=width, intermediate_size=width, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=width, lora=lora.LoraConfig(rank=width, alpha=2.0 * width, dropout=p))

  class TwoAdapters(nn.Module):
    @nn.compact
    def __call__(self, x):
      return [M.Projection((width,), (sh.EMBED, sh.MLP), cfg, name=n)(x) for n in ("q_proj", "k_proj")]

  x = np.ones((4, 64, width), np.float32)
  params = nn.unbox(TwoAdapters().init(jax.random.key(0), x)["params"])
  eye = np.eye(width, dtype=np.float32)
  params = {n: {"kernel": np.zeros_like(eye), "lora_a": eye, "lora_b": eye} for n in params}
  plain = TwoAdapters().apply({"params": params}, x)
  for y in plain:
    np.testing.assert_array_equal(np.asarray(y), 2.0 * x)
  q, k = (np.asarray(y) for y in TwoAdapters().apply({"params": params}, x, rngs={"dropout": jax.random.key(1)}))
  for y in (q, k):
    np.testing.assert_allclose(np.unique(y), [0.0, 2.0 / (1 - p)], rtol=1e-6)
    assert abs(np.mean(y == 0) - p) < 0.03  # 4096 draws: 4 standard deviations
  assert np.mean((q == 0) != (k == 0)) > 0.2  # independent masks differ in 2p(1-p) = 37.5% of entries


def test_dropout_changes_the_training_loss_but_not_evaluation(base):
  """lora.dropout acts in the train step's passes, drawn from the step's key; eval_step, which has
  none, computes the dropout-free loss exactly."""
  _, _, cfg, params = base
  model, start = adapted(cfg, params, b_scale=0.05)
  dropped = M.Llama(dataclasses.replace(model.cfg, lora=dataclasses.replace(model.cfg.lora, dropout=0.5)))
  batch = synthetic_batch(cfg.vocab_size)
  start[connection.PARAM_NAME] = nn.unbox(connection.init_decision_maker(
      jax.random.key(3), cfg.hidden_size, cfg.num_layers, jax.numpy.float32))
  step_cfg = train.StepConfig(method="cc", trainable="lora")
  losses = {}
  for name, m in (("plain", model), ("dropped", dropped)):
    trainable, frozen = optim.split_trainable(start, "lora")
    losses[name] = [float(train.accumulate_gradients(trainable, batch, jax.random.key(s), 0, model=m, cfg=step_cfg,
                                                     frozen=frozen)[0]) for s in (0, 1)]
    losses[name + " eval"] = float(train.eval_step(start, batch, model=m, cfg=step_cfg)["loss_sum"])
  # the same keys (the same Gumbel draws): only the dropout masks tell the two apart
  assert min(abs(a - b) for a, b in zip(losses["plain"], losses["dropped"])) > 1e-4, losses
  assert losses["dropped eval"] == losses["plain eval"], losses
