"""The result folder, written whole into a staging folder and swapped in (a reader sees the old
result or the new one, never a mix):

    head.npz           canonical mesh, per-corner UVs, per-expression offsets (engine/result_format.py)
    albedo.png         sRGB-encoded albedo (linear map in, encoded on write), seams dilated
    roughness.png      grey, linear
    normal.png         optional tangent-space normal map, linear
    result.json        format, engine version, everything the caller passes in ``info``, mesh and
                       texture facts (json only to read)
    contact_sheet.png  optional: expressions x views
    head.glb           optional: see gltf.py

Without textures (a geometry-only run) head.npz, result.json and a glb with a plain material are
written and ``textures`` is null in result.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import EngineError
from ..result_format import MESH_FILE, HeadMesh, write_head_mesh

RESULT_FORMAT = "idto3d-result"
RESULT_FORMAT_VERSION = 1
ALBEDO, ROUGHNESS, NORMAL = "albedo.png", "roughness.png", "normal.png"
RESULT_JSON, CONTACT_SHEET, GLB = "result.json", "contact_sheet.png", "head.glb"
RESERVED_KEYS = ("format", "format_version", "engine_version", "mesh", "textures")


class ExportError(EngineError):
    code = "export_failed"


def _check_map(name: str, image, channels: tuple[int, ...]) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2 and 1 in channels:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in channels or a.shape[0] != a.shape[1]:
        raise ExportError(f"{name} must be a square [S, S, {'|'.join(map(str, channels))}] map, got {list(a.shape)}",
                          hint="pass TextureMaps.to_numpy() output")
    if not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ExportError(f"{name} holds values outside [0, 1] or NaN", hint="clamp the map to [0, 1] before export")
    return np.clip(a, 0.0, 1.0)


def dilate_for_export(image: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Seam dilation for a written map: every empty texel takes its nearest chart texel's value, so
    no bilinear lookup, resize or mipmap level reads anything but chart colours (no dark seams)."""
    from ..texture.seams import dilate

    return dilate(image, coverage, pixels=max(image.shape[:2]))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def write_result(folder: Path | str, head: HeadMesh, *, albedo=None, roughness=None, normal=None,
                 info: dict | None = None, contact_sheet=None, glb: bool = True,
                 dilate_seams: bool = True) -> dict[str, Path]:
    """Write the result folder (see the module docstring); returns {file name: final path}.

    head: the canonical mesh with ``expression_names`` (neutral first) and offsets, ``uvs``
    [F, 3, 2] when textured. albedo [S, S, 3] linear, roughness [S, S] or [S, S, 1], normal
    [S, S, 3] (encoded (n + 1) / 2), all float in [0, 1]. info: the caller's part of result.json
    (job, seed, models, versions, timings_s, quality...). contact_sheet: [H, W, 3] float in [0, 1]
    (display image) or uint8.
    """
    from .. import __version__
    from ..texture.png import write_png

    folder = Path(folder)
    head.validate()
    if not head.expression_names or head.expression_names[0] != "neutral":
        raise ExportError(f"the first expression must be 'neutral' (the basis), got {head.expression_names[:1]}",
                          hint="put the neutral shape first, with zero offsets")
    info = dict(info or {})
    clash = [k for k in RESERVED_KEYS if k in info]
    if clash:
        raise ExportError(f"result info may not set {clash}: the export writes them", hint="drop those keys")
    maps = None
    if albedo is not None:
        if head.uvs is None:
            raise ExportError("a textured result needs the mesh's UVs (head.uvs [F, 3, 2])",
                              hint="pass UVLayout.corner_uvs() as uvs")
        maps = {"albedo": _check_map("albedo", albedo, (3,)),
                "roughness": _check_map("roughness", roughness if roughness is not None
                                        else np.full(np.asarray(albedo).shape[:2], 0.6, np.float32), (1,))}
        if normal is not None:
            maps["normal"] = _check_map("normal", normal, (3,))
        if dilate_seams:
            from ..texture.seams import coverage_mask
            from ..texture.unwrap import UVLayout

            layout = UVLayout.from_corner_uvs(head.faces, head.uvs)
            coverage = {}
            for key, image in maps.items():
                size = image.shape[0]
                if size not in coverage:
                    coverage[size] = coverage_mask(layout, size)
                maps[key] = dilate_for_export(image, coverage[size])

    result = {"format": RESULT_FORMAT, "format_version": RESULT_FORMAT_VERSION, "engine_version": __version__}
    result.update(info)
    result["mesh"] = {"vertices": int(len(head.vertices)), "faces": int(len(head.faces)),
                      "expressions": list(head.expression_names), "uvs": head.uvs is not None}
    result["textures"] = None if maps is None else {
        "albedo": ALBEDO, "roughness": ROUGHNESS, "size": int(maps["albedo"].shape[0]),
        **({"normal": NORMAL} if "normal" in maps else {}),
        "albedo_encoding": "sRGB", "roughness_encoding": "linear"}
    names = [MESH_FILE, RESULT_JSON]

    def write(staging: Path) -> None:
        write_head_mesh(staging, head)
        if maps is not None:
            write_png(staging / ALBEDO, maps["albedo"], srgb=True)
            write_png(staging / ROUGHNESS, maps["roughness"])
            if "normal" in maps:
                write_png(staging / NORMAL, maps["normal"])
        if contact_sheet is not None:
            sheet = np.asarray(contact_sheet)
            write_png(staging / CONTACT_SHEET, sheet.astype(np.float32) / 255.0 if sheet.dtype == np.uint8 else sheet)
        if glb:
            from .gltf import write_glb

            write_glb(staging / GLB, head, None if maps is None else maps["albedo"],
                      None if maps is None else maps["roughness"], None if maps is None else maps.get("normal"),
                      generator=f"ID-to-3D {__version__}")
        text = json.dumps(_json_safe(result), indent=1, ensure_ascii=False, allow_nan=False)
        from ..atomic import write_text_atomic

        write_text_atomic(staging / RESULT_JSON, text + "\n")

    if maps is not None:
        names += [ALBEDO, ROUGHNESS] + ([NORMAL] if "normal" in maps else [])
    if contact_sheet is not None:
        names.append(CONTACT_SHEET)
    if glb:
        names.append(GLB)
    _replace_folder(folder, write)
    return {name: folder / name for name in names}


def _replace_folder(folder: Path, write) -> None:
    """Swap the new result in; only a folder the engine wrote (marked "result") is ever replaced."""
    from ..owned import replace_owned_dir

    replace_owned_dir(folder, "result", write)
