"""Hugging Face checkpoints <-> cc_jax model directories.

A cc_jax model directory holds:
  cc_jax.json   the architecture (LlamaConfig), the source's HF config.json and metadata
  params/       an Orbax checkpoint of the Flax parameters (layers stacked, as scanned)
  tokenizer/    the tokenizer files, when the source had them

Hugging Face -> cc_jax streams safetensors tensor by tensor (an 8B model converts in the
RAM its target-dtype copy needs), cc_jax -> Hugging Face writes config.json,
generation_config.json, sharded safetensors and the tokenizer. A trained Decision Maker
travels as `model.source_select.weight` (L, D), the name the authors' PyTorch code uses.
Every writer builds its output in a temporary sibling and renames it into place at the
end, so a failure never leaves a half-written directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from safetensors import safe_open
from safetensors.numpy import save_file

from cc_jax import console
from cc_jax.files import plain_file_mode
from cc_jax.lora import LoraConfig
from cc_jax.model import LlamaConfig, RopeScaling

FORMAT_VERSION = 1
META_FILE = "cc_jax.json"
SOURCE_SELECT = "model.source_select.weight"  # Decision Maker, (L, D) as torch Linear(D, L)
# Buffers some older checkpoints carry; recomputed from the config, never weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json",
                   "added_tokens.json", "vocab.json", "merges.txt")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class ConversionError(ValueError):
  """A checkpoint cannot be converted; the message names the file, tensor or key."""


# --- The name map -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor <-> one Flax parameter; `to_flax`/`to_hf` are exact reshapes/transposes."""
  hf_name: str  # with `{i}` for the layer index
  path: tuple[str, ...]  # Flax path; under "layers" the leading L axis is implied
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf_name


def _identity(x):
  return x


def name_map(cfg: LlamaConfig) -> list[Entry]:
  """Every tensor the architecture has, in HF order."""
  D, N, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  T = np.transpose
  entries = [Entry("model.embed_tokens.weight", ("embed_tokens", "embedding"), _identity, _identity)]

  def proj(name, heads, bias):
    base = f"model.layers.{{i}}.self_attn.{name}"
    yield Entry(f"{base}.weight", ("layers", "self_attn", name, "kernel"),
                lambda w: T(w).reshape(D, heads, E), lambda x: T(x.reshape(D, heads * E)))
    if bias:
      yield Entry(f"{base}.bias", ("layers", "self_attn", name, "bias"),
                  lambda b: b.reshape(heads, E), lambda x: x.reshape(heads * E))

  entries += proj("q_proj", N, cfg.qkv_bias)
  entries += proj("k_proj", K, cfg.qkv_bias)
  entries += proj("v_proj", K, cfg.qkv_bias)
  o = "model.layers.{i}.self_attn.o_proj"
  entries.append(Entry(f"{o}.weight", ("layers", "self_attn", "o_proj", "kernel"),
                       lambda w: T(w).reshape(N, E, D), lambda x: T(x.reshape(N * E, D))))
  if cfg.o_bias:
    entries.append(Entry(f"{o}.bias", ("layers", "self_attn", "o_proj", "bias"), _identity, _identity))
  for name in ("gate_proj", "up_proj", "down_proj"):
    mlp = f"model.layers.{{i}}.mlp.{name}"
    entries.append(Entry(f"{mlp}.weight", ("layers", "mlp", name, "kernel"), T, T))
    if cfg.mlp_bias:
      entries.append(Entry(f"{mlp}.bias", ("layers", "mlp", name, "bias"), _identity, _identity))
  for name in ("input_layernorm", "post_attention_layernorm"):
    entries.append(Entry(f"model.layers.{{i}}.{name}.weight", ("layers", name, "scale"), _identity, _identity))
  entries.append(Entry("model.norm.weight", ("norm", "scale"), _identity, _identity))
  if not cfg.tie_word_embeddings:
    entries.append(Entry("lm_head.weight", ("lm_head", "kernel"), T, T))
  return entries


