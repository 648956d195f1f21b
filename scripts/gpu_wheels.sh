#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on the device machine (run HERE, where pip reaches the
# package index): the engine's packages its CUDA image lacks, as Python 3.12 wheels in .whl/
# (~9 MB), and CLIP's BPE merges file in .gpu-carry/ (the full-size random-weight models are
# written there from it). Both folders are git-ignored through .git/info/exclude.
# Then: device run with carry [".whl", ".gpu-carry"] and command `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
for folder in /.whl/ /.gpu-carry/; do
    grep -qxF "$folder" "$exclude" 2>/dev/null || echo "$folder" >> "$exclude"
done
rm -rf .whl && mkdir -p .whl .gpu-carry
python=${PYTHON:-.venv/bin/python}
pin() { grep -i "^$1==" constraints.txt | head -1; }
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "$(pin diffusers)" "$(pin xatlas)" "$(pin fast-simplification)" "$(pin pygltflib)" \
    "$(pin dataclasses-json)" "$(pin marshmallow)" "$(pin Deprecated)" "$(pin importlib_metadata)"
cp .cache/clip-bpe/bpe_simple_vocab_16e6.txt.gz .gpu-carry/
du -sh .whl .gpu-carry
