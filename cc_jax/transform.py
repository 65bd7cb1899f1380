"""The Transform Matrix (docs/method.md §3): collect paired anchor activations, solve X by least
squares so that S X ~ T, report the fit, save and load it with its provenance.

S and T hold every layer's MLP output at the anchor of a non-English prompt and of its English
translation. The paper stacks all samples and layers as rows and fits one D x D matrix;
options add ridge regularisation, one matrix per layer, and streaming normal equations
(S^T S and S^T T accumulated in float32) so that N is not bounded by memory.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import pathlib
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cc_jax import batching, files
from cc_jax.model import Llama, left_pad_positions

MATRIX_FILE = "matrix.npy"
META_FILE = "matrix.json"


@dataclasses.dataclass(frozen=True)
class SolveOptions:
  """Attributes:
    ridge: lambda of (S^T S + lambda I)^-1 S^T T; 0 is ordinary least squares.
    per_layer: one matrix per layer (L, D, D) instead of one shared (D, D).
    streaming: solve from accumulated normal equations instead of the stacked rows.
  """
  ridge: float = 0.0
  per_layer: bool = False
  streaming: bool = False


# --- Collection ---------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model",))
def capture_at_anchors(model: Llama, params, tokens_BT, mask_BT, anchor_B):
  """(L, B, D) float32 MLP outputs at columns `anchor_B` of left-padded prompts, no injection.
  One jitted function for every capture pass (non-English and English share its programs)."""
  out = model.apply({"params": params}, tokens_BT, left_pad_positions(mask_BT), mask_BT, capture_at_B=anchor_B,
                    compute_logits=False)
  return out.captured_LBD.astype(jnp.float32)


def collect_activations(model: Llama, params, prompts: Sequence[Sequence[int]], pad_id: int,
                        batch_size: int = 16, buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                        progress=None, anchors: Sequence[int] | None = None) -> np.ndarray:
  """Every layer's MLP output at each prompt's anchor, without injection.

  Prompts are left-padded to a few bucket lengths so that only a handful of programs compile;
  the last batch is padded with copies that are then dropped.

  Args:
    anchors: the anchor's index in each prompt; None: the last token (cc_jax's anchor).

  Returns:
    (N, L, D) float32 array, rows in the order of `prompts`.
  """
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    where = list(anchors[start:start + batch_size]) if anchors is not None else [len(p) - 1 for p in chunk]
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)  # fixed batch shape
    where += [where[-1]] * (batch_size - real)
    padded = batching.left_pad_prompts(chunk, pad_id, buckets)
    tokens, mask = padded["input_ids"], padded["attention_mask"]
    T = tokens.shape[1]
    anchor_B = np.asarray([T - len(p) + a for p, a in zip(chunk, where)], np.int32)
    acts_LBD = np.asarray(capture_at_anchors(model, params, tokens, mask, anchor_B))
    out.append(np.swapaxes(acts_LBD, 0, 1)[:real])
    if progress is not None:
      progress.update(real)
  return np.concatenate(out)


def sample_indices(n_available: int, n: int, seed: int) -> np.ndarray:
  """N distinct indices drawn with a seeded generator (all of them when N >= available)."""
  if n >= n_available:
    return np.arange(n_available)
  return np.sort(np.random.default_rng(seed).choice(n_available, size=n, replace=False))


# --- Solving --------------------------------------------------------------------------------------
def normal_equations(source_rows: jax.Array, target_rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(S^T S, S^T T) in float32 for one chunk of rows; sum these over chunks (and devices)."""
  s = jnp.asarray(source_rows, jnp.float32)
  t = jnp.asarray(target_rows, jnp.float32)
  return s.T @ s, s.T @ t


def solve_normal(sts: jax.Array, stt: jax.Array, ridge: float = 0.0) -> jax.Array:
  """X = (S^T S + ridge I)^-1 S^T T; lstsq keeps it defined when S^T S is singular."""
  sts = sts + ridge * jnp.eye(sts.shape[0], dtype=sts.dtype)
  return jnp.linalg.lstsq(sts, stt)[0]


