"""Frozen weights stay out of a run's checkpoints.

A run that trains part of the params (optim.trainable = lora or decision_maker) never changes
the rest, the base model's. Its checkpoints hold the step, the trainable params and their
optimizer state; the frozen params are read again, on resume and for inference, from the base
that run.json names:

- a converted model directory (model.path), with a fingerprint of its files, so that a base
  replaced or converted again since is refused by name rather than joined to adapters trained
  on other weights;
- for a randomly initialised base (tiny configs, tests), a copy the run saves once in
  `<workdir>/base`.

Llama-3.1-8B with LoRA r16 on all seven projections checkpoints 42M adapter params and their
two Adam moments (0.5 GB in float32) instead of those plus 16 GB of bfloat16 base.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Mapping

import jax
import orbax.checkpoint as ocp

from cc_jax import convert, optim

BASE_DIR = "base"  # <workdir>/base/params: a random base, saved once by the run
PARAMS = "params"  # the Orbax item of a model directory and of <workdir>/base


class BaseChangedError(ValueError):
  """The base model directory's files are not the ones the run was trained on."""


def checkpointed(state, trainable: str):
  """The part of a train state that its checkpoints hold: all but the frozen params."""
  return state.replace(params=optim.split_trainable(state.params, trainable)[0])


def fingerprint(directory) -> str:
  """A digest of a model directory's metadata and of its weight files' names and sizes. Orbax
  names data files afresh on each save, so converting again changes it; copying does not."""
  directory = pathlib.Path(directory)
  digest = hashlib.sha256((directory / convert.META_FILE).read_bytes()
                          if (directory / convert.META_FILE).exists() else b"")
  for path in sorted((directory / PARAMS).rglob("*")):
    if path.is_file():
      digest.update(f"{path.relative_to(directory)}\0{path.stat().st_size}\0".encode())
  return digest.hexdigest()


def reference(model_dir: pathlib.Path | None, workdir: pathlib.Path, frozen: Mapping) -> dict | None:
  """run.json's `base`: where a fresh run's frozen params (`frozen`, on device) are read back
  from. A random base is saved in the workdir first. None when nothing is frozen. Every
  process calls this (the save is collective)."""
  if not jax.tree.leaves(frozen):
    return None
  if model_dir is None:
    with ocp.StandardCheckpointer() as saver:
      saver.save(workdir / BASE_DIR / PARAMS, dict(frozen), force=True)  # a fresh run's own earlier attempt
    return {"path": BASE_DIR}
  model_dir = pathlib.Path(model_dir).absolute()
  return {"path": str(model_dir), "fingerprint": fingerprint(model_dir)}


def load(base: dict | None, workdir: pathlib.Path, target: Mapping) -> dict:
  """A run's frozen params, restored into `target` (jax.ShapeDtypeStructs with shardings, in the
  dtype wanted) from the base that run.json's `base` names ({} when nothing is frozen)."""
  if not jax.tree.leaves(target):
    return {}
  if base is None:
    raise ValueError(f"{workdir}/run.json names no base model, so the frozen weights its checkpoints leave "
                     "out cannot be found (a LoRA run saved before checkpoints left them out); train it again")
  directory = pathlib.Path(workdir) / base["path"]  # an absolute path stays as it is
  if not (directory / PARAMS).exists():
    raise FileNotFoundError(f"{directory}/{PARAMS} does not exist: {workdir}/run.json names it as the base model "
                            "whose frozen weights the run's checkpoints leave out")
  if "fingerprint" in base and fingerprint(directory) != base["fingerprint"]:
    raise BaseChangedError(
        f"{directory} is not the base model {workdir} was trained on: its files changed since (converted "
        "again or replaced). The run's checkpoints hold only the trained params; put the original base back "
        "at that path, or export the run from a copy of it")
  return convert.load_params(directory, dict(target))

