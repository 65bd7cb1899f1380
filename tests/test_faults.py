"""Faults a user meets that must never cost a run or its results without a word (issue 16): a
save that fails (a real write failure, from the kernel's file-size limit), a damaged latest
checkpoint, two writers on one workdir, a stale lock, and a config that no longer matches the
run it resumes."""

import contextlib
import json
import logging
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from cc_jax import checkpoint, loop, validate, workdir_lock
from tests.test_loop import REPO, StopAt, read_metrics, tiny_config

# Larger than every log or metrics file a tiny run writes, smaller than its checkpoint's arrays.
FILE_LIMIT = 1 << 20


@contextlib.contextmanager
def disk_full_from(step, monkeypatch):
  """From checkpoint `step` on, every write past FILE_LIMIT bytes into a file fails with EFBIG
  ("File too large"), as a full disk fails a write; the previous limit is back on exit."""
  real_save, limits = checkpoint.Checkpointer.save, resource.getrlimit(resource.RLIMIT_FSIZE)
  previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us

  def save(self, at, *args, **kwargs):
    if at >= step:
      resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, limits[1]))
    return real_save(self, at, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    signal.signal(signal.SIGXFSZ, previous_handler)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)


def complete_steps(workdir):
  with checkpoint.Checkpointer(checkpoint.CheckpointConfig(str(pathlib.Path(workdir) / "checkpoints"))) as ckpt:
    return ckpt.all_steps()


def test_a_failed_background_save_stops_the_run_and_a_resume_continues_without_duplicates(
    tmp_path, monkeypatch, caplog):
  """Was: "saved" said while the write failed, and metrics.jsonl already held the lost steps."""
  config = tiny_config(**{"optim.max_steps": 6, "ckpt.every_steps": 2, "ckpt.async_save": True})
  with caplog.at_level(logging.INFO), disk_full_from(4, monkeypatch):
    with pytest.raises(checkpoint.CheckpointSaveError) as failure:
      loop.train_loop(config, tmp_path)
  message = str(failure.value)
  assert "checkpoint step 4 was NOT saved" in message and str(tmp_path / "checkpoints") in message
  assert "File too large" in message  # the OS error
  assert "latest complete checkpoint is step 2" in message
  assert "checkpoint step 2 saved" in caplog.text and "checkpoint step 4 saved" not in caplog.text
  assert complete_steps(tmp_path) == [2]  # the failed save cost nothing older
  logged_before = [m["step"] for m in read_metrics(tmp_path)]
  assert max(logged_before) >= 4  # the loop ran on while the save was in flight

  caplog.clear()
  with caplog.at_level(logging.INFO):
    summary = loop.train_loop(config, tmp_path)
  assert summary["status"] == "completed" and summary["step"] == 6 and summary["steps_run"] == 4
  assert "resumed from" in caplog.text and "records after step 2 removed" in caplog.text
  assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert complete_steps(tmp_path) == [2, 4, 6]


def test_sigterm_with_a_failing_save_does_not_claim_it_saved(tmp_path, monkeypatch, caplog):
  """Was: "SIGTERM: saved step 1; rerun the same command to resume" while the write failed."""
  config = tiny_config(**{"optim.max_steps": 6, "ckpt.every_steps": 100, "ckpt.async_save": True})
  monkeypatch.setattr(checkpoint, "install_sigterm_handler", lambda: StopAt(3))
  with caplog.at_level(logging.INFO), disk_full_from(3, monkeypatch):
    with pytest.raises(checkpoint.CheckpointSaveError, match="step 3 was NOT saved"):
      loop.train_loop(config, tmp_path)
  assert "SIGTERM: saved" not in caplog.text and "checkpoint step 3 saved" not in caplog.text
  assert complete_steps(tmp_path) == []


def largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, caplog):
  config = tiny_config(**{"optim.max_steps": 6, "ckpt.every_steps": 2})
  loop.train_loop(config, tmp_path)
  damaged = largest_file(tmp_path / "checkpoints" / "6")
  half = damaged.stat().st_size // 2
  with open(damaged, "r+b") as f:
    f.truncate(half)

  config.optim.max_steps = 8
  with caplog.at_level(logging.INFO):
    summary = loop.train_loop(config, tmp_path)
  assert "checkpoint step 6 in" in caplog.text and "cannot be read" in caplog.text
  assert "restored step 4 instead of the damaged latest (step 6)" in caplog.text
  assert summary["status"] == "completed" and summary["steps_run"] == 4  # steps 5..8
  assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 9))
  kept = tmp_path / f"checkpoints{checkpoint.DAMAGED_SUFFIX}" / "6"
  assert (kept / damaged.relative_to(tmp_path / "checkpoints" / "6")).stat().st_size == half  # set aside, as it was
  assert complete_steps(tmp_path) == [4, 6, 8]  # step 6 saved again, from the replayed trajectory


def test_an_unreadable_checkpoint_for_inference_is_named(tmp_path):
  config = tiny_config(**{"optim.max_steps": 2, "ckpt.every_steps": 2})
  loop.train_loop(config, tmp_path)
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "state" / "ocdbt.process_0")  # every array's data, params too
  from cc_jax import runtime
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"checkpoint step 2 in .*checkpoints cannot be read"):
    runtime.load_trained(tmp_path)


HOLD = """
import sys, time
from cc_jax import workdir_lock
with workdir_lock.hold(sys.argv[1], "train"):
  print("held", flush=True)
  time.sleep(120)
"""


def lock_holder(directory):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_writer_is_refused_and_names_the_first(tmp_path):
  first = lock_holder(tmp_path)
  try:
    config = tiny_config(**{"optim.max_steps": 2})
    with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"in use by train process {first.pid} on host"):
      loop.train_loop(config, tmp_path)
    from cc_jax import transform
    with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"process {first.pid}"):
      transform.fit_for_run(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
  finally:
    first.kill()
    first.wait()


def test_a_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
  first = lock_holder(tmp_path)
  first.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays, naming the dead pid
  first.wait()
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == first.pid
  with caplog.at_level(logging.WARNING), workdir_lock.hold(tmp_path, "eval"):
    holder = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["task"] == "eval"
  assert f"taking over a stale lock of train process {first.pid}" in caplog.text
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released on exit


def test_a_lock_from_another_host_is_refused_with_what_to_do(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": "node-17", "pid": 4242, "task": "train", "started": "2026-12-01T10:00:00+00:00"}))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="train process 4242 on host node-17.*delete"):
    with workdir_lock.hold(tmp_path, "train"):
      pass
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # not ours to remove


def test_resuming_with_a_changed_architecture_or_method_names_each_mismatch(tmp_path):
  """Was: Orbax's shape message, with nothing comparing the config and run.json."""
  loop.train_loop(tiny_config(**{"optim.max_steps": 4, "ckpt.every_steps": 2}), tmp_path / "run")
  (tmp_path / "run" / "checkpoints" / "4").rename(tmp_path / "elsewhere")  # an unfinished run, at step 2
  changed = tiny_config(**{"optim.max_steps": 4, "model.arch.num_layers": 3, "cc.method": "sft",
                           "data.chat_template": "qwen"})
  with pytest.raises(validate.RunMismatchError) as mismatch:
    loop.train_loop(changed, tmp_path / "run")
  message = str(mismatch.value)
  assert "model num_hidden_layers: the run's is 2, this command's 3" in message
  assert "cc.method: the run has 'cc', this command 'sft'" in message
  assert "data.chat_template: the run has '', this command 'qwen'" in message
  assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]  # nothing touched

  # matrix and eval read the run's settings; an override that disagrees is named, not ignored.
  result = subprocess.run(
      [sys.executable, "-m", "cc_jax.main", "--config=configs/base.py", f"--workdir={tmp_path / 'run'}",
       "--config.task=matrix", "--config.cc.method=sft"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "RunMismatchError: matrix: this command does not match the run" in result.stderr
  assert "cc.method: the run has 'cc', this command 'sft'" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "matrix").exists()
