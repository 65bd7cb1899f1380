"""The training loop end to end on the tiny config: loss falls, resume is exact, SIGTERM is clean,
NaN stops without touching the last good checkpoint, and the CLI rejects unknown keys."""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cc_jax import checkpoint, loop, optim, train
from configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  config = tiny.get_config()
  config.log.progress_bar = False
  config.ckpt.async_save = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def read_metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir, config):
  """The parameters of the latest checkpoint of `workdir`."""
  ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(str(pathlib.Path(workdir) / "checkpoints")))
  try:
    state, _ = ckpt.restore(_abstract_state(config))
  finally:
    ckpt.close()
  return state


def _abstract_state(config):
  from cc_jax import runtime, sharding as sh
  from cc_jax.model import Llama
  mesh = runtime.make_mesh(config)
  model = Llama(runtime.model_config(config))
  tx, _ = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), 4)
  target, _ = train.abstract_train_state(model=model, tx=tx, cfg=loop.step_config(config), mesh=mesh,
                                         rules=sh.rules_from_config())
  return target


class StopAt:
  """Stands in for the SIGTERM watcher: requests a stop once `step` is reached."""

  def __init__(self, step):
    self.step = step

  def preemption_requested(self, step=None):
    return step is not None and step >= self.step

  def uninstall(self):
    pass


@pytest.mark.parametrize("method", ["cc", "sft"])
def test_loss_falls_on_the_demo_data(tmp_path, method):
  summary = loop.train_loop(tiny_config(**{"cc.method": method}), tmp_path)
  assert summary["status"] == "completed" and summary["step"] == 12
  losses = [m["loss"] for m in read_metrics(tmp_path)]
  assert len(losses) == 12
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
  if method == "cc":
    first = read_metrics(tmp_path)[0]
    assert sum(first["selected_layers"]) == 8  # every real example picked one of the 2 layers
    assert 0 < first["decision_entropy"] <= np.log(2) + 1e-6
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  check_export(tmp_path, method)


def check_export(workdir, method):
  """The trained run exports to transformers: same logits, Decision Maker as source_select."""
  import torch
  import transformers
  from safetensors import safe_open

  from cc_jax import convert, runtime
  out = runtime.export_run(workdir, workdir / "hf")
  with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
    assert (convert.SOURCE_SELECT in f.keys()) == (method == "cc")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  trained = runtime.load_trained(workdir)
  tokens = np.arange(1, 9, dtype=np.int32)[None] * 37
  ours = trained.model.apply({"params": train.model_params(trained.params)}, tokens, np.arange(8)[None],
                             np.ones_like(tokens)).logits_BTV
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
  assert transformers.AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  """4 steps straight == 2 steps, a restart from the checkpoint, 2 more steps."""
  config = tiny_config(**{"optim.max_steps": 4, "ckpt.every_steps": 100})
  loop.train_loop(config, tmp_path / "straight")

  monkeypatch.setattr(checkpoint, "install_sigterm_handler", lambda: StopAt(2))
  first = loop.train_loop(config, tmp_path / "resumed")
  assert first["status"] == "preempted" and first["step"] == 2
  monkeypatch.setattr(checkpoint, "install_sigterm_handler", lambda: StopAt(10**9))
  second = loop.train_loop(config, tmp_path / "resumed")
  assert second["status"] == "completed" and second["step"] == 4

  straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
  assert [m["step"] for m in resumed] == [1, 2, 3, 4]
  np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in straight], rtol=1e-6)
  a, b = final_params(tmp_path / "straight", config), final_params(tmp_path / "resumed", config)
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_config(**{"optim.max_steps": 6, "ckpt.every_steps": 2})
  real_step = train.train_step

  def poisoned(state, batch, rng, **kwargs):
    new_state, metrics = real_step(state, batch, rng, **kwargs)
    bad = state.step >= 3  # steps 4, 5, ... go bad
    metrics["loss"] = jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])
    params = jax.tree.map(lambda p: jax.numpy.where(bad, jax.numpy.nan, p), new_state.params)
    return new_state.replace(params=params), metrics

  monkeypatch.setattr(train, "train_step", poisoned)
  with pytest.raises((FloatingPointError, checkpoint.NonFiniteCheckpointError), match="step 4"):
    loop.train_loop(config, tmp_path)
  ckpts = checkpoint.Checkpointer(checkpoint.CheckpointConfig(str(tmp_path / "checkpoints")))
  assert ckpts.latest_step() == 2
  ckpts.close()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(final_params(tmp_path, config).params))


def _main(workdir, *flags):
  return [sys.executable, "-m", "cc_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          "--config.log.progress_bar=false", *flags]


def test_sigterm_saves_and_a_rerun_completes(tmp_path):
  """The README's command, killed with SIGTERM mid-way, resumes and completes."""
  command = _main(tmp_path, "--config.optim.max_steps=20", "--config.ckpt.every_steps=100")
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, output
  assert "preempted at step" in output
  stopped_at = len(read_metrics(tmp_path))
  assert 3 <= stopped_at < 20

  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "completed at step 20" in done.stdout
  assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 21))

  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "already complete, nothing to do" in again.stdout
  assert len(read_metrics(tmp_path)) == 20


def test_a_second_start_loads_every_program_from_the_compilation_cache(tmp_path):
  """Two fresh runs of the same config: the first compiles and fills the cache, the second
  compiles nothing (the counts come from jax.monitoring, printed at the end of the log)."""
  counts = []
  for run in ("first", "second"):
    done = subprocess.run(_main(tmp_path / run, "--config.optim.max_steps=2",
                                f"--config.compilation_cache_dir={tmp_path / 'xla'}"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"XLA programs: (\d+) built in [\d.]+ s; (\d+) compiled, (\d+) loaded from the "
                      r"compilation cache", done.stderr)
    assert found, done.stderr[-3000:]
    counts.append(tuple(map(int, found.groups())))
  (built, compiled, loaded), (built_again, compiled_again, loaded_again) = counts
  assert compiled > 0  # a program built twice in one process is loaded the second time
  assert (built_again, compiled_again, loaded_again) == (built, 0, built)


def test_unknown_config_key_is_an_error(tmp_path):
  done = subprocess.run(_main(tmp_path, "--config.optim.learnin_rate=1e-3"), cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 2
  assert "--config.optim.learnin_rate: no such key; did you mean optim.learning_rate" in done.stderr


def test_a_run_that_would_train_nothing_stops_before_any_work(tmp_path):
  """Was: exit 0, "completed at step 0", and a checkpoint of an untrained model (issue 16)."""
  done = subprocess.run(_main(tmp_path / "run", "--config.optim.max_steps=-3"), cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode != 0
  assert "optim.max_steps=-3: must be > 0, or 0 to train data.num_epochs epochs" in done.stderr
  assert not (tmp_path / "run").exists()
