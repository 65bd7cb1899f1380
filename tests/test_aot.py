"""The ahead-of-time fit check on the tiny config: compiled for the 8 fake CPU devices in this
process, and for real TPU topologies through libtpu in a subprocess (JAX_PLATFORMS=cpu; libtpu
lives in its own directory so this process keeps its CPU-only JAX)."""

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import pytest

from cc_jax import aot, optim, runtime, sharding as sh, smollm2, train
from cc_jax.loop import step_config
from cc_jax.model import Llama
from configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBTPU = re.search(r"^libtpu==(\S+)", (REPO / "requirements-tpu.txt").read_text(), re.M).group(1)


def per_device_bytes(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_cpu_estimate_reports_every_program_and_what_does_not_fit():
  config = tiny.get_config()
  reports = aot.check(config, jax.devices())
  assert [r.name for r in reports] == ["train cc T=128 T_en=128", "train sft T=128",
                                       "matrix capture B=16 T=128", "eval cc generate B=16 T=128+40"]
  # The train step's arguments are the sharded state (params and both Adam moments) and the batch.
  mesh = sh.make_mesh({"fsdp": -1})
  model = Llama(runtime.model_config(config))
  tx, _ = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), 1000)
  state, _ = train.abstract_train_state(model=model, tx=tx, cfg=step_config(config), mesh=mesh,
                                        rules=sh.rules_from_config())
  batch_bytes = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(aot.train_batch(8, 128, 128))) // 8
  assert abs(reports[0].arguments - (per_device_bytes(state) + batch_bytes)) <= 64  # + the PRNG key
  assert reports[0].aliased >= per_device_bytes(state) - 64  # the donated state is updated in place
  # sft model FLOPs per device, by hand: 2 per weight per token forward, x3 with the backward,
  # plus causal attention; the tiny model's weights that multiply tokens are 2 layers x
  # (64 x 16 x (4 + 4 + 2 + 2) + 3 x 64 x 128) and the tied 64 x 49152 head.
  weights = 2 * (64 * 16 * 12 + 3 * 64 * 128) + 64 * 49152
  attention = 2 * 2 * 2 * 4 * 16 * 128 / 2  # per token: 2 layers, 4 heads of 16, QK and AV, half the pairs
  assert reports[1].flops == pytest.approx(3 * 8 * 128 * (2 * weights + attention) / 8, rel=1e-9)
  assert aot.fits(reports, hbm_bytes=aot.GIB)
  assert not aot.fits(reports, hbm_bytes=1 << 20)
  assert "**does not fit**" in aot.table(reports, hbm_bytes=1 << 20, peak_flops=1e12, mfu=0.5)


@pytest.mark.parametrize("method", ["sft", "cc"])
def test_model_flops_agree_with_xla_on_an_unrolled_decoder(method):
  """XLA counts every operation of an unrolled decoder (a scanned one's loop body only once):
  within 5% of the model FLOPs aot counts (XLA adds norms, softmax, masked attention pairs)."""
  config = tiny.get_config()
  config.cc.method = method
  cfg = dataclasses.replace(runtime.model_config(config), scan_layers=False)
  model, mesh, rules = Llama(cfg), sh.make_mesh({"fsdp": 1}, devices=jax.devices()[:1]), sh.rules_from_config()
  tx, schedule = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), 1000)
  state, shardings = train.abstract_train_state(model=model, tx=tx, cfg=step_config(config), mesh=mesh, rules=rules)
  step = train.jit_train_step(model, tx, schedule, step_config(config), mesh, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = step.lower(state, aot.train_batch(8, 128, 64), jax.random.key(0)).compile()
  counted = aot.train_flops(cfg, method, 8, 128, 64, english_grad=not config.cc.stop_english_grad)
  assert compiled.cost_analysis()["flops"] == pytest.approx(counted, rel=0.05)


@pytest.fixture(scope="module")
def libtpu_path():
  """libtpu from PyPI, installed once into its own directory of the cc_jax cache."""
  target = smollm2.cache_root() / f"libtpu-{LIBTPU}"
  if not (target / "libtpu").exists():
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(dir=target.parent)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", staging,
                    f"libtpu=={LIBTPU}"], check=True, capture_output=True)
    try:
      os.rename(staging, target)
    except OSError:  # another process installed it meanwhile
      shutil.rmtree(staging)
  return target


def run_with_libtpu(libtpu_path, args):
  # No TPU here: nothing to guard, so another process's libtpu (a running aot.py) need not block this one.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(libtpu_path), "XLA_FLAGS": "",
         "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


SHARDED_STATE = """
import json, math, jax
from cc_jax import aot, optim, runtime, sharding as sh, train
from cc_jax.loop import step_config
from cc_jax.model import Llama
from configs import tiny
config = tiny.get_config()
out = {}
for slices in (1, 2):
  mesh = sh.make_mesh({"fsdp": -1}, devices=aot.tpu_devices("v5e:2x2", slices))
  tx, _ = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), 1000)
  state, _ = train.abstract_train_state(model=Llama(runtime.model_config(config)), tx=tx, cfg=step_config(config),
                                        mesh=mesh, rules=sh.rules_from_config())
  out[slices] = {jax.tree_util.keystr(path): [x.size * x.dtype.itemsize,
                 math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize, x.sharding.num_devices]
                 for path, x in jax.tree_util.tree_leaves_with_path(state.params)}
print(json.dumps(out))
"""


def test_tpu_slices_compile_and_shard_every_weight(libtpu_path):
  for target, header in ((["--topology=v6e:2x4"], "v6e:2x4 x 1 slice(s): 8 TPU v6e chips"),
                         (["--topology=v5e:2x2", "--num_slices=2"], "v5e:2x2 x 2 slice(s): 8 TPU v5e chips")):
    done = run_with_libtpu(libtpu_path, ["launch/aot.py", "--config=configs/tiny.py", *target])
    assert done.returncode == 0, done.stderr[-3000:]
    assert header in done.stdout and "every program fits" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| train", "| matrix", "| eval"))]
    assert len(rows) == 4 and all("fits" in row for row in rows), done.stdout
  assert "fsdp across them (DCN)" in done.stderr  # the 2 slices joined over the data-center network

  done = run_with_libtpu(libtpu_path, ["-c", SHARDED_STATE])
  assert done.returncode == 0, done.stderr[-3000:]
  for slices, params in json.loads(done.stdout.splitlines()[-1]).items():
    for name, (total, per_chip, devices) in params.items():
      assert devices == 4 * int(slices)
      sharded = "norm" not in name  # the 1-D RMSNorm scales stay replicated
      assert per_chip * (devices if sharded else 1) == total, (slices, name, total, per_chip)
