"""A newcomer's path through the CLI: train a tiny run, fit its Transform Matrix, evaluate it on
a small local benchmark directory, and find the JSON, table and chart."""

import json
import pathlib
import subprocess
import sys

from cc_jax import benchmarks, loop, report
from tests.test_loop import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
XNLI_PROMPT = ("Premise: {p}\nHypothesis: {h}\n\nWhat do you think is the relationship between the premise and "
               "the hypothesis?\n\n(1) Entailment\n(2) Neutral\n(3) Contradiction\n\nIf you have to choose one of "
               "these options, your answer would be:")


def small_benchmark_dir(root: pathlib.Path) -> pathlib.Path:
  examples = []
  for lang in ("en", "ar", "zh"):
    for i in range(3):
      examples.append(benchmarks.EvalExample(
          "XNLI", lang, i, XNLI_PROMPT.format(p=f"A man reads {i} books.", h="A person reads."), "1", "choice",
          ("Entailment", "Neutral", "Contradiction"), ("1", "2", "3")))
      examples.append(benchmarks.EvalExample("MKQA", lang, i, f"What is {i} plus 2?", (str(i + 2),), "qa"))
  benchmarks.write_local(root, examples)
  return root


def cli(workdir, *flags):
  done = subprocess.run([sys.executable, "-m", "cc_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                         "--config.log.progress_bar=false", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  return done.stdout


def test_matrix_then_eval_writes_json_table_and_chart(tmp_path):
  workdir = tmp_path / "run"
  loop.train_loop(tiny_config(**{"optim.max_steps": 3}), workdir)
  bench = small_benchmark_dir(tmp_path / "bench")

  out = cli(workdir, "--config.task=matrix", "--config.matrix.num_samples=32")
  assert "Transform Matrix from 32 pairs" in out
  meta = json.loads((workdir / "matrix" / "matrix.json").read_text())
  assert meta["checkpoint"].endswith("checkpoints/3") and meta["shape"] == [64, 64]

  eval_flags = (f"--config.eval.source={bench}", "--config.eval.benchmarks=('XNLI','MKQA')",
                "--config.eval.max_new_tokens=6", "--config.eval.batch_size=4")
  out = cli(workdir, "--config.task=eval", "--config.eval.modes=('plain','matrix','oracle')", *eval_flags)
  assert "predictions scored" in out
  eval_dir = workdir / "eval"
  results = {(r["method"], r["benchmark"]): r for r in report.read_results(eval_dir)}
  assert set(results) == {(m, b) for m in ("cc-plain", "cc-matrix", "cc-oracle") for b in ("XNLI", "MKQA")}
  predictions = report.read_predictions(eval_dir)
  assert len(predictions) == 3 * 2 * 9
  table = (eval_dir / "results.md").read_text()
  assert "cc-matrix" in table and "XNLI" in table and "MKQA" in table
  assert (eval_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  again = cli(workdir, "--config.task=eval", "--config.eval.modes=('matrix',)", *eval_flags,
              f"--config.eval.out_dir={tmp_path / 'e2'}")
  assert "predictions scored" in again
  first = {(p.benchmark, p.lang, p.index): p.prediction for p in predictions if p.method == "cc-matrix"}
  second = {(p.benchmark, p.lang, p.index): p.prediction for p in report.read_predictions(tmp_path / "e2")}
  assert first == second, "evaluation must be deterministic"


def test_generate_task_replies_like_transformers(smollm2_hf):
  """`task=generate` on SmolLM2 prints transformers' greedy reply to the same chat prompt."""
  import torch
  hf_model, tokenizer = smollm2_hf
  prompt = "What is 7 times 6?"
  ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)["input_ids"]
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0)
  expected = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
  done = subprocess.run([sys.executable, "-m", "cc_jax.main", "--config=configs/smollm2.py", "--config.task=generate",
                         f"--config.generate.prompt={prompt}", "--config.generate.max_new_tokens=12"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == expected and expected
