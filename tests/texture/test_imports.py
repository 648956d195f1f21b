"""Importing the texture and export rooms loads nothing heavy (the add-on side may import them)."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
import engine.texture, engine.export
print(json.dumps(sorted(m for m in ("torch", "numpy", "xatlas", "pygltflib", "PIL", "scipy") if m in sys.modules)))
"""


def test_rooms_import_lazily():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
