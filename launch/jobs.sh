# The jobs the cluster scripts run (single_node.sh, slurm_gpu.sbatch, tpu_pod.sh); sourced, not run.
# A script that sources this defines how a command reaches the machines:
#   on_one CMD...   run CMD once (conversion writes one model directory)
#   on_all CMD...   run CMD as every process of the job at once (jax.distributed joins them)
# then calls `launch_main "$@"`. Arguments: [--dry_run] JOB [--config.key=value ...]; the
# flags after JOB go to `python -m cc_jax.main`. Settings come from the environment, so that
# `sbatch --export` and `VAR=value script` both set them: NEEDS lists those each job needs and
# MEANS what they are; optional are METHOD (cc or sft), MODES (eval modes; matrix for cc, plain
# for sft), MODEL_DIR (the converted model, $OUT_DIR/model) and DTYPE (its dtype, bfloat16).

JOBS="convert train eval paper"
declare -A NEEDS=([convert]="OUT_DIR HF_MODEL" [train]="OUT_DIR CONFIG DATA" [eval]="OUT_DIR BENCH"
                  [paper]="OUT_DIR HF_MODEL CONFIG DATA BENCH")
declare -A MEANS=([OUT_DIR]="the experiment's shared output directory (model/, sft/, cc/, eval/)"
                  [HF_MODEL]="the Hugging Face model directory to convert (config.json + safetensors)"
                  [CONFIG]="the preset, e.g. configs/llama3_8b.py"
                  [DATA]="the parallel SFT data, e.g. /data/aya_parallel.jsonl"
                  [BENCH]="a local benchmark root in the authors' layout, or hub")
DRY_RUN=${DRY_RUN:-0}

SCRIPT_NAME=${SCRIPT_NAME:-${0##*/}}  # sbatch runs a copy named slurm_script: that script sets it
fail() { echo "$SCRIPT_NAME: $*" >&2; exit 2; }

# The words as one shell line, quoted only where the shell needs it.
quote_words() {
  local word line=() quote="'\\''"  # a ' inside '...' is written '\''
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then line+=("$word"); else line+=("'${word//\'/$quote}'"); fi
  done
  echo "${line[*]}"
}

# Prints CMD under a dry run, as it would run, else runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then echo "+ $(quote_words "$@")"; else "$@"; fi
}

# A script whose machines see other files than this one overrides it.
model_is_converted() { [[ -f "$MODEL_DIR/cc_jax.json" ]]; }

convert_job() {
  (( $# == 0 )) || fail "JOB=convert takes no --config flags (got: $*)"
  if model_is_converted; then
    echo "$MODEL_DIR holds a converted model: conversion skipped"
    return
  fi
  on_one python launch/convert.py --from=hf --src="$HF_MODEL" --out="$MODEL_DIR" --dtype="$DTYPE"
}

train_job() {
  on_all python -m cc_jax.main --config="$CONFIG" --workdir="$OUT_DIR/$METHOD" --config.task=train \
    --config.cc.method="$METHOD" --config.model.path="$MODEL_DIR" --config.data.source="$DATA" "$@"
}

eval_job() {  # eval.sh fits a cc run's Transform Matrix first when it has none
  on_all launch/eval.sh "$OUT_DIR/$METHOD" "$BENCH" "$MODES" --config.eval.out_dir="$OUT_DIR/eval" "$@"
}

paper_job() {  # as launch/paper.sh: both methods, each trained, its matrix fitted and evaluated
  convert_job
  local method
  for method in sft cc; do
    on_all python -m cc_jax.main --config="$CONFIG" --workdir="$OUT_DIR/$method" --config.task=pipeline \
      --config.cc.method="$method" --config.model.path="$MODEL_DIR" --config.data.source="$DATA" \
      --config.eval.source="$BENCH" --config.eval.out_dir="$OUT_DIR/eval" "$@"
  done
  echo "comparison table: $OUT_DIR/eval/results.md, chart: $OUT_DIR/eval/results.png"
}

launch_main() {
  if [[ "${1:-}" == --dry_run ]]; then DRY_RUN=1; shift; fi
  local job=${1:-}
  local jobs="$JOBS${EXTRA_JOBS:+ $EXTRA_JOBS}"
  [[ -n "$job" && " $jobs " == *" $job "* ]] ||
    fail "usage: $SCRIPT_NAME [--dry_run] JOB [--config.key=value ...] with JOB one of: $jobs"
  shift
  local name
  for name in ${NEEDS[$job]:-}; do
    [[ -n "${!name:-}" ]] || fail "JOB=$job needs $name: ${MEANS[$name]}"
  done
  METHOD=${METHOD:-cc}
  [[ "$METHOD" == cc || "$METHOD" == sft ]] || fail "METHOD=$METHOD: use cc or sft"
  MODES=${MODES:-$([[ "$METHOD" == sft ]] && echo plain || echo matrix)}
  MODEL_DIR=${MODEL_DIR:-${OUT_DIR:-}/model}
  DTYPE=${DTYPE:-bfloat16}
  "${job}_job" "$@"
}
