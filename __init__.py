"""ID-to-3D Head: Blender extension entry point.

Registers the add-on's classes and properties and nothing heavy: the engine (torch, diffusion
models) runs in a separate process started by the operators. Unregister removes everything.
"""

from __future__ import annotations

import bpy

from . import preferences, properties
from .operators import engine_check, expressions as expression_operators, photos as photo_operators
from .panels import expressions as expression_panels, generate, references, settings

# Registration order: property groups before the pointers that use them; panels in the order
# they appear in the sidebar.
CLASSES = (
    *properties.CLASSES,
    *preferences.CLASSES,
    *photo_operators.CLASSES,
    *expression_operators.CLASSES,
    *engine_check.CLASSES,
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
    references.unregister_previews()  # thumbnails are loaded on first draw; free them
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
