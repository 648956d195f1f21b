"""The job folder's ``job.json``: one dataclass, validated field by field (standard library only).

The add-on imports this module in Blender's Python (no torch there), so it stays stdlib-only.
Every field has its own error code ``job_bad_<field>``; a key this version does not know is
``job_unknown_key`` (reported, never ignored). Expression names are data: kept exactly as typed,
checked by :func:`check_expression_names` (shared with the add-on's list UI).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import EngineError
from .presets import PRESETS, OverrideError, Preset, resolve_preset

JOB_VERSION = 1
JOB_FILE = "job.json"
NEUTRAL = "neutral"
MAX_NAME_BYTES = 63  # Blender's shape-key name limit (64 bytes with the terminator)
TEXTURE_SIZES = (1024, 2048, 4096)
TEST_TEXTURE_RANGE = (64, 512)  # the "test" preset also allows small textures
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "sliced")
STOP_AFTER = (None, "geometry")
MIN_SNAPSHOT_INTERVAL_S = 0.2
MEMORY_DEFAULTS = {"attention": "sdpa", "channels_last": False, "vae_tiling": False, "vae_checkpointing": False,
                   "cpu_offload": False}
OUTPUT_DEFAULTS = {"glb": True, "contact_sheet": True, "quality_report": True}


class JobError(EngineError):
    """A job.json that cannot run as written: ``field`` names the key, ``code`` is job_bad_<field>."""

    code = "job_error"

    def __init__(self, message: str, *, code: str, hint: str, field: str | None = None):
        super().__init__(message, code=code, hint=hint)
        self.field = field

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.field is not None:
            out["field"] = self.field
        return out


def _bad(name: str, message: str, hint: str) -> JobError:
    return JobError(f"job.json field {name!r}: {message}", code=f"job_bad_{name}", hint=hint, field=name)


def check_expression_names(names) -> list[str]:
    """Reasons the list of expression names cannot be used (empty list: all fine).

    Refused: non-strings, empty/whitespace-only names, duplicates (exact or by case), case variants
    of "neutral" other than "neutral" itself, "Basis" in any case (Blender's reserved key), names
    longer than 63 UTF-8 bytes, control characters. Names are never altered.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for index, name in enumerate(names):
        label = f"expression {index + 1}"
        if not isinstance(name, str):
            problems.append(f"{label} is not text ({name!r})")
            continue
        if not name.strip():
            problems.append(f"{label} is empty")
            continue
        if any(unicodedata.category(ch) == "Cc" for ch in name):
            problems.append(f"{label} {name!r} contains a control character")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            problems.append(f"{label} {name[:20]!r}... is longer than {MAX_NAME_BYTES} bytes (Blender's name limit)")
        folded = name.casefold()
        if folded == "basis":
            problems.append(f"{label} {name!r} is reserved (Blender's Basis shape key is the neutral face)")
        if folded == NEUTRAL and name != NEUTRAL:
            problems.append(f"{label} {name!r}: write the neutral face as 'neutral'")
        if folded in seen:
            other = seen[folded]
            same = "twice" if other == name else f"twice ({other!r} and {name!r} differ only by case)"
            problems.append(f"{label}: {name!r} is listed {same}")
        else:
            seen[folded] = name
    return problems


def _resolve_path(value: str, job_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (job_dir / path)


@dataclass
class JobSpec:
    """The whole request. Build it with :meth:`from_dict` / :func:`load_job`, which validate."""

    photos: list[str]
    expressions: list[str]
    preset: str = "standard"
    embedding: str | None = None
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    models: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    memory: dict = field(default_factory=lambda: dict(MEMORY_DEFAULTS))
    texture_size: int | None = None  # None: the preset's default
    output: dict = field(default_factory=lambda: dict(OUTPUT_DEFAULTS))
    snapshot_interval_s: float = 3.0
    allow_download: bool = False
    # name -> the text the prior is conditioned on, for names that are not themselves the prompt
    # (ARKit's "jawOpen" is a shape-key name; "mouth wide open, jaw dropped" is what it looks like)
    expression_prompts: dict = field(default_factory=dict)
    stop_after: str | None = None
    job_version: int = JOB_VERSION
    job_dir: Path | None = field(default=None, compare=False, repr=False)

    # ---- derived -----------------------------------------------------------------------------

    @property
    def settings(self) -> Preset:
        """The preset with the overrides applied (validated at load time)."""
        return resolve_preset(self.preset, self.overrides)

    def prompt(self, name: str) -> str:
        """The text the prior sees for expression ``name``: its prompt, else the name itself."""
        return self.expression_prompts.get(name, name)

    @property
    def resolved_texture_size(self) -> int:
        return self.texture_size if self.texture_size is not None else self.settings.texture_size

    def embedding_path(self) -> Path | None:
        if self.embedding is None:
            return None
        return _resolve_path(self.embedding, self.job_dir or Path.cwd())

    def to_dict(self) -> dict:
        return {
            "job_version": self.job_version, "photos": list(self.photos), "embedding": self.embedding,
            "expressions": list(self.expressions), "preset": self.preset, "overrides": dict(self.overrides),
            "seed": self.seed, "models": self.models, "device": self.device, "dtype": self.dtype,
            "memory": dict(self.memory), "texture_size": self.texture_size, "output": dict(self.output),
            "snapshot_interval_s": self.snapshot_interval_s, "allow_download": self.allow_download,
            "stop_after": self.stop_after, "expression_prompts": dict(self.expression_prompts),
        }

    def resolved_dict(self) -> dict:
        """Every field with the preset expanded under ``settings`` (written into result.json)."""
        out = self.to_dict()
        out["texture_size"] = self.resolved_texture_size
        out["settings"] = self.settings.to_dict()
        return out

    # ---- validation --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, job_dir: Path | str | None = None) -> "JobSpec":
        job_dir = Path(job_dir) if job_dir is not None else None
        if not isinstance(data, dict):
            raise JobError(f"job.json must hold one JSON object, got {type(data).__name__}", code="job_bad_json",
                           hint="write the job as {\"photos\": [...], \"expressions\": [...], ...}")
        known = {f for f in cls.__dataclass_fields__ if f != "job_dir"}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise JobError(f"job.json has keys this engine does not know: {', '.join(map(repr, unknown))}",
                           code="job_unknown_key", field=str(unknown[0]),
                           hint=f"remove them or check their spelling; known keys: {', '.join(sorted(known))}")
        base = Path(job_dir) if job_dir else Path.cwd()
        values = {
            "job_version": _job_version(data.get("job_version", JOB_VERSION)),
            "preset": _preset(data.get("preset", "standard")),
        }
        values["embedding"] = _embedding(data.get("embedding"), base)
        values["photos"] = _photos(data.get("photos", []), values["embedding"] is not None)
        values["expressions"] = _expressions(data.get("expressions", [NEUTRAL]))
        values["overrides"] = _overrides(data.get("overrides", {}), values["preset"])
        values["seed"] = _seed(data.get("seed", 0))
        values["models"] = _models(data.get("models"))
        values["device"] = _device(data.get("device", "auto"))
        values["dtype"] = _choice("dtype", data.get("dtype", "auto"), DTYPES)
        values["memory"] = _flags("memory", data.get("memory", {}), MEMORY_DEFAULTS)
        values["texture_size"] = _texture_size(data.get("texture_size"), values["preset"])
        values["output"] = _flags("output", data.get("output", {}), OUTPUT_DEFAULTS)
        values["snapshot_interval_s"] = _interval(data.get("snapshot_interval_s", 3.0))
        values["allow_download"] = _bool("allow_download", data.get("allow_download", False))
        values["stop_after"] = _choice("stop_after", data.get("stop_after"), STOP_AFTER)
        values["expression_prompts"] = _expression_prompts(data.get("expression_prompts", {}), values["expressions"])
        return cls(**values, job_dir=job_dir)


def _job_version(value) -> int:
    if value != JOB_VERSION or isinstance(value, bool):
        raise _bad("job_version", f"version {value!r} is not supported (this engine reads version {JOB_VERSION})",
                   "write the job with this version of the add-on or CLI")
    return JOB_VERSION


def _preset(value) -> str:
    if not isinstance(value, str) or value not in PRESETS:
        raise _bad("preset", f"{value!r} is not a preset", f"use one of {', '.join(PRESETS)}")
    return value


def _embedding(value, base: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad("embedding", f"{value!r} is not a path", "give the path of a [512] .npy file, or null")
    path = _resolve_path(value, base)
    if path.suffix.lower() != ".npy":
        raise _bad("embedding", f"{value!r} is not a .npy file", "save the identity with numpy.save(..., [512] array)")
    if not path.is_file():
        raise _bad("embedding", f"{path} does not exist", "give an existing .npy file, or photos instead")
    return value


def _photos(value, have_embedding: bool) -> list[str]:
    hint = "give a list of absolute paths of existing image files (or an embedding)"
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _bad("photos", f"{value!r} is not a list of paths", hint)
    if not value and not have_embedding:
        raise _bad("photos", "no photos and no embedding", hint)
    for p in value:
        if not p.strip() or not Path(p).is_absolute():
            raise _bad("photos", f"{p!r} is not an absolute path", hint)
        if not Path(p).is_file():
            raise _bad("photos", f"{p} does not exist or is not a file", hint)
    if len(set(value)) != len(value):
        raise _bad("photos", "the same photo is listed twice", "list each photo once")
    return list(value)


def _expressions(value) -> list[str]:
    if not isinstance(value, list):
        raise _bad("expressions", f"{value!r} is not a list of names", 'e.g. ["neutral", "smiling", "angry"]')
    problems = check_expression_names(value)
    if problems:
        raise _bad("expressions", "; ".join(problems), "fix the names (they are used as shape-key names)")
    names = list(value)
    if NEUTRAL in names:
        names.remove(NEUTRAL)
    return [NEUTRAL, *names]  # neutral first: it is the Basis


MAX_PROMPT_CHARS = 300  # CLIP reads 77 tokens; a longer prompt is a mistake, not a description


def _expression_prompts(value, expressions: list[str]) -> dict:
    hint = 'e.g. {"jawOpen": "mouth wide open, jaw dropped"}: one text per listed expression, or {}'
    if not isinstance(value, dict):
        raise _bad("expression_prompts", f"{value!r} is not an object", hint)
    for name, text in value.items():
        if name not in expressions:
            raise _bad("expression_prompts", f"{name!r} is not one of the job's expressions", hint)
        if not isinstance(text, str) or not text.strip():
            raise _bad("expression_prompts", f"the prompt of {name!r} is empty or not text ({text!r})", hint)
        if len(text) > MAX_PROMPT_CHARS or any(unicodedata.category(ch) == "Cc" for ch in text):
            raise _bad("expression_prompts", f"the prompt of {name!r} is longer than {MAX_PROMPT_CHARS} "
                       "characters or holds a control character", hint)
    return dict(value)


def _overrides(value, preset: str) -> dict:
    if not isinstance(value, dict):
        raise _bad("overrides", f"{value!r} is not an object", 'e.g. {"geometry_steps": 200}, or {}')
    try:
        resolve_preset(preset, value)
    except OverrideError as exc:
        raise _bad("overrides", str(exc), "see docs/pipeline.md for the preset fields and their types") from None
    return dict(value)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad("seed", f"{value!r} is not a whole number >= 0", "use e.g. 0")
    return value


def _models(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or not Path(value).expanduser().is_absolute():
        raise _bad("models", f"{value!r} is not an absolute folder path", "give the models root folder, or null")
    return value


def _device(value) -> str:
    if isinstance(value, str) and (value in DEVICES or re.fullmatch(r"cuda:\d+", value)):
        return value
    raise _bad("device", f"{value!r} is not a device", 'use "auto", "cpu", "cuda" or "cuda:N"')


def _choice(name: str, value, allowed) -> Any:
    if value not in allowed or isinstance(value, bool):
        shown = ", ".join("null" if a is None else repr(a) for a in allowed)
        raise _bad(name, f"{value!r} is not allowed", f"use one of {shown}")
    return value


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, f"{value!r} is not true or false", "use true or false")
    return value


def _flags(name: str, value, defaults: dict) -> dict:
    if not isinstance(value, dict):
        raise _bad(name, f"{value!r} is not an object", f"e.g. {json.dumps(defaults)}")
    out = dict(defaults)
    for key, item in value.items():
        if key not in defaults:
            raise _bad(name, f"{key!r} is not a {name} option", f"known options: {', '.join(defaults)}")
        if key == "attention":
            if item not in ATTENTION:
                raise _bad(name, f"attention {item!r} is not allowed", f"use one of {', '.join(ATTENTION)}")
        elif not isinstance(item, bool):
            raise _bad(name, f"{key} {item!r} is not true or false", "use true or false")
        out[key] = item
    return out


def _texture_size(value, preset: str) -> int | None:
    if value is None:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value in TEXTURE_SIZES or (preset == "test" and TEST_TEXTURE_RANGE[0] <= value <= TEST_TEXTURE_RANGE[1]))
    if not ok:
        extra = f" (the test preset also allows {TEST_TEXTURE_RANGE[0]}..{TEST_TEXTURE_RANGE[1]})"
        raise _bad("texture_size", f"{value!r} is not a texture size for preset {preset!r}",
                   f"use 1024, 2048 or 4096{extra}")
    return value


def _interval(value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < MIN_SNAPSHOT_INTERVAL_S):
        raise _bad("snapshot_interval_s", f"{value!r} is not a number of seconds >= {MIN_SNAPSHOT_INTERVAL_S}",
                   "use e.g. 3.0")
    return float(value)


# ---- the file ---------------------------------------------------------------------------------

def load_job(job_dir: Path | str) -> JobSpec:
    """Read and validate ``JOB_DIR/job.json``."""
    job_dir = Path(job_dir).expanduser().resolve()
    path = job_dir / JOB_FILE
    if not path.is_file():
        raise JobError(f"{path} does not exist", code="job_missing",
                       hint="write job.json into the job folder (the add-on or `python -m engine generate` do)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"{path} is not valid JSON ({exc})", code="job_bad_json",
                       hint="fix the file or write it again") from None
    return JobSpec.from_dict(data, job_dir)


def write_job(job_dir: Path | str, spec: JobSpec | dict) -> Path:
    """Validate and write ``JOB_DIR/job.json`` atomically; returns its path."""
    job_dir = Path(job_dir).expanduser()
    job_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, dict):
        spec = JobSpec.from_dict(spec, job_dir)
    return write_text_atomic(job_dir / JOB_FILE, json.dumps(spec.to_dict(), indent=1, ensure_ascii=False) + "\n")


__all__ = ["JobSpec", "JobError", "load_job", "write_job", "check_expression_names", "JOB_FILE", "JOB_VERSION",
           "NEUTRAL"]