def solve_rows(source_rows: jax.Array, target_rows: jax.Array, ridge: float = 0.0) -> jax.Array:
  """argmin_X ||S X - T||^2 (+ ridge ||X||^2) on stacked rows (the paper's jnp.linalg.lstsq)."""
  s = jnp.asarray(source_rows, jnp.float32)
  t = jnp.asarray(target_rows, jnp.float32)
  if ridge:
    # Ridge as plain least squares on rows augmented with sqrt(ridge) I: no normal equations,
    # so the conditioning of S is not squared.
    d = s.shape[1]
    s = jnp.concatenate([s, jnp.sqrt(ridge) * jnp.eye(d, dtype=s.dtype)])
    t = jnp.concatenate([t, jnp.zeros((d, t.shape[1]), t.dtype)])
  return jnp.linalg.lstsq(s, t)[0]


def solve(source_NLD: np.ndarray, target_NLD: np.ndarray, options: SolveOptions = SolveOptions(),
          chunk_rows: int = 4096) -> np.ndarray:
  """The Transform Matrix: (D, D) shared by all layers, or (L, D, D) with per_layer."""
  n, num_layers, d = source_NLD.shape
  if target_NLD.shape != source_NLD.shape:
    raise ValueError(f"source {source_NLD.shape} and target {target_NLD.shape} activations differ in shape")

  def fit(s_rows, t_rows):
    if not options.streaming:
      return solve_rows(s_rows, t_rows, options.ridge)
    sts, stt = jnp.zeros((d, d), jnp.float32), jnp.zeros((d, d), jnp.float32)
    for start in range(0, len(s_rows), chunk_rows):
      a, b = normal_equations(s_rows[start:start + chunk_rows], t_rows[start:start + chunk_rows])
      sts, stt = sts + a, stt + b
    return solve_normal(sts, stt, options.ridge)

  if options.per_layer:
    return np.stack([np.asarray(fit(source_NLD[:, l], target_NLD[:, l])) for l in range(num_layers)])
  return np.asarray(fit(source_NLD.reshape(n * num_layers, d), target_NLD.reshape(n * num_layers, d)))


def underdetermined(num_pairs: int, num_layers: int, width: int, options: SolveOptions) -> str | None:
  """A warning when the least-squares system has fewer rows than unknowns per output column:
  the matrix then reproduces its own pairs exactly (R^2 = 1 says nothing) and generalises
  poorly. None when the fit is determined, or regularised by a ridge."""
  rows = num_pairs if options.per_layer else num_pairs * num_layers
  if rows >= width or options.ridge > 0:
    return None
  needed = width if options.per_layer else -(-width // num_layers)
  return (f"the Transform Matrix is underdetermined: {rows} rows ({num_pairs} pairs"
          f"{'' if options.per_layer else f' x {num_layers} layers'}) for a {width} x {width} matrix, so its fit "
          f"statistics say nothing; use matrix.num_samples >= {needed} or matrix.ridge > 0")


def apply_matrix(source_LBD: jax.Array, matrix: jax.Array) -> jax.Array:
  """E_hat = S X, per layer when the matrix is (L, D, D)."""
  s = source_LBD.astype(jnp.float32)
  if matrix.ndim == 3:
    return jnp.einsum("lbd,lde->lbe", s, matrix.astype(jnp.float32))
  return s @ matrix.astype(jnp.float32)


def fit_statistics(source_NLD: np.ndarray, target_NLD: np.ndarray, matrix: np.ndarray) -> dict:
  """MSE and R^2 of the fit, overall and per layer."""
  pred = np.asarray(apply_matrix(jnp.asarray(np.swapaxes(source_NLD, 0, 1)), jnp.asarray(matrix)))
  pred = np.swapaxes(pred, 0, 1)
  err = ((pred - target_NLD) ** 2).astype(np.float64)
  centred = ((target_NLD - target_NLD.mean(axis=0, keepdims=True)) ** 2).astype(np.float64)
  mse_l = err.mean(axis=(0, 2))
  r2_l = 1.0 - err.sum(axis=(0, 2)) / np.maximum(centred.sum(axis=(0, 2)), 1e-30)
  return {"mse": float(err.mean()), "r2": float(1.0 - err.sum() / max(centred.sum(), 1e-30)),
          "mse_per_layer": mse_l.tolist(), "r2_per_layer": r2_l.tolist()}


# --- Saving and loading ---------------------------------------------------------------------------
def save(directory, matrix: np.ndarray, metadata: dict) -> pathlib.Path:
  """Writes matrix.npy and matrix.json into `directory` (each atomically)."""
  directory = pathlib.Path(directory)
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(matrix, np.float32), allow_pickle=False)
  files.write_atomic(directory / MATRIX_FILE, buffer.getvalue())
  meta = {"shape": list(np.shape(matrix)), **metadata}
  files.write_atomic(directory / META_FILE, json.dumps(meta, indent=2).encode())
  return directory


