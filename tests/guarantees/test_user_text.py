"""User text is data: photo names that look like options or are not valid UTF-8 reach the
result unchanged, and an identity output is written all at once or not at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]
NOT_UTF8 = b"caf\xe9 \xff.jpg"


@pytest.fixture
def odd_photos(photos_dir, tmp_path) -> Path:
    """The same real photo under names a user may have: option-like, not UTF-8, spaces, '='."""
    folder = tmp_path / "photos"
    folder.mkdir()
    source = (photos_dir / "grace_hopper.jpg").read_bytes()
    for name in (b"-x.jpg", b"--out=evil.jpg", NOT_UTF8):
        with open(os.fsencode(folder) + b"/" + name, "wb") as stream:
            stream.write(source)
    return folder


def identity(capsys, tiny_models_root, out, *tail) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["identity", "--backend", "dlib", "--no-judge", f"--models={tiny_models_root}", f"--out={out}",
                 "--json", *tail])
    return code, json.loads(capsys.readouterr().out)


def test_option_like_and_non_utf8_photo_names_are_photos(capsys, tmp_path, odd_photos, tiny_models_root):
    names = sorted(os.listdir(os.fsencode(odd_photos)))
    paths = [os.fsdecode(os.fsencode(odd_photos) + b"/" + n) for n in names]
    out = tmp_path / "id"
    code, summary = identity(capsys, tiny_models_root, out, "--", *paths)
    assert code == 0
    assert [p["status"] for p in summary["photos"]] == ["ok", "ok", "ok"]
    written = json.loads((out / "identity.json").read_text(encoding="ascii"))
    assert [os.fsencode(p["path"]) for p in written["photos"]] == [os.fsencode(p) for p in paths]
    assert (out / "embedding.npy").is_file() and len(list((out / "crops").iterdir())) == 3
    assert not (tmp_path / "evil.jpg").exists() and not Path("evil.jpg").exists()


@pytest.mark.parametrize("separator", [b"\n", b"\0"])
def test_photo_list_file_keeps_every_byte(separator, capsys, tmp_path, odd_photos, tiny_models_root):
    names = sorted(os.listdir(os.fsencode(odd_photos)))
    listing = tmp_path / "photos.txt"
    listing.write_bytes(separator.join(os.fsencode(odd_photos) + b"/" + n for n in names) + separator)
    code, summary = identity(capsys, tiny_models_root, tmp_path / "id", f"--photos-from={listing}")
    assert code == 0
    assert sorted(os.fsencode(p["path"]).rsplit(b"/", 1)[1] for p in summary["photos"]) == names


def test_missing_photo_list_is_named(capsys, tmp_path, tiny_models_root):
    capsys.readouterr()
    code = main(["identity", f"--photos-from={tmp_path / 'nope.txt'}", f"--out={tmp_path / 'id'}"])
    assert code == 2 and "cannot read the photo list file" in capsys.readouterr().err
    assert not (tmp_path / "id").exists()


def test_non_utf8_name_under_utf8_io_prints_and_writes(tmp_path, odd_photos, tiny_models_root):
    """The seen crash: a non-UTF-8 photo name killed identity after embedding.npy but before
    identity.json. Under the add-on's PYTHONIOENCODING=utf-8, table and JSON both work."""
    photo = os.fsencode(odd_photos) + b"/" + NOT_UTF8
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for extra in ([], [b"--json"]):
        out = tmp_path / f"id{len(extra)}"
        done = subprocess.run([sys.executable, b"-m", b"engine", b"identity", b"--backend", b"dlib", b"--no-judge",
                               b"--models=" + os.fsencode(tiny_models_root), b"--out=" + os.fsencode(out), *extra,
                               b"--", photo], capture_output=True, env=env, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr
        assert (out / "embedding.npy").is_file() and (out / "identity.json").is_file()
        if extra:
            assert os.fsencode(json.loads(done.stdout)["photos"][0]["path"]) == photo


def test_identity_output_is_all_or_nothing(checksums, capsys, monkeypatch, tmp_path, odd_photos, tiny_models_root):
    from engine.identity import report

    out = tmp_path / "id"
    photo = str(odd_photos / "-x.jpg")
    assert identity(capsys, tiny_models_root, out, "--", photo)[0] == 0
    before = checksums(out)

    def crash(*args, **kwargs):  # a failure after embedding.npy was written, as the seen crash
        raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(report, "write_text_atomic", crash)
    with pytest.raises(UnicodeEncodeError):
        main(["identity", "--backend", "dlib", "--no-judge", f"--models={tiny_models_root}", f"--out={out}",
              "--", photo, photo])
    assert checksums(out) == before  # the old identity, whole: no new embedding beside an old summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "photos"]  # no staging folder left
