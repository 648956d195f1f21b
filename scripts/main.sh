#!/usr/bin/env bash
# Set everything up (idempotent) and run the main job headless: build + validate the extension,
# install it into a throwaway Blender user folder, load photos and run the pipeline as far as it
# goes. Arguments go to scripts/main_job.py (--images, --models, --out, --expressions).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python scripts/main_job.py "$@"
