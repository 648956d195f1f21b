"""The quality report: how much the finished head still looks like the person in the photos.

Every expression is rendered from fixed views (front, +-30 deg, +-60 deg) with the final texture
under one fixed studio light; the identity room finds and embeds the face in each render exactly
as it does for photos (``engine.identity.analyse_photos``). Per expression and view the report
gives:

- ``arcface_cosine``: cosine between the render's ArcFace embedding and the photos' identity
  embedding, when an ArcFace model is present (it guided the optimisation, so it is the
  optimiser's own view);
- ``dlib_distance``: the independent judge's (dlib's 128-d recogniser) mean Euclidean distance
  to the photos' descriptors, always; below 0.6 is dlib's "same person".

When the models root holds tiny random test models (``engine.tiny_models`` marker) the report
says so in ``tiny_test_models`` and in ``note``: the renders then come from random weights and the
numbers mean nothing.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

VIEWS_DEG = (0.0, 30.0, -30.0, 60.0, -60.0)
ELEVATION_DEG = 5.0
HEAD_HEIGHT = 0.23
FILL = 0.8
SAME_PERSON_DISTANCE = 0.6
TINY_NOTE = ("made with tiny random-weight test models (a smoke run): the renders come from random weights, "
             "so these identity numbers mean nothing")
REAL_NOTE = ("arcface_cosine: cosine to the photos' ArcFace identity (the model that guided the optimisation); "
             "dlib_distance: the independent judge's mean distance to the photos (same person below 0.6)")


def studio_lights(n: int):
    """One fixed light for every report render: soft ambient + a key light above-front-right."""
    import torch

    from ..render import Lights

    sh = torch.zeros(n, 4, 3)
    sh[:, 0] = 0.45
    direction = torch.tensor([0.35, -0.8, 0.5])
    return Lights(sh=sh, key_kind=torch.ones(n, dtype=torch.long), key_vector=(direction / direction.norm()).expand(n, 3),
                  key_color=torch.full((n, 3), 0.7), specular=torch.full((n,), 0.1), shininess=torch.full((n,), 16.0))


def render_views(head, albedo, roughness, *, views_deg: Sequence[float] = VIEWS_DEG, resolution: int = 256,
                 background: float = 1.0) -> dict[str, list[np.ndarray]]:
    """{expression: [float [R, R, 3] sRGB image per view]} of the textured head (torch renderer)."""
    import torch

    from ..render import orbit_cameras, radius_for_fill
    from ..texture.render import render_textured
    from ..texture.unwrap import UVLayout

    verts = np.asarray(head.vertices, np.float32)
    faces = torch.as_tensor(np.asarray(head.faces, np.int64))
    layout = UVLayout.from_corner_uvs(head.faces, head.uvs)
    texture = torch.as_tensor(np.concatenate([np.asarray(albedo, np.float32),
                                              np.asarray(roughness, np.float32).reshape(*np.shape(albedo)[:2], 1)], -1))
    centre = 0.5 * (verts.min(0) + verts.max(0))
    cams = orbit_cameras(list(views_deg), ELEVATION_DEG, radius=radius_for_fill(HEAD_HEIGHT, 30.0, FILL),
                         fov_deg=30.0, resolution=(resolution, resolution), target=tuple(centre))
    lights = studio_lights(len(cams))
    out = {}
    with torch.no_grad():
        for k, name in enumerate(head.expression_names):
            shape = torch.as_tensor(verts + np.asarray(head.expression_offsets[k], np.float32))
            images = render_textured(shape, faces, layout, texture, cams, lights, background=background,
                                     cull_backfaces=True)
            out[name] = [img.numpy() for img in images]
    return out


def _to_uint8(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


SIDES = {"left": 1.0, "right": -1.0}  # the person's left is +X (the face looks toward -Y, Z up)


def expression_side(name: str) -> str | None:
    """"left" / "right" for an expression named for one side as ARKit names them (``eyeBlinkLeft``,
    on-device ``mouthSmile_R``), else None (case matters: "cleft chin" is no side)."""
    match = re.search(r"(Left|_L|Right|_R)$", name.strip())
    if match is None:
        return None
    return "left" if match.group(1) in ("Left", "_L") else "right"


def side_shares(head) -> dict[str, float]:
    """For every expression named for one side: the share of its movement (summed vertex offset
    lengths) on that side of the face. 1.0: it moves only its own side; 0.5: both alike; below
    0.5: mostly the other side. Expressions that do not move are left out."""
    if head is None:
        return {}
    x = np.asarray(head.vertices, np.float64)[:, 0]
    centre = 0.5 * (x.min() + x.max())
    shares = {}
    for name, offsets in zip(head.expression_names, head.expression_offsets):
        side = expression_side(name)
        if side is None:
            continue
        moved = np.linalg.norm(np.asarray(offsets, np.float64), axis=1)
        total = moved.sum()
        if total > 0:
            shares[name] = float(moved[(x - centre) * SIDES[side] > 0].sum() / total)
    return shares


def quality_report(*, renders: dict[str, Sequence] | None = None, head=None, albedo=None, roughness=None,
                   render_fn: Callable[[], dict[str, Sequence]] | None = None, photos: Sequence[str | Path] = (),
                   identity_embedding=None, models_root=None, views_deg: Sequence[float] = VIEWS_DEG,
                   resolution: int = 256, work_dir: Path | str | None = None, backend: str = "auto",
                   device: str = "cpu") -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Score renders of every expression against the photos; returns (report dict, renders).

    The renders come from ``renders`` ({expression: one image per view, float [0, 1] or uint8}),
    or ``render_fn()`` (same shape), or :func:`render_views` of ``head`` + ``albedo`` +
    ``roughness``. ``photos``: the person's photos (the judge's reference; and the ArcFace
    identity when ``identity_embedding`` [512] is not given). ``work_dir``: where the render PNGs
    the identity room reads are written (a temporary folder when None).
    """
    from ..identity import analyse_photos
    from ..tiny_models import is_tiny

    if renders is None:
        renders = render_fn() if render_fn is not None else render_views(
            head, albedo, roughness, views_deg=views_deg, resolution=resolution)
    views = [float(v) for v in views_deg]
    for name, images in renders.items():
        if len(images) != len(views):
            raise ValueError(f"expression {name!r} has {len(images)} renders for {len(views)} views")
    tiny = bool(models_root is not None and is_tiny(models_root))

    photo_descriptors, photo_embedding, warnings = [], None, []
    if photos:
        photo_report = analyse_photos(list(photos), backend=backend, models_root=models_root, device=device)
        photo_descriptors = [p.judge_descriptor for p in photo_report.photos if p.judge_descriptor is not None]
        photo_embedding = photo_report.embedding
        warnings += photo_report.warnings
    identity = identity_embedding if identity_embedding is not None else photo_embedding
    if identity is not None:
        identity = np.asarray(identity, np.float64).reshape(-1)
        identity = identity / max(np.linalg.norm(identity), 1e-12)

    with tempfile.TemporaryDirectory(prefix="idto3d-quality-", dir=work_dir) as tmp:
        from PIL import Image

        paths, keys = [], []
        for name, images in renders.items():
            for v, image in enumerate(images):
                path = Path(tmp) / f"{len(paths):03d}.png"
                Image.fromarray(_to_uint8(image)).save(path)
                paths.append(path)
                keys.append((name, v))
        analysis = analyse_photos(paths, backend=backend, models_root=models_root, device=device)
    arcface_available = analysis.recognition_model is not None
    expressions: dict[str, dict] = {name: {"views": []} for name in renders}
    for (name, v), result in zip(keys, analysis.photos):
        found = result.crop is not None
        cosine = None
        if found and result.embedding is not None and identity is not None:
            cosine = float(np.dot(result.embedding.astype(np.float64), identity))
        distance = None
        if found and result.judge_descriptor is not None and photo_descriptors:
            distance = float(np.mean([np.linalg.norm(result.judge_descriptor - d) for d in photo_descriptors]))
        expressions[name]["views"].append({"azimuth_deg": views[v], "face_found": found,
                                           "arcface_cosine": cosine, "dlib_distance": distance})
    for name, share in side_shares(head).items():
        if name in expressions:
            expressions[name]["side_share"] = share  # movement on the side the name says
    for entry in expressions.values():
        entry["faces_found"] = sum(view["face_found"] for view in entry["views"])
        entry["mean_arcface_cosine"] = _mean(view["arcface_cosine"] for view in entry["views"])
        entry["mean_dlib_distance"] = _mean(view["dlib_distance"] for view in entry["views"])
    if not photos:
        warnings.append("no photos were given, so the judge had nothing to compare with (dlib_distance is null)")
    if identity is None:
        warnings.append("no ArcFace identity embedding (no arcface.onnx found, or no usable photo): "
                        "arcface_cosine is null")
    report = {
        "tiny_test_models": tiny,
        "note": TINY_NOTE if tiny else REAL_NOTE,
        "views_deg": views,
        "arcface_available": arcface_available and identity is not None,
        "judge": "dlib_face_recognition_resnet_model_v1",
        "same_person_distance": SAME_PERSON_DISTANCE,
        "photos": len(photos),
        "expressions": expressions,
        "warnings": warnings,
    }
    return report, {name: [np.asarray(im) for im in images] for name, images in renders.items()}


