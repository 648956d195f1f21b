"""Mistakes with the models commands get a message naming the path, the cause and the fix, an exit
code, and leave the user's files as they were."""

from __future__ import annotations

import hashlib

from engine.cli import main


def _listing(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_tiny_models_into_a_file_or_under_one(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "models"):
        assert main(["make-tiny-models", str(out)]) not in (0, 1)  # a usage error, not a crash
        err = capsys.readouterr().err
        assert str(a_file) in err and "not a folder" in err and "fix:" in err and "nothing was changed" in err
    assert a_file.read_text() == "mine"


def test_make_tiny_models_never_replaces_real_models(tmp_path, capsys):
    real = tmp_path / "models" / "sd15" / "vae"
    real.mkdir(parents=True)
    (real / "config.json").write_text('{"real": true}')
    before = _listing(tmp_path / "models")
    assert main(["make-tiny-models", str(tmp_path / "models")]) not in (0, 1)
    assert "not tiny test models" in capsys.readouterr().err
    assert _listing(tmp_path / "models") == before


def test_fetch_models_only_an_optional_lora_describes_its_source(tmp_path, capsys):
    assert main(["fetch-models", "--models", str(tmp_path / "m"), "--only", "loras/view"]) == 3  # no terminal
    err = capsys.readouterr().err
    assert "dimgerogiannis/Arc2Avatar" in err and "7821be1a492ecb144069bcf4bee309cc280aa070" in err
    assert "MIT" in err and str(tmp_path / "m" / "loras" / "view" / "pytorch_lora_weights.safetensors") in err
    assert not (tmp_path / "m").exists()


def test_offline_switch_set_by_the_engine_is_not_the_users(monkeypatch):
    import os

    import pytest

    from engine.models import ENGINE_SET_MARKER, allow_hub_downloads, enforce_offline, user_offline

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", ENGINE_SET_MARKER):
        monkeypatch.delenv(name, raising=False)
    enforce_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and user_offline() is None  # a child inherits both: still ours
    allow_hub_downloads()
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # the user's own "no downloads"
    enforce_offline()
    assert user_offline() == "TRANSFORMERS_OFFLINE"
    with pytest.raises(OSError, match="TRANSFORMERS_OFFLINE is set in your environment"):
        allow_hub_downloads()
    enforce_offline()