def _expected_shape(entry: Entry, cfg: LlamaConfig) -> tuple:
  """The HF shape a tensor must have, from the config alone."""
  D, N, K, E, F, V = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      cfg.intermediate_size, cfg.vocab_size)
  name = entry.hf_name.split(".{i}.")[-1] if entry.per_layer else entry.hf_name
  return {
      "model.embed_tokens.weight": (V, D), "lm_head.weight": (V, D), "model.norm.weight": (D,),
      "self_attn.q_proj.weight": (N * E, D), "self_attn.q_proj.bias": (N * E,),
      "self_attn.k_proj.weight": (K * E, D), "self_attn.k_proj.bias": (K * E,),
      "self_attn.v_proj.weight": (K * E, D), "self_attn.v_proj.bias": (K * E,),
      "self_attn.o_proj.weight": (D, N * E), "self_attn.o_proj.bias": (D,),
      "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F),
      "mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (D,),
      "input_layernorm.weight": (D,), "post_attention_layernorm.weight": (D,),
  }[name]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


# --- Reading HF checkpoints ----------------------------------------------------------------
class TensorSource:
  """Lazy tensor access to a HF model directory: name -> (file, loader)."""

  def __init__(self, model_dir: pathlib.Path, allow_pickle: bool = False):
    self.model_dir = model_dir
    self._index: dict[str, pathlib.Path] = {}
    self._stack = contextlib.ExitStack()
    self._handles: dict[pathlib.Path, Any] = {}
    files = self._weight_files(allow_pickle)
    for path in files:
      for name in self._names_in(path):
        self._index[name] = path

  def _weight_files(self, allow_pickle: bool) -> list[pathlib.Path]:
    d = self.model_dir
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
      index_path, single_path = d / index_name, d / single
      if not (index_path.exists() or single_path.exists()):
        continue
      if single.endswith(".bin") and not allow_pickle:
        raise ConversionError(
            f"{d}: only pickled weights ({single}) were found. Pickles can run arbitrary code; "
            "pass --allow_pickle (allow_pickle=True) if you trust this checkpoint.")
      if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = sorted({d / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
          raise ConversionError(f"{index_path}: lists shard files that do not exist: {missing}")
        return files
      return [single_path]
    raise ConversionError(f"{d}: no model.safetensors[.index.json] (or pytorch_model.bin) found")

  def _open(self, path: pathlib.Path):
    if path not in self._handles:
      try:
        if path.suffix == ".safetensors":
          self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="numpy"))
        else:
          import torch  # only for explicitly allowed pickles; weights_only refuses code objects
          self._handles[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except Exception as error:  # SafetensorError, OSError, pickle errors: say which file
        raise ConversionError(f"{path}: cannot be read as weights ({type(error).__name__}: {error}); "
                              "it may be truncated or damaged: download it again") from error
    return self._handles[path]

  def _names_in(self, path: pathlib.Path) -> list[str]:
    handle = self._open(path)
    return list(handle.keys())

  def names(self) -> list[str]:
    return list(self._index)

  def get(self, name: str) -> np.ndarray:
    handle = self._open(self._index[name])
    if isinstance(handle, dict):  # torch state dict
      t = handle[name]
      if str(t.dtype) == "torch.bfloat16":  # numpy has no bf16: reinterpret the bits
        import torch
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
      return t.numpy()
    return handle.get_tensor(name)

  def where(self, name: str) -> str:
    """The file holding tensor `name` (the directory when no file has it)."""
    return str(self._index.get(name, self.model_dir))

  def close(self):
    self._stack.close()
    self._handles.clear()


def params_from_tensors(cfg: LlamaConfig, names: list[str], get: Callable[[str], np.ndarray],
                        dtype, where: Callable[[str], str] = lambda n: n) -> dict:
  """Builds the (layer-stacked) Flax param tree from HF tensors, one tensor at a time.

  Args:
    cfg: the architecture.
    names: the tensor names present in the source.
    get: loads one tensor by name as a numpy array.
    dtype: numpy dtype of the result.
    where: names the file a tensor came from, for error messages.

  Returns:
    The param tree, plus `source_select` {kernel: (D, L)} when the source has a Decision Maker.
  """
  present = set(names)
  entries = name_map(cfg)
  expected = {e.hf_name.format(i=i) for e in entries for i in (range(cfg.num_layers) if e.per_layer else [0])}
  missing = sorted(expected - present)
  if missing:
    raise ConversionError(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                          f"({len(missing)} in all) for model_type={cfg.model_type}")
  known = expected | {SOURCE_SELECT} | ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
  unexpected = sorted(n for n in present - known if not n.endswith(IGNORED_SUFFIXES))
  if unexpected:
    raise ConversionError(f"{where(unexpected[0])}: unexpected tensors {unexpected[:5]} "
                          f"({len(unexpected)} in all); is this the architecture in config.json?")

  def load(name: str, shape: tuple) -> np.ndarray:
    w = get(name)
    if tuple(w.shape) != tuple(shape):
      raise ConversionError(f"{where(name)}: tensor {name} has shape {tuple(w.shape)}, "
                            f"config.json implies {tuple(shape)}")
    return w

  params: dict = {}
  for entry in entries:
    shape = _expected_shape(entry, cfg)
    if not entry.per_layer:
      _set(params, entry.path, entry.to_flax(load(entry.hf_name, shape)).astype(dtype))
      continue
    stacked = None
    for i in range(cfg.num_layers):
      value = entry.to_flax(load(entry.hf_name.format(i=i), shape))
      if stacked is None:
        stacked = np.empty((cfg.num_layers,) + value.shape, dtype)
      stacked[i] = value
    _set(params, entry.path, stacked)
  if SOURCE_SELECT in present:
    _set(params, ("source_select", "kernel"),
         load(SOURCE_SELECT, (cfg.num_layers, cfg.hidden_size)).T.astype(dtype))
  return params


def hf_tensors_from_params(cfg: LlamaConfig, params: Mapping, dtype) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, numpy tensor) for every parameter, one at a time."""
  for entry in name_map(cfg):
    value = np.asarray(jax.device_get(_get(params, entry.path)))
    for i in range(cfg.num_layers) if entry.per_layer else [None]:
      x = value if i is None else value[i]
      yield entry.hf_name.format(i=i), np.ascontiguousarray(entry.to_hf(x).astype(dtype))
  if "source_select" in params:
    kernel = np.asarray(jax.device_get(params["source_select"]["kernel"]))
    yield SOURCE_SELECT, np.ascontiguousarray(kernel.T.astype(dtype))


# --- Atomic output directories ---------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(out_dir: pathlib.Path, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling of `out_dir`; renames it into place only on success."""
  out_dir = pathlib.Path(out_dir).absolute()
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already exists; choose a new output directory "
                          "(nothing was written)")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    yield tmp
    if overwrite and out_dir.exists():
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)  # fails, rather than merging, if someone created out_dir meanwhile
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _dtype_name(dtype) -> str:
  return np.dtype(dtype).name


