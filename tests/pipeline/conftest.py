"""Pipeline fixtures: job folders on the tiny random-weight models (test preset, ready embedding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

@pytest.fixture
def make_job(tmp_path, tiny_models_root):
    """``make_job(name="job", **fields)`` -> a job folder with embedding.npy and job.json (test preset)."""

    def make(name: str = "job", **fields) -> Path:
        job_dir = tmp_path / name
        job_dir.mkdir()
        np.save(job_dir / "embedding.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
        data = {"photos": [], "embedding": "embedding.npy", "expressions": ["neutral", "smiling"],
                "preset": "test", "models": str(tiny_models_root), "device": "cpu",
                "snapshot_interval_s": 0.2, **fields}
        (job_dir / "job.json").write_text(json.dumps(data), encoding="utf-8")
        return job_dir

    return make
