"""What the known-answer tests share, made once a session: the trained tiny base models (one per
domain and base seed) and the geometry experiment's trained prior per seed (its control LoRA is
also the expression experiment's control). The experiments' code lives beside the benchmarks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import known_answer as ka  # noqa: E402


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="session")
def known_answer_base(tmp_path_factory):
    """``base(config) -> models folder``: ``ka.prepare_base`` once per distinct base of the session.

    The base is made under the session's tmp folder, or, when the environment variable
    ``KNOWN_ANSWER_CACHE`` names a folder (e.g. the repository's ignored ``.cache/known-answer``),
    there, keyed by its settings, and reused by later sessions (the base depends on its settings
    alone; a base is reused only once complete). One session at a time per cache folder."""
    made: dict[str, Path] = {}
    cache = os.environ.get("KNOWN_ANSWER_CACHE", "")

    def base(config) -> Path:
        key = json.dumps(ka.fields_of(config, ka.BASE_FIELDS), sort_keys=True)
        if key not in made:
            if cache:
                models = ka.bench_folders(Path(cache), "known-answer", config)[1]
                folder = models.parent
            else:
                folder = tmp_path_factory.mktemp("known-answer-base")
                models = folder / "models"
            folder.mkdir(parents=True, exist_ok=True)
            with ka.isolated(folder):
                ka.prepare_base(models, config, log=quiet)
            made[key] = models
        return made[key]

    return base


@pytest.fixture(scope="session")
def geometry_prior(tmp_path_factory, known_answer_base):
    """``prior(config) -> work folder`` holding the geometry experiment's dataset and trained LoRA
    (``ka.train_geometry_prior``), once per distinct setting of the session."""
    made: dict[str, Path] = {}

    def prior(config) -> Path:
        key = json.dumps(ka.fields_of(config, ka.TRAINING_FIELDS), sort_keys=True)
        if key not in made:
            work = tmp_path_factory.mktemp(f"known-answer-seed{config.seed}")
            ka.train_geometry_prior(work, config, models=known_answer_base(config), log=quiet, reuse=False)
            made[key] = work
        return made[key]

    return prior
