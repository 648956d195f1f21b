"""job.json validation: every malformed field gets its own code; names are data; presets resolve."""

from __future__ import annotations

import json
import sys

import pytest

from engine.pipeline.job import JobError, JobSpec, check_expression_names, load_job, write_job
from engine.pipeline.presets import PRESETS, resolve_preset


@pytest.fixture
def good(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not decoded here")
    return {"photos": [str(photo)], "expressions": ["neutral", "smiling"], "preset": "test", "seed": 0,
            "models": str(tmp_path / "models")}


BAD = [
    ("job_version", 2), ("photos", "a.jpg"), ("photos", ["relative.jpg"]), ("photos", ["/no/such/photo.jpg"]),
    ("photos", []), ("embedding", "missing.npy"), ("embedding", 3), ("expressions", ["smiling", "Smiling"]),
    ("expressions", "smiling"), ("preset", "ultra"), ("overrides", {"no_such_field": 1}),
    ("overrides", {"geometry_steps": "many"}), ("overrides", {"max_deformation_cells": 0.5}), ("overrides", []),
    ("seed", -1), ("seed", 1.5), ("seed", True), ("models", "relative/models"), ("device", "gpu"),
    ("device", "cuda:x"), ("dtype", "fp8"), ("memory", {"attention": "flash"}), ("memory", {"swap": True}),
    ("memory", {"vae_tiling": "yes"}), ("texture_size", 1000), ("texture_size", 8), ("output", {"glb": 1}),
    ("output", {"fbx": True}), ("snapshot_interval_s", 0.05), ("snapshot_interval_s", "3"),
    ("allow_download", "no"), ("stop_after", "texture"), ("expression_prompts", ["a grin"]),
    ("expression_prompts", {"jawOpen": "jaw dropped"}), ("expression_prompts", {"smiling": ""}),
    ("expression_prompts", {"smiling": 3}), ("expression_prompts", {"smiling": "a\nb"}),
    ("expression_prompts", {"smiling": "x" * 301}),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_each_bad_field_has_its_own_code(good, tmp_path, field, value):
    data = {**good, field: value}
    with pytest.raises(JobError) as caught:
        JobSpec.from_dict(data, tmp_path)
    err = caught.value
    assert err.code == f"job_bad_{field}" and err.field == field
    assert field in err.message and err.hint


def test_unknown_key_is_reported_not_ignored(good, tmp_path):
    with pytest.raises(JobError) as caught:
        JobSpec.from_dict({**good, "presets": "test"}, tmp_path)
    assert caught.value.code == "job_unknown_key" and "'presets'" in caught.value.message


def test_round_trip_neutral_first_names_kept_as_typed(good, tmp_path):
    names = ["with curly red hair", "neutral", "ÉTONNÉ", "a; rm -rf /"]
    spec = JobSpec.from_dict({**good, "expressions": names, "overrides": {"geometry_steps": 3},
                              "texture_size": 128}, tmp_path)
    assert spec.expressions == ["neutral", "with curly red hair", "ÉTONNÉ", "a; rm -rf /"]
    assert spec.settings.geometry_steps == 3 and spec.resolved_texture_size == 128
    write_job(tmp_path, spec)
    again = load_job(tmp_path)
    assert again == spec
    resolved = again.resolved_dict()
    assert resolved["settings"]["geometry_steps"] == 3 and resolved["settings"]["name"] == "test"
    json.dumps(resolved)  # result.json must be able to hold it


def test_expression_prompts_round_trip_and_default_to_the_name(good, tmp_path):
    """ARKit-style names carry their own text for the prior; names without one are their own prompt."""
    data = {**good, "expressions": ["neutral", "jawOpen", "smiling"],
            "expression_prompts": {"jawOpen": "mouth wide open, jaw dropped"}}
    write_job(tmp_path, data)
    spec = load_job(tmp_path)
    assert spec.expression_prompts == {"jawOpen": "mouth wide open, jaw dropped"}
    assert spec.prompt("jawOpen") == "mouth wide open, jaw dropped" and spec.prompt("smiling") == "smiling"
    assert spec.expressions == ["neutral", "jawOpen", "smiling"]  # the names stay the shape-key names


def test_texture_sizes_per_preset(good, tmp_path):
    assert JobSpec.from_dict({**good, "preset": "standard", "texture_size": 4096}, tmp_path).texture_size == 4096
    with pytest.raises(JobError, match="texture_size"):
        JobSpec.from_dict({**good, "preset": "standard", "texture_size": 256}, tmp_path)


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(JobError) as caught:
        load_job(tmp_path)
    assert caught.value.code == "job_missing"
    (tmp_path / "job.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(JobError) as caught:
        load_job(tmp_path)
    assert caught.value.code == "job_bad_json"


@pytest.mark.parametrize("names, fragment", [
    ([""], "empty"), (["   "], "empty"), (["smiling", "smiling"], "twice"), (["Smile", "smile"], "case"),
    (["NEUTRAL"], "'neutral'"), (["Basis"], "reserved"), (["basis"], "reserved"), (["x" * 64], "63 bytes"),
    (["é" * 32], "63 bytes"), (["tab\there"], "control"), ([3], "not text"),
])
def test_expression_names_refused_with_a_reason(names, fragment):
    problems = check_expression_names(names)
    assert len(problems) == 1 and fragment in problems[0]


def test_expression_names_accepted():
    assert check_expression_names(["neutral", "smiling", "with curly red hair", "é" * 31, "x" * 63]) == []


def test_job_module_is_stdlib_only():
    import subprocess

    code = "import sys, engine.pipeline.job, engine.pipeline.presets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "False"


def test_presets_are_complete_and_overrides_typed():
    assert list(PRESETS) == ["test", "preview", "standard", "high"]
    assert "TEST PRESET" in PRESETS["test"].description
    for preset in PRESETS.values():
        assert preset.max_deformation_cells <= 0.28
    p = resolve_preset("preview", {"geometry_t_end": [0.02, 0.4], "geometry_lr": 1})
    assert p.geometry_t_end == (0.02, 0.4) and isinstance(p.geometry_lr, float)
