"""Logical axis names of parameters and activations, and the rules that map them to a mesh.

The model only ever names logical axes; which physical mesh axis (data, fsdp, tensor)
shards each one is decided here, overridable from `config.mesh.rules`.
"""

import math
from typing import Any, Mapping

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec
import numpy as np

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
NORM = "norm"
LAYERS = "layers"
LAYER_CHOICE = "layer_choice"  # output axis of the Decision Maker: one score per layer
LORA_RANK = "lora_rank"  # the inner axis of a LoRA adapter (a few columns: replicated)

# Activation axes.
ACT_BATCH = "act_batch"
ACT_LEN = "act_len"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical axis -> mesh axis (or None: replicated). FSDP shards the width of every weight,
# tensor parallelism shards heads, MLP width and vocabulary (Megatron-style).
DEFAULT_RULES = (
    (ACT_BATCH, BATCH_AXES),
    (ACT_LEN, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (MLP, "tensor"),
    (NORM, None),
    (LAYERS, None),
    (LAYER_CHOICE, None),
    (LORA_RANK, None),
)


def make_mesh(shape: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices.

  Devices are laid out by `jax.make_mesh`, which puts the last axis (tensor) on the
  fastest interconnect (within a host / ICI ring) and data-parallel axes across hosts.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {dict(shape)}: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"{len(devices)} are available")
  num_slices = len({getattr(d, "slice_index", None) or 0 for d in devices})
  if num_slices > 1:
    return _multi_slice_mesh(sizes, devices, num_slices)
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _multi_slice_mesh(sizes: list[int], devices: list, num_slices: int) -> jax.sharding.Mesh:
  """Devices of several TPU slices: one batch axis spans the slices over the data-center network
  (DCN), the rest stay on each slice's fast interconnect. `data` takes the slices when it can
  (it carries only the gradient all-reduce, once per step), else `fsdp`."""
  for axis in (0, 1):
    if sizes[axis] % num_slices == 0:
      break
  else:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} over {num_slices} slices: mesh.data or mesh.fsdp "
                     f"must be divisible by {num_slices}")
  dcn = [1] * len(sizes)
  dcn[axis] = num_slices
  ici = [size // d for size, d in zip(sizes, dcn)]
  logging.info("mesh over %d slices: %s across them (DCN), %s within each", num_slices, MESH_AXES[axis],
               dict(zip(MESH_AXES, ici)))
  devices_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return jax.sharding.Mesh(devices_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(overrides: Mapping[str, Any] | None = None) -> tuple:
  """DEFAULT_RULES with `config.mesh.rules` entries (logical name -> mesh axis or list) replaced."""
  rules = dict(DEFAULT_RULES)
  for name, axes in (overrides or {}).items():
    if name not in rules:
      raise ValueError(f"config.mesh.rules: unknown logical axis {name!r}; known: {sorted(rules)}")
    rules[name] = tuple(axes) if isinstance(axes, (list, tuple)) else axes
  return tuple(rules.items())


def _fits(spec: PartitionSpec, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
  """Replicates any dimension the mesh axes do not divide (e.g. 3 KV heads on tensor=2).

  jit refuses uneven input shardings; replicating that one dimension keeps every model
  runnable on every mesh at the cost of some memory, and is logged.
  """
  fixed = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    if size > 1 and dim % size:
      logging.warning("dimension of size %d is not divisible by mesh axes %s (%d); replicating it",
                      dim, names, size)
      axes = None
    fixed.append(axes)
  return PartitionSpec(*fixed)


def logical_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for a pytree whose leaves carry logical axis names (flax boxes).

  Leaves without names (step counters, optimizer counts) are replicated.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_boxed)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fits(spec, x.shape, mesh)),
                      mesh_specs, shapes, is_leaf=lambda s: isinstance(s, PartitionSpec))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of (B, ...) batch arrays: rows over data x fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


# --- Inference batches over the mesh ------------------------------------------------------------
# Evaluation and the matrix's capture pass run the same loop on every process, each holding the
# whole host batch. The rows go to the devices split over the batch axes, so each prompt is
# computed once across all processes; the results come back whole to every process.
def mesh_of(tree: Any) -> jax.sharding.Mesh | None:
  """The mesh the first NamedSharding-placed leaf of `tree` lives on; None for host arrays."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


def batch_devices(mesh: jax.sharding.Mesh | None) -> int:
  """How many ways the batch axes split a batch."""
  return 1 if mesh is None else math.prod(mesh.shape[a] for a in BATCH_AXES)


def round_up_batch(mesh: jax.sharding.Mesh | None, rows: int) -> int:
  """`rows` rounded up to a multiple of `batch_devices`, so that every device gets as many."""
  ways = batch_devices(mesh)
  return -(-rows // ways) * ways


def rows_to_devices(mesh: jax.sharding.Mesh | None, array) -> Any:
  """A (B, ...) host array that every process holds whole, as a global array whose rows are
  split over the batch axes (each process puts only its own rows on its devices)."""
  if mesh is None:
    return array
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, batch_sharding(mesh), lambda index: array[index])


def local_rows(mesh: jax.sharding.Mesh | None, batch: int) -> list[int]:
  """The rows of a `rows_to_devices` batch of `batch` rows that this process's devices compute."""
  if mesh is None:
    return list(range(batch))
  held = set()
  for index in batch_sharding(mesh).addressable_devices_indices_map((batch,)).values():
    held.update(range(*index[0].indices(batch)))
  return sorted(held)


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly multi-process) array, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