def _source_dtype(hf_config: dict) -> str:
  name = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
  if name not in DTYPES:
    raise ConversionError(f"config.json: dtype {name!r} is not one of {sorted(DTYPES)}")
  return name


# --- cc_jax model directories -----------------------------------------------------------------
def save_model_dir(out_dir, cfg: LlamaConfig, params: Mapping, hf_config: dict | None = None,
                   tokenizer_dir: pathlib.Path | None = None, tokenizer=None,
                   meta: dict | None = None, overwrite: bool = False) -> pathlib.Path:
  """Writes a cc_jax model directory (atomically)."""
  out_dir = pathlib.Path(out_dir).absolute()
  dtypes = sorted({_dtype_name(x.dtype) for x in jax.tree.leaves(params)})
  with atomic_dir(out_dir, overwrite) as tmp:
    info = {"format": FORMAT_VERSION, "model": _config_to_json(cfg), "hf_config": hf_config or cfg.to_hf(),
            "param_dtypes": dtypes, **(meta or {})}
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "params", dict(params))
      ckptr.wait_until_finished()
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp / "tokenizer")
    elif tokenizer_dir is not None:
      files = [tokenizer_dir / f for f in TOKENIZER_FILES if (tokenizer_dir / f).exists()]
      if files:
        (tmp / "tokenizer").mkdir()
        for f in files:
          shutil.copy2(f, tmp / "tokenizer" / f.name)
    (tmp / META_FILE).write_text(json.dumps(info, indent=2))
  return out_dir


def _config_to_json(cfg: LlamaConfig) -> dict:
  return dataclasses.asdict(cfg)


def _config_from_json(d: dict) -> LlamaConfig:
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  if d.get("lora") is not None:
    d["lora"] = LoraConfig(**{**d["lora"], "targets": tuple(d["lora"]["targets"])})
  return LlamaConfig(**d)


def read_model_meta(model_dir) -> dict:
  path = pathlib.Path(model_dir) / META_FILE
  if not path.exists():
    raise ConversionError(f"{model_dir}: no {META_FILE}; not a cc_jax model directory "
                          "(convert Hugging Face weights with launch/convert.py first)")
  meta = json.loads(path.read_text())
  if meta.get("format") != FORMAT_VERSION:
    raise ConversionError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
  return meta


