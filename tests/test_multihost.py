"""Two local processes train together through JAX's own distributed runtime (the multi-host path:
per-process data shares, global batches, sharded state, Orbax checkpoints from both)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(tmp_path):
  port = free_port()
  command = [sys.executable, "-m", "cc_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path}",
             "--config.optim.max_steps=3", "--config.log.progress_bar=false", "--config.ckpt.every_steps=2"]
  procs = []
  for process_id in range(2):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(process_id), "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  for i, out in enumerate(outputs):  # each joined the job as itself, and each finished it
    assert f"process {i} of 2, 2 local / 4 global devices" in out and "completed at step 3" in out, out[-4000:]
  metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3]  # written once, by process 0
  assert all(m["tokens"] > 0 for m in metrics)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
