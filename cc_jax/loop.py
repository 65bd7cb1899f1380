"""The training loop: data -> sharded state (fresh, pretrained or resumed) -> steps -> logs and
checkpoints, with a clean stop on SIGTERM and a hard stop on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

from absl import logging
import jax
import numpy as np
from ml_collections import ConfigDict

from cc_jax import (batching, checkpoint, console, data, frozen, lora, optim, runtime, sharding as sh, train,
                    validate, workdir_lock)
from cc_jax.connection import ConnectionConfig
from cc_jax.model import Llama

RUN_FILE = "run.json"  # what a workdir was trained from (config, base model)
METRICS_FILE = "metrics.jsonl"
PARAMS_ONLY = "params_only"  # marks a final checkpoint saved without optimizer state


def last_logged_metrics(workdir) -> dict[str, Any]:
  """The last record of a run's metrics.jsonl ({} if it has none): what a finished run reports
  when it is run again."""
  path = pathlib.Path(workdir) / METRICS_FILE
  lines = path.read_text().splitlines() if path.exists() else []
  return json.loads(lines[-1]) if lines else {}


def step_config(config: ConfigDict) -> train.StepConfig:
  return train.StepConfig(
      method=config.cc.method,
      connection=ConnectionConfig(selection=config.cc.selection, temperature=config.cc.temperature,
                                  stop_english_grad=config.cc.stop_english_grad),
      num_microbatches=config.optim.grad_accum_steps, loss_chunk_len=config.model.loss_chunk_len,
      trainable=optim.trainable_from_config(config))


def load_examples(config: ConfigDict, tokenizer) -> list[data.Example]:
  if not config.data.source:
    raise ValueError("config.data.source is empty: name a JSON/JSONL/Parquet file, a dataset_info.json, "
                     "a datasets name or a TFDS dataset")
  records = data.load_records(config.data.source, data.SourceOptions.from_config(config.data, config.cc.method))
  return data.tokenize_records(records, tokenizer, data.TokenizeOptions.from_config(config.data, config.cc.anchor))


def _forget_steps_after(path: pathlib.Path, step: int) -> None:
  """Drops the records after `step` from a metrics.jsonl: an earlier attempt logged them after
  the checkpoint this run resumes from, and this run logs those steps again."""
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
  if len(kept) == len(lines):
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  os.replace(tmp, path)
  logging.warning("%s: %d records after step %d removed; they were logged after the checkpoint this run "
                  "resumes from, and are logged again as the steps rerun", path, len(lines) - len(kept), step)


class MetricsLog:
  """Console (tqdm + absl), TensorBoard (process 0) and a JSON-lines file of metrics."""

  def __init__(self, workdir: pathlib.Path, config: ConfigDict, total_steps: int, start_step: int):
    self.every = max(config.log.every_steps, 1)
    self.primary = jax.process_index() == 0
    self.writer = None
    self.jsonl = None
    if self.primary:
      from tensorboardX import SummaryWriter  # pure-Python event writer: no TensorFlow needed
      _forget_steps_after(workdir / METRICS_FILE, start_step)
      # purge_step: TensorBoard hides the earlier attempt's events from start_step + 1 on.
      self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)
      self.jsonl = open(workdir / METRICS_FILE, "a")
    self.bar = console.bar(self.primary and config.log.progress_bar, total=total_steps, initial=start_step,
                           desc=config.cc.method, unit="step")
    self.last_time = time.perf_counter()

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    self.bar.update(1)
    now = time.perf_counter()
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    scalars["tokens_per_second"] = scalars["tokens"] / max(now - self.last_time, 1e-9)
    self.last_time = now
    if not self.primary:
      return
    self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['learning_rate']:.2e}")
    if step % self.every and step != self.bar.total:
      return
    record = {"step": step, **scalars}
    if "selected_layers" in metrics:
      counts = np.asarray(metrics["selected_layers"]).astype(int)
      record["selected_layers"] = counts.tolist()
      if counts.sum():
        self.writer.add_histogram("cc/selected_layer", np.repeat(np.arange(len(counts)), counts), step)
    for name, value in scalars.items():
      self.writer.add_scalar(f"train/{name}", value, step)
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

  def close(self) -> None:
    self.bar.close()
    if self.primary:
      self.writer.close()
      self.jsonl.close()


def train_loop(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, holding its lock. Returns a summary: final step, status,
  last metrics."""
  runtime.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir).absolute()
  with workdir_lock.hold(workdir, "train"):
    return _train(config, workdir)


