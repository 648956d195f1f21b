"""Scene and window-manager properties: the photos, the expressions and the generation settings.

Everything the user sets lives on ``scene.idto3d`` (saved with the .blend file). Results of
checks that are not worth saving live on ``window_manager.idto3d_runtime``.
"""

from __future__ import annotations

import os

import bpy
from bpy.app.handlers import persistent
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .arkit import ARKIT_52

# Neutral is the Basis shape key; the rest are the six basic emotions.
DEFAULT_EXPRESSIONS = ("neutral", "smiling", "angry", "surprised", "sad", "disgusted", "fearful")
BASIS_EXPRESSION = "neutral"
# Expression sets the panel can load: key -> (label, description, [(name, prompt or "")]).
EXPRESSION_SETS = {
    "DEFAULT": ("Basic Emotions", "Neutral and the six basic emotions",
                [(name, "") for name in DEFAULT_EXPRESSIONS]),
    "ARKIT52": ("ARKit 52", "Neutral and Apple ARKit's 52 face blendshapes, named as ARKit spells them "
                "(for Live Link Face and engines' ARKit rigs), each with a text prompt",
                [(BASIS_EXPRESSION, ""), *ARKIT_52]),
}

PHOTO_STATUS_ITEMS = (
    ("UNCHECKED", "Unchecked", "Not checked yet", "QUESTION", 0),
    ("OK", "OK", "One face found, consistent with the other photos", "CHECKMARK", 1),
    ("NO_FACE", "No Face", "No face was found in this photo", "ERROR", 2),
    ("SEVERAL_FACES", "Several Faces", "Several faces: the largest one is used", "INFO", 3),
    ("OUTLIER", "Outlier", "Looks like a different person than the other photos", "ERROR", 4),
    ("UNREADABLE", "Unreadable", "The file could not be read as an image", "CANCEL", 5),
    ("TOO_SMALL", "Face Too Small", "The face is too small to embed reliably", "ERROR", 6),
)


class IDTO3D_PG_photo(bpy.types.PropertyGroup):
    path: StringProperty(name="Path", subtype="FILE_PATH", description="Reference photo")
    enabled: BoolProperty(name="Use", default=True, description="Use this photo for the identity")
    status: EnumProperty(name="Status", items=PHOTO_STATUS_ITEMS, default="UNCHECKED")
    message: StringProperty(name="Message", description="What the last check said about this photo")


def _name_changed(item, _context) -> None:
    """A set's prompt describes the set's name: renaming the item ("jawOpen" to "yawn") drops it,
    so the prior is not told to make the old expression. A prompt the user wrote stays."""
    if item.prompt_for and item.text != item.prompt_for:
        item.prompt_for = ""
        item.prompt = ""


def _prompt_changed(item, _context) -> None:
    item.prompt_for = ""  # the user's own prompt: it goes with the item, whatever it is called


class IDTO3D_PG_expression(bpy.types.PropertyGroup):
    text: StringProperty(
        name="Expression",
        description='An expression or an edit, in words ("smiling", "with curly red hair")',
        default="smiling",
        update=_name_changed,
    )
    enabled: BoolProperty(name="Use", default=True, description="Generate a shape key for it")
    prompt: StringProperty(
        name="Prompt",
        description="What the face does, in words, when the name alone does not say it (ARKit's "
                    "'jawOpen'). Empty: the name is the prompt",
        default="",
        update=_prompt_changed,
    )
    prompt_for: StringProperty(
        name="Prompt For", default="", options={"HIDDEN"},
        description="The name an expression set's prompt was written for (renaming the item drops that prompt)",
    )


_hdri_items: list[tuple[str, str, str]] = []  # kept alive: Blender does not copy dynamic enum strings


def _studio_hdri_items(self, context):
    """Blender's bundled studio HDRIs, listed once (the folder is scanned once per session)."""
    if not _hdri_items:
        from .operators.relight import studio_hdris

        _hdri_items[:] = [(name, os.path.splitext(name)[0].capitalize(), f"Blender's studio light {name}")
                          for name in studio_hdris()] or [("studio.exr", "Studio", "Blender's studio light")]
    return _hdri_items


