"""The result folder's mesh file, shared by the engine (writer) and the add-on (reader).

``head.npz`` holds the canonical (neutral) mesh and one offset array per expression, all on the
same topology, which is what Blender shape keys need:

- ``vertices``   float32 [V, 3], metres, Z up, the face toward -Y (Blender's world)
- ``faces``      int32   [F, 3], counter-clockwise seen from outside
- ``uvs``        float32 [F, 3, 2] per face corner (optional; absent before the texture stage)
- ``expression_names``   str [E]
- ``expression_offsets`` float32 [E, V, 3], added to ``vertices`` (neutral is all zeros); a
  corrective expression (:data:`CORRECTIVES`) is stored relative to the expression it corrects

Readable with numpy alone. Written to a temporary name and renamed into place.
"""

from __future__ import annotations

import math
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import write_file_atomic

MESH_FILE = "head.npz"
# The head lives in a cube of this edge (metres) around its object origin: the tet grid the
# geometry is optimised in (engine/geometry/tetgrid.py), and the box the add-on keeps free when it
# places a new head. Here, torch-free, so both sides read the same number.
HEAD_BOX_SIZE = 0.32


# Expressions that rigs apply on top of another one, stored as a corrective: ARKit's mouthClose
# closes the lips of an open jaw and is driven together with jawOpen (a face rig sets both). The
# engine generates it as a whole face (jaw open, lips closed); stored as that face minus jawOpen,
# jawOpen + mouthClose at 1 give the generated face, and mouthClose alone is the lip correction.
CORRECTIVES = {"mouthClose": "jawOpen"}


def as_correctives(head: "HeadMesh") -> tuple["HeadMesh", dict[str, str]]:
    """``head`` with every :data:`CORRECTIVES` expression whose base is also present stored
    relative to that base; returns (head, {corrective: base} applied). The input is not changed."""
    applied = {name: base for name, base in CORRECTIVES.items()
               if name in head.expression_names and base in head.expression_names}
    if not applied:
        return head, {}
    offsets = np.array(head.expression_offsets, copy=True)
    for name, base in applied.items():
        offsets[head.expression_names.index(name)] -= offsets[head.expression_names.index(base)]
    return HeadMesh(head.vertices, head.faces, list(head.expression_names), offsets, head.uvs), applied


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
    # Stored, not deflated: a generated head deflates only to about half (dense float offsets), and
    # inflating it was the largest part of bringing a head into Blender (docs/blender.md, Speed).
    target = write_file_atomic(folder / MESH_FILE, lambda stream: np.savez(stream, **arrays))
    return target


def read_head_mesh(folder: Path | str) -> HeadMesh:
    """Read and validate ``folder/head.npz``, raising :class:`ResultFormatError` with the reason."""
    mesh, verify = read_head_mesh_verified_later(folder)
    verify()
    return mesh


def read_head_mesh_verified_later(folder: Path | str) -> tuple[HeadMesh, Callable[[], None]]:
    """(mesh, verify): ``folder/head.npz`` read and validated, its CRC-32 check running in a
    background thread meanwhile. ``verify()`` waits for it and raises :class:`ResultFormatError` on
    a mismatch: call it before the mesh is used for anything that stays (the Blender importer
    builds its datablocks meanwhile, and removes them again if it raises). The CRC of a 72 MB
    ARKit head is ~90 ms of one core here; zlib releases the GIL, so it runs beside the import."""
    path = Path(folder) / MESH_FILE
    if not path.is_file():
        raise ResultFormatError(f"{path} not found: is this a result folder of ID-to-3D?")
    crcs: list[tuple[str, bytes, memoryview, int]] = []
    try:
        data = _stored_arrays(path, crcs)
        if data is None:  # deflated members (result folders written before head.npz was stored)
            with np.load(path, allow_pickle=False) as archive:  # zipfile checks their CRC while inflating
                data = {name: archive[name] for name in archive.files}
        names = data["expression_names"]
        if names.ndim != 1 or names.dtype.kind != "U":
            raise ResultFormatError(
                f"{path}: expression_names must be a list of text, got {names.dtype} {list(names.shape)}")
        mesh = HeadMesh(
            vertices=data["vertices"], faces=data["faces"],
            expression_names=[str(name) for name in names],
            expression_offsets=data["expression_offsets"],
            uvs=data.get("uvs"),
        )
    except ResultFormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, MemoryError, zipfile.BadZipFile, struct.error) as exc:
        raise ResultFormatError(f"{path} is unreadable or incomplete ({exc}); generate the head again") from exc
    check = _CrcCheck(crcs)

    def verify() -> None:
        damaged = check.wait()
        if damaged:
            raise ResultFormatError(f"{path} is unreadable or incomplete (member {damaged} is damaged: "
                                    "CRC-32 mismatch); generate the head again")

    try:
        mesh.validate(str(path))
    except ResultFormatError:
        verify()  # bit rot explains it better than what it broke
        raise
    return mesh, verify


