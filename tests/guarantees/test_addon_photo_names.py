"""Check Photos in real Blender passes photo paths as data: a path that looks like an option is a
photo (here one that does not exist, so it is reported as such), never an option of the engine."""

from __future__ import annotations


def test_check_photos_with_an_option_like_path(blender_addon, photos_dir, tiny_models_root):
    import bpy

    prefs = bpy.context.preferences.addons[blender_addon].preferences
    prefs.models_root = str(tiny_models_root)
    settings = bpy.context.scene.idto3d
    settings.photos.clear()
    # bpy.path.abspath leaves a bare relative path as typed, so it reaches the engine starting with "-".
    for path in (str(photos_dir / "grace_hopper.jpg"), "--out=evil.jpg", "-x.jpg"):
        settings.photos.add().path = path
    try:
        assert bpy.ops.idto3d.photos_check() == {"FINISHED"}
    finally:
        prefs.models_root = ""
    # Before, the engine read "--out=evil.jpg" as its --out and "-x.jpg" as an unknown option, and
    # the add-on blamed the engine's Python. Now each is a photo with its own result.
    statuses = [(p.status, p.message) for p in settings.photos]
    assert statuses[0][0] == "OK", statuses
    assert [s for s, _ in statuses[1:]] == ["UNREADABLE", "UNREADABLE"], statuses
    assert "evil.jpg" in statuses[1][1] and "-x.jpg" in statuses[2][1]
    settings.photos.clear()
