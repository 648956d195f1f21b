"""Relight in Cycles: a studio scene around the active head, and Render Preview.

The studio is a scene of its own ("ID-to-3D Studio") that links the head object and nothing else
of the user's: the head is lit and rendered in isolation (in Blender's default scene the head
would otherwise sit inside the default Cube and render blank), and the user's scene, its objects,
camera, world, render settings and frame range stay exactly as they were. The same object is in
both scenes, so edits to the head show in the studio at once.

The rig lives in its own collection inside the studio; every part carries its role
(``idto3d_rig``) so running Relight again finds and updates the parts instead of adding new ones.
Key, fill and rim area lights, or one of Blender's bundled studio HDRIs
(``bpy.utils.system_resource``); a camera that frames the head from the front (the face looks
toward -Y); an optional 360° turntable that turns the rig (camera and lights) around the head, so
the head's own transform is never animated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import bpy
from mathutils import Vector

from ..animation import fcurves_of

STUDIO_SCENE = "ID-to-3D Studio"
STUDIO_MARK = "idto3d_studio"  # on the studio scene: the name of the scene it was made from
STUDIO_HEAD = "idto3d_studio_head"  # on the head Relight staged in the studio (the only object it ever unlinks)
RIG_COLLECTION = "ID-to-3D Studio"
WORLD_NAME = "ID-to-3D Studio World"
STUDIO_SAMPLES = 128
ROLE = "idto3d_rig"
FRAME_FILL = 0.7  # the head fills this share of the frame height
LENS_MM = 85.0
# role, azimuth (deg, 0 = in front of the face), elevation (deg), distance (head heights), power (W), size
LIGHTS = (
    ("key", -40.0, 25.0, 3.0, 60.0, 0.6),
    ("fill", 45.0, 5.0, 3.5, 20.0, 1.0),
    ("rim", 160.0, 35.0, 3.0, 45.0, 0.5),
)


def studio_hdris() -> tuple[str, ...]:
    folder = bpy.utils.system_resource("DATAFILES", path="studiolights/world")
    if not folder or not os.path.isdir(folder):
        return ()
    return tuple(sorted(name for name in os.listdir(folder) if name.lower().endswith((".exr", ".hdr"))))


def hdri_path(name: str) -> Path:
    return Path(bpy.utils.system_resource("DATAFILES", path="studiolights/world")) / name


def head_bounds(obj) -> tuple[Vector, float]:
    """World-space centre and height of the object's bounding box."""
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    low = Vector((min(c.x for c in corners), min(c.y for c in corners), min(c.z for c in corners)))
    high = Vector((max(c.x for c in corners), max(c.y for c in corners), max(c.z for c in corners)))
    return (low + high) / 2, max(high.z - low.z, 1e-3)


def is_studio(scene) -> bool:
    return scene.get(STUDIO_MARK) is not None


def studio_scene(create: bool = True):
    """The studio scene (made on first use with its own render settings), or None."""
    studio = next((scene for scene in bpy.data.scenes if is_studio(scene)), None)
    if studio is None and create:
        studio = bpy.data.scenes.new(STUDIO_SCENE)
        studio[STUDIO_MARK] = ""
        studio.render.engine = "CYCLES"
        studio.cycles.samples = STUDIO_SAMPLES  # a new scene asks for 4096
        studio.render.resolution_x, studio.render.resolution_y = 1080, 1080
    return studio


def source_scene(studio):
    """The scene the studio was made from (where the user's settings live), or None."""
    return bpy.data.scenes.get(studio.get(STUDIO_MARK) or "") if studio is not None else None


def settings_scene(scene):
    """Whose ID-to-3D settings apply: the user's scene, also while the studio is shown (the studio
    scene has default settings of its own that nobody chose)."""
    return (source_scene(scene) or scene) if is_studio(scene) else scene


