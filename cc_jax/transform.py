"""The Transform Matrix (docs/method.md §3): collect paired anchor activations, solve X by least
squares so that S X ~ T, report the fit, save and load it with its provenance.

S and T hold every layer's MLP output at the anchor of a non-English prompt and of its English
translation. The paper stacks all samples and layers as rows and fits one D x D matrix with
lstsq (`matrix.streaming=False`). By default cc_jax accumulates the normal equations S^T S
and S^T T (float64) during collection instead, so memory is D x D whatever N, and measures
the fit on a second pass; options add ridge regularisation and one matrix per layer.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import pathlib
from typing import Iterator, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cc_jax import batching, files, sharding as sh
from cc_jax.model import Llama, left_pad_positions

MATRIX_FILE = "matrix.npy"
META_FILE = "matrix.json"


@dataclasses.dataclass(frozen=True)
class SolveOptions:
  """Attributes:
    ridge: lambda of (S^T S + lambda I)^-1 S^T T; 0 is ordinary least squares.
    per_layer: one matrix per layer (L, D, D) instead of one shared (D, D).
    streaming: accumulate the normal equations during collection (memory D x D); False
      stacks every row and solves them with lstsq (the paper's; memory N x L x D per side).
  """
  ridge: float = 0.0
  per_layer: bool = False
  streaming: bool = True


# --- Collection ---------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model",))
def capture_at_anchors(model: Llama, params, tokens_BT, mask_BT, anchor_B):
  """(L, B, D) float32 MLP outputs at columns `anchor_B` of left-padded prompts, no injection.
  One jitted function for every capture pass (non-English and English share its programs)."""
  out = model.apply({"params": params}, tokens_BT, left_pad_positions(mask_BT), mask_BT, capture_at_B=anchor_B,
                    compute_logits=False)
  return out.captured_LBD.astype(jnp.float32)


class Capture:
  """Every layer's MLP output at each prompt's anchor, without injection.

  Prompts are left-padded to a few bucket lengths so that only a handful of programs compile;
  the last batch is padded with copies that are then dropped. Every process runs the same
  batches, whose rows are split over the mesh's batch axes (each prompt is computed once, on
  one device), and gets every row back; `rows_captured` counts this process's prompts.
  """

  def __init__(self, model: Llama, params, pad_id: int, batch_size: int = 16,
               buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048)):
    self.model, self.params, self.pad_id, self.buckets = model, params, pad_id, buckets
    self.mesh = sh.mesh_of(params)
    self.batch_size = sh.round_up_batch(self.mesh, batch_size)
    self.rows_captured = 0

  def batches(self, prompts: Sequence[Sequence[int]], anchors: Sequence[int] | None = None,
              progress=None) -> Iterator[np.ndarray]:
    """(b, L, D) float32 activations of consecutive chunks of `prompts`, in order.

    Args:
      anchors: the anchor's index in each prompt; None: the last token (cc_jax's anchor).
    """
    size = self.batch_size
    mine = sh.local_rows(self.mesh, size)
    rows = functools.partial(sh.rows_to_devices, self.mesh)
    for start in range(0, len(prompts), size):
      chunk = list(prompts[start:start + size])
      where = list(anchors[start:start + size]) if anchors is not None else [len(p) - 1 for p in chunk]
      real = len(chunk)
      chunk += [chunk[-1]] * (size - real)  # fixed batch shape
      where += [where[-1]] * (size - real)
      padded = batching.left_pad_prompts(chunk, self.pad_id, self.buckets)
      tokens, mask = padded["input_ids"], padded["attention_mask"]
      T = tokens.shape[1]
      anchor_B = np.asarray([T - len(p) + a for p, a in zip(chunk, where)], np.int32)
      acts_LBD = sh.to_host(capture_at_anchors(self.model, self.params, rows(tokens), rows(mask), rows(anchor_B)))
      self.rows_captured += sum(j < real for j in mine)
      if progress is not None:
        progress.update(real)
      yield np.swapaxes(acts_LBD, 0, 1)[:real]


def collect_activations(model: Llama, params, prompts: Sequence[Sequence[int]], pad_id: int,
                        batch_size: int = 16, buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                        progress=None, anchors: Sequence[int] | None = None) -> np.ndarray:
  """`Capture` of all `prompts` at once: (N, L, D) float32, rows in the order of `prompts`."""
  return np.concatenate(list(Capture(model, params, pad_id, batch_size, buckets).batches(prompts, anchors, progress)))


def sample_indices(n_available: int, n: int, seed: int) -> np.ndarray:
  """N distinct indices drawn with a seeded generator (all of them when N >= available)."""
  if n >= n_available:
    return np.arange(n_available)
  return np.sort(np.random.default_rng(seed).choice(n_available, size=n, replace=False))


# --- Solving --------------------------------------------------------------------------------------
class NormalEquations:
  """S^T S and S^T T summed over chunks of pairs, so that memory does not grow with N: shared
  (D, D), or per layer (L, D, D). Kept and solved in float64 on the host (JAX computes in
  float32): solving normal equations squares the conditioning of S, which float64 absorbs."""

  def __init__(self, num_layers: int, width: int, per_layer: bool = False):
    shape = (num_layers, width, width) if per_layer else (width, width)
    self.per_layer = per_layer
    self.sts, self.stt = np.zeros(shape), np.zeros(shape)

  def add(self, source_NLD: np.ndarray, target_NLD: np.ndarray) -> None:
    s, t = np.asarray(source_NLD, np.float64), np.asarray(target_NLD, np.float64)
    if self.per_layer:
      self.sts += np.einsum("nld,nle->lde", s, s)
      self.stt += np.einsum("nld,nle->lde", s, t)
    else:
      s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
      self.sts += s.T @ s
      self.stt += s.T @ t

  def solve(self, ridge: float = 0.0) -> np.ndarray:
    """X = (S^T S + ridge I)^-1 S^T T; lstsq keeps it defined (minimum norm) when S^T S is singular."""
    eye = ridge * np.eye(self.sts.shape[-1])
    if self.per_layer:
      matrix = np.stack([np.linalg.lstsq(a + eye, b, rcond=None)[0] for a, b in zip(self.sts, self.stt)])
    else:
      matrix = np.linalg.lstsq(self.sts + eye, self.stt, rcond=None)[0]
    return matrix.astype(np.float32)


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
          chunk_pairs: int = 256) -> np.ndarray:
  """The Transform Matrix of stacked activations: (D, D) shared by all layers, or (L, D, D)
  with per_layer; `options.streaming` solves their normal equations, fed `chunk_pairs` at a time."""
  n, num_layers, d = source_NLD.shape
  if target_NLD.shape != source_NLD.shape:
    raise ValueError(f"source {source_NLD.shape} and target {target_NLD.shape} activations differ in shape")
  if options.streaming:
    equations = NormalEquations(num_layers, d, options.per_layer)
    for start in range(0, n, chunk_pairs):
      equations.add(source_NLD[start:start + chunk_pairs], target_NLD[start:start + chunk_pairs])
    return equations.solve(options.ridge)
  if options.per_layer:
    return np.stack([np.asarray(solve_rows(source_NLD[:, l], target_NLD[:, l], options.ridge))
                     for l in range(num_layers)])
  return np.asarray(solve_rows(source_NLD.reshape(n * num_layers, d), target_NLD.reshape(n * num_layers, d),
                               options.ridge))


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


class FitStatistics:
  """MSE and R^2 of a matrix's fit, overall and per layer, summed over chunks of pairs (float64)."""

  def __init__(self, matrix: np.ndarray, num_layers: int):
    self.matrix = np.asarray(matrix, np.float64)
    self.n = 0
    self.error_L, self.sum_squares_L = np.zeros(num_layers), np.zeros(num_layers)
    self.sum_LD = None

  def add(self, source_NLD: np.ndarray, target_NLD: np.ndarray) -> None:
    s, t = np.asarray(source_NLD, np.float64), np.asarray(target_NLD, np.float64)
    pred = np.einsum("nld,lde->nle", s, self.matrix) if self.matrix.ndim == 3 else s @ self.matrix
    self.error_L += ((pred - t) ** 2).sum(axis=(0, 2))
    self.sum_squares_L += (t ** 2).sum(axis=(0, 2))
    self.sum_LD = t.sum(axis=0) + (0 if self.sum_LD is None else self.sum_LD)
    self.n += len(t)

  def result(self) -> dict:
    width = self.sum_LD.shape[1]
    # each layer's squared deviations from its per-dimension mean over the N pairs
    centred_L = self.sum_squares_L - (self.sum_LD ** 2).sum(axis=1) / self.n
    r2_L = 1.0 - self.error_L / np.maximum(centred_L, 1e-30)
    return {"mse": float(self.error_L.sum() / (self.n * len(self.error_L) * width)),
            "r2": float(1.0 - self.error_L.sum() / max(centred_L.sum(), 1e-30)),
            "mse_per_layer": (self.error_L / (self.n * width)).tolist(), "r2_per_layer": r2_L.tolist()}


