#!/usr/bin/env bash
# A Cloud TPU VM slice (any number of workers), driven from your own machine through gcloud:
#   TPU_NAME=my-v6e ZONE=europe-west4-a OUT_DIR=/shared/runs/llama3_8b HF_MODEL=/shared/models/Llama-3.1-8B \
#   CONFIG=configs/llama3_8b.py DATA=/shared/data/aya_parallel.jsonl BENCH=/shared/benchmarks \
#   launch/tpu_pod.sh [--dry_run] JOB [--config.key=value ...]
# JOB is setup, convert, train, eval or paper; the variables each needs are listed in launch/jobs.sh.
# Here also: TPU_NAME, ZONE, PROJECT (optional); REPO_DIR, the cc_jax checkout on every worker
# (default ~/cc_jax), and VENV, the virtual environment `setup` makes on each (default
# ~/cc_jax-venv), both as the workers' shell reads them. Paths in OUT_DIR, HF_MODEL, DATA and
# BENCH are on the workers and must be the same storage for all of them (Filestore, gcsfuse).
# `setup` installs requirements-tpu.txt on every worker; conversion runs on worker 0 alone; the
# other jobs run on all workers at once, where JAX finds the slice itself (jax.distributed).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/jobs.sh

EXTRA_JOBS="setup"
for job in $JOBS $EXTRA_JOBS; do NEEDS[$job]="TPU_NAME ZONE ${NEEDS[$job]:-}"; done
MEANS[TPU_NAME]="the TPU VM's name (gcloud compute tpus tpu-vm list)"
MEANS[ZONE]="the TPU VM's zone, e.g. europe-west4-a"
REPO_DIR=${REPO_DIR:-"~/cc_jax"}
VENV=${VENV:-"~/cc_jax-venv"}

gcloud_ssh() {  # WORKERS COMMAND_LINE
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
    --worker="$1" --command="cd $REPO_DIR && $2"
}
on_one() { gcloud_ssh 0 ". $VENV/bin/activate && $(quote_words "$@")"; }
on_all() { gcloud_ssh all ". $VENV/bin/activate && $(quote_words "$@")"; }
model_is_converted() {  # asks worker 0: the model lies on the workers' storage, not here
  [[ "$DRY_RUN" != 1 ]] && gcloud_ssh 0 "test -f $(quote_words "$MODEL_DIR/cc_jax.json")"
}
setup_job() { gcloud_ssh all "python3 -m venv $VENV && $VENV/bin/pip install -r requirements-tpu.txt"; }

launch_main "$@"
