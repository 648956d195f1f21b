"""The References panel's operators in real Blender (the bpy module): add, remove, clear, and
Check Photos running the engine's identity step in a separate Python."""

from __future__ import annotations

import sys

import pytest

bpy = pytest.importorskip("bpy")


@pytest.fixture
def settings(blender_addon):
    settings = bpy.context.scene.idto3d
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    saved = (prefs.python_executable, prefs.models_root, prefs.device)
    settings.photos.clear()
    yield settings
    settings.photos.clear()
    prefs.python_executable, prefs.models_root, prefs.device = saved  # no state leaks into other tests


def _add(folder, *names):
    return bpy.ops.idto3d.photos_add(directory=str(folder), files=[{"name": n} for n in names])


def test_add_remove_clear(settings, photos_dir):
    assert _add(photos_dir, "astronaut.png", "grace_hopper.jpg", "group.jpg") == {"FINISHED"}
    assert [p.path for p in settings.photos] == [str(photos_dir / n) for n in
                                                 ("astronaut.png", "grace_hopper.jpg", "group.jpg")]
    assert all(p.status == "UNCHECKED" and p.enabled for p in settings.photos)
    assert settings.photo_index == 2
    _add(photos_dir, "astronaut.png", "tom_hanks_aligned.png")  # the duplicate is skipped
    assert len(settings.photos) == 4 and settings.photos[3].path.endswith("tom_hanks_aligned.png")
    settings.photo_index = 1
    assert bpy.ops.idto3d.photo_remove() == {"FINISHED"}
    assert [p.path.rsplit("/", 1)[-1] for p in settings.photos] == ["astronaut.png", "group.jpg",
                                                                     "tom_hanks_aligned.png"]
    assert settings.photo_index == 1
    assert bpy.ops.idto3d.photos_clear() == {"FINISHED"}
    assert len(settings.photos) == 0
    assert not bpy.ops.idto3d.photo_remove.poll() and not bpy.ops.idto3d.photos_check.poll()


def test_check_photos_sets_each_status(settings, blender_addon, photos_dir, arcface_root, tmp_path):
    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.python_executable = sys.executable  # the Python with the engine's packages
    prefs.models_root = str(arcface_root)
    prefs.device = "CPU"
    (tmp_path / "empty photo.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    _add(photos_dir, "astronaut.png", "group.jpg", "grace_hopper.jpg")
    _add(tmp_path, "empty photo.jpg", "notes.png")
    assert bpy.ops.idto3d.photos_check() == {"FINISHED"}
    statuses = [p.status for p in settings.photos]
    # Astronaut vs Grace Hopper: two people and no majority, so nobody is singled out as outlier.
    assert statuses == ["OK", "SEVERAL_FACES", "OK", "UNREADABLE", "UNREADABLE"]
    messages = [p.message for p in settings.photos]
    assert "1 face" in messages[0]
    assert "6 faces found; used the largest" in messages[1]
    assert "empty photo.jpg" in messages[3] and "0 bytes" in messages[3]
    assert "notes.png" in messages[4] and "not an image" in messages[4]


def test_check_flags_outlier(settings, blender_addon, photos_dir, arcface_root, tmp_path):
    from PIL import Image

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.python_executable, prefs.models_root, prefs.device = sys.executable, str(arcface_root), "CPU"
    image = Image.open(photos_dir / "astronaut.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "astronaut flipped.png")
    image.crop((100, 0, 400, 300)).save(tmp_path / "astronaut crop.jpg")
    _add(photos_dir, "astronaut.png", "grace_hopper.jpg")
    _add(tmp_path, "astronaut flipped.png", "astronaut crop.jpg")
    assert bpy.ops.idto3d.photos_check() == {"FINISHED"}
    assert [p.status for p in settings.photos] == ["OK", "OUTLIER", "OK", "OK"]
    assert "different person" in settings.photos[1].message
    # Leaving the outlier out: it is not checked any more and says why; the rest stay OK.
    settings.photos[1].enabled = False
    assert bpy.ops.idto3d.photos_check() == {"FINISHED"}
    assert [p.status for p in settings.photos] == ["OK", "UNCHECKED", "OK", "OK"]
    assert "not in use" in settings.photos[1].message