def _stage_head(studio, head) -> None:
    """The head in the studio's own collection, replacing the head Relight staged before.

    Only a head Relight staged (it carries :data:`STUDIO_HEAD`) is ever taken out: whatever the
    user put into the studio (a backdrop, props, another light) stays. The head becomes the
    studio's active object, so its panels and tools work the moment the studio is shown."""
    for obj in list(studio.collection.objects):
        if obj is not head and obj.get(STUDIO_HEAD):
            studio.collection.objects.unlink(obj)  # an earlier head: it stays in the user's scene
            del obj[STUDIO_HEAD]
    if head.name not in studio.collection.objects:
        studio.collection.objects.link(head)
    head[STUDIO_HEAD] = True
    for view_layer in studio.view_layers:
        view_layer.objects.active = head
        head.select_set(True, view_layer=view_layer)


def _rig_collection(studio):
    collection = bpy.data.collections.get(RIG_COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(RIG_COLLECTION)
    for scene in bpy.data.scenes:  # files from before the studio scene had the rig in the user's scene
        if scene is not studio and collection.name in scene.collection.children:
            scene.collection.children.unlink(collection)
    if collection.name not in studio.collection.children:
        studio.collection.children.link(collection)
    return collection


def _part(collection, role: str, make):
    """The rig's object with ``role``, made with ``make()`` the first time."""
    for obj in collection.objects:
        if obj.get(ROLE) == role:
            return obj
    obj = make()
    obj[ROLE] = role
    collection.objects.link(obj)
    return obj


def _look_at(obj, target: Vector) -> None:
    obj.rotation_euler = (target - obj.location).to_track_quat("-Z", "Y").to_euler()


def _orbit_position(centre: Vector, azimuth_deg: float, elevation_deg: float, distance: float) -> Vector:
    """A point around the head; azimuth 0 is in front of the face (-Y), positive toward +X."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return centre + distance * Vector(
        (math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el))
    )


def build_rig(
    scene, head, *, mode: str = "AREA", hdri: str = "studio.exr", turntable: bool = False, frames: int = 120
) -> dict[str, bpy.types.Object]:
    """Make or update the studio around ``head``, which the user chose in ``scene``; returns the
    parts by role, and the studio scene as ``parts["scene"]``. ``scene`` itself is not changed."""
    studio = scene if is_studio(scene) else studio_scene()
    if not is_studio(scene):
        studio[STUDIO_MARK] = scene.name
    _stage_head(studio, head)
    scene = studio  # from here on everything happens in the studio
    centre, height = head_bounds(head)
    collection = _rig_collection(scene)
    pivot = _part(collection, "pivot", lambda: bpy.data.objects.new("Studio Pivot", None))
    pivot.empty_display_type, pivot.empty_display_size = "SPHERE", height * 0.3
    pivot.location, pivot.rotation_euler = centre, (0.0, 0.0, 0.0)
    pivot.animation_data_clear()
    parts = {"pivot": pivot}

    def parented(obj, world_location: Vector, target: Vector) -> None:
        obj.parent = pivot
        obj.matrix_parent_inverse.identity()
        obj.location = world_location - centre  # pivot has no rotation here
        _look_at(obj, Vector((0.0, 0.0, 0.0)) + (target - centre))

    camera = _part(
        collection,
        "camera",
        lambda: bpy.data.objects.new("Studio Camera", bpy.data.cameras.new("Studio Camera")),
    )
    camera.data.lens = LENS_MM
    camera.data.sensor_fit = "AUTO"  # the sensor width spans the longer side of the frame
    aspect = scene.render.resolution_y / max(1, scene.render.resolution_x)
    fov = 2 * math.atan(math.tan(camera.data.angle / 2) * min(1.0, aspect))  # vertical field of view
    distance = (height / FRAME_FILL) / 2 / math.tan(fov / 2)
    parented(camera, centre + Vector((0.0, -distance, 0.0)), centre)
    camera.data.clip_start, camera.data.clip_end = distance * 0.05, distance * 20
    scene.camera = camera
    parts["camera"] = camera

    for role, azimuth, elevation, heights, power, size in LIGHTS:
        name = f"Studio {role.capitalize()}"
        light = _part(
            collection, role, lambda n=name: bpy.data.objects.new(n, bpy.data.lights.new(n, "AREA"))
        )
        light.data.energy = power * (height / 0.25) ** 2  # the same look for any head size
        light.data.size = size * height
        light.hide_render = light.hide_viewport = mode != "AREA"
        parented(light, _orbit_position(centre, azimuth, elevation, heights * height), centre)
        parts[role] = light

    _set_world(scene, mode, hdri)
    if turntable:
        pivot.rotation_euler = (0.0, 0.0, 0.0)
        pivot.keyframe_insert("rotation_euler", index=2, frame=scene.frame_start)
        pivot.rotation_euler = (0.0, 0.0, 2 * math.pi)
        pivot.keyframe_insert("rotation_euler", index=2, frame=scene.frame_start + frames)
        for fcurve in fcurves_of(pivot):
            for point in fcurve.keyframe_points:
                point.interpolation = "LINEAR"
        pivot.rotation_euler = (0.0, 0.0, 0.0)
        scene.frame_end = scene.frame_start + frames - 1  # frame start+frames equals the first view
    scene.render.engine = "CYCLES"
    parts["scene"] = scene
    return parts


def _set_world(scene, mode: str, hdri: str) -> None:
    world = bpy.data.worlds.get(WORLD_NAME) or bpy.data.worlds.new(WORLD_NAME)
    tree = world.node_tree
    if tree is None:  # Blender before 5.0
        world.use_nodes = True
        tree = world.node_tree
    background = next((n for n in tree.nodes if n.type == "BACKGROUND"), None) or tree.nodes.new(
        "ShaderNodeBackground"
    )
    output = next((n for n in tree.nodes if n.type == "OUTPUT_WORLD"), None) or tree.nodes.new(
        "ShaderNodeOutputWorld"
    )
    tree.links.new(background.outputs["Background"], output.inputs["Surface"])
    environment = next((n for n in tree.nodes if n.type == "TEX_ENVIRONMENT"), None)
    if mode == "HDRI":
        path = hdri_path(hdri)
        if not path.is_file():
            raise FileNotFoundError(f"Blender's studio light {hdri!r} was not found at {path}")
        if environment is None:
            environment = tree.nodes.new("ShaderNodeTexEnvironment")
        environment.image = bpy.data.images.load(str(path), check_existing=True)
        tree.links.new(environment.outputs["Color"], background.inputs["Color"])
        background.inputs["Strength"].default_value = 1.0
    else:
        for link in list(background.inputs["Color"].links):
            tree.links.remove(link)
        background.inputs["Color"].default_value = (0.02, 0.02, 0.025, 1.0)
        background.inputs["Strength"].default_value = 1.0
    scene.world = world


def prepare_render(scene, path: Path, *, size: int | None = None, samples: int | None = None) -> Path:
    """The scene's render settings for a Cycles still of its camera written to ``path`` (PNG)."""
    render = scene.render
    render.engine = "CYCLES"
    if size:
        render.resolution_x = render.resolution_y = size
        render.resolution_percentage = 100
    if samples:
        scene.cycles.samples = samples
    scene.cycles.device = "CPU" if bpy.app.background else scene.cycles.device
    render.image_settings.file_format = "PNG"
    render.filepath = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def render_still(scene, path: Path, *, size: int | None = None, samples: int | None = None) -> Path:
    """Render the scene's camera view with Cycles into ``path`` and return when it is written
    (scripts, headless use; the UI renders through Blender's own render job instead)."""
    prepare_render(scene, path, size=size, samples=samples)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    return path


PREVIEW_IMAGE = "ID-to-3D Preview"


def show_preview(path: Path):
    """The image "ID-to-3D Preview", (re)loaded from ``path``."""
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None:
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = PREVIEW_IMAGE
    else:
        image.filepath = str(path)
        image.reload()
    return image


def _preview_finished(scene, *_args) -> None:
    """render_complete / render_cancel: load the preview the UI's render job wrote, then stop listening."""
    remove_preview_handlers()
    path = Path(bpy.path.abspath(scene.render.filepath))
    if is_studio(scene) and path.is_file():
        show_preview(path)


def remove_preview_handlers() -> None:
    for handlers in (bpy.app.handlers.render_complete, bpy.app.handlers.render_cancel):
        while _preview_finished in handlers:
            handlers.remove(_preview_finished)


def _active_head(context):
    obj = context.active_object
    return obj if obj is not None and obj.type == "MESH" else None


class IDTO3D_OT_relight(bpy.types.Operator):
    bl_idname = "idto3d.relight"
    bl_label = "Relight in Cycles"
    bl_description = (
        "Put the active head into the studio scene (the head alone, your scene unchanged) with key, "
        "fill and rim lights or a studio HDRI, a camera that frames it, optionally a 360° turntable"
    )
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _active_head(context) is not None

    def execute(self, context):
        settings = settings_scene(context.scene).idto3d
        try:
            parts = build_rig(
                context.scene,
                _active_head(context),
                mode=settings.light_mode,
                hdri=settings.studio_hdri,
                turntable=settings.turntable,
                frames=settings.turntable_frames,
            )
        except FileNotFoundError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Studio ready in the scene {parts['scene'].name!r} (Render Preview renders it; "
                              "Open Studio shows it)")
        return {"FINISHED"}


def render_folder() -> Path:
    try:
        return Path(bpy.utils.extension_path_user(__package__.rpartition(".")[0], path="renders", create=True))
    except (ValueError, RuntimeError, OSError):
        return Path(bpy.app.tempdir or "/tmp")


class IDTO3D_OT_render_preview(bpy.types.Operator):
    bl_idname = "idto3d.render_preview"
    bl_label = "Render Preview"
    bl_description = (
        "Render a still of the studio camera with Cycles in Blender's render window (the image is "
        "also kept as 'ID-to-3D Preview')"
    )

    @classmethod
    def poll(cls, context):
        studio = studio_scene(create=False)
        return studio is not None and studio.camera is not None

    def invoke(self, context, event):
        """A press in the UI: Blender's own render job (progress in its render window, Esc cancels);
        the UI is never blocked. The preview image loads when the job has written the file."""
        if bpy.app.background:
            return self.execute(context)
        studio = studio_scene(create=False)
        prepare_render(studio, render_folder() / "preview.png")
        remove_preview_handlers()
        bpy.app.handlers.render_complete.append(_preview_finished)
        bpy.app.handlers.render_cancel.append(_preview_finished)
        result = bpy.ops.render.render("INVOKE_DEFAULT", write_still=True, scene=studio.name)
        if "CANCELLED" in result:
            remove_preview_handlers()
        return {"FINISHED"} if "CANCELLED" not in result else {"CANCELLED"}

    def execute(self, context):
        """Scripts and headless: render here and return once the file is written."""
        path = render_still(studio_scene(create=False), render_folder() / "preview.png")
        show_preview(path)
        self.report({"INFO"}, f"Rendered {path}")
        return {"FINISHED"}


class IDTO3D_OT_studio_toggle(bpy.types.Operator):
    bl_idname = "idto3d.studio_toggle"
    bl_label = "Open Studio"
    bl_description = "Show the studio scene in this window, or go back to the scene it was made from"

    @classmethod
    def poll(cls, context):
        return context.window is not None and studio_scene(create=False) is not None

    def execute(self, context):
        studio = studio_scene(create=False)
        if context.window.scene is studio:
            back = bpy.data.scenes.get(studio[STUDIO_MARK]) or next(
                (scene for scene in bpy.data.scenes if not is_studio(scene)), None)
            if back is None:
                self.report({"ERROR"}, "There is no other scene to go back to")
                return {"CANCELLED"}
            context.window.scene = back
        else:
            context.window.scene = studio
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_relight, IDTO3D_OT_render_preview, IDTO3D_OT_studio_toggle)
