"""From a config to live objects: distributed runtime, mesh, model config, tokenizer, weights."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from absl import logging
import jax
from ml_collections import ConfigDict

from cc_jax import convert, frozen, lora, optim, sharding as sh, smollm2
from cc_jax.model import Llama, LlamaConfig

# Environment variables by which cluster launchers describe a multi-process job; JAX's
# cluster auto-detection (SLURM, Open MPI, TPU pods, ...) reads them.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when the environment describes several processes.

  Explicit settings: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID; otherwise JAX detects SLURM / Open MPI / TPU pod environments itself.
  """
  if not any(os.environ.get(name) for name in _MULTI_PROCESS_ENV):
    return
  if os.environ.get("SLURM_NTASKS") == "1" or os.environ.get("OMPI_COMM_WORLD_SIZE") == "1":
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):  # JAX reads only the address from the environment
    kwargs = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  # CPU-only jobs (tests, laptops) need a collectives backend across processes.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def device_count() -> int:
  """The devices of the whole job (every process's)."""
  return jax.device_count()


def is_writer() -> bool:
  """Whether this process writes (and announces) a task's results: process 0 of the job."""
  return jax.process_index() == 0


def make_mesh(config: ConfigDict) -> jax.sharding.Mesh:
  mesh = sh.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor})
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
  return mesh


def model_dir(config: ConfigDict) -> pathlib.Path | None:
  """The cc_jax model directory the config names (SmolLM2 is fetched and converted once)."""
  path = config.model.path
  if not path:
    return None
  if path == "smollm2":
    return smollm2.converted_model_dir()
  return pathlib.Path(path)


def _run_settings(config: ConfigDict) -> dict:
  m = config.model
  return dict(dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
              remat_policy=m.remat_policy, attention_impl=m.attention_impl or None,
              lora=lora.LoraConfig.from_config(config.get("lora")))  # runs before LoRA have none


def model_config(config: ConfigDict) -> LlamaConfig:
  """LlamaConfig from the model directory (checked against model.arch) or from model.arch."""
  directory = model_dir(config)
  arch = config.model.arch
  if directory is None:
    head_dim = arch.head_dim or arch.hidden_size // arch.num_heads
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    # Zero means "the LlamaConfig default" (the same keys are left unchecked for converted models).
    values = {k: v for k, v in arch.to_dict().items() if k in fields and (v or isinstance(v, (bool, str)))}
    return LlamaConfig(**{**values, "head_dim": head_dim}, **_run_settings(config))
  cfg = convert.load_config(directory, **_run_settings(config))
  for key, value in arch.to_dict().items():
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value and hasattr(cfg, key):
      if getattr(cfg, key) != value:
        raise ValueError(f"config.model.arch.{key}={value} but {directory} has {key}={getattr(cfg, key)}; "
                         "fix the preset or point model.path at the right model")
  return cfg


def load_tokenizer(config: ConfigDict):
  """The Hugging Face tokenizer named by config.model.tokenizer (never trust_remote_code)."""
  import transformers
  name = config.model.tokenizer
  if name == "smollm2":  # saved by the cached conversion: loads in a fraction of the GGUF time
    name = smollm2.converted_model_dir() / "tokenizer"
  if not name:
    directory = model_dir(config)
    if directory is None:
      raise ValueError("config.model.tokenizer is empty and there is no model.path to take it from")
    name = directory / "tokenizer"
  if not pathlib.Path(name).exists():
    raise FileNotFoundError(f"config.model.tokenizer: {name} does not exist")
  return transformers.AutoTokenizer.from_pretrained(str(name))


def params_loader(config: ConfigDict):
  """A function(target) -> params restoring the converted weights into target shardings,
  or None for random init."""
  directory = model_dir(config)
  if directory is None:
    return None
  return lambda target: convert.load_params(directory, target)


@dataclasses.dataclass
class TrainedModel:
  """A model ready for inference: a training run's, or a converted model's own (`load_model`)."""
  train_config: ConfigDict  # the config the run was trained with (for a base model: the eval's config)
  model: Llama
  params: dict  # decoder params, plus `source_select` for cc runs
  tokenizer: object
  checkpoint: str  # "<workdir>/checkpoints/<step>" (or the model directory): identifies the weights
  base: bool = False  # a converted model evaluated as it is, without a training run

  @property
  def method(self) -> str:
    """"cc" or "sft" for a training run, "base" for a model without one."""
    return "base" if self.base else self.train_config.cc.method


