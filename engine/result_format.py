"""The result folder's mesh file, shared by the engine (writer) and the add-on (reader).

``head.npz`` holds the canonical (neutral) mesh and one offset array per expression, all on the
same topology, which is what Blender shape keys need:

- ``vertices``   float32 [V, 3], metres, Z up, the face toward -Y (Blender's world)
- ``faces``      int32   [F, 3], counter-clockwise seen from outside
- ``uvs``        float32 [F, 3, 2] per face corner (optional; absent before the texture stage)
- ``expression_names``   str [E]
- ``expression_offsets`` float32 [E, V, 3], added to ``vertices`` (neutral is all zeros)

Readable with numpy alone. Written to a temporary name and renamed into place.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_file_atomic

MESH_FILE = "head.npz"


class ResultFormatError(ValueError):
    """A result folder whose mesh file is missing or malformed."""


@dataclass
class HeadMesh:
    vertices: np.ndarray
    faces: np.ndarray
    expression_names: list[str]
    expression_offsets: np.ndarray
    uvs: np.ndarray | None = None

    def validate(self, source: str = "head mesh") -> "HeadMesh":
        _check_kinds(source, vertices=(self.vertices, "f"), faces=(self.faces, "iu"),
                     expression_offsets=(self.expression_offsets, "f"),
                     **({} if self.uvs is None else {"uvs": (self.uvs, "f")}))
        v, f, o = self.vertices, self.faces, self.expression_offsets
        if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
            raise ResultFormatError(f"{source}: vertices must be [V>=4, 3], got {list(v.shape)}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) < 4:
            raise ResultFormatError(f"{source}: faces must be [F>=4, 3], got {list(f.shape)}")
        if f.min() < 0 or f.max() >= len(v):
            raise ResultFormatError(f"{source}: face indices outside 0..{len(v) - 1}")
        if o.shape != (len(self.expression_names), len(v), 3):
            raise ResultFormatError(
                f"{source}: expression_offsets must be [{len(self.expression_names)}, {len(v)}, 3], got {list(o.shape)}")
        if len(set(self.expression_names)) != len(self.expression_names):
            raise ResultFormatError(f"{source}: expression names repeat: {self.expression_names}")
        if not all(isinstance(name, str) for name in self.expression_names):
            raise ResultFormatError(f"{source}: expression names must be text")
        if not (np.isfinite(v).all() and np.isfinite(o).all()):
            raise ResultFormatError(f"{source}: vertices or offsets contain NaN/inf")
        if self.uvs is not None and self.uvs.shape != (len(f), 3, 2):
            raise ResultFormatError(f"{source}: uvs must be [F, 3, 2], got {list(self.uvs.shape)}")
        return self


def _check_kinds(source: str, **arrays: tuple[np.ndarray, str]) -> None:
    """Each array must be a numpy array of the expected kind (float, or integer for faces).

    Float face indices are refused, not truncated: a truncated index points at another vertex.
    """
    for name, (value, kinds) in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
            got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            wanted = "integers" if kinds == "iu" else "floating-point numbers"
            raise ResultFormatError(f"{source}: {name} must hold {wanted}, got {got}")


def write_head_mesh(folder: Path | str, mesh: HeadMesh) -> Path:
    """Validate and write ``folder/head.npz`` atomically; returns its path."""
    mesh.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "vertices": mesh.vertices.astype(np.float32),
        "faces": mesh.faces.astype(np.int32),
        "expression_names": np.array(mesh.expression_names, dtype=str),
        "expression_offsets": mesh.expression_offsets.astype(np.float32),
    }
    if mesh.uvs is not None:
        arrays["uvs"] = mesh.uvs.astype(np.float32)
    target = write_file_atomic(folder / MESH_FILE, lambda stream: np.savez_compressed(stream, **arrays))
    return target


def read_head_mesh(folder: Path | str) -> HeadMesh:
    """Read and validate ``folder/head.npz``, raising :class:`ResultFormatError` with the reason."""
    path = Path(folder) / MESH_FILE
    if not path.is_file():
        raise ResultFormatError(f"{path} not found: is this a result folder of ID-to-3D?")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data["expression_names"]
            if names.ndim != 1 or names.dtype.kind != "U":
                raise ResultFormatError(
                    f"{path}: expression_names must be a list of text, got {names.dtype} {list(names.shape)}")
            mesh = HeadMesh(
                vertices=data["vertices"], faces=data["faces"],
                expression_names=[str(name) for name in names],
                expression_offsets=data["expression_offsets"],
                uvs=data["uvs"] if "uvs" in data.files else None,
            )
    except ResultFormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ResultFormatError(f"{path} is unreadable or incomplete ({exc}); generate the head again") from exc
    return mesh.validate(str(path))