def load(directory, *, num_layers: int, hidden_size: int, checkpoint: str | None = None) -> tuple[np.ndarray, dict]:
  """Loads a matrix, refusing one whose shape or source checkpoint does not match the model."""
  directory = pathlib.Path(directory)
  path, meta_path = directory / MATRIX_FILE, directory / META_FILE
  for p in (path, meta_path):
    if not p.exists():
      raise FileNotFoundError(f"{p} does not exist; fit the matrix first (task=matrix)")
  meta = json.loads(meta_path.read_text())
  matrix = np.load(path, allow_pickle=False)  # never unpickle
  valid = {(hidden_size, hidden_size), (num_layers, hidden_size, hidden_size)}
  if tuple(matrix.shape) not in valid:
    raise ValueError(f"{path}: shape {tuple(matrix.shape)} does not fit a model with {num_layers} layers "
                     f"of width {hidden_size}")
  if checkpoint is not None and meta.get("checkpoint") != checkpoint:
    raise ValueError(f"{meta_path}: fitted on checkpoint {meta.get('checkpoint')!r}, "
                     f"but the model comes from {checkpoint!r}; refit the matrix (task=matrix)")
  return matrix, meta



# --- The matrix task ------------------------------------------------------------------------------
def fit_for_run(workdir, *, num_samples: int = 1000, seed: int = 0, batch_size: int = 16,
                options: SolveOptions = SolveOptions(), step: int | None = None,
                data_source: str | None = None, progress: bool = True) -> dict:
  """Fits the Transform Matrix of a trained run from its own training data (docs/method.md §3).

  Samples `num_samples` parallel records (seeded), runs each non-English and English prompt
  without injection, records every layer's MLP output at the anchor, solves, and writes
  `<workdir>/matrix/` with the fit statistics and the checkpoint it belongs to.

  Returns:
    The metadata written beside the matrix.
  """
  from cc_jax import console, data, runtime, train, workdir_lock

  with workdir_lock.hold(workdir, "matrix", create=False):  # one writer of <workdir>/matrix; none while it trains
    trained = runtime.load_trained(workdir, step)
    train_config, tokenizer = trained.train_config, trained.tokenizer
    source = data_source or train_config.data.source
    records = data.load_records(source, data.SourceOptions.from_config(train_config.data), shard_index=0,
                                shard_count=1)
    picked = [records[i] for i in sample_indices(len(records), num_samples, seed)]
    fmt = data.chat_format(tokenizer, data.TokenizeOptions.from_config(train_config.data))
    rule = fmt.anchor_rule(train_config.cc.get("anchor", "last_prompt_token"))
    systems = [r.system for r in picked]
    source_prompts = fmt.encode_ids([r.prompt for r in picked], systems)
    target_prompts = fmt.encode_ids([r.prompt_en for r in picked], systems)
    anchors = [None if rule is None else [rule.find(p, r.source) for p, r in zip(prompts, picked)]
               for prompts in (source_prompts, target_prompts)]
    longest = max(len(p) for p in source_prompts + target_prompts)
    buckets = batching.prompt_buckets(longest)
    params = train.model_params(trained.params)
    pad = data.pad_token_id(tokenizer)
    with console.bar(progress, total=2 * len(picked), desc="matrix: collect") as bar:
      source_NLD = collect_activations(trained.model, params, source_prompts, pad, batch_size, buckets, bar,
                                       anchors[0])
      target_NLD = collect_activations(trained.model, params, target_prompts, pad, batch_size, buckets, bar,
                                       anchors[1])
    matrix = solve(source_NLD, target_NLD, options)
    stats = fit_statistics(source_NLD, target_NLD, matrix)
    warning = underdetermined(len(picked), source_NLD.shape[1], source_NLD.shape[2], options)
    if warning:
      logging.warning("%s", warning)
    meta = {"checkpoint": trained.checkpoint, "num_samples": len(picked), "seed": seed, "data": source,
            "options": dataclasses.asdict(options), "underdetermined": bool(warning), **stats}
    if jax.process_index() == 0:  # every process solved the same system; one writes
      save(pathlib.Path(workdir) / "matrix", matrix, meta)
    return meta
