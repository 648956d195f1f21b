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

want="$(cat requirements.txt constraints.txt | sha256sum | cut -d' ' -f1)"
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
