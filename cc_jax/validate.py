"""Config checks made before any work: a value that would make a run empty, impossible or
meaningless stops it at once, with the key, its value and the fix. Also the nearest known keys
for a misspelt `--config.` override (ml_collections says only `AttributeError: 'key'`), and the
config against the run already in a workdir (architecture, method, tokenizer, template)."""

from __future__ import annotations

import difflib
import json
import math
import os
import pathlib
from typing import Iterable

from ml_collections import ConfigDict

from cc_jax import errors

TASKS_THAT_TRAIN = ("train", "pipeline", "demo")


def _problems(config: ConfigDict) -> Iterable[str]:
  d, o, cc = config.data, config.optim, config.cc
  if config.task in TASKS_THAT_TRAIN:
    if o.max_steps < 0:
      yield f"optim.max_steps={o.max_steps}: must be > 0, or 0 to train data.num_epochs epochs"
    if o.max_steps == 0 and d.num_epochs <= 0:
      yield (f"data.num_epochs={d.num_epochs} with optim.max_steps=0: the run would train no step; "
             "set data.num_epochs >= 1 or optim.max_steps > 0")
    if not (math.isfinite(o.learning_rate) and o.learning_rate > 0):
      yield f"optim.learning_rate={o.learning_rate}: must be a finite number > 0 (paper: 1e-5)"
    if o.grad_accum_steps < 1:
      yield f"optim.grad_accum_steps={o.grad_accum_steps}: must be >= 1 (1 = no accumulation)"
    elif d.batch_size >= 1 and d.batch_size % o.grad_accum_steps:
      yield (f"data.batch_size={d.batch_size} is not divisible by optim.grad_accum_steps={o.grad_accum_steps}: "
             "each microbatch must have the same number of examples")
    if cc.selection == "gumbel" and not cc.temperature > 0:
      yield f"cc.temperature={cc.temperature}: the Gumbel-softmax temperature must be > 0 (paper: 1.0)"
  if d.batch_size < 1:
    yield f"data.batch_size={d.batch_size}: must be >= 1 (a global batch, in examples)"
  if d.cutoff_len < 2:
    yield f"data.cutoff_len={d.cutoff_len}: must be >= 2 tokens (paper: 1024)"
  if d.min_bucket < 1:
    yield f"data.min_bucket={d.min_bucket}: must be >= 1"
  if tuple(d.buckets) and (min(d.buckets) < 1 or max(d.buckets) < d.cutoff_len):
    yield (f"data.buckets={tuple(d.buckets)}: each must be >= 1 and the largest >= data.cutoff_len="
           f"{d.cutoff_len}, or every long example would have no bucket; () derives them from the cutoff")
  if cc.inject_layer < 0:
    yield f"cc.inject_layer={cc.inject_layer}: must be a layer index >= 0 (paper: 0)"
  sizes = {axis: config.mesh[axis] for axis in ("data", "fsdp", "tensor")}
  if any(size == 0 or size < -1 for size in sizes.values()) or list(sizes.values()).count(-1) > 1:
    yield (f"mesh data={sizes['data']} fsdp={sizes['fsdp']} tensor={sizes['tensor']}: each axis must be >= 1, "
           "and at most one may be -1 (the remaining devices)")


def check(config: ConfigDict) -> None:
  """Raises ValueError listing every problem of `config` (all of them, not just the first)."""
  problems = list(_problems(config))
  if problems:
    raise ValueError("the config cannot run:\n  " + "\n  ".join(problems))


def check_mesh(config: ConfigDict, device_count: int) -> None:
  """config.mesh against the devices of the job, known once JAX is up (before any output)."""
  if config.task not in TASKS_THAT_TRAIN:
    return  # the matrix and evaluation shard over every device (fsdp) whatever config.mesh says
  sizes = {axis: config.mesh[axis] for axis in ("data", "fsdp", "tensor")}
  known = math.prod(size for size in sizes.values() if size != -1)
  fits = device_count % known == 0 if -1 in sizes.values() else known == device_count
  if not fits:
    shown = " ".join(f"{axis}={size}" for axis, size in sizes.items())
    raise ValueError(f"mesh {shown} needs {'a multiple of ' if -1 in sizes.values() else ''}{known} devices, and "
                     f"{device_count} are available: make the sizes' product {device_count}, or set one axis to -1 "
                     "(the remaining devices)")


