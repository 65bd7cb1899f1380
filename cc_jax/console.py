"""The console of every entry point: `--help` that exits 0, quiet logs (no Orbax chatter, no JAX
backend probing), log lines that never break a progress bar, bars only on a terminal, and a
short run header instead of the whole config."""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Callable

from absl import app
from absl import logging
import tqdm

HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def _config_file(argv: list[str]) -> str | None:
  for arg in argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
  return None


def check_overrides(argv: list[str]) -> None:
  """Exits 2 naming each `--config.KEY` the config file lacks, with the nearest known keys,
  before absl's flag parsing reports only `AttributeError: 'KEY'`."""
  import importlib.util
  import pathlib

  from cc_jax import validate

  path = _config_file(argv)
  if not path or not pathlib.Path(path).is_file():
    return  # config_flags reports a missing file itself
  spec = importlib.util.spec_from_file_location("_cc_jax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  messages = validate.unknown_overrides(argv, module.get_config())
  if messages:
    sys.stderr.write(f"{path}: " + f"\n{path}: ".join(messages) + "\n")
    sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with `setup()` before `main`, misspelt `--config.` keys named with
  their nearest known keys, and `--help` exiting 0 (absl exits 1 after printing the usage)."""
  wants_help = any(arg.split("=")[0] in HELP_FLAGS for arg in sys.argv[1:])
  check_overrides(sys.argv[1:])

  def main_with_setup(argv):
    setup()
    return main(argv)
  try:
    app.run(main_with_setup)
  except SystemExit as exit_:
    if wants_help and exit_.code == 1:
      sys.exit(0)
    raise


def _keep(record: std_logging.LogRecord) -> bool:
  """Drops INFO chatter that says nothing to a user: Orbax logs every file operation, and JAX
  logs each accelerator plugin it probes and does not find ("Unable to initialize backend
  'tpu'" on a CPU or GPU machine). Warnings and errors always pass."""
  if record.levelno >= std_logging.WARNING:
    return True
  if "/orbax/" in record.pathname:
    return False
  return not (record.name.startswith("jax._src.xla_bridge") and
              str(record.msg).startswith("Unable to initialize backend"))


class _BarSafeStderr:
  """Stands in for stderr in absl's handler: each log line goes through `tqdm.write`, which
  clears the live bars, writes the line and redraws them, so a line never lands mid-bar."""

  def write(self, text: str) -> None:
    tqdm.tqdm.write(text, file=sys.stderr, end="")

  def flush(self) -> None:
    sys.stderr.flush()

  def close(self) -> None:  # absl closes its stream at exit; stderr stays open
    pass


def setup() -> None:
  """Installs the log filter and the bar-safe stream on absl's handler (idempotent)."""
  handler = logging.get_absl_handler()
  if _keep not in handler.filters:
    handler.addFilter(_keep)
  python_handler = handler.python_handler
  # Only when absl logs to the console: --log_dir and friends keep their files.
  if python_handler.stream in (sys.stderr, sys.__stderr__):
    python_handler.stream = _BarSafeStderr()


def is_terminal() -> bool:
  return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


def bar(enabled: bool = True, **kwargs) -> tqdm.tqdm:
  """A tqdm bar on stderr, drawn only when `enabled` and stderr is a terminal: redirected output
  (a log file, a pipe) gets no carriage returns."""
  return tqdm.tqdm(disable=not (enabled and is_terminal()), dynamic_ncols=True, file=sys.stderr, **kwargs)


def say(message: str) -> None:
  """Prints a progress line to stdout now (flushed), clear of any live bar."""
  tqdm.tqdm.write(message, file=sys.stdout)
  sys.stdout.flush()


def _model_line(config) -> str:
  if config.model.path:
    return config.model.path
  a = config.model.arch
  return (f"random init ({a.model_type}: {a.num_layers} layers, width {a.hidden_size}, "
          f"vocab {a.vocab_size})")


def run_header(config, workdir: str) -> str:
  """A few lines saying what this invocation will do and where its outputs and full config go."""
  task = config.task
  method = "sft and cc" if task == "demo" else config.cc.method
  lora = config.get("lora")
  if lora is not None and lora.rank:
    method += f", LoRA rank {lora.rank} on {', '.join(lora.targets)} (base frozen)"
  mesh = config.mesh
  steps = f"{config.optim.max_steps} steps" if config.optim.max_steps else f"{config.data.num_epochs} epochs"
  lines = [f"cc_jax {task}",
           f"  model:   {_model_line(config)} (compute {config.model.dtype}, weights {config.model.param_dtype})",
           f"  method:  {method}",
           f"  mesh:    data={mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor} (-1: the remaining devices)"]
  if task in ("train", "pipeline", "demo"):
    lines.append(f"  data:    {config.data.source or '(none)'}; batch {config.data.batch_size}, {steps}")
  if task in ("eval", "pipeline"):
    lines.append(f"  eval:    {config.eval.source or '(none)'}")
  lines.append(f"  workdir: {workdir or '(none)'}")
  if task in ("train", "pipeline"):
    where = f"{workdir}/run.json"
  elif task == "demo":
    where = f"{workdir}/sft/run.json and {workdir}/cc/run.json"
  else:
    where = "not written by this task"
  lines.append(f"  config:  {where}; --print_config prints it")
  return "\n".join(lines)
