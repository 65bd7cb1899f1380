#!/usr/bin/env bash
# Evaluates a trained run on the paper's six benchmarks (docs/method.md §5).
#   launch/eval.sh WORKDIR BENCH_DIR [MODES] [extra --config.* flags]
# WORKDIR is the training workdir; BENCH_DIR a local benchmark root (layout: cc_jax/benchmarks.py)
# or "hub". MODES is a comma list of plain,matrix,identity,oracle (default: matrix); an sft run
# always uses plain. A cc run gets its Transform Matrix fitted first if it has none.
# Results: WORKDIR/eval/results.md, results.png, results/, predictions/.
set -euo pipefail
workdir=${1:?usage: launch/eval.sh WORKDIR BENCH_DIR [MODES] [--config.key=value ...]}
bench=${2:?usage: launch/eval.sh WORKDIR BENCH_DIR [MODES] [--config.key=value ...]}
modes=${3:-matrix}
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
method=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['cc']['method'])" "$workdir/run.json")
if [[ "$method" == cc && ",$modes," == *,matrix,* && ! -f "$workdir/matrix/matrix.npy" ]]; then
  python -m cc_jax.main --config=configs/base.py --workdir="$workdir" --config.task=matrix "$@"
fi
python -m cc_jax.main --config=configs/base.py --workdir="$workdir" --config.task=eval \
  --config.eval.source="$bench" --config.eval.modes="($(sed 's/\([^,]*\)/"\1"/g' <<<"$modes"),)" "$@"
