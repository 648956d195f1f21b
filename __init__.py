"""ID-to-3D Head: Blender extension entry point.

Registers the add-on's classes and properties and nothing heavy: the engine (torch, diffusion
models) runs in a separate process started by the operators. Unregister removes everything and
ends every process the add-on started (a generation, a check, a download, an install); quitting
Blender does the same through an ``atexit`` hook that unregister removes again.
"""

from __future__ import annotations

import atexit

import bpy

from . import generation, preferences, properties
from .operators import engine_check, export, expressions as expression_operators, fetch_models, generate
from .operators import gpu_check, head as head_operators, install_engine, live_link, photos as photo_operators, relight
from .panels import expressions as expression_panels, generate as generate_panel, head as head_panels
from .panels import references, settings, studio as studio_panel

# Registration order: property groups before the pointers that use them; panels in the order
# they appear in the sidebar.
CLASSES = (
    *properties.CLASSES,
    *preferences.CLASSES,
    *photo_operators.CLASSES,
    *expression_operators.CLASSES,
    *engine_check.CLASSES,
    *gpu_check.CLASSES,
    *fetch_models.CLASSES,
    *install_engine.CLASSES,
    *generate.CLASSES,
    *head_operators.CLASSES,
    *live_link.CLASSES,
    *export.CLASSES,
    *relight.CLASSES,
    *studio_panel.CLASSES,
    *references.CLASSES,
    *expression_panels.CLASSES,
    *settings.CLASSES,
    *generate_panel.CLASSES,
    *head_panels.CLASSES,
)


def _end_processes() -> None:
    """Every process and timer of the add-on, ended (unregister, and Blender quitting)."""
    generation.stop_all()
    engine_check.stop()
    gpu_check.stop()
    photo_operators.stop_check()
    install_engine.stop_install()
    if bpy.app.timers.is_registered(fetch_models._timer_tick):
        bpy.app.timers.unregister(fetch_models._timer_tick)
    fetch_models.stop_download()


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bpy.app.handlers.load_pre.append(generation.on_load_pre)
    atexit.register(_end_processes)


def unregister():
    atexit.unregister(_end_processes)
    while generation.on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(generation.on_load_pre)
    _end_processes()
    relight.remove_preview_handlers()  # a Render Preview still running in the render window
    references.unregister_previews()  # thumbnails are loaded on first draw; free them
    generate_panel.unregister_previews()
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
