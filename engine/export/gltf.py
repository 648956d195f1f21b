"""The head as one binary glTF 2.0 file (pygltflib): mesh, UVs, PBR material, one morph target per
expression.

- One mesh, one primitive. A mesh vertex on a UV seam has one glTF vertex per UV it takes (the
  unwrap's ``vmapping``), so POSITION/NORMAL/TEXCOORD_0 are per glTF vertex; normals are those of
  the closed mesh, copied to every split vertex, so seams do not show in the shading.
- Z-up engine/Blender world -> glTF's Y-up: (x, y, z) -> (x, z, -y) for positions, normals and
  morph offsets (Blender's importer applies the inverse, so the head comes back as it left).
- Material: baseColorTexture (albedo, sRGB), metallicRoughnessTexture (roughness in G, metallic 0
  in B, R unused = 255, all linear), normalTexture when a normal map is given.
- Morph targets: POSITION offsets of every non-neutral expression, names in
  ``mesh.extras.targetNames`` (the convention Blender and most engines read), weights 0.
- Every buffer view starts on a 4-byte boundary and the chunks are padded to 4 bytes: pygltflib's
  GLB writer re-packs the views that way (tests/export/test_gltf.py checks it on a mesh whose index
  view is not a multiple of 4 bytes long).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..atomic import write_file_atomic
from ..result_format import HeadMesh

# glTF constants
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
NEUTRAL = "neutral"


def to_y_up(xyz: np.ndarray) -> np.ndarray:
    """(x, y, z) Z-up -> (x, z, -y) Y-up."""
    xyz = np.asarray(xyz)
    return np.stack([xyz[..., 0], xyz[..., 2], -xyz[..., 1]], axis=-1)


def from_y_up(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz)
    return np.stack([xyz[..., 0], -xyz[..., 2], xyz[..., 1]], axis=-1)


def mesh_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (numpy; the mesh is counter-clockwise seen from outside)."""
    v = vertices.astype(np.float64)
    f = faces.astype(np.int64)
    n_face = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], n_face)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    fallback = np.array([0.0, 0.0, 1.0])
    return np.where(length > 1e-20, n / np.maximum(length, 1e-20), fallback).astype(np.float32)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def texture_pngs(albedo, roughness, normal=None) -> dict[str, bytes]:
    """The PNGs the glb embeds: baseColor (sRGB), metallicRoughness (R 255, G roughness, B 0), normal."""
    from ..texture.png import to_png_array

    pngs = {"baseColor": _png_bytes(to_png_array(albedo, srgb=True))}
    rough = to_png_array(roughness)
    if rough.ndim == 3:
        rough = rough[..., 0]
    mr = np.zeros(rough.shape + (3,), np.uint8)
    mr[..., 0], mr[..., 1] = 255, rough
    pngs["metallicRoughness"] = _png_bytes(mr)
    if normal is not None:
        pngs["normal"] = _png_bytes(to_png_array(normal))
    return pngs