class IDTO3D_PG_settings(bpy.types.PropertyGroup):
    photos: CollectionProperty(type=IDTO3D_PG_photo)
    photo_index: IntProperty(name="Active Photo", default=0)
    expressions: CollectionProperty(type=IDTO3D_PG_expression)
    expression_index: IntProperty(name="Active Expression", default=0)
    expressions_initialised: BoolProperty(default=False, options={"HIDDEN"})
    preset: EnumProperty(
        name="Quality",
        items=(
            ("TEST", "Test", "Seconds-long run on tiny settings: checks the setup, the head is rough"),
            ("PREVIEW", "Preview", "Fast, coarse head to check identity and expressions"),
            ("STANDARD", "Standard", "Balanced quality and time"),
            ("HIGH", "High", "Finest geometry and texture; slowest"),
        ),
        default="STANDARD",
    )
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, same inputs: same head")
    texture_size: IntProperty(
        name="Texture Size", default=1024, min=64, max=4096,
        description="Width and height of the albedo and roughness textures (1024, 2048 or 4096; the "
                    "Test quality also allows 64-512)",
    )
    last_job_dir: StringProperty(name="Last Job", subtype="DIR_PATH", default="",
                                 description="Job folder of this scene's latest generation (kept for Resume)")
    light_mode: EnumProperty(
        name="Lighting",
        items=(("AREA", "Key, Fill, Rim", "Three area lights (a classic portrait setup)"),
               ("HDRI", "Studio HDRI", "One of Blender's bundled studio environment images")),
        default="AREA",
    )
    studio_hdri: EnumProperty(name="HDRI", items=_studio_hdri_items,
                              description="Blender's bundled environment image to light the head with")
    turntable: BoolProperty(name="Turntable", default=False,
                            description="Animate the camera and lights 360° around the head")
    turntable_frames: IntProperty(name="Frames", default=120, min=8, max=10000,
                                  description="Length of one turn")
    placement: EnumProperty(
        name="Placement",
        items=(("BESIDE", "Beside Other Objects",
                "At the 3D cursor, or beside the objects there when the head would be inside one "
                "(e.g. the default Cube)"),
               ("CURSOR", "At the 3D Cursor", "Always at the 3D cursor, even inside other objects (you are told)")),
        default="BESIDE",
    )
    output_dir: StringProperty(
        name="Output Folder",
        subtype="DIR_PATH",
        default="",
        description="Where job and result folders are written. Empty: the extension's user folder",
    )


class IDTO3D_PG_runtime(bpy.types.PropertyGroup):
    engine_checked: BoolProperty(default=False)
    engine_ok: BoolProperty(default=False)
    engine_summary: StringProperty(default="")
    engine_report: StringProperty(default="")  # the doctor's JSON, drawn in the preferences
    engine_check_running: BoolProperty(default=False)
    photos_check_running: BoolProperty(default=False)
    install_running: BoolProperty(default=False)
    install_status: StringProperty(default="")
    offer_download: BoolProperty(default=False)  # the last Generate Head was refused for missing models
    download_running: BoolProperty(default=False)
    download_status: StringProperty(default="")
    gpu_check_running: BoolProperty(default=False)
    gpu_check_ok: BoolProperty(default=False)
    gpu_check_summary: StringProperty(default="")  # one line for the preferences
    gpu_check_text: StringProperty(default="")  # the copyable report


def reset_expressions(settings, which: str = "DEFAULT") -> None:
    """Replace the expression list with one of :data:`EXPRESSION_SETS` (neutral first)."""
    settings.expressions.clear()
    for name, prompt in EXPRESSION_SETS[which][2]:
        item = settings.expressions.add()
        item.text, item.prompt = name, prompt
        item.prompt_for = name if prompt else ""
    settings.expression_index = 0
    settings.expressions_initialised = True


def ensure_default_expressions(settings) -> bool:
    """Fill the expression list with the defaults once per scene; True if it changed anything."""
    if settings.expressions_initialised:
        return False
    if len(settings.expressions) == 0:
        reset_expressions(settings)
    settings.expressions_initialised = True
    return True


def _initialise_all_scenes() -> None:
    for scene in bpy.data.scenes:
        ensure_default_expressions(scene.idto3d)


@persistent
def _on_load_post(_filepath) -> None:
    _initialise_all_scenes()


CLASSES = (IDTO3D_PG_photo, IDTO3D_PG_expression, IDTO3D_PG_settings, IDTO3D_PG_runtime)


def register_properties() -> None:
    bpy.types.Scene.idto3d = PointerProperty(type=IDTO3D_PG_settings)
    bpy.types.WindowManager.idto3d_runtime = PointerProperty(type=IDTO3D_PG_runtime)
    bpy.app.handlers.load_post.append(_on_load_post)
    try:
        _initialise_all_scenes()
    except AttributeError:
        # bpy.data is restricted while Blender starts up; load_post fills the scenes then.
        pass


def unregister_properties() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    del bpy.types.WindowManager.idto3d_runtime
    del bpy.types.Scene.idto3d
