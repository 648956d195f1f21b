"""The device acceptance run can fail: its verdicts reach the exit status and gpu_acceptance.json.

No GPU here: the CPU path (``--tiny``) runs for real; a Check GPU that finds a problem is a TEST
DOUBLE (``run_check`` answering not ok), and on this machine scripts/gpu_check.sh meets no CUDA
device, which must make it exit non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def acceptance(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_acceptance

    return gpu_acceptance


def test_a_failed_section_fails_the_run_and_is_written_as_it_is_reached(acceptance, monkeypatch, tmp_path):
    from engine import gpu_check

    def failing_check(*args, **kwargs):  # TEST DOUBLE: a GPU whose check found no usable setting
        return {"ok": False, "problem": "fp16 not finite; fp32 out of memory at every setting", "tried": []}

    monkeypatch.setattr(gpu_check, "run_check", failing_check)
    monkeypatch.setattr(sys, "argv", ["gpu_acceptance.py", "--tiny", "--out", str(tmp_path)])
    assert acceptance.main() == 1
    verdicts = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert verdicts["check_gpu"]["verdict"] == "fail" and "out of memory" in verdicts["check_gpu"]["why"]
    assert verdicts["parity"]["verdict"] == "skip"  # no nvdiffrast on a CPU run: skipped only with --tiny
    assert verdicts["standard_job"]["verdict"] == "skip" and verdicts["standard_job"]["total_s"] > 0


def test_results_are_on_disk_after_each_section(acceptance, tmp_path):
    results = acceptance.Results(tmp_path)
    results.record("parity", "fail", "nvdiffrast does not import here", ran=False)
    assert json.loads((tmp_path / "gpu_acceptance.json").read_text())["parity"]["verdict"] == "fail"
    results.record("check_gpu", "pass")
    assert set(json.loads((tmp_path / "gpu_acceptance.json").read_text())) == {"parity", "check_gpu"}
    assert results.failed == ["parity"]


def test_the_shell_script_exits_non_zero_when_a_part_fails(tmp_path):
    if ROOT.joinpath(".venv", "bin", "python").exists():
        python = str(ROOT / ".venv" / "bin" / "python")
    else:
        python = sys.executable
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run for real")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": python, "TESTS_TIMEOUT_S": "120"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert done.returncode == 1, done.stdout[-2000:]
    assert "no CUDA device" in log and "exit: 1" in log
