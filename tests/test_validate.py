"""Config checks before any work: each bad value is refused with its key, value and fix."""

import math
import os
import pathlib
import subprocess
import sys

import pytest

from cc_jax import validate
from configs import base, demo, llama3_8b, llama7b, mistral_7b, qwen2_7b, smollm2, tiny

REPO = pathlib.Path(__file__).resolve().parents[1]

BAD = [  # (overrides, the text the message must hold)
    ({"optim.max_steps": -3}, "optim.max_steps=-3"),
    ({"data.num_epochs": 0, "optim.max_steps": 0}, "data.num_epochs=0 with optim.max_steps=0: the run would train no step"),
    ({"data.batch_size": 0}, "data.batch_size=0"),
    ({"optim.learning_rate": 0.0}, "optim.learning_rate=0.0"),
    ({"optim.learning_rate": math.nan}, "optim.learning_rate=nan"),
    ({"optim.grad_accum_steps": 3}, "data.batch_size=8 is not divisible by optim.grad_accum_steps=3"),
    ({"optim.grad_accum_steps": 0}, "optim.grad_accum_steps=0"),
    ({"cc.temperature": 0.0}, "cc.temperature=0.0"),
    ({"cc.inject_layer": -1}, "cc.inject_layer=-1"),
    ({"data.cutoff_len": 1}, "data.cutoff_len=1"),
    ({"data.buckets": (32, 64)}, "data.buckets=(32, 64)"),
    ({"mesh.fsdp": 0}, "mesh data=1 fsdp=0 tensor=1"),
    ({"mesh.data": -1}, "mesh data=-1 fsdp=-1 tensor=1: each axis must be >= 1, and at most one may be -1"),
]


def with_overrides(overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    group, name = key.rsplit(".", 1)
    config[group][name] = value
  return config


@pytest.mark.parametrize("overrides,expected", BAD, ids=[next(iter(o)) + "=" + str(next(iter(o.values()))) for o, _ in BAD])
def test_each_bad_value_is_refused_with_its_key_value_and_fix(overrides, expected):
  with pytest.raises(ValueError, match="the config cannot run") as error:
    validate.check(with_overrides(overrides))
  assert expected in str(error.value)


def test_every_problem_is_listed_at_once():
  with pytest.raises(ValueError) as error:
    validate.check(with_overrides({"optim.max_steps": -3, "data.batch_size": 0}))
  assert "optim.max_steps=-3" in str(error.value) and "data.batch_size=0" in str(error.value)


@pytest.mark.parametrize("preset", [base, tiny, demo, smollm2, llama3_8b, qwen2_7b, mistral_7b, llama7b])
def test_shipped_configs_pass(preset):
  validate.check(preset.get_config())


def test_training_settings_do_not_block_inference_tasks():
  config = with_overrides({"optim.max_steps": -3})
  config.task = "eval"
  validate.check(config)


def test_inject_layer_is_checked_against_the_model_depth():
  validate.check_inject_layer(1, 2)
  with pytest.raises(ValueError, match=r"cc.inject_layer=99: the model has 2 layers \(0..1\)"):
    validate.check_inject_layer(99, 2)


def test_unknown_override_keys_name_the_nearest_known_keys():
  config = tiny.get_config()
  argv = ["--config=configs/tiny.py", "--config.optim.learnin_rate=1e-3", "--config.data.bogus_key=1",
          "--config.optim.learning_rate=1e-3", "--config.mesh.rules.embed=None", "--workdir=/tmp/x"]
  messages = validate.unknown_overrides(argv, config)
  assert len(messages) == 2, messages
  assert messages[0].startswith("--config.optim.learnin_rate: no such key; did you mean optim.learning_rate")
  assert messages[1].startswith("--config.data.bogus_key: no such key")


def test_a_mesh_the_devices_cannot_fill_is_refused_before_any_work(tmp_path):
  config = tiny.get_config()
  config.mesh.fsdp, config.mesh.tensor = -1, 2
  validate.check_mesh(config, 8)
  config.mesh.tensor = 3
  with pytest.raises(ValueError, match="mesh data=1 fsdp=-1 tensor=3 needs a multiple of 3 devices, and 8 are"):
    validate.check_mesh(config, 8)
  config.task = "eval"  # inference tasks shard over every device whatever the mesh says
  validate.check_mesh(config, 8)
  workdir = tmp_path / "run"
  done = subprocess.run([sys.executable, "-m", "cc_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                         "--config.mesh.fsdp=3"], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                             "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert ("mesh data=1 fsdp=3 tensor=1 needs 3 devices, and 8 are available: make the sizes' product 8, or set "
          "one axis to -1") in done.stderr
  assert not workdir.exists()  # nothing written
