"""Export Head: the head for game engines, as the engine's own ``.glb`` and as an FBX.

- ``.glb``: the file the engine wrote into the head's result folder (morph targets named after
  the expressions, PBR textures embedded, validated by Khronos' glTF validator in the engine's
  tests), copied beside the FBX. It is refused when the head in the scene no longer matches it
  (other shape keys, another vertex count): the engine wrote it for the head as generated.
- ``.fbx``: Blender's own FBX exporter on the head as it is in the scene, shape keys included,
  textures embedded (engines that read FBX import them with the mesh), Y up and -Z forward as
  Unity and Unreal expect.

Both are written to a temporary name and renamed into place, so a failed export never leaves a
half-written file at the chosen path.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from ..engine.atomic import copy_file_atomic, write_to_path_atomic
from ..engine.result_format import ResultFormatError, read_head_mesh
from .head import expression_blocks, head_key

GLB_MAGIC, JSON_CHUNK = 0x46546C67, 0x4E4F534A


class ExportRefused(Exception):
    """The head cannot be exported as asked; the message says why and what to do."""


def glb_summary(path: Path) -> dict:
    """Morph target names and vertex count of a .glb's first mesh, from its JSON chunk (stdlib)."""
    try:
        with open(path, "rb") as stream:
            magic, _version, _length = struct.unpack("<III", stream.read(12))
            chunk_length, chunk_type = struct.unpack("<II", stream.read(8))
            if magic != GLB_MAGIC or chunk_type != JSON_CHUNK:
                raise ValueError("not a binary glTF file")
            document = json.loads(stream.read(chunk_length))
        mesh = document["meshes"][0]
        primitive = mesh["primitives"][0]
        return {
            "targets": list((mesh.get("extras") or {}).get("targetNames", [])),
            "gltf_vertices": int(document["accessors"][primitive["attributes"]["POSITION"]]["count"]),
        }
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise ExportRefused(f"{path} is not a glTF file the engine wrote ({exc})") from None


def engine_glb(obj) -> Path:
    """The engine's .glb of this head, checked to still describe it."""
    folder = obj.get("idto3d_result")
    glb = Path(folder) / "head.glb" if folder else None
    if glb is None or not glb.is_file():
        raise ExportRefused(
            f"{obj.name} has no engine .glb (it was not imported from a finished result, or the result folder "
            "moved): export the FBX only, or import the result folder again"
        )
    keys = [block.name for block in expression_blocks(head_key(obj))] if head_key(obj) else []
    targets = glb_summary(glb)["targets"]
    if keys != targets:
        raise ExportRefused(
            f"the shape keys of {obj.name} ({len(keys)}) differ from the engine's .glb ({len(targets)}: "
            f"{', '.join(targets[:4])}…): the .glb is the head as generated; export the FBX only for the edited head"
        )
    try:
        vertices = len(read_head_mesh(glb.parent).vertices)
    except ResultFormatError as exc:
        raise ExportRefused(f"the result folder {glb.parent} is unreadable ({exc})") from None
    if vertices != len(obj.data.vertices):
        raise ExportRefused(
            f"{obj.name} has {len(obj.data.vertices)} vertices, the engine's .glb {vertices}: the mesh was "
            "edited, so export the FBX only"
        )
    return glb


def _ensure_exporter(module: str) -> None:
    """Blender's FBX/glTF add-ons ship with Blender but can be disabled; enable them for the export."""
    import addon_utils

    loaded, enabled = addon_utils.check(module)
    if not enabled:
        addon_utils.enable(module, default_set=False)


def write_fbx(obj, path: Path) -> Path:
    """``obj`` alone as an FBX through Blender's exporter: shape keys, UVs, material, embedded textures."""
    _ensure_exporter("io_scene_fbx")

    def export(temporary: Path) -> None:
        with bpy.context.temp_override(selected_objects=[obj], active_object=obj, object=obj):
            result = bpy.ops.export_scene.fbx(
                filepath=str(temporary),
                use_selection=True,
                object_types={"MESH"},
                use_mesh_modifiers=False,  # shape keys are written only for unmodified meshes
                mesh_smooth_type="FACE",
                add_leaf_bones=False,
                bake_anim=False,
                path_mode="COPY",
                embed_textures=True,
                axis_forward="-Z",
                axis_up="Y",
            )
        if "FINISHED" not in result:
            raise ExportRefused(f"Blender's FBX exporter did not finish ({result})")

    return write_to_path_atomic(path, export)


def export_head(obj, path: Path | str, *, glb: bool = True, fbx: bool = True) -> list[Path]:
    """Write ``<path stem>.glb`` and/or ``<path stem>.fbx``; returns the files written."""
    if obj is None or obj.type != "MESH":
        raise ExportRefused("Select the head (a mesh object) to export it")
    if not (glb or fbx):
        raise ExportRefused("Choose at least one format (glTF binary or FBX)")
    base = Path(path)
    base = base.with_suffix("") if base.suffix.lower() in (".glb", ".fbx") else base
    if not base.name:
        raise ExportRefused(f"{path} names a folder: give the file a name")
    source = engine_glb(obj) if glb else None  # checked before anything is written
    written = []
    if source is not None:
        written.append(copy_file_atomic(source, base.with_name(base.name + ".glb")))
    if fbx:
        written.append(write_fbx(obj, base.with_name(base.name + ".fbx")))
    return written


class IDTO3D_OT_export_head(bpy.types.Operator):
    bl_idname = "idto3d.export_head"
    bl_label = "Export Head"
    bl_description = (
        "Write the active head for game engines: the engine's .glb (morph targets, PBR textures) and an "
        "FBX from Blender's exporter (shape keys, embedded textures)"
    )

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.glb;*.fbx", options={"HIDDEN"})
    glb: BoolProperty(name="glTF Binary (.glb)", description="The engine's own .glb of the head", default=True)
    fbx: BoolProperty(name="FBX (.fbx)", description="Blender's FBX exporter, textures embedded", default=True)

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "MESH"

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = bpy.path.clean_name(context.active_object.name) + ".glb"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            written = export_head(context.active_object, bpy.path.abspath(self.filepath), glb=self.glb, fbx=self.fbx)
        except (ExportRefused, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, "Exported " + ", ".join(str(path) for path in written))
        return {"FINISHED"}


CLASSES = (IDTO3D_OT_export_head,)
