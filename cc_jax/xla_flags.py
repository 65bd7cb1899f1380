"""XLA options cc_jax sets for its own processes on CPU-only machines.

jaxlib 0.10's XLA:CPU routes dots and element-wise fusions through YNNPACK. For the small
matrix products of batched decoding (a batch of 1-32 rows against a weight matrix) that
path is 1.5-1.9x slower than XLA's own kernels (SmolLM2 decode step, 2 cores: batch 1
46 -> 31 ms, batch 16 207 -> 110 ms; training steps unchanged; docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import os
from typing import MutableMapping

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}  # "" turns off every YNNPACK fusion kind

# Plugins that give JAX an accelerator backend. Their XLA builds may not know the CPU options
# (an unknown option in XLA_FLAGS aborts), so the options are set only where none is installed.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                        "libtpu", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a dotted name whose parent package is missing
    return False


def cpu_only(environ: MutableMapping[str, str] = os.environ) -> bool:
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms == "cpu"
  return not any(_installed(m) for m in _ACCELERATOR_PLUGINS)


def set_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Appends CPU_FLAGS to XLA_FLAGS on a CPU-only machine, keeping any value the user set.

  Call before JAX creates its backend (the first computation); later calls have no effect
  on the running process. Returns the options it added.
  """
  if not cpu_only(environ):
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f"{name}={value}" for name, value in CPU_FLAGS.items() if name not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