def load_config(model_dir, **overrides) -> LlamaConfig:
  """The LlamaConfig of a cc_jax model directory; `overrides` set dtype, scan, remat..."""
  cfg = _config_from_json(read_model_meta(model_dir)["model"])
  return dataclasses.replace(cfg, **overrides)


def load_params(model_dir, target: Any = None) -> dict:
  """Restores the param tree; `target` is a pytree of jax.ShapeDtypeStruct with shardings
  (from `jax.eval_shape` of init), so weights land directly in their shards."""
  path = pathlib.Path(model_dir).absolute() / "params"
  with ocp.StandardCheckpointer() as ckptr:
    if target is None:
      metadata = ckptr.metadata(path).item_metadata
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)
    return ckptr.restore(path, target)


# --- Entry points -----------------------------------------------------------------------------
def hf_to_cc_jax(src_dir, out_dir, dtype: str | None = None, allow_pickle: bool = False,
                 overwrite: bool = False) -> pathlib.Path:
  """Converts a local HF model directory (config.json + safetensors) to a cc_jax directory.

  Args:
    src_dir: directory with config.json and model.safetensors (or a sharded index).
    out_dir: must not exist (unless overwrite).
    dtype: parameter dtype to store (float32, bfloat16); default: the source's dtype.
    allow_pickle: also read pytorch_model.bin files (pickles can run code).
  """
  src_dir = pathlib.Path(src_dir)
  config_path = src_dir / "config.json"
  if not config_path.exists():
    raise ConversionError(f"{src_dir}: no config.json")
  hf_config = json.loads(config_path.read_text())
  cfg = LlamaConfig.from_hf(hf_config)
  dtype = dtype or _source_dtype(hf_config)
  if out_dir is not None and pathlib.Path(out_dir).exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already exists; choose a new output directory (nothing was written)")
  source = TensorSource(src_dir, allow_pickle=allow_pickle)
  try:
    params = params_from_tensors(cfg, source.names(), source.get, DTYPES[dtype], where=source.where)
  finally:
    source.close()
  logging.info("converted %s (%s, %d layers) to %s", src_dir, cfg.model_type, cfg.num_layers, dtype)
  return save_model_dir(out_dir, cfg, params, hf_config=hf_config, tokenizer_dir=src_dir,
                        meta={"source": str(src_dir.absolute()), "source_dtype": _source_dtype(hf_config)},
                        overwrite=overwrite)


def gguf_to_cc_jax(gguf_path, out_dir, dtype: str = "float32", overwrite: bool = False) -> pathlib.Path:
  """Converts a GGUF file through transformers' GGUF loader (dequantised to float)."""
  import torch  # transformers' GGUF loader dequantises into torch tensors
  import transformers

  gguf_path = pathlib.Path(gguf_path)
  if not gguf_path.exists():
    raise ConversionError(f"{gguf_path}: no such GGUF file")
  if pathlib.Path(out_dir).exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already exists; choose a new output directory (nothing was written)")
  kwargs = dict(gguf_file=gguf_path.name)
  if not console.is_terminal():  # its bars would write carriage returns into a log file
    transformers.utils.logging.disable_progress_bar()
  start = time.perf_counter()
  console.say(f"  reading the tokenizer from {gguf_path.name}")
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
  console.say(f"  dequantising the weights through transformers' GGUF loader ({time.perf_counter() - start:.0f} s)")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32,
                                                               **kwargs)
  hf_config = hf_model.config.to_dict()
  hf_config.pop("quantization_config", None)  # the converted weights are dequantised floats
  hf_config["dtype"] = dtype
  cfg = LlamaConfig.from_hf(hf_config)
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  del hf_model
  console.say(f"  mapping {len(state)} tensors to cc_jax's layout ({time.perf_counter() - start:.0f} s)")
  params = params_from_tensors(cfg, list(state), state.__getitem__, DTYPES[dtype], where=lambda n: str(gguf_path))
  console.say(f"  writing {out_dir} ({time.perf_counter() - start:.0f} s)")
  out = save_model_dir(out_dir, cfg, params, hf_config=hf_config, tokenizer=tokenizer,
                       meta={"source": str(gguf_path.absolute()), "source_dtype": "gguf"},
                       overwrite=overwrite)
  console.say(f"  converted in {time.perf_counter() - start:.0f} s")
  return out


