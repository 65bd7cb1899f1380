"""LLaMA-Factory 0.9.1's own template module, the reference for cc_jax's named templates.

The package pins transformers<=4.46.1, so it cannot be installed beside this project's
transformers; its template module does not need that version. The wheel (pure Python) is
fetched from PyPI once into $CC_JAX_CACHE, checked against a pinned sha256 and imported from
the zip without running the package's __init__ files (which import its trainers): only
llamafactory/data/template.py and what it imports (formatter, tool_utils, mm_plugin,
data_utils, extras.logging, extras.constants, extras.packages) are loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import pathlib
import subprocess
import sys
import tempfile
import types

from cc_jax import smollm2

WHEEL_SPEC = "llamafactory==0.9.1"
WHEEL_NAME = "llamafactory-0.9.1-py3-none-any.whl"
WHEEL_SHA256 = "203d014c42a21b6543894380240457066e6326b61490261f03b7ce077db85b15"
IGNORE_INDEX = -100


def fetch_wheel() -> pathlib.Path:
  target = smollm2.cache_root() / "llamafactory" / WHEEL_NAME
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
    wheel = pathlib.Path(tmp) / WHEEL_NAME
    if (digest := hashlib.sha256(wheel.read_bytes()).hexdigest()) != WHEEL_SHA256:
      raise RuntimeError(f"{WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}")
    wheel.replace(target)
  return target


def template_module():
  """llamafactory.data.template of LLaMA-Factory 0.9.1."""
  name = "llamafactory.data.template"
  if name in sys.modules:
    return sys.modules[name]
  wheel = str(fetch_wheel())
  sys.path.insert(0, wheel)
  for package in ("llamafactory", "llamafactory.data", "llamafactory.extras"):
    module = types.ModuleType(package)  # an empty package: its __init__ would import the trainers
    module.__path__ = [f"{wheel}/{package.replace('.', '/')}"]
    sys.modules[package] = module
  return importlib.import_module(name)


def fix_tokenizer(tokenizer, template_name: str):
  """LLaMA-Factory's get_template_and_fix_tokenizer (replaces the eos with the template's stop
  word, adds further stop words). transformers 5 renamed one keyword it passes
  (replace_additional_special_tokens -> replace_extra_special_tokens); it is renamed back here."""
  add = type(tokenizer).add_special_tokens

  def add_special_tokens(tokens, replace_additional_special_tokens=True):
    return add(tokenizer, tokens, replace_extra_special_tokens=replace_additional_special_tokens)
  tokenizer.add_special_tokens = add_special_tokens
  return template_module().get_template_and_fix_tokenizer(tokenizer, args(template_name))


def args(template_name: str):
  """The data arguments `get_template_and_fix_tokenizer` reads."""
  return types.SimpleNamespace(template=template_name, train_on_prompt=False, tool_format=None)


def encode(tokenizer, template_name: str, prompt: str, response: str, system: str | None, cutoff_len: int):
  """LLaMA-Factory's SFT preprocessing of one alpaca record: (input_ids, labels), after
  `get_template_and_fix_tokenizer` (which may replace the tokenizer's eos, as in training)."""
  template_module()  # installs the package stubs the next import needs
  supervised = importlib.import_module("llamafactory.data.processors.supervised")
  template = fix_tokenizer(tokenizer, template_name)
  return supervised._encode_supervised_example(  # pylint: disable=protected-access
      prompt=[{"role": "user", "content": prompt}], response=[{"role": "assistant", "content": response}],
      system=system, tools=None, images=[], videos=[], template=template, tokenizer=tokenizer, processor=None,
      cutoff_len=cutoff_len, train_on_prompt=False, mask_history=False)