def _train(config: ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
  mesh = runtime.make_mesh(config)
  rules = sh.rules_from_config(config.mesh.rules.to_dict())
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.batch_size % (shards * config.optim.grad_accum_steps):
    raise ValueError(f"config.data.batch_size={config.data.batch_size} must be divisible by the batch shards "
                     f"(mesh data x fsdp = {shards}) times optim.grad_accum_steps={config.optim.grad_accum_steps}")
  model_cfg = runtime.model_config(config)
  tokenizer = runtime.load_tokenizer(config)

  examples = load_examples(config, tokenizer)
  batch_options = batching.BatchOptions.from_config(config.data, config.seed)
  if config.optim.max_steps:  # a step budget overrides the epoch count
    batch_options = dataclasses.replace(batch_options, num_epochs=None)
  iterator = batching.BatchIterator(examples, batch_options, pad_id=data.pad_token_id(tokenizer))
  total_steps = config.optim.max_steps or iterator.steps_per_epoch * config.data.num_epochs
  logging.info("%d examples, %d steps/epoch, %d steps", len(examples), iterator.steps_per_epoch, total_steps)

  cfg = step_config(config)
  validate.check_inject_layer(config.cc.inject_layer, model_cfg.num_layers)
  model = Llama(model_cfg, inject_layer=config.cc.inject_layer)
  tx, schedule = optim.make_optimizer(optim.OptimConfig.from_config(config.optim), total_steps)
  ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(
      str(workdir / "checkpoints"), save_every_steps=config.ckpt.every_steps, keep_last=config.ckpt.keep,
      async_save=config.ckpt.async_save))
  rng = jax.random.key(config.seed)

  latest = ckpt.latest_step()
  if latest is not None:
    validate.check_run(config, workdir, "resume", architecture=model_cfg.to_hf())
  if latest is not None and latest >= total_steps:  # finished: restore nothing, compile nothing
    ckpt.close()
    return {"step": latest, "status": "completed", "metrics": last_logged_metrics(workdir), "workdir": str(workdir),
            "steps_run": 0}
  if latest is not None and _params_only(ckpt, latest):
    ckpt.close()
    raise ValueError(f"{workdir}/checkpoints/{latest} holds parameters only (that run finished with "
                     f"ckpt.final_with_optimizer=False), so it cannot resume to {total_steps} steps; "
                     "train in a new workdir, starting from an export of this run (launch/convert.py --from=run)")
  restored = None
  if latest is not None:
    target, shardings = train.abstract_train_state(model=model, tx=tx, cfg=cfg, mesh=mesh, rules=rules)
    base = json.loads((workdir / RUN_FILE).read_text()).get("base")
    frozen_params = frozen.load(base, workdir, optim.split_trainable(target.params, cfg.trainable)[1])
    restored = ckpt.restore_newest_readable(frozen.checkpointed(target, cfg.trainable))
  if restored is not None:
    state, extra, _ = restored
    state = state.replace(params=optim.join(state.params, frozen_params))
    iterator.restore(extra["data"])
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    state, shardings = train.create_sharded_state(rng, model=model, tx=tx, cfg=cfg, mesh=mesh, rules=rules,
                                                  load_params=runtime.params_loader(config))
    if config.lora.init_from:  # continue from an exported adapter (its optimizer moments start at zero)
      if model_cfg.lora is None:
        raise ValueError(f"lora.init_from={config.lora.init_from}: set lora.rank (and alpha, targets) to the adapter's")
      state = state.replace(params=lora.import_peft(config.lora.init_from, model_cfg.lora, state.params))
      logging.info("LoRA adapters from %s", config.lora.init_from)
    base_dir = runtime.model_dir(config)
    base = frozen.reference(base_dir, workdir, optim.split_trainable(state.params, cfg.trainable)[1])
    if jax.process_index() == 0:
      (workdir / RUN_FILE).write_text(json.dumps({
          "base_model": str(base_dir) if base_dir else None, "base": base, "model": model_cfg.to_hf(),
          "config": json.loads(config.to_json())}, indent=2))

  step_fn = train.make_train_step(model, tx, schedule, cfg, mesh, rules, shardings)
  logging.info("compiling the train step: the first step takes longer (up to %d programs, one per bucket%s)",
               train.program_count(cfg.method, batch_options.buckets, batch_options.en_buckets),
               " pair" if cfg.method == "cc" else "")
  batch_sharding = sh.batch_sharding(mesh)
  watcher = checkpoint.install_sigterm_handler()
  log = MetricsLog(workdir, config, total_steps, int(state.step))
  status, last, first_step = "completed", {}, int(state.step)
  try:
    pending = None
    for step in range(int(state.step), total_steps):
      batch = batching.make_global_batch(train.step_inputs(next(iterator), cfg.method), batch_sharding)
      state, metrics = step_fn(state, batch, rng)
      if pending is not None:  # read step t-1's metrics only after dispatching step t
        last = _check_and_log(log, ckpt, *pending)
      pending = (step + 1, metrics)
      extra = {"data": iterator.state()}
      # The last step is saved below, after the loop, in the form ckpt.final_with_optimizer asks for.
      if step + 1 < total_steps and ckpt.save(step + 1, frozen.checkpointed(state, cfg.trainable), extra):
        last = _check_and_log(log, ckpt, *pending)  # a save already waits on this step
        pending = None
      ckpt.poll()  # a background save that failed stops the run here
      if watcher.preemption_requested(step + 1):
        if pending is not None:
          last = _check_and_log(log, ckpt, *pending)
          pending = None
        ckpt.save(step + 1, frozen.checkpointed(state, cfg.trainable), extra, force=True)
        ckpt.wait()  # raises, rather than report a save that did not complete
        status = "preempted"
        logging.warning("SIGTERM: saved step %d; rerun the same command to resume", step + 1)
        break
    if pending is not None:
      last = _check_and_log(log, ckpt, *pending)
    if status == "completed":
      kept = frozen.checkpointed(state, cfg.trainable)
      if config.ckpt.final_with_optimizer:
        ckpt.save(int(state.step), kept, {"data": iterator.state()}, force=True)
      else:  # restore_params reads `params` from either form
        ckpt.save(int(state.step), {"step": state.step, "params": kept.params},
                  {"data": iterator.state(), PARAMS_ONLY: True}, force=True)
    ckpt.wait()
  finally:
    log.close()
    ckpt.close()
    watcher.uninstall()
  return {"step": int(state.step), "status": status, "metrics": last, "workdir": str(workdir),
          "steps_run": int(state.step) - first_step}


def _params_only(ckpt: checkpoint.Checkpointer, step: int) -> bool:
  try:
    return bool(ckpt.restore_extra(step).get(PARAMS_ONLY))
  except checkpoint.DamagedCheckpointError:
    return False  # restore_newest_readable says what is wrong with it and falls back


def _check_and_log(log: MetricsLog, ckpt: checkpoint.Checkpointer, step: int, metrics) -> dict:
  """Fetches a step's metrics, stops on a non-finite loss, logs them."""
  metrics = jax.device_get(metrics)
  if not np.isfinite(metrics["loss"]) or not np.isfinite(metrics["grad_norm"]):
    raise FloatingPointError(
        f"non-finite loss ({metrics['loss']}) or grad norm ({metrics['grad_norm']}) at step {step}; "
        f"training stopped, the last good checkpoint (step {ckpt.latest_step()}) is untouched")
  log.write(step, metrics)
  return {k: (v.tolist() if np.ndim(v) else float(v)) for k, v in metrics.items()}
