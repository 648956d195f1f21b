"""`import engine` and the CLI's help must work in Blender's Python: no bpy, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import engine, engine.protocol, engine.models, engine.cli
parser = engine.cli.build_parser()  # imports every command module
heavy = sorted(m for m in ("torch", "bpy", "diffusers", "transformers", "insightface", "dlib",
                          "onnxruntime", "cv2", "PIL", "skimage", "peft", "safetensors",
                          "huggingface_hub", "onnx", "scipy", "xatlas", "numpy")
               if m in sys.modules)
print(json.dumps({"heavy": heavy, "commands": sorted(parser._subparsers._group_actions[0].choices)}))
"""


def _probe() -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_engine_and_its_cli_pulls_in_neither_bpy_nor_torch():
    probe = _probe()
    assert probe["heavy"] == []
    assert {"doctor", "make-tiny-models"} <= set(probe["commands"])


def test_cli_help_lists_the_commands_without_heavy_imports():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "doctor" in done.stdout and "make-tiny-models" in done.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "bpy" not in imported