def check_inject_layer(inject_layer: int, num_layers: int) -> None:
  """cc.inject_layer against the model's depth, known once the model config is."""
  if not 0 <= inject_layer < num_layers:
    raise ValueError(f"cc.inject_layer={inject_layer}: the model has {num_layers} layers (0..{num_layers - 1}); "
                     "the paper injects at layer 0")


def leaf_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  """Every key path of `config`; an empty group (e.g. mesh.rules) is a key its overrides extend."""
  keys = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    keys += (leaf_keys(value, name + ".") or [name]) if isinstance(value, ConfigDict) else [name]
  return keys


def unknown_overrides(argv: list[str], config: ConfigDict) -> list[str]:
  """A message for each `--config.KEY=value` in argv whose KEY the config lacks, with the
  nearest known keys."""
  known = leaf_keys(config)
  messages = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    if key in known or any(key.startswith(k + ".") for k in known):  # an empty group's new entry
      continue
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    messages.append(f"--config.{key}: no such key" + (f"; did you mean {', '.join(near)}?" if near else
                                                     "; `--print_config` lists every key"))
  return messages


# What a run was trained with that a resume, its matrix and its evaluation must agree on.
RUN_KEYS = ("model.path", "model.tokenizer", "cc.method", "cc.inject_layer", "cc.anchor", "data.chat_template",
            "data.fallback_template", "optim.trainable", "lora.rank", "lora.alpha", "lora.targets")


class RunMismatchError(errors.RunStopped):
  """The config disagrees with the run in the workdir."""


def _lookup(tree, dotted: str):
  for part in dotted.split("."):
    tree = tree[part]
  return tree


def _same(key: str, ours, theirs) -> bool:
  if ours == theirs or (isinstance(ours, (list, tuple)) and list(ours) == theirs):  # run.json holds lists
    return True
  paths = key in ("model.path", "model.tokenizer") and ours and theirs and "://" not in f"{ours}{theirs}"
  return bool(paths) and os.path.exists(ours) and os.path.exists(theirs) and os.path.samefile(ours, theirs)


def run_mismatches(config: ConfigDict, run: dict, keys: Iterable[str] = RUN_KEYS,
                   architecture: dict | None = None) -> list[str]:
  """Each way `config` disagrees with a workdir's run.json (`run`), as "key: run value vs ours".

  Args:
    keys: config keys to compare (a key either side lacks is skipped: an older run.json).
    architecture: this config's model as `LlamaConfig.to_hf()`, compared with the run's (the
      weights' real shapes, which `model.arch` may leave unchecked).
  """
  run_config, problems = run.get("config", {}), []
  for key in keys:
    try:
      ours, theirs = _lookup(config, key), _lookup(run_config, key)
    except KeyError:
      continue
    if not _same(key, ours, theirs):
      problems.append(f"{key}: the run has {theirs!r}, this command {ours!r}")
  for key, ours in (architecture or {}).items():
    theirs = run.get("model", {}).get(key)
    if key in run.get("model", {}) and ours != theirs:
      problems.append(f"model {key}: the run's is {theirs!r}, this command's {ours!r}")
  return problems


def check_run(config: ConfigDict, workdir, task: str, keys: Iterable[str] = RUN_KEYS,
              architecture: dict | None = None) -> None:
  """Raises RunMismatchError naming every mismatch between `config` and `<workdir>/run.json`."""
  run_file = pathlib.Path(workdir) / "run.json"
  if not run_file.exists():
    return
  problems = run_mismatches(config, json.loads(run_file.read_text()), keys, architecture)
  if problems:
    raise RunMismatchError(
        f"{task}: this command does not match the run in {workdir} ({run_file}):\n  " + "\n  ".join(problems) +
        "\nUse the run's values (drop the overrides, or the preset it was trained with), or a new workdir.")