def cc_jax_to_hf(model_dir, out_dir, dtype: str | None = None, params: Mapping | None = None,
                 chat_template: str | None = None, shard_bytes: int = 5 << 30,
                 overwrite: bool = False) -> pathlib.Path:
  """Exports a cc_jax model directory as a transformers model directory.

  Args:
    model_dir: a cc_jax model directory (its config, tokenizer and, unless `params` is
      given, its parameters).
    out_dir: must not exist (unless overwrite).
    dtype: tensor dtype to write; default: the dtype of the original HF checkpoint.
    params: parameters to write instead of the directory's (e.g. a trained state), possibly
      with a `source_select` Decision Maker.
    chat_template: the template the model was trained with, when not the tokenizer's own
      (a name from cc_jax.templates.TEMPLATES or Jinja text); written into the tokenizer.
    shard_bytes: maximum size of one safetensors shard.
  """
  meta = read_model_meta(model_dir)
  dtype = dtype or (meta.get("source_dtype") if meta.get("source_dtype") in DTYPES else None) or "float32"
  tokenizer = None
  tok_dir = pathlib.Path(model_dir) / "tokenizer"
  if tok_dir.exists():
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
  return export_hf(_config_from_json(meta["model"]), params if params is not None else load_params(model_dir),
                   out_dir, hf_config=meta["hf_config"], tokenizer=tokenizer, dtype=dtype,
                   chat_template=chat_template, shard_bytes=shard_bytes, overwrite=overwrite)


def export_hf(cfg: LlamaConfig, params: Mapping, out_dir, *, hf_config: dict | None = None, tokenizer=None,
              dtype: str = "float32", chat_template: str | None = None, shard_bytes: int = 5 << 30,
              overwrite: bool = False) -> pathlib.Path:
  """Writes params (and the tokenizer, if given) as a transformers model directory.

  The generation config and tokenizer name the chat template's end-of-turn token as EOS, so
  the exported model stops where the trained one does.
  """
  hf_config = dict(hf_config or cfg.to_hf())
  eot = None
  if tokenizer is not None:
    from cc_jax import data
    fmt = data.chat_format(tokenizer, data.TokenizeOptions(chat_template=chat_template))
    if fmt.jinja() is not None:
      tokenizer.chat_template = fmt.jinja()
    eot = tokenizer.convert_ids_to_tokens(fmt.end_id)

  with atomic_dir(pathlib.Path(out_dir), overwrite) as tmp:
    hf_config.pop("torch_dtype", None)
    hf_config["dtype"] = dtype
    hf_config.setdefault("architectures", cfg.to_hf()["architectures"])
    gen = {"do_sample": False}
    if tokenizer is not None:
      eot_id = tokenizer.convert_tokens_to_ids(eot)
      eos_ids = [eot_id] + [i for i in [tokenizer.eos_token_id] if i is not None and i != eot_id]
      hf_config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
      gen.update(eos_token_id=eos_ids, bos_token_id=tokenizer.bos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
      tokenizer.eos_token = eot  # so generate() and chat pipelines stop at end of turn
      tokenizer.save_pretrained(tmp)
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_safetensors(tmp, hf_tensors_from_params(cfg, params, DTYPES[dtype]), shard_bytes)
  return pathlib.Path(out_dir)


def _write_safetensors(out: pathlib.Path, tensors: Iterator[tuple[str, np.ndarray]], shard_bytes: int):
  """Writes tensors into shards of at most `shard_bytes` (one shard: model.safetensors)."""
  shards: list[list[str]] = []
  current: dict[str, np.ndarray] = {}
  size, total = 0, 0

  def flush():
    if current:
      path = out / f"shard-{len(shards)}.tmp"
      save_file(current, str(path), metadata={"format": "pt"})
      os.chmod(path, plain_file_mode())  # safetensors creates it 0o600, unlike the other files
      shards.append(list(current))
      current.clear()

  for name, x in tensors:
    if current and size + x.nbytes > shard_bytes:
      flush()
      size = 0
    current[name] = x
    size += x.nbytes
    total += x.nbytes
  flush()
  if len(shards) == 1:
    os.rename(out / "shard-0.tmp", out / "model.safetensors")
    return
  weight_map = {}
  for k, names in enumerate(shards):
    final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    os.rename(out / f"shard-{k}.tmp", out / final)
    weight_map.update({n: final for n in names})
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