class _Blob:
    """The binary chunk: appends buffer views (pygltflib aligns them when it writes the GLB)."""

    def __init__(self, gltf):
        self.gltf = gltf
        self.data = bytearray()

    def view(self, payload: bytes, target: int | None = None) -> int:
        import pygltflib

        self.gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=len(self.data),
                                                          byteLength=len(payload), target=target))
        self.data.extend(payload)
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, *, target: int | None = ARRAY_BUFFER,
                 bounds: bool = False) -> int:
        import pygltflib

        component = {np.dtype(np.float32): FLOAT, np.dtype(np.uint16): UNSIGNED_SHORT,
                     np.dtype(np.uint32): UNSIGNED_INT}[array.dtype]
        view = self.view(np.ascontiguousarray(array).tobytes(), target)
        acc = pygltflib.Accessor(bufferView=view, componentType=component, count=int(array.shape[0]), type=kind)
        if bounds:
            flat = array.reshape(array.shape[0], -1)
            acc.min = [float(x) for x in flat.min(axis=0)]
            acc.max = [float(x) for x in flat.max(axis=0)]
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def build_glb(head: HeadMesh, albedo=None, roughness=None, normal=None, *, layout=None,
              generator: str = "ID-to-3D") -> bytes:
    """The .glb bytes for ``head`` (see the module docstring). Without UVs (``head.uvs`` None and
    no ``layout``) or without an albedo, the material is a plain grey one and no textures go in."""
    import pygltflib

    from ..texture.unwrap import UVLayout

    head.validate()
    faces = np.asarray(head.faces, dtype=np.int64)
    if layout is None and head.uvs is not None:
        layout = UVLayout.from_corner_uvs(faces, head.uvs)
    if layout is not None:
        vmap = np.asarray(layout.vmapping, dtype=np.int64)
        indices = np.asarray(layout.uv_faces, dtype=np.int64)
        uv = np.asarray(layout.uv, dtype=np.float32)
        if indices.shape != faces.shape or not np.array_equal(vmap[indices], faces):
            raise ValueError("the UV layout does not belong to this mesh (vmapping[uv_faces] != faces)")
    else:
        vmap, indices, uv = np.arange(len(head.vertices)), faces, None
    textured = uv is not None and albedo is not None

    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator=generator))
    blob = _Blob(gltf)
    positions = to_y_up(np.asarray(head.vertices, np.float32)[vmap]).astype(np.float32)
    normals = to_y_up(mesh_vertex_normals(np.asarray(head.vertices), faces)[vmap]).astype(np.float32)
    attributes = pygltflib.Attributes(POSITION=blob.accessor(positions, "VEC3", bounds=True),
                                      NORMAL=blob.accessor(normals, "VEC3"))
    if uv is not None:
        # glTF's UV origin is the image's top-left corner; ours is the bottom-left (v up).
        attributes.TEXCOORD_0 = blob.accessor(np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1).astype(np.float32), "VEC2")
    index_type = np.uint16 if len(positions) < 65535 else np.uint32
    index_acc = blob.accessor(indices.reshape(-1).astype(index_type), "SCALAR", target=ELEMENT_ARRAY_BUFFER)

    names = list(head.expression_names)
    offsets = np.asarray(head.expression_offsets, np.float32)
    targets, target_names = [], []
    for k, name in enumerate(names):
        if name == NEUTRAL:
            continue  # the basis
        delta = to_y_up(offsets[k][vmap]).astype(np.float32)
        targets.append(pygltflib.Attributes(POSITION=blob.accessor(delta, "VEC3", bounds=True)))
        target_names.append(name)

    material = pygltflib.Material(name="head", doubleSided=False)
    pbr = pygltflib.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0)
    if textured:
        gltf.samplers.append(pygltflib.Sampler(magFilter=LINEAR, minFilter=LINEAR_MIPMAP_LINEAR,
                                               wrapS=CLAMP_TO_EDGE, wrapT=CLAMP_TO_EDGE))
        for key, data in texture_pngs(albedo, roughness if roughness is not None else np.full((4, 4), 0.6),
                                      normal).items():
            gltf.images.append(pygltflib.Image(name=key, mimeType="image/png", bufferView=blob.view(data)))
            gltf.textures.append(pygltflib.Texture(sampler=0, source=len(gltf.images) - 1, name=key))
        pbr.baseColorTexture = pygltflib.TextureInfo(index=0)
        pbr.metallicRoughnessTexture = pygltflib.TextureInfo(index=1)
        if normal is not None:
            material.normalTexture = pygltflib.NormalMaterialTexture(index=2)
    else:
        pbr.baseColorFactor = [0.7, 0.7, 0.7, 1.0]
        pbr.roughnessFactor = 0.6
    material.pbrMetallicRoughness = pbr
    gltf.materials.append(material)

    primitive = pygltflib.Primitive(attributes=attributes, indices=index_acc, material=0, mode=4, targets=targets)
    mesh = pygltflib.Mesh(name="head", primitives=[primitive])
    if targets:
        mesh.weights = [0.0] * len(targets)
        mesh.extras = {"targetNames": target_names}
    gltf.meshes.append(mesh)
    gltf.nodes.append(pygltflib.Node(name="head", mesh=0))
    gltf.scenes.append(pygltflib.Scene(name="Scene", nodes=[0]))
    gltf.scene = 0
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_glb(path: Path | str, head: HeadMesh, albedo=None, roughness=None, normal=None, *, layout=None,
              generator: str = "ID-to-3D") -> Path:
    """Write ``head`` as a .glb at ``path`` atomically (see :func:`build_glb`); returns the path."""
    data = build_glb(head, albedo, roughness, normal, layout=layout, generator=generator)
    return write_file_atomic(path, lambda stream: stream.write(data))
