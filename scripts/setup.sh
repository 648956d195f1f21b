#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment in .venv.
# Idempotent: a second run with nothing changed only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed-requirements"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
    echo "setup: Python 3.11 is required (bpy 5.0.1 and torch 2.13.0 wheels are built for it);" \
         "set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
# Khronos' glTF-Validator (npm), for the export tests: a project folder, git-ignored, pinned.
GLTF_VALIDATOR_VERSION=2.0.0-dev.3.10
GLTF_VALIDATOR_DIR=.tools/gltf-validator
gltf_validator_package="$GLTF_VALIDATOR_DIR/node_modules/gltf-validator/package.json"
if ! grep -q "\"version\": *\"$GLTF_VALIDATOR_VERSION\"" "$gltf_validator_package" 2>/dev/null; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup: npm (Node.js 18+) is needed for the glTF validator the export tests use;" \
             "install Node.js and run setup again" >&2
        exit 1
    fi
    echo "setup: installing gltf-validator $GLTF_VALIDATOR_VERSION into $GLTF_VALIDATOR_DIR" >&2
    mkdir -p "$GLTF_VALIDATOR_DIR"
    npm install --prefix "$GLTF_VALIDATOR_DIR" --save-exact --no-audit --no-fund --loglevel=error \
        "gltf-validator@$GLTF_VALIDATOR_VERSION" >&2
    grep -q "\"version\": *\"$GLTF_VALIDATOR_VERSION\"" "$gltf_validator_package" || {
        echo "setup: gltf-validator did not install into $GLTF_VALIDATOR_DIR" >&2; exit 1; }
fi
# CLIP's BPE merges (OpenAI's bpe_simple_vocab_16e6.txt.gz, shipped inside the open-clip-torch
# wheel): the real SD 1.5 / CLIP ViT-L/14 tokenizer is rebuilt from it offline by
# engine/prior/fullsize_models.py for tests and benchmarks. Only that one file is kept, in a
# git-ignored cache; nothing is installed. Idempotent: skipped once the file is there.
CLIP_BPE=.cache/clip-bpe/bpe_simple_vocab_16e6.txt.gz
if [ ! -s "$CLIP_BPE" ]; then
    echo "setup: fetching CLIP's BPE merges (open-clip-torch 3.3.0 wheel, one file)" >&2
    bpe_tmp="$(mktemp -d)"
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        open-clip-torch==3.3.0 -d "$bpe_tmp" 2> >(grep -v "^WARNING: Location" >&2)
    mkdir -p "$(dirname "$CLIP_BPE")"
    "$VENV/bin/python" - "$bpe_tmp" "$CLIP_BPE" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "open_clip_torch-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(data)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
    rm -rf "$bpe_tmp"
fi

want="$(cat requirements.txt requirements-engine.txt constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import torch, bpy" 2>/dev/null; then
    echo "setup: $VENV is up to date" >&2
    exit 0
fi
echo "setup: installing pinned packages into $VENV (first time: ~2 minutes)" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r requirements.txt -c constraints.txt 2> >(grep -v "^WARNING: Location" >&2)
"$VENV/bin/python" -m pip check >&2
# Installed is not the same as working: the key packages must import before the stamp is written.
"$VENV/bin/python" -c "import torch, bpy, diffusers, transformers, peft, insightface, onnxruntime, dlib" >&2
echo "$want" > "$STAMP"
echo "setup: done" >&2
