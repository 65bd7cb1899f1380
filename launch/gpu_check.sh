#!/usr/bin/env bash
# A prepared check of cc_jax on one H100 or H200, in under 10 minutes: GPU logits against CPU
# float32 (and bfloat16 against float32), cuDNN attention against XLA's, training tokens/s and
# MFU of a ~1B model at sequence 2048 for sft and cc, and CC generation against plain. It
# writes its figures into docs/benchmarks.md (section gpu_check). Needs the CUDA build of JAX:
#   pip install "jax[cuda12]==0.10.2"
#   launch/gpu_check.sh              # on the GPU machine
#   launch/gpu_check.sh --dry_run    # every step on the CPU at tiny sizes, nothing written
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" --dry_run "* ]]; then
  export JAX_PLATFORMS=cpu
fi
exec python launch/gpu_check.py "$@"
