"""The cluster launch scripts: they parse, print under --dry_run exactly what they would run,
refuse missing settings by name, and the SLURM script runs a real two-process job.

SLURM and gcloud are not on this machine. The two-process job replaces only `srun` with a
stand-in that starts the tasks here with the variables SLURM gives each task; the script, JAX's
own SLURM detection and cc_jax's conversion and training are the real ones."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.test_multihost import free_port
from tests.test_pipeline import small_benchmark_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("launch/*.sbatch")])
EXPERIMENT = dict(OUT_DIR="/runs/llama3_8b", HF_MODEL="/models/Llama-3.1-8B", CONFIG="configs/llama3_8b.py",
                  DATA="/data/aya parallel.jsonl", BENCH="/data/benchmarks")
TPU = dict(TPU_NAME="my-v6e", ZONE="europe-west4-a")


def launch(script: str, *args: str, cwd=None, **env) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in {*EXPERIMENT, *TPU}}
  return subprocess.run(["bash", str(REPO / "launch" / script), *args], env={**clean, **env}, cwd=cwd or "/",
                        capture_output=True, text=True, timeout=600)


def dry_run(script: str, *args: str, **env) -> list[str]:
  done = launch(script, "--dry_run", *args, **env)
  assert done.returncode == 0, done.stderr
  return done.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
  done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr


def test_single_node_runs_each_job_as_one_process():
  train = ("+ python -m cc_jax.main --config=configs/llama3_8b.py --workdir=/runs/llama3_8b/sft --config.task=train "
           "--config.cc.method=sft --config.model.path=/runs/llama3_8b/model "
           "'--config.data.source=/data/aya parallel.jsonl' --config.optim.max_steps=3")
  assert dry_run("single_node.sh", "train", "--config.optim.max_steps=3", METHOD="sft", **EXPERIMENT) == [train]
  assert dry_run("single_node.sh", "convert", **EXPERIMENT) == [
      "+ python launch/convert.py --from=hf --src=/models/Llama-3.1-8B --out=/runs/llama3_8b/model --dtype=bfloat16"]
  # an sft run is evaluated plain, a cc run through its Transform Matrix unless MODES says otherwise
  assert dry_run("single_node.sh", "eval", METHOD="sft", **EXPERIMENT) == [
      "+ launch/eval.sh /runs/llama3_8b/sft /data/benchmarks plain --config.eval.out_dir=/runs/llama3_8b/eval"]
  assert dry_run("single_node.sh", "eval", MODES="matrix,oracle", **EXPERIMENT) == [
      "+ launch/eval.sh /runs/llama3_8b/cc /data/benchmarks matrix,oracle --config.eval.out_dir=/runs/llama3_8b/eval"]


def pipeline(method: str, *flags: str) -> str:
  """The command line of one method's train, matrix and evaluation in the paper job."""
  return " ".join(["python -m cc_jax.main --config=configs/llama3_8b.py", f"--workdir=/runs/llama3_8b/{method}",
                   "--config.task=pipeline", f"--config.cc.method={method}",
                   "--config.model.path=/runs/llama3_8b/model",
                   "'--config.data.source=/data/aya parallel.jsonl'", "--config.eval.source=/data/benchmarks",
                   "--config.eval.out_dir=/runs/llama3_8b/eval", *flags])


def quoted(command: str) -> str:
  """COMMAND as it reads inside the single quotes of --command='...'."""
  return command.replace("'", "'\\''")


CONVERT = "python launch/convert.py --from=hf --src=/models/Llama-3.1-8B --out=/runs/llama3_8b/model --dtype=bfloat16"
TABLE = "comparison table: /runs/llama3_8b/eval/results.md, chart: /runs/llama3_8b/eval/results.png"


def test_paper_sh_is_the_single_node_paper_job():
  lines = dry_run("single_node.sh", "paper", "--config.seed=1", **EXPERIMENT)
  assert lines == [f"+ {CONVERT}", f"+ {pipeline('sft', '--config.seed=1')}", f"+ {pipeline('cc', '--config.seed=1')}",
                   TABLE]
  e = EXPERIMENT
  done = launch("paper.sh", e["CONFIG"], e["HF_MODEL"], e["DATA"], e["BENCH"], e["OUT_DIR"], "--config.seed=1",
                DRY_RUN="1")
  assert done.returncode == 0 and done.stdout.splitlines() == lines, done.stderr
  short = launch("paper.sh", e["CONFIG"], e["HF_MODEL"])
  assert short.returncode == 2 and "usage: launch/paper.sh PRESET HF_MODEL_DIR DATA BENCH_DIR OUT_DIR" in short.stderr


