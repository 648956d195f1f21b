#!/usr/bin/env bash
# Device acceptance on one NVIDIA GPU (an H100: under 8 minutes). Nothing in the project depends
# on it; CI never runs it. Prepare once where pip works: `bash scripts/gpu_wheels.sh`; then on the
# GPU machine, from the repository root: `bash scripts/gpu_check.sh` (with .whl and .gpu-carry
# carried along). It prints, and writes to $OUT (or ./gpu-check-out) as gpu_check.log:
#   1. the CUDA tests (pytest -m gpu: both rasterisers, the torch one on CUDA vs the CPU),
#   2. nvdiffrast vs the built-in rasteriser at 512^2 (parity and ms per view; nvdiffrast only
#      where it imports: it is built from source with the CUDA toolkit),
#   3. Check GPU on the full-size random-weight models (doctor --gpu's report),
#   4. the standard preset's job on those models for a fixed number of steps: s/step per stage,
#      peak VRAM, minutes per head (bench/gpu_acceptance.py).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed" | tee "$log"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -f .gpu-carry/bpe_simple_vocab_16e6.txt.gz ] && export IDTO3D_CLIP_BPE="$PWD/.gpu-carry/bpe_simple_vocab_16e6.txt.gz"
models=${IDTO3D_FULLSIZE_MODELS:-/tmp/fullsize-models}
{
    echo "== 1. CUDA tests"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    timeout 90 "$python" -m pytest tests/render/test_nvdiffrast_backend.py tests/geometry/test_fields_and_mesh.py \
        -m gpu -q -p no:cacheprovider -rs 2>&1 | tail -15
    echo "== 2-4. rasteriser parity, Check GPU, standard job"
    timeout 380 "$python" bench/gpu_acceptance.py --models "$models" --out "$out"
    echo "exit: $?"
} 2>&1 | tee "$log"