def abstract_params(model: Llama, method: str, rules_config: dict, mesh):
  """The abstract params of `model` (+ the Decision Maker for cc) with their shardings on `mesh`."""
  import flax.linen as nn
  import jax.numpy as jnp

  from cc_jax import connection

  cfg = model.cfg

  rules = sh.rules_from_config(rules_config)

  def init(rng):
    dummy = jnp.zeros((1, 4), jnp.int32)
    params = model.init(rng, dummy, dummy, dummy + 1)["params"]
    if method == "cc":
      params[connection.PARAM_NAME] = connection.init_decision_maker(rng, cfg.hidden_size, cfg.num_layers,
                                                                     cfg.jnp_param_dtype)
    return params

  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sh.logical_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(abstract),
                      shardings)


def load_trained(workdir, step: int | None = None, mesh: jax.sharding.Mesh | None = None) -> TrainedModel:
  """Restores a training run's parameters (not its optimizer state) for inference.

  Args:
    workdir: the training workdir (holds run.json and checkpoints/).
    step: checkpoint step; None takes the latest.
    mesh: shard the parameters over this mesh (default: one over all devices, fsdp).
  """
  import json

  from cc_jax import checkpoint

  workdir = pathlib.Path(workdir).absolute()
  run_file = workdir / "run.json"
  if not run_file.exists():
    raise FileNotFoundError(f"{run_file} does not exist: {workdir} is not a cc_jax training workdir")
  run = json.loads(run_file.read_text())
  train_config = ConfigDict(run["config"])
  cfg = model_config(train_config)
  model = Llama(cfg, inject_layer=train_config.cc.inject_layer)
  target = abstract_params(model, train_config.cc.method, train_config.mesh.rules.to_dict(),
                           mesh or sh.make_mesh({"fsdp": -1}))
  trained, frozen_target = optim.split_trainable(target, optim.trainable_from_config(train_config))
  if run.get("base") is None:  # the checkpoints hold every param (a LoRA run saved before they left the base
    trained, frozen_target = target, {}  # out has its base in them too)
  frozen_params = frozen.load(run.get("base"), workdir, frozen_target)
  with checkpoint.Checkpointer(checkpoint.CheckpointConfig(str(workdir / "checkpoints"))) as ckpt:
    params, step = ckpt.restore_params(trained, step)
  params = optim.join(params, frozen_params)
  return TrainedModel(train_config, model, params, load_tokenizer(train_config),
                      str(workdir / "checkpoints" / str(step)))


def load_model(config: ConfigDict, mesh: jax.sharding.Mesh | None = None) -> TrainedModel:
  """The converted model of `config.model.path` as it is (no training run), for evaluation in
  plain mode with the config's chat template."""
  directory = model_dir(config)
  if directory is None:
    raise ValueError("config.model.path is empty: name a converted model directory (launch/convert.py) or "
                     "'smollm2' to evaluate a model without a training run")
  cfg = model_config(config)
  model = Llama(cfg)
  target = abstract_params(model, "sft", config.mesh.rules.to_dict(), mesh or sh.make_mesh({"fsdp": -1}))
  params = convert.load_params(directory, target)
  return TrainedModel(config, model, params, load_tokenizer(config), str(directory), base=True)


def export_run(workdir, out_dir, step: int | None = None, dtype: str | None = None,
               peft: bool = False) -> pathlib.Path:
  """Exports a trained run (its checkpoint's params, with the Decision Maker) to transformers:
  a whole model (a LoRA run's adapters merged into its weights), or with `peft` a LoRA run's
  adapters as a PEFT adapter directory for its base model."""
  trained = load_trained(workdir, step)
  base = model_dir(trained.train_config)
  dtype = dtype or (convert.read_model_meta(base).get("source_dtype") if base else None)
  dtype = dtype if dtype in convert.DTYPES else "float32"
  cfg, params = trained.model.cfg, jax.device_get(trained.params)
  if peft:
    if cfg.lora is None:
      raise ValueError(f"{workdir} is not a LoRA run (lora.rank=0): export the whole model, without --peft")
    return lora.export_peft(cfg.lora, params, cfg.num_layers, out_dir, base_model=str(base or ""), dtype=dtype)
  if cfg.lora is not None:
    cfg, params = dataclasses.replace(cfg, lora=None), lora.merged(params, cfg.lora)
  hf_config = convert.read_model_meta(base)["hf_config"] if base else None
  return convert.export_hf(cfg, params, out_dir, hf_config=hf_config, tokenizer=trained.tokenizer, dtype=dtype,
                           chat_template=trained.train_config.data.chat_template or None)
