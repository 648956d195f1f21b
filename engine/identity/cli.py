"""``python -m engine identity IMG... [--out DIR]``: check photos and make the identity embedding.

Prints one row per photo (status, faces found, box, similarity to the other photos, warnings) and
writes ``embedding.npy``, ``identity.json`` and the aligned crops into ``--out``. ``--json`` prints
the summary as one JSON object instead (the Blender add-on reads it). Exit status: 0 when an
identity embedding was made, 1 when none could be (no usable photo, or no ArcFace model), 2 when
the run could not start (missing models for the chosen backend, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, metavar="IMG",
                        help="photos of the person (1-10); put them after `--` so a name starting with '-' "
                             "is never read as an option")
    parser.add_argument("--photos-from", type=Path, default=None, metavar="FILE",
                        help="read the photo paths from FILE (one per line, or NUL-separated; any bytes a file "
                             "name may hold), instead of or besides IMG")
    parser.add_argument("--out", type=Path, default=Path("identity_out"),
                        help="folder for embedding.npy, identity.json and crops/ (default: ./identity_out)")
    parser.add_argument("--backend", choices=("auto", "insightface", "dlib"), default="auto",
                        help="face detector: insightface SCRFD (needs antelopev2) or dlib (offline); "
                             "auto picks insightface when its detector is present")
    parser.add_argument("--models", "--prior", dest="models", type=Path, default=None,
                        help="models root folder (antelopev2/, arc2face/ are looked for there first)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="onnxruntime device for the ONNX models (default: cpu)")
    parser.add_argument("--no-judge", action="store_true", help="skip the independent dlib judge")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report) -> str:
    rows = [("#", "photo", "status", "faces", "box (x0,y0,x1,y1)", "px", "sim", "judge")]
    for i, p in enumerate(report.photos):
        box = "-" if p.box is None else ",".join(str(round(v)) for v in p.box)
        rows.append((str(i), p.name[:28], p.status, str(p.faces_found), box, _fmt(p.face_size, "d"),
                     _fmt(p.similarity_to_rest, ".2f"), _fmt(p.judge_distance_to_rest, ".2f")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for i, p in enumerate(report.photos):
        for text in ([p.message] if p.status not in ("ok", "several_faces") else []) + p.warnings:
            lines.append(f"  [{i}] {text}")
    lines.append("")
    lines.append("sim = mean ArcFace cosine to the other photos; judge = median dlib distance to them "
                 "(same person < 0.6)")
    for text in report.warnings:
        lines.append(f"warning: {text}")
    if report.embedding is not None:
        lines.append(f"identity embedding from {len(report.used)} photo(s), backend {report.backend}")
    else:
        lines.append("no identity embedding was made")
    if report.out_dir:
        lines.append(f"written to {report.out_dir}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import EngineError, exit_code_for
    from ..options import read_list_file
    from . import analyse_photos

    try:
        listed = read_list_file(args.photos_from, "photo list") if args.photos_from else []
        images = list(args.images) + [Path(name) for name in listed]
        report = analyse_photos(images, backend=args.backend, models_root=args.models, out_dir=args.out,
                                device=args.device, judge=not args.no_judge)
    except EngineError as exc:
        if args.json:
            print(json.dumps({"error": exc.to_dict()}))  # ASCII JSON: any file name survives exactly
        else:
            print(f"error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exit_code_for(exc)
    if args.json:
        summary = report.to_dict()
        summary["out_dir"] = report.out_dir
        print(json.dumps(summary))
    else:
        print(format_table(report))
    return 0 if report.embedding is not None else 1