class _CrcCheck:
    """The CRC-32 of every stored member, computed in a daemon thread."""

    def __init__(self, members: list[tuple[str, bytes, memoryview, int]]):
        self.damaged: str | None = None
        self.thread = threading.Thread(target=self._run, args=(members,), name="idto3d-npz-crc", daemon=True)
        self.thread.start()

    def _run(self, members) -> None:
        for name, header, data, expected in members:
            if zlib.crc32(data, zlib.crc32(header)) != expected:
                self.damaged = name
                return

    def wait(self) -> str | None:
        """The first damaged member's name, or None."""
        self.thread.join()
        return self.damaged


def _stored_arrays(path: Path, crcs: list) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz whose members are all stored, read straight from the file into their
    arrays (no inflating, no intermediate copy). None when a member is deflated.

    Nothing in the file is trusted before it is checked: each array's header is parsed first and
    the size it claims (shape x item size + header) must be the member's size in the zip directory
    before anything is allocated (a damaged header could otherwise claim hundreds of GB). What each
    member's CRC-32 must be checked over goes into ``crcs`` (bit rot is refused, not imported)."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    if any(member.compress_type != zipfile.ZIP_STORED for member in members):
        return None
    arrays = {}
    with open(path, "rb") as stream:
        for member in members:
            stream.seek(member.header_offset)
            local = stream.read(30)  # the zip local file header: signature ... name and extra lengths
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {member.filename} has no local header")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = member.header_offset + 30 + name_length + extra_length
            arrays[member.filename.removesuffix(".npy")] = _read_member(stream, start, member, crcs)
    return arrays


def _read_member(stream, start: int, member: zipfile.ZipInfo, crcs: list) -> np.ndarray:
    """One stored .npy member, its header checked against the member's size; what its CRC-32 is
    computed over goes into ``crcs``."""
    stream.seek(start)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"member {member.filename} is .npy format {version}, not 1.0 or 2.0")
    if dtype.hasobject:
        raise ValueError(f"member {member.filename} holds Python objects")
    header_length = stream.tell() - start
    claimed = math.prod(shape) * dtype.itemsize + header_length
    if claimed != member.file_size:
        raise ValueError(
            f"member {member.filename} claims {claimed} bytes (shape {shape}, {dtype}), "
            f"the zip holds {member.file_size}")
    stream.seek(start)
    header = stream.read(header_length)
    try:
        array = np.empty(shape[::-1] if fortran_order else shape, dtype)
    except MemoryError:  # the sizes agree, yet the file claims more than this machine has
        raise ValueError(f"member {member.filename} is too large to read ({claimed} bytes)") from None
    data = memoryview(array).cast("B") if array.size else memoryview(b"")
    if stream.readinto(data) != len(data):
        raise ValueError(f"member {member.filename} ends early")
    crcs.append((member.filename, header, data, member.CRC))
    return array.T if fortran_order else array
