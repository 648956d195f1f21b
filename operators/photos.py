"""Reference photos: add (multi-select file browser), remove, clear, and Check Photos.

Check Photos runs ``python -m engine identity ... --json`` in the engine's Python (never in
Blender's) in the background and writes each photo's status and message back into
``scene.idto3d.photos`` when it ends: from the UI a timer calls :func:`pump_check`; EXEC mode
(scripts, tests) waits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, StringProperty

from . import has_active, redraw_3d_views, remove_active
from ..engine_runner import EngineNotFound, start_engine_json
from ..worker_monitor import CommandFailed
from ..preferences import addon_prefs, models_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
CHECK_TIMEOUT_S = 600.0  # first run loads the face models; ten large photos on a slow CPU stay well below
# Engine status codes -> the add-on's enum items (properties.PHOTO_STATUS_ITEMS).
STATUS_FROM_ENGINE = {
    "ok": "OK", "no_face": "NO_FACE", "several_faces": "SEVERAL_FACES", "outlier": "OUTLIER",
    "unreadable": "UNREADABLE", "too_small": "TOO_SMALL",
}
DEVICE_FROM_PREFS = {"AUTO": "auto", "CUDA": "cuda", "CPU": "cpu"}


def _normalised(path: str) -> str:
    return os.path.normcase(os.path.abspath(bpy.path.abspath(path)))


def add_photos(settings, paths) -> tuple[int, int]:
    """Append ``paths`` not already in the list; returns (added, skipped as duplicates)."""
    known = {_normalised(photo.path) for photo in settings.photos}
    added = skipped = 0
    for path in paths:
        key = _normalised(path)
        if key in known:
            skipped += 1
            continue
        known.add(key)
        item = settings.photos.add()
        item.path = path
        item.enabled = True
        item.status = "UNCHECKED"
        item.message = ""
        added += 1
    if added:
        settings.photo_index = len(settings.photos) - 1
    return added, skipped


class IDTO3D_OT_photos_add(bpy.types.Operator):
    bl_idname = "idto3d.photos_add"
    bl_label = "Add Photos"
    bl_description = "Add photos of the person (1-10, different angles and lighting help)"
    bl_options = {"REGISTER", "UNDO"}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filepath: StringProperty(subtype="FILE_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        names = [f.name for f in self.files if f.name]
        if names:
            paths = [os.path.join(self.directory, name) for name in names]
        elif self.filepath:
            paths = [self.filepath]
        else:
            self.report({"ERROR"}, "No photo selected")
            return {"CANCELLED"}
        not_images = [p for p in paths if not p.lower().endswith(IMAGE_EXTENSIONS)]
        if not_images:
            # Added anyway: the check reports what is wrong with each file, by name.
            self.report({"WARNING"}, f"{len(not_images)} file(s) do not look like photos: "
                        + ", ".join(os.path.basename(p) for p in not_images[:3]))
        added, skipped = add_photos(context.scene.idto3d, paths)
        text = f"Added {added} photo(s)" + (f", {skipped} already in the list" if skipped else "")
        self.report({"INFO"}, text)
        return {"FINISHED"}


class IDTO3D_OT_photo_remove(bpy.types.Operator):
    bl_idname = "idto3d.photo_remove"
    bl_label = "Remove Photo"
    bl_description = "Remove the selected photo from the list (the file is not touched)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return has_active(context.scene.idto3d, "photos", "photo_index")

    def execute(self, context):
        remove_active(context.scene.idto3d, "photos", "photo_index")
        return {"FINISHED"}


class IDTO3D_OT_photos_clear(bpy.types.Operator):
    bl_idname = "idto3d.photos_clear"
    bl_label = "Clear Photos"
    bl_description = "Remove every photo from the list (the files are not touched)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.idto3d.photos) > 0

    def execute(self, context):
        settings = context.scene.idto3d
        settings.photos.clear()
        settings.photo_index = 0
        return {"FINISHED"}


KEEP_CHECK_FOLDERS = 3


def _check_folder() -> str:
    """A fresh folder for the check's crops and summary (the extension's user folder if possible).

    Only the newest few check folders are kept: each holds crops of every photo, and nothing else
    reads old ones.
    """
    base = None
    try:
        package = __package__.rsplit(".", 1)[0]
        base = bpy.utils.extension_path_user(package, path="photo_checks", create=True)
    except (ValueError, RuntimeError, AttributeError):
        base = None  # not running as an extension (e.g. a legacy add-on folder)
    if base:
        old = sorted(Path(base).glob("check-*"), key=lambda p: p.stat().st_mtime)
        for folder in old[: max(0, len(old) - (KEEP_CHECK_FOLDERS - 1))]:
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.mkdtemp(prefix="check-", dir=base or None)  # "" would mean the current folder


def apply_check_results(settings, checked_items, summary: dict) -> dict[str, int]:
    """Write the engine's per-photo results onto the list items; returns a count per status."""
    counts: dict[str, int] = {}
    by_path = {os.path.normpath(result.get("path", "")): result for result in summary.get("photos", [])}
    for item in checked_items:
        result = by_path.get(os.path.normpath(bpy.path.abspath(item.path)))
        if result is None:  # matched by path, never by position: a missing row is said so
            item.status, item.message = "UNREADABLE", "the engine returned no result for this photo"
        else:
            item.status = STATUS_FROM_ENGINE.get(result.get("status"), "UNREADABLE")
            lines = [result.get("message") or ""] + list(result.get("warnings") or [])
            item.message = " | ".join(line for line in lines if line)
        counts[item.status] = counts.get(item.status, 0) + 1
    return counts