def fit_statistics(source_NLD: np.ndarray, target_NLD: np.ndarray, matrix: np.ndarray) -> dict:
  """`FitStatistics` of stacked activations."""
  stats = FitStatistics(matrix, source_NLD.shape[1])
  stats.add(source_NLD, target_NLD)
  return stats.result()


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
    capture = Capture(trained.model, train.model_params(trained.params), data.pad_token_id(tokenizer), batch_size,
                      batching.prompt_buckets(longest))
    cfg = trained.model.cfg

    def pairs(bar):  # (source, target) activations, batch by batch
      return zip(capture.batches(source_prompts, anchors[0], bar), capture.batches(target_prompts, anchors[1], bar))

    if options.streaming:  # memory independent of N; the fit is measured on a second pass
      equations = NormalEquations(cfg.num_layers, cfg.hidden_size, options.per_layer)
      with console.bar(progress, total=2 * len(picked), desc="matrix: collect") as bar:
        for source_BLD, target_BLD in pairs(bar):
          equations.add(source_BLD, target_BLD)
      matrix = equations.solve(options.ridge)
      statistics = FitStatistics(matrix, cfg.num_layers)
      with console.bar(progress, total=2 * len(picked), desc="matrix: measure the fit") as bar:
        for source_BLD, target_BLD in pairs(bar):
          statistics.add(source_BLD, target_BLD)
      stats = statistics.result()
    else:  # the paper's lstsq on all rows stacked: N x L x D activations per side in memory
      with console.bar(progress, total=2 * len(picked), desc="matrix: collect") as bar:
        source_NLD, target_NLD = (np.concatenate(side) for side in zip(*pairs(bar)))
      matrix = solve(source_NLD, target_NLD, options)
      stats = fit_statistics(source_NLD, target_NLD, matrix)
    logging.info("process %d of %d captured %d of the %d prompts", jax.process_index(), jax.process_count(),
                 capture.rows_captured, (2 if options.streaming else 1) * len(source_prompts + target_prompts))
    warning = underdetermined(len(picked), cfg.num_layers, cfg.hidden_size, options)
    if warning:
      logging.warning("%s", warning)
    meta = {"checkpoint": trained.checkpoint, "num_samples": len(picked), "seed": seed, "data": source,
            "options": dataclasses.asdict(options), "underdetermined": bool(warning), **stats}
    if jax.process_index() == 0:  # every process solved the same system; one writes
      save(pathlib.Path(workdir) / "matrix", matrix, meta)
    return meta
