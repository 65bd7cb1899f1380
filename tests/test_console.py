"""The console a user sees: --help exits 0 everywhere, a short header, no chatter, log lines that
never land inside a progress bar, and bars only on a terminal."""

import fcntl
import io
import logging as std_logging
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from cc_jax import console
from configs import demo as demo_config, tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["-m", "cc_jax.main"], ["launch/convert.py"], ["launch/bench_inference.py"],
                                     ["launch/bench_train_step.py"]], ids=lambda c: c[-1])
def test_help_exits_0(command):
  done = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "--" in done.stdout + done.stderr  # the flags were listed


def test_header_is_short_and_says_where_things_go():
  config = tiny.get_config()
  header = console.run_header(config, "/runs/x")
  assert len(header.splitlines()) <= 8
  assert "/runs/x/run.json" in header and "--print_config" in header
  assert "vocab 49152" in header and config.data.source in header
  assert "cc.method" not in header and "arch:" not in header  # no YAML dump
  demo = console.run_header(demo_config.get_config(), "/tmp/demo")
  assert "sft and cc" in demo and "/tmp/demo/cc/run.json" in demo
  assert "LoRA" not in header
  config.lora.rank = 8
  assert "  method:  cc, LoRA rank 8 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (base frozen)" \
      in console.run_header(config, "/runs/x").splitlines()


def _record(name, level, msg, pathname="x.py"):
  return std_logging.LogRecord(name, level, pathname, 1, msg, (), None)


def test_filter_drops_chatter_and_keeps_warnings():
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/manager.py"
  assert not console._keep(_record("absl", std_logging.INFO, "Saving item", orbax))
  assert console._keep(_record("absl", std_logging.WARNING, "Slow save", orbax))
  probe = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
  assert not console._keep(_record("jax._src.xla_bridge", std_logging.INFO, probe))
  assert console._keep(_record("jax._src.xla_bridge", std_logging.WARNING, probe))
  assert console._keep(_record("absl", std_logging.INFO, "step 5: loss=1.0"))


def test_bars_only_on_a_terminal(monkeypatch):
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  with console.bar(total=3) as bar:
    bar.update(3)
  assert bar.disable and sys.stderr.getvalue() == ""


_BAR_AND_LOGS = """
from absl import logging
from cc_jax import console

def main(argv):
  with console.bar(total=4, desc="train", mininterval=0) as bar:
    for step in range(1, 5):
      bar.update(1)
      bar.set_postfix(loss=f"{1.0 / step:.4f}")
      logging.info("step %d logged", step)

console.run(main)
"""


def test_log_lines_never_land_inside_a_bar():
  """On a terminal (a pty), each absl line starts a line of its own: the bar is cleared before it."""
  main, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
  proc = subprocess.Popen([sys.executable, "-c", _BAR_AND_LOGS], cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=follower, stderr=follower)
  os.close(follower)
  chunks = []
  while True:
    try:
      chunk = os.read(main, 4096)
    except OSError:  # the child closed the terminal
      break
    if not chunk:
      break
    chunks.append(chunk)
  assert proc.wait(timeout=60) == 0
  os.close(main)
  text = b"".join(chunks).decode(errors="replace")
  assert "train:" in text and "step 4 logged" in text, text  # there was a bar, and the logs
  for step in range(1, 5):
    (segment,) = [s for s in re.split(r"[\r\n]", text) if f"step {step} logged" in s]
    assert re.match(r"\s*I\d{4} ", segment), repr(segment)  # nothing of the bar before the log line
