"""JAX's persistent compilation cache, and a count of the XLA programs each invocation builds.

A second start of the same run (a resume after preemption, the demo run again, an evaluation of
another checkpoint) loads its programs from disk instead of compiling them again; an 8B train
step takes minutes to compile. JAX runs what it loads from the cache, so the cache must be a
directory only its user can write: "auto" creates one under $CC_JAX_CACHE with mode 0700, and a
directory that others can write is refused.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import stat

import jax

from cc_jax import smollm2

# jax.monitoring events: one duration per program built (compiled or loaded), one event per load.
_BUILD_EVENT = "/jax/core/compile/backend_compile_duration"
_LOAD_EVENT = "/jax/compilation_cache/cache_hits"
MAX_CACHE_BYTES = 20 << 30  # least recently used entries are evicted past this


@dataclasses.dataclass
class ProgramCounts:
  built: int = 0  # programs compiled or loaded from the cache
  loaded: int = 0  # of those, loaded from the cache
  seconds: float = 0.0  # spent building them

  @property
  def compiled(self) -> int:
    return self.built - self.loaded


COUNTS = ProgramCounts()
_cache_dir: str | None = None


def _on_duration(event: str, duration: float, **kwargs) -> None:
  if event == _BUILD_EVENT:
    COUNTS.built += 1
    COUNTS.seconds += duration


def _on_event(event: str, **kwargs) -> None:
  if event == _LOAD_EVENT:
    COUNTS.loaded += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def cache_dir_for(setting: str) -> str | None:
  """The directory `config.compilation_cache_dir` names: "" is off, "auto" is $CC_JAX_CACHE/xla."""
  if not setting:
    return None
  if setting == "auto":
    return str(smollm2.cache_root() / "xla")
  return setting if "://" in setting else str(pathlib.Path(setting).expanduser().absolute())


def _check_private(directory: pathlib.Path) -> None:
  info = directory.stat()
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
    raise ValueError(f"config.compilation_cache_dir: {directory} can be written by other users (mode "
                     f"{stat.filemode(info.st_mode)}, owner uid {info.st_uid}); JAX runs the programs it loads "
                     "from there. Use a directory only you can write, 'auto', or '' to turn the cache off")


def enable(setting: str) -> str | None:
  """Turns on the persistent cache for every program of this process; call before the first
  compilation. Returns the directory, or None when the setting turns the cache off."""
  global _cache_dir
  directory = cache_dir_for(setting)
  if directory is None:
    return None
  if "://" not in directory:  # a bucket (gs://...) is the user's to secure
    path = pathlib.Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # small programs add up too
  jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
  _cache_dir = directory
  return directory


def summary() -> str:
  """One line: how many XLA programs this process built, how many of them came from the cache."""
  where = f"loaded from the compilation cache {_cache_dir}" if _cache_dir else "loaded (compilation cache off)"
  return (f"XLA programs: {COUNTS.built} built in {COUNTS.seconds:.1f} s; {COUNTS.compiled} compiled, "
          f"{COUNTS.loaded} {where}")