def test_slurm_converts_once_and_runs_every_task(tmp_path):
  assert dry_run("slurm_gpu.sbatch", "paper", **EXPERIMENT) == [  # a node's process drives all its GPUs
      f"+ srun --nodes=1 --ntasks=1 {CONVERT}",
      "+ export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", f"+ srun --kill-on-bad-exit=1 {pipeline('sft')}",
      "+ export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", f"+ srun --kill-on-bad-exit=1 {pipeline('cc')}", TABLE]
  model = tmp_path / "model"
  model.mkdir()
  (model / "cc_jax.json").write_text("{}")  # converted already: not again
  assert dry_run("slurm_gpu.sbatch", "convert", **{**EXPERIMENT, "MODEL_DIR": str(model)}) == [
      f"{model} holds a converted model: conversion skipped"]
  # a process per GPU: JAX picks each task's GPU from SLURM_LOCALID itself
  per_gpu = dry_run("slurm_gpu.sbatch", "eval", SLURM_NTASKS_PER_NODE="4", GPUS_PER_NODE="4", **EXPERIMENT)
  assert per_gpu == ["+ srun --kill-on-bad-exit=1 launch/eval.sh /runs/llama3_8b/cc /data/benchmarks matrix "
                     "--config.eval.out_dir=/runs/llama3_8b/eval"]
  # sbatch --ntasks=16 --nodes=2 sets no per-node count: 8 per node, a process per GPU
  assert dry_run("slurm_gpu.sbatch", "eval", SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2", **EXPERIMENT) == per_gpu
  odd = launch("slurm_gpu.sbatch", "--dry_run", "train", SLURM_NTASKS_PER_NODE="3", **EXPERIMENT)
  assert odd.returncode == 2
  assert "--ntasks-per-node=3: use 1 (a process per node) or 8 (a process per GPU)" in odd.stderr


def test_tpu_pod_converts_on_worker_zero_and_trains_on_all():
  lines = dry_run("tpu_pod.sh", "paper", **EXPERIMENT, **TPU, PROJECT="p")
  ssh = "+ gcloud compute tpus tpu-vm ssh my-v6e --zone=europe-west4-a --project=p"
  remote = "cd ~/cc_jax && . ~/cc_jax-venv/bin/activate &&"
  assert lines == [f"{ssh} --worker=0 '--command={remote} {CONVERT}'",
                   f"{ssh} --worker=all '--command={remote} {quoted(pipeline('sft'))}'",
                   f"{ssh} --worker=all '--command={remote} {quoted(pipeline('cc'))}'", TABLE]
  assert dry_run("tpu_pod.sh", "setup", **TPU, REPO_DIR="/opt/cc_jax") == [
      "+ gcloud compute tpus tpu-vm ssh my-v6e --zone=europe-west4-a --worker=all '--command=cd /opt/cc_jax && "
      "python3 -m venv ~/cc_jax-venv && ~/cc_jax-venv/bin/pip install -r requirements-tpu.txt'"]


@pytest.mark.parametrize("script,job,env,message", [
    ("single_node.sh", "train", dict(OUT_DIR="/r", CONFIG="c.py"), "JOB=train needs DATA: the parallel SFT data"),
    ("slurm_gpu.sbatch", "paper", {}, "JOB=paper needs OUT_DIR: the experiment's shared output directory"),
    ("tpu_pod.sh", "eval", dict(OUT_DIR="/r", BENCH="hub"), "JOB=eval needs TPU_NAME: the TPU VM's name"),
    ("single_node.sh", "train", dict(EXPERIMENT, METHOD="lora"), "METHOD=lora: use cc or sft"),
    ("single_node.sh", "tain", {}, "with JOB one of: convert train eval paper"),
    ("single_node.sh", "convert --config.x=1", EXPERIMENT, "JOB=convert takes no --config flags"),
    ("tpu_pod.sh", "", TPU, "with JOB one of: convert train eval paper setup"),
])
def test_missing_or_wrong_setting_is_named_and_nothing_runs(script, job, env, message):
  for args in (("--dry_run", *job.split()), tuple(job.split())):
    done = launch(script, *args, **env)
    assert done.returncode == 2 and message in done.stderr and done.stdout == "", (done.stdout, done.stderr)


def test_slurm_script_outside_a_job_says_how_to_submit_it():
  done = launch("slurm_gpu.sbatch", "train", **EXPERIMENT)
  assert done.returncode == 2 and "not inside a SLURM job: submit it with sbatch" in done.stderr


# Starts `srun`'s tasks on this machine, each with the variables SLURM sets for a task, and stops
# the others when one fails (as --kill-on-bad-exit does).
FAKE_SRUN = r'''#!PYTHON
import os, subprocess, sys, time
args = sys.argv[1:]
opts = {}
while args[0].startswith("--"):
  key, _, value = args.pop(0)[2:].partition("=")
  opts[key] = value
ntasks = int(opts.get("ntasks", os.environ["SLURM_NTASKS"]))
nodes = int(opts.get("nodes", os.environ["SLURM_JOB_NUM_NODES"]))
per_node = ntasks // nodes
with open(os.environ["SRUN_LOG"], "a") as log:
  log.write(f"{ntasks} tasks: {' '.join(args)}\n")
procs = [subprocess.Popen(args, env={**os.environ, "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(i),
                                     "SLURM_LOCALID": str(i % per_node), "SLURM_NODEID": str(i // per_node),
                                     "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_NODELIST": "localhost"})
         for i in range(ntasks)]
while any(p.poll() is None for p in procs):
  if any(p.returncode for p in procs):
    for p in procs:
      p.poll() is None and p.kill()
  time.sleep(0.2)
sys.exit(max(p.returncode for p in procs))
'''


def test_slurm_job_converts_once_then_trains_and_evaluates_with_two_processes(tmp_path, smollm2_dir):
  import torch
  import transformers

  from cc_jax import demo_data, report, runtime
  from configs import tiny

  torch.manual_seed(0)  # a model of the tiny preset's shape, in Hugging Face's format
  hf_config = transformers.LlamaConfig(**runtime.model_config(tiny.get_config()).to_hf())
  transformers.LlamaForCausalLM(hf_config).save_pretrained(tmp_path / "hf")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN.replace("PYTHON", sys.executable))
  (bin_dir / "srun").chmod(0o755)
  job = dict(  # two nodes with one process each, as sbatch --nodes=2 --ntasks-per-node=1 sets them
      PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2",
      SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_SUBMIT_DIR=str(REPO), GPUS_PER_NODE="2",
      JAX_COORDINATOR_PORT=str(free_port()), JAX_PLATFORMS="cpu", SRUN_LOG=str(tmp_path / "srun.log"),
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      OUT_DIR=str(tmp_path / "exp"), HF_MODEL=str(tmp_path / "hf"), CONFIG="configs/tiny.py",
      DATA=str(demo_data.TRAIN_FILE), BENCH=str(small_benchmark_dir(tmp_path / "bench")))
  logs = {}
  for args in (["convert"], ["train", "--config.optim.max_steps=2", "--config.log.progress_bar=false"],
               ["eval", "--config.log.progress_bar=false", "--config.matrix.num_samples=64",
                "--config.eval.benchmarks=('XNLI',)", "--config.eval.max_new_tokens=4"]):
    done = launch("slurm_gpu.sbatch", *args, cwd=tmp_path, **job)
    logs[args[0]] = done.stdout + done.stderr
    assert done.returncode == 0, logs[args[0]][-4000:]
  for i in range(2):  # each task joined through SLURM's variables, with its node's two devices
    assert f"process {i} of 2, 2 local / 4 global devices" in logs["train"], logs["train"][-4000:]
  steps = (tmp_path / "srun.log").read_text().splitlines()
  assert [line.split(":")[0] for line in steps] == ["1 tasks", "2 tasks", "2 tasks"]
  assert steps[0].startswith("1 tasks: python launch/convert.py")
  exp = tmp_path / "exp"
  run = json.loads((exp / "cc" / "run.json").read_text())
  assert run["config"]["model"]["path"] == str(exp / "model")
  metrics = [json.loads(l) for l in (exp / "cc" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2]
  assert (exp / "cc" / "matrix" / "matrix.npy").exists()  # eval fitted the cc run's matrix first
  predictions = report.read_predictions(exp / "eval")  # 3 languages x 3 XNLI items, written once
  assert len(predictions) == 9 and {p.method for p in predictions} == {"cc-matrix"}


def test_gpu_check_dry_run_runs_every_part_and_writes_nothing():
  benchmarks = (REPO / "docs" / "benchmarks.md").read_text()
  done = subprocess.run(["bash", str(REPO / "launch" / "gpu_check.sh"), "--dry_run"], capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  out = done.stdout
  assert "cpu float32 against CPU float32: max |diff| / max |logit| 0.0e+00, top-1 agreement 100.0%" in out
  assert re.search(r"cpu bfloat16 against CPU float32: max \|diff\| / max \|logit\| \d\.\de-0[1-3]", out), out
  assert re.search(r"sft: \d+ ms/step, [\d,]+ tokens/s, MFU n/a on a CPU", out), out
  assert re.search(r"cc/sft step time: \d\.\d{3} \(arithmetic floor 1\.167\)", out), out
  assert re.search(r"plain \d+ ms, cc \d+ ms, cc/plain \d\.\d{3}", out), out
  assert (REPO / "docs" / "benchmarks.md").read_text() == benchmarks
