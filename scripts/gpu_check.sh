#!/usr/bin/env bash
# The prepared device check, on a machine with one NVIDIA GPU (about 10 minutes at most):
#   1. the CUDA-marked tests (pytest -m gpu; modules whose packages are absent there fail to
#      collect and are listed, the rest run),
#   2. training.gpu_check: the base config at 512 px with random SD 1.5-shaped weights (nothing
#      downloaded), a few bf16 steps of stage 1 and of stage 2 (12 + 4 frames), a run killed and
#      resumed on the device, 2 s generated with guidance.
# Writes one JSON: $OUT_DIR/gpu_check.json (seconds per step, peak GPU memory per stage, seconds
# per generated frame, the tests that passed/failed/were skipped, the parts it skipped and why).
#
# Usage: scripts/gpu_check.sh [OUT_DIR] [training.gpu_check options, e.g. --device cpu --size 64]
# Missing pure-Python packages (diffusers and importlib_metadata on the lent GPU machines) are
# installed offline from scripts/gpu_wheels/ (git-ignored) into a folder on PYTHONPATH; fill it
# where a registry is reachable with `make gpu-wheels`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-out/gpu_check}
shift || true
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
SITE=${GPU_CHECK_SITE:-/tmp/emoforge-gpu-site}
if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ls scripts/gpu_wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" scripts/gpu_wheels/*.whl || echo "gpu_check: wheel install failed"
        export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: diffusers is absent and scripts/gpu_wheels/ has no wheels: the model" \
             "parts will be skipped (make gpu-wheels where a registry is reachable)"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$OUT_DIR/nvidia-smi.txt"

JUNIT="$OUT_DIR/cuda_tests.xml"
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
        --junitxml "$JUNIT" tests > "$OUT_DIR/cuda_tests.log" 2>&1
    echo "gpu_check: CUDA tests exit code $? (log: $OUT_DIR/cuda_tests.log)"
else
    echo "gpu_check: pytest is absent: the CUDA tests are skipped"
fi
timeout 420 "$PY" -m training.gpu_check --out "$OUT_DIR/gpu_check.json" --tests-junit "$JUNIT" \
    --tests-log "$OUT_DIR/cuda_tests.log" "$@"
status=$?
echo "gpu_check: exit code $status; figures in $OUT_DIR/gpu_check.json"
exit $status
