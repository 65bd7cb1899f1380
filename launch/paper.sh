#!/usr/bin/env bash
# The paper's experiment for one model on one machine: convert the weights, train vanilla SFT
# and CC-Tuning on the same data, fit the Transform Matrix, and evaluate both on the six benchmarks.
#
#   launch/paper.sh PRESET HF_MODEL_DIR DATA BENCH_DIR OUT_DIR [--config.key=value ...]
#
# PRESET is a configs/ file (e.g. configs/llama3_8b.py); DATA the parallel SFT data (JSONL,
# dataset_info.json, ...); BENCH_DIR a local benchmark root or "hub". It is
# `launch/single_node.sh paper`; slurm_gpu.sbatch and tpu_pod.sh run the same job on a cluster.
set -euo pipefail
usage="usage: launch/paper.sh PRESET HF_MODEL_DIR DATA BENCH_DIR OUT_DIR [--config.key=value ...]"
(( $# >= 5 )) || { echo "$usage" >&2; exit 2; }
CONFIG=$1 HF_MODEL=$2 DATA=$3 BENCH=$4 OUT_DIR=$5 exec "$(dirname "$0")/single_node.sh" paper "${@:6}"
