#!/usr/bin/env bash
# One machine: one process drives all its GPUs (or TPU chips), sharded by the config's mesh.
#   OUT_DIR=/runs/llama3_8b HF_MODEL=/models/Llama-3.1-8B CONFIG=configs/llama3_8b.py \
#   DATA=/data/aya_parallel.jsonl BENCH=/data/benchmarks launch/single_node.sh [--dry_run] JOB [--config.key=value ...]
# JOB is convert, train, eval or paper; the variables each needs are listed in launch/jobs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/jobs.sh

on_one() { run "$@"; }
on_all() { run "$@"; }

launch_main "$@"