class PhotoCheck:
    """One background photo check: the engine process and which scene's photos it answers for."""

    def __init__(self, monitor, scene_name: str, paths: list[str]):
        self.monitor, self.scene_name, self.paths = monitor, scene_name, paths
        self.outcome: tuple[str, str] | None = None  # (report level, text) once it has ended


_running: PhotoCheck | None = None  # at most one check at a time


def start_check(context) -> PhotoCheck:
    """Start the identity check of the ticked photos in the background (raises CheckRefused)."""
    global _running
    settings = context.scene.idto3d
    items = [photo for photo in settings.photos if photo.path and photo.enabled]
    if not items:
        raise CheckRefused("No photo is in use: tick the photos to check")
    if _running is not None:
        raise CheckRefused("A photo check is already running")
    for photo in settings.photos:
        if photo.path and not photo.enabled:
            photo.status, photo.message = "UNCHECKED", "not in use: tick it to include it in the identity"
    prefs = addon_prefs(context)
    root = models_root(prefs)
    try:
        out = _check_folder()
    except OSError as exc:
        raise CheckRefused(f"Cannot write the photo check's crops ({exc.strerror or exc}): make the extension's "
                           "user folder writable or free some disk space") from None
    paths = [bpy.path.abspath(item.path) for item in items]
    # User values as --opt=value and the photo paths after "--": a path starting with "-" is data.
    args = ["identity", "--json", f"--out={out}", f"--models={root}",
            f"--device={DEVICE_FROM_PREFS.get(prefs.device, 'auto')}", "--", *paths]
    try:
        monitor = start_engine_json(prefs, args, "the photo check", timeout_s=CHECK_TIMEOUT_S, models_root=root)
    except EngineNotFound as exc:
        raise CheckRefused(str(exc)) from None
    _running = PhotoCheck(monitor, context.scene.name, paths)
    context.window_manager.idto3d_runtime.photos_check_running = True
    return _running


def pump_check(runtime) -> bool:
    """Follow the running check once; True while it runs. Writes the statuses when it ends."""
    global _running
    check = _running
    if check is None:
        runtime.photos_check_running = False
        return False
    try:
        summary = check.monitor.pump()
    except CommandFailed as exc:
        check.outcome = ("ERROR", str(exc))
        summary = None
    if summary is None and check.outcome is None:
        return True
    _running = None
    runtime.photos_check_running = False
    if check.outcome is not None:
        return False
    scene = bpy.data.scenes.get(check.scene_name)
    if "error" in summary:
        error = summary["error"]
        fix = f" Fix: {error['hint']}" if error.get("hint") else ""
        check.outcome = ("ERROR", f"{error.get('message')}{fix}")
        return False
    if scene is None:
        check.outcome = ("WARNING", "The scene of the photo check is gone")
        return False
    wanted = {os.path.normpath(path) for path in check.paths}
    items = [p for p in scene.idto3d.photos if os.path.normpath(bpy.path.abspath(p.path)) in wanted]
    counts = apply_check_results(scene.idto3d, items, summary)
    text = ", ".join(f"{n} {status.lower().replace('_', ' ')}" for status, n in sorted(counts.items()))
    warnings = "".join(f" {w}" for w in summary.get("warnings", []))
    usable = counts.get("OK", 0) + counts.get("SEVERAL_FACES", 0)
    check.outcome = ("INFO" if usable else "WARNING", f"Checked {len(items)} photo(s): {text}.{warnings}")
    return False


def stop_check() -> None:
    global _running
    if _running is not None:
        _running.monitor.stop()
        _running = None
    if bpy.app.timers.is_registered(_timer_tick):
        bpy.app.timers.unregister(_timer_tick)


def _timer_tick():
    window_manager = bpy.context.window_manager
    running = window_manager is not None and pump_check(window_manager.idto3d_runtime)
    redraw_3d_views(window_manager)
    return 0.5 if running else None


class CheckRefused(Exception):
    """The photo check cannot start; the message says why."""


class IDTO3D_OT_photos_check(bpy.types.Operator):
    bl_idname = "idto3d.photos_check"
    bl_label = "Check Photos"
    bl_description = ("Find the face in each photo and check that all photos show the same person "
                      "(runs the engine's identity step in the background)")

    @classmethod
    def poll(cls, context):
        return _running is None and any(photo.path for photo in context.scene.idto3d.photos)

    def invoke(self, context, event):
        try:
            start_check(context)
        except CheckRefused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        bpy.app.timers.register(_timer_tick, first_interval=0.3)
        return {"FINISHED"}

    def execute(self, context):
        try:
            check = start_check(context)
        except CheckRefused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        runtime = context.window_manager.idto3d_runtime
        while pump_check(runtime):
            time.sleep(0.05)
        level, text = check.outcome
        self.report({level}, text)
        return {"CANCELLED"} if level == "ERROR" else {"FINISHED"}


CLASSES = (IDTO3D_OT_photos_add, IDTO3D_OT_photo_remove, IDTO3D_OT_photos_clear, IDTO3D_OT_photos_check)
