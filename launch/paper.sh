#!/usr/bin/env bash
# The paper's experiment for one model: convert the weights, train vanilla SFT and CC-Tuning on
# the same data, fit the Transform Matrix, and evaluate both on the six benchmarks.
#
#   launch/paper.sh PRESET HF_MODEL_DIR DATA BENCH_DIR OUT_DIR [--config.key=value ...]
#
# PRESET is a configs/ file (e.g. configs/llama3_8b.py); DATA the parallel SFT data (JSONL,
# dataset_info.json, ...); BENCH_DIR a local benchmark root or "hub". On a multi-host GPU
# cluster or TPU pod, run the same command on every host at once (e.g. `srun`, or
# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd cc_jax && launch/paper.sh ..."`):
# jax.distributed is initialised from the environment, and OUT_DIR must be shared storage.
set -euo pipefail
preset=${1:?usage: launch/paper.sh PRESET HF_MODEL_DIR DATA BENCH_DIR OUT_DIR [--config.key=value ...]}
hf_model=${2:?missing HF_MODEL_DIR}
data=${3:?missing DATA}
bench=${4:?missing BENCH_DIR}
out=${5:?missing OUT_DIR}
shift 5
cd "$(dirname "$0")/.."

if [[ ! -f "$out/model/cc_jax.json" ]]; then
  if [[ "${JAX_PROCESS_ID:-0}" == 0 ]]; then  # one converter is enough on shared storage
    python launch/convert.py --from=hf --src="$hf_model" --out="$out/model" --dtype=bfloat16
  fi
fi
while [[ ! -f "$out/model/cc_jax.json" ]]; do sleep 10; done

for method in sft cc; do
  python -m cc_jax.main --config="$preset" --workdir="$out/$method" --config.task=pipeline \
    --config.cc.method="$method" --config.model.path="$out/model" --config.data.source="$data" \
    --config.eval.source="$bench" --config.eval.out_dir="$out/eval" "$@"
done
echo "comparison table: $out/eval/results.md, chart: $out/eval/results.png"
