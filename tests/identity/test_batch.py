"""A batch with every kind of bad input: each photo gets its specific status and message, the good
photos are still processed, and the result is saved. Also the `identity` command end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def batch(photos_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch photos ü")
    astronaut = np.asarray(Image.open(photos_dir / "astronaut.png").convert("RGB"))
    files = {}

    def add(name, data=None, image=None, **save):
        path = folder / name
        if image is not None:
            image.save(path, **save)
        elif data is not None:
            path.write_bytes(data)
        files[name] = path

    add("astronaut.png", image=Image.fromarray(astronaut))
    add("astronaut flipped.jpg", image=Image.fromarray(astronaut[:, ::-1].copy()))
    relit = np.clip(astronaut * np.linspace(0.6, 1.1, 512)[None, :, None], 0, 255).astype(np.uint8)
    add("astronaut relit.webp", image=Image.fromarray(relit), quality=90)
    add("grace hopper.jpg", data=(photos_dir / "grace_hopper.jpg").read_bytes())
    add("group.jpg", data=(photos_dir / "group.jpg").read_bytes())
    small = Image.fromarray(astronaut).resize((300, 300), Image.Resampling.LANCZOS)  # face ~52 px
    add("small face.png", image=small)
    add("thumbnail.png", image=Image.fromarray(astronaut).resize((32, 32)))
    rng = np.random.default_rng(3)
    add("no face.png", image=Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)))
    add("empty.jpg", data=b"")
    add("readme.jpg", data=b"not a photo at all\n" * 50)
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, format="JPEG")
    add("truncated.jpg", data=buffer.getvalue()[:4000])
    files["missing.png"] = folder / "missing.png"
    return files


@pytest.fixture(scope="module")
def report(batch, arcface_root, tmp_path_factory):
    from engine.identity import analyse_photos

    out = tmp_path_factory.mktemp("job") / "identity"
    return analyse_photos(list(batch.values()), backend="dlib", models_root=arcface_root, out_dir=out)


EXPECTED = {
    "astronaut.png": "ok", "astronaut flipped.jpg": "ok", "astronaut relit.webp": "ok",
    "grace hopper.jpg": "outlier", "group.jpg": "outlier", "small face.png": "ok",
    "thumbnail.png": "too_small", "no face.png": "no_face", "empty.jpg": "unreadable",
    "readme.jpg": "unreadable", "truncated.jpg": "unreadable", "missing.png": "unreadable",
}


def test_each_photo_gets_its_status(report):
    statuses = {Path(p.path).name: p.status for p in report.photos}
    assert statuses == EXPECTED


def test_each_problem_has_a_specific_message(report):
    by_name = {Path(p.path).name: p for p in report.photos}
    assert by_name["empty.jpg"].error_code == "empty" and "0 bytes" in by_name["empty.jpg"].message
    assert by_name["readme.jpg"].error_code == "not_image" and "readme.jpg" in by_name["readme.jpg"].message
    assert by_name["truncated.jpg"].error_code == "truncated" and "truncated" in by_name["truncated.jpg"].message
    assert by_name["missing.png"].error_code == "missing" and "not found" in by_name["missing.png"].message
    assert "32×32 px" in by_name["thumbnail.png"].message and "40 px" in by_name["thumbnail.png"].message
    assert "no face found" in by_name["no face.png"].message
    small = by_name["small face.png"]
    assert small.face_size < 72 and any(f"only {small.face_size} px" in w for w in small.warnings)
    grace = by_name["grace hopper.jpg"]
    assert "different person" in grace.message and grace.judge_distance_to_rest > 0.6
    assert by_name["group.jpg"].faces_found == 6


def test_identity_is_made_from_the_agreeing_photos_and_saved(report):
    names = [Path(report.photos[i].path).name for i in report.used]
    assert names == ["astronaut.png", "astronaut flipped.jpg", "astronaut relit.webp", "small face.png"]
    out = Path(report.out_dir)
    saved = np.load(out / "embedding.npy")
    assert saved.shape == (512,) and np.allclose(saved, report.embedding)
    summary = json.loads((out / "identity.json").read_text(encoding="utf-8"))
    assert [p["status"] for p in summary["photos"]] == list(EXPECTED.values())
    assert summary["used"] == report.used and len(summary["judge_distances"]) == len(report.compared)
    crops = sorted((out / "crops").glob("*.png"))
    assert len(crops) == 6  # one per photo with a usable face (outliers included)
    assert all(Image.open(c).size == (112, 112) for c in crops)
    # Agreeing photos: judge distances of the astronaut versions among themselves are small.
    same = report.judge_distances[np.ix_([0, 1, 2], [0, 1, 2])]
    assert same.max() < 0.6


def test_cli_json_and_table(photos_dir, arcface_root, tmp_path, capsys):
    env_args = dict(cwd=REPO, capture_output=True, text=True, timeout=120)
    photos = [str(photos_dir / "astronaut.png"), str(photos_dir / "group.jpg"), str(tmp_path / "gone.jpg")]
    done = subprocess.run([sys.executable, "-m", "engine", "identity", *photos, "--out", str(tmp_path / "o"),
                           "--models", str(arcface_root), "--backend", "dlib", "--json"], **env_args)
    # The astronaut and the group photo's largest face are different people: no identity, exit 1.
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert [p["status"] for p in summary["photos"]] == ["ok", "several_faces", "unreadable"]
    assert summary["out_dir"] == str(tmp_path / "o") and not (tmp_path / "o" / "embedding.npy").exists()
    assert any("do not agree on one person" in w for w in summary["warnings"])
    # The table and the error exit, in-process (the subprocess above proved stdout is clean JSON).
    from engine.cli import main

    assert main([*map(str, ["identity", *photos[:2], "--out", tmp_path / "t", "--models", arcface_root,
                            "--backend", "dlib"])]) == 1
    table = capsys.readouterr().out
    assert "several_faces" in table and "6 faces found; used the largest" in table
    assert main([*map(str, ["identity", photos[0], "--out", tmp_path / "m", "--models", arcface_root,
                            "--backend", "insightface", "--json"])]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "models_missing"
