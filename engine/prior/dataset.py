"""The task-prior dataset folder (docs/prior-dataset.md) and its builder (stdlib + numpy + Pillow).

    DATASET/
      dataset.json        {"format": "id-to-3d-prior-dataset", "version": 1, "domain": "normal", "resolution": 512}
      metadata.jsonl      one JSON object per image (below)
      images/*.png        RGB renders (normal maps or albedo), square
      embeddings/*.npy    512-d float ArcFace embeddings (one per identity), read without pickle

    metadata.jsonl line: {"file": "images/h001_000.png", "embedding": "embeddings/h001.npy" (or a list of 512
    numbers), "expression": "smiling" ("" for neutral), "view": "front" | "side" | "back" | azimuth degrees | null}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..owned import check_replaceable, replace_owned_dir
from .errors import DatasetError

log = logging.getLogger(__name__)
FORMAT = "id-to-3d-prior-dataset"
DATASET_KIND = "prior-dataset"  # the owned-folder kind of a folder build-prior-dataset writes
DOMAINS = ("normal", "albedo")


@dataclass
class Sample:
    image: Path
    embedding: np.ndarray  # [512] float32
    expression: str
    view: Any  # label, azimuth in degrees, or None


def _embedding(value, where: str, folder: Path) -> np.ndarray:
    if isinstance(value, str):
        path = folder / value
        if not path.is_file():
            raise DatasetError(f"{where}: embedding file {path} does not exist", "write it with numpy.save (512 floats)")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{where}: {path} is not a numpy array file ({exc})", "write it with numpy.save") from None
    else:
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'embedding' must be a file name or a list of 512 numbers",
                               "see docs/prior-dataset.md") from None
    try:
        arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {value} does not hold numbers", "write it with numpy.save (512 floats)") from None
    if arr.shape != (512,) or not np.isfinite(arr).all() or not np.any(arr):
        raise DatasetError(f"{where}: the embedding must be 512 finite numbers, not all zero (got shape {arr.shape})",
                           "use the ArcFace embedding of the head's identity (engine.identity.analyse_photos)")
    return arr


def _read_json_object(path: Path, example: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path} is not readable JSON ({exc})", f"fix it or delete it; it should be like {example}") \
            from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds a JSON {type(data).__name__}, not an object", f"it should be like {example}")
    return data


def read_dataset(folder: Path | str, domain: str | None = None) -> list[Sample]:
    """Read and check a dataset folder; raises :class:`DatasetError` naming the line and the problem."""
    folder = Path(folder)
    meta_path = folder / "metadata.jsonl"
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path} does not exist", "build the dataset with `python -m engine build-prior-dataset`"
                           " or write it as docs/prior-dataset.md describes")
    info = {}
    if (folder / "dataset.json").is_file():
        info = _read_json_object(folder / "dataset.json", json.dumps({"format": FORMAT, "version": 1,
                                                                          "domain": "normal", "resolution": 512}))
        if domain and info.get("domain") and info["domain"] != domain:
            raise DatasetError(f"{folder} holds {info['domain']} images, not {domain}",
                               f"use --domain {info['domain']} or a {domain} dataset")
    samples = []
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path} is not readable UTF-8 text ({exc})", "one JSON object per line") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta_path}:{number}"
        try:
            row = json.loads(line)
        except RecursionError:
            raise DatasetError(f"{where} is nested too deeply", "one flat JSON object per line") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where} is not JSON ({exc.msg})", "one JSON object per line") from None
        if not isinstance(row, dict) or "file" not in row or "embedding" not in row:
            raise DatasetError(f"{where} lacks 'file' or 'embedding'", "see docs/prior-dataset.md")
        if not isinstance(row["file"], str) or not isinstance(row.get("expression") or "", str):
            raise DatasetError(f"{where}: 'file' and 'expression' must be strings", "see docs/prior-dataset.md")
        image = folder / row["file"]
        if not image.is_file():
            raise DatasetError(f"{where}: image {image} does not exist", "fix the path (relative to the dataset folder)")
        samples.append(Sample(image, _embedding(row["embedding"], where, folder), str(row.get("expression") or ""),
                              row.get("view")))
    if not samples:
        raise DatasetError(f"{meta_path} lists no images", "add at least one image")
    return samples


def load_image(path: Path, size: int) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1] (row 0 = top)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            return np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise DatasetError(f"{path} is not a readable image ({exc})", "re-render or remove it") from None


# ---- builder --------------------------------------------------------------------------------

def _identity_for(head: Path, models_root) -> np.ndarray:
    if (head / "identity.npy").is_file():
        return _embedding("identity.npy", str(head), head)
    photos = sorted(p for p in (head / "photos").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise DatasetError(f"{head} has neither identity.npy nor photos/",
                           "add identity.npy (512 floats) or a photos/ folder with photos of the person")
    from ..identity import analyse_photos

    report = analyse_photos(photos, models_root=models_root, judge=False)  # the embedding is all we need
    if report.embedding is None:
        raise DatasetError(f"no usable face in {head / 'photos'}", "add clearer photos or an identity.npy")
    return np.asarray(report.embedding, dtype=np.float32)


def _check_output_folder(heads: Path, out: Path) -> None:
    """Refuse to replace anything but an empty folder or a dataset this command wrote earlier."""
    a, b = heads.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DatasetError(f"the output {out} overlaps the renders folder {heads}",
                           "write the dataset to a separate folder")
    # Only an empty folder or one this command wrote (its manifest, nothing added since) is
    # replaced; a folder that merely holds some dataset.json is someone's project, not ours.
    check_replaceable(out, DATASET_KIND)


def _read_meta(head: Path) -> dict:
    path = head / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})", "fix or delete that meta.json") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("views", {}), dict):
        raise DatasetError(f"{path} must be an object with an optional 'views' object",
                           'e.g. {"expression": "smiling", "views": {"normal_000.png": "front"}}')
    return meta


def build_dataset(heads: Path | str, out: Path | str, domain: str, *, resolution: int = 512,
                  models_root=None) -> int:
    """Build a dataset from a folder of rendered heads; returns the number of images.

    Each sub-folder of ``heads`` is one head (one identity and expression) holding
    ``<domain>_*.png`` renders, ``meta.json`` (``{"expression": "smiling", "views":
    {"normal_000.png": "front" or azimuth}}``; ``views`` optional) and ``identity.npy`` or
    ``photos/`` (embedded with :func:`engine.identity.analyse_photos`). Written atomically.
    """
    if domain not in DOMAINS:
        raise DatasetError(f"unknown domain {domain!r}", f"use one of {', '.join(DOMAINS)}")
    from PIL import Image

    heads, out = Path(heads), Path(out)
    _check_output_folder(heads, out)
    folders = sorted(p for p in heads.iterdir() if p.is_dir()) if heads.is_dir() else []
    if not folders:
        raise DatasetError(f"{heads} holds no head folders" if heads.is_dir() else f"{heads} is not a folder",
                           "give --heads a folder with one sub-folder per rendered head")
    count = 0

    def write(staging: Path) -> None:  # out is replaced only if everything was written
        nonlocal count
        (staging / "images").mkdir()
        (staging / "embeddings").mkdir()
        lines = []
        for head in folders:
            renders = sorted(head.glob(f"{domain}_*.png"))
            if not renders:
                log.warning("%s has no %s_*.png renders: skipped", head, domain)
                continue
            meta = _read_meta(head)
            np.save(staging / "embeddings" / f"{head.name}.npy", _identity_for(head, models_root))
            for render in renders:
                name = f"{head.name}_{render.stem}.png"
                try:
                    with Image.open(render) as img:
                        img = img.convert("RGB")
                        if img.size != (resolution, resolution):
                            img = img.resize((resolution, resolution), Image.BICUBIC)
                        img.save(staging / "images" / name)
                except (OSError, ValueError) as exc:  # PIL raises these for corrupt/truncated files
                    raise DatasetError(f"{render} is not a readable image ({exc})",
                                       "re-render or delete that file") from exc
                lines.append(json.dumps({"file": f"images/{name}", "embedding": f"embeddings/{head.name}.npy",
                                         "expression": meta.get("expression", ""),
                                         "view": meta.get("views", {}).get(render.name)}))
                count += 1
        if not count:
            raise DatasetError(f"no {domain}_*.png renders under {heads}", f"render {domain} maps named {domain}_000.png ...")
        (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (staging / "dataset.json").write_text(json.dumps({"format": FORMAT, "version": 1, "domain": domain,
                                                          "resolution": resolution}, indent=2), encoding="utf-8")

    replace_owned_dir(out, DATASET_KIND, write)  # checked again there, then swapped whole
    return count