def contact_sheet(renders: dict[str, Sequence], views_deg: Sequence[float] = VIEWS_DEG, *, tile: int = 192,
                  label_height: int = 18) -> np.ndarray:
    """uint8 [H, W, 3]: one row per expression (its name above), one column per view (azimuth on top)."""
    from PIL import Image, ImageDraw

    names = list(renders)
    cols = len(views_deg)
    sheet = Image.new("RGB", (cols * tile, label_height + len(names) * (tile + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, az in enumerate(views_deg):
        _label(draw, (c * tile + 4, 2), f"{az:+.0f} deg")
    for r, name in enumerate(names):
        top = label_height + r * (tile + label_height)
        _label(draw, (4, top + 2), name)  # user text, drawn as data
        for c, image in enumerate(renders[name]):
            im = Image.fromarray(_to_uint8(image)).resize((tile, tile), Image.BILINEAR)
            sheet.paste(im, (c * tile, top + label_height))
    return np.asarray(sheet)


def _label(draw, xy, text: str) -> None:
    try:
        draw.text(xy, text, fill=(0, 0, 0))
    except (UnicodeError, ValueError, OSError):  # a character the built-in font cannot draw
        draw.text(xy, text.encode("ascii", "replace").decode("ascii"), fill=(0, 0, 0))
