#!/usr/bin/env bash
# Device acceptance on one NVIDIA GPU (an H100: about 6 minutes by estimate). Nothing in the
# project depends on it; CI never runs it. Prepare once where pip works: `bash scripts/gpu_wheels.sh`;
# then on the GPU machine, from the repository root: `bash scripts/gpu_check.sh` (with .whl and
# .gpu-carry carried along). nvdiffrast must already import in that Python (docs/gpu.md: it is
# not on the package index and this repository carries no build of it); without it the parity
# section fails. It prints, and writes to $OUT (or ./gpu-check-out) as gpu_check.log:
#   1. the CUDA tests (pytest -m gpu: both rasterisers, the torch one on CUDA vs the CPU),
#   2. nvdiffrast vs the built-in rasteriser at 512^2 (parity and ms per view),
#   3. Check GPU on the full-size random-weight models (doctor --gpu's report),
#   4. the standard preset's job on those models for a fixed number of steps: s/step per stage,
#      peak memory, minutes per head, judged against <= 5 min and <= 12 GB (bench/gpu_acceptance.py),
#   5. a capped-memory job that must finish by falling back.
# Exit status 0 only when every part passed; gpu_acceptance.json in $OUT holds each verdict, written
# as it is reached (a timeout keeps the parts that finished).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -f .gpu-carry/bpe_simple_vocab_16e6.txt.gz ] && export IDTO3D_CLIP_BPE="$PWD/.gpu-carry/bpe_simple_vocab_16e6.txt.gz"
models=${IDTO3D_FULLSIZE_MODELS:-/tmp/fullsize-models}
status=0

echo "== 0. the machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$python" -c "import torch, sys; print('torch', torch.__version__, 'CUDA build', torch.version.cuda, 'python', sys.version.split()[0])"
"$python" -c "import nvdiffrast.torch; print('nvdiffrast imports')" 2>/dev/null \
    || echo "nvdiffrast does not import: the parity section will fail (docs/gpu.md)"

echo "== 1. CUDA tests"
timeout "${TESTS_TIMEOUT_S:-90}" "$python" -m pytest tests/render/test_nvdiffrast_backend.py \
    tests/geometry/test_fields_and_mesh.py -m gpu -q -p no:cacheprovider -rs 2>&1 | tail -25
code=$?
if [ "$code" -ne 0 ]; then echo "CUDA tests: FAIL (exit $code)"; status=1; else echo "CUDA tests: PASS"; fi

echo "== 2-5. rasteriser parity, Check GPU, standard job, capped job"
timeout "${ACCEPTANCE_TIMEOUT_S:-380}" "$python" bench/gpu_acceptance.py --models "$models" --out "$out"
code=$?
[ "$code" -eq 124 ] && echo "the acceptance run was stopped after ${ACCEPTANCE_TIMEOUT_S:-380} s: $out/gpu_acceptance.json keeps the parts it reached"
[ "$code" -ne 0 ] && status=1
echo "exit: $status"
exit "$status"
