"""XLA options cc_jax sets for its own processes on CPU-only machines.

jaxlib 0.10's XLA:CPU routes dots and element-wise fusions through YNNPACK. For the small
matrix products of batched decoding (a batch of 1-32 rows against a weight matrix) that
path is 1.5-1.9x slower than XLA's own kernels (SmolLM2 decode step, 2 cores: batch 1
46 -> 31 ms, batch 16 207 -> 110 ms; training steps unchanged; docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
from typing import MutableMapping

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}  # "" turns off every YNNPACK fusion kind


def accelerator_plugins() -> list[str]:
  """Installed packages that give JAX a GPU or TPU backend, found the way JAX finds them
  (modules of the `jax_plugins` namespace package and `jax_plugins` entry points), plus
  the CUDA plugin modules and libtpu that jaxlib imports by name."""
  found = [m for m in ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin") if _installed(m)]
  try:
    import jax_plugins  # a namespace package; importing it loads no plugin
    found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  found += [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  return found


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def cpu_only(environ: MutableMapping[str, str] = os.environ) -> bool:
  """True when JAX will run on the CPU: JAX_PLATFORMS=cpu, or no accelerator plugin installed.
  The options are set only then: an XLA build for an accelerator that does not know an
  option in XLA_FLAGS aborts."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms == "cpu"
  return not accelerator_plugins()


def set_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Appends CPU_FLAGS to XLA_FLAGS on a CPU-only machine, keeping any value the user set.

  Call before JAX creates its backend (the first computation); later calls have no effect
  on the running process. Returns the options it added.
  """
  return add_flags(CPU_FLAGS, environ) if cpu_only(environ) else []


def add_flags(options: dict[str, str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Appends each `--name=value` of `options` to XLA_FLAGS unless XLA_FLAGS already names the
  option. Returns the options it added."""
  current = environ.get("XLA_FLAGS", "")
  added = [f"{name}={value}" for name, value in options.items() if name not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
