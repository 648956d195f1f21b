"""Run in a fresh Python: a new user's Blender, tried as they would, in the default startup scene.

argv: SOURCE_DIR MODELS_ROOT PHOTO OUT_DIR. Loads Blender's factory startup file (the Cube at the
origin, where the 3D cursor is, the Camera, the Light), enables the add-on from the source tree,
presses Generate Head (EXEC, the real worker on tiny models), then Relight and renders the studio
in Cycles. Prints one JSON object describing what happened, for the test to assert on.
"""

import json
import sys
import tempfile
from pathlib import Path

source, models, photo, out = (Path(arg) for arg in sys.argv[1:5])

import bpy  # noqa: E402
import addon_utils  # noqa: E402

bpy.ops.wm.read_homefile(use_factory_startup=True)
repo_dir = Path(tempfile.mkdtemp(prefix="idto3d-default-scene-"))
(repo_dir / "id_to_3d").symlink_to(source, target_is_directory=True)
bpy.context.preferences.extensions.repos.new(name="src", module="src", custom_directory=str(repo_dir), source="USER")
module = "bl_ext.src.id_to_3d"
addon_utils.enable(module, default_set=True)
addon = sys.modules[module]


def user_state() -> dict:
    """Everything of the user's that the add-on must leave as it was."""
    scene = bpy.data.scenes["Scene"]
    objects = {}
    for obj in scene.objects:
        if obj.name.startswith("Head"):
            continue
        objects[obj.name] = {
            "matrix": [list(row) for row in obj.matrix_world],
            "hide_viewport": obj.hide_viewport, "hide_render": obj.hide_render, "hidden": obj.hide_get(),
            "collections": sorted(c.name for c in obj.users_collection),
            "data": obj.data.name if obj.data else None,
        }
    return {
        "objects": objects,
        "scene_collections": sorted(c.name for c in scene.collection.children_recursive),
        "camera": scene.camera.name if scene.camera else None,
        "world": scene.world.name if scene.world else None,
        "engine": scene.render.engine,
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "frames": [scene.frame_start, scene.frame_end, scene.frame_current],
    }


report = {"startup_objects": sorted(o.name for o in bpy.data.objects)}
cube = bpy.data.objects["Cube"]
report["cursor"] = list(bpy.context.scene.cursor.location)
before = user_state()

prefs = bpy.context.preferences.addons[module].preferences
prefs.models_root, prefs.python_executable = str(models), sys.executable
settings = bpy.context.scene.idto3d
settings.photos.clear()
settings.photos.add().path = str(photo)
bpy.ops.idto3d.expressions_reset(expression_set="ARKIT52")
for item in settings.expressions:  # a few ARKit keys are enough to show the names and prompts through
    item.enabled = item.text in ("neutral", "jawOpen", "eyeBlinkLeft", "mouthClose")
settings.preset, settings.texture_size, settings.output_dir = "TEST", 64, str(out / "jobs")

bpy.ops.idto3d.generate_head()  # EXEC: blocks until the head is in the scene
job = addon.generation.job_for(bpy.context.scene)
head = job.head_object()
bpy.context.view_layer.update()
low, high = addon.placement.world_bounds(head)
cube_low, cube_high = addon.placement.world_bounds(cube)
report.update(
    job_ok=job.ok,
    placement_note=job.placement_note,
    head_location=list(head.location),
    head_bounds=[list(low), list(high)],
    cube_bounds=[list(cube_low), list(cube_high)],
    head_overlaps=[o.name for o in addon.placement.overlapping(bpy.context.scene, (low + high) / 2,
                                                                max(high - low) / 2, ignore={head})],
    active=bpy.context.view_layer.objects.active.name,
    shape_keys=[k.name for k in head.data.shape_keys.key_blocks],
    job_prompts=json.loads((job.job_dir / "job.json").read_text())["expression_prompts"],
    correctives=json.loads((Path(job.result_folder) / "result.json").read_text()).get("correctives"),
    side_shares=addon.result_import.quality_side_shares(job.result_folder),
)
view = next(a for a in bpy.context.window.screen.areas if a.type == "VIEW_3D").spaces.active.region_3d
report["view_location"], report["view_distance"] = list(view.view_location), view.view_distance

bpy.ops.idto3d.relight()
studio = addon.operators.relight.studio_scene(create=False)
report["studio_objects"] = sorted(o.name for o in studio.objects)
render = addon.operators.relight.render_still(studio, out / "studio.png", size=64, samples=8)
report["render"] = str(render)
report["user_state_unchanged"] = user_state() == before
report["user_state_before"], report["user_state_after"] = before, user_state()
print("REPORT " + json.dumps(report))
