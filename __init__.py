"""ID-to-3D Head: Blender extension entry point.

Registers the add-on's classes and properties and nothing heavy: the engine (torch, diffusion
models) runs in a separate process started by the operators. Unregister removes everything.
"""

from __future__ import annotations

import bpy

from . import preferences, properties
from .operators import engine_check, expressions as expression_operators, fetch_models, photos as photo_operators
from .panels import expressions as expression_panels, generate, references, settings

# Registration order: property groups before the pointers that use them; panels in the order
# they appear in the sidebar.
CLASSES = (
    *properties.CLASSES,
    *preferences.CLASSES,
    *photo_operators.CLASSES,
    *expression_operators.CLASSES,
    *engine_check.CLASSES,
    *fetch_models.CLASSES,
    *references.CLASSES,
    *expression_panels.CLASSES,
    *settings.CLASSES,
    *generate.CLASSES,
)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()


def unregister():
    if bpy.app.timers.is_registered(fetch_models._timer_tick):
        bpy.app.timers.unregister(fetch_models._timer_tick)
    fetch_models.stop_download()
    references.unregister_previews()  # thumbnails are loaded on first draw; free them
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
