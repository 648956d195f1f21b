"""The one protocol shared by the Blender add-on and the engine worker (standard library only).

Worker -> add-on: one JSON object per line on stdout. Every message has ``"type"``; the first one
is ``hello`` and carries :data:`PROTOCOL_VERSION`. Add-on -> worker: JSON lines on stdin
(``cancel``); the worker also stops when stdin closes, because that means Blender went away.
Logs never go to stdout.

Both sides build messages with :func:`message` and read them with :func:`decode`, which checks
the type and the required fields, so a change here is seen by both sides at once.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any

PROTOCOL_VERSION = 1

# type -> required fields. Optional fields may be added freely; readers ignore unknown fields.
WORKER_MESSAGES: dict[str, tuple[str, ...]] = {
    "hello": ("protocol", "engine_version", "pid"),
    "stage": ("name", "index", "count"),
    "progress": ("step", "total"),  # optional: loss, eta_s, stage
    "preview": ("path",),  # a PNG inside the job folder
    "snapshot": ("path",),  # a mesh file inside the job folder, streamed into the scene
    "warning": ("code", "message"),
    "error": ("code", "message", "hint"),
    "result": ("folder",),
    "done": ("ok",),
}
ADDON_MESSAGES: dict[str, tuple[str, ...]] = {
    "cancel": (),
}


class ProtocolError(ValueError):
    """A line that is not a valid protocol message."""


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """Build a message of ``kind``, checking that its required fields are present."""
    required = WORKER_MESSAGES.get(kind, ADDON_MESSAGES.get(kind))
    if required is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    missing = [name for name in required if name not in fields]
    if missing:
        raise ProtocolError(f"message {kind!r} lacks {', '.join(missing)}")
    return {"type": kind, **fields}


def hello(engine_version: str, pid: int) -> dict[str, Any]:
    return message("hello", protocol=PROTOCOL_VERSION, engine_version=engine_version, pid=pid)


def encode(msg: dict[str, Any]) -> str:
    """One line of JSON, newline-terminated. Non-finite floats become null (JSON has no NaN)."""
    return json.dumps(_finite(msg), separators=(",", ":"), ensure_ascii=False) + "\n"


def decode(line: str | bytes) -> dict[str, Any]:
    """Parse and check one line. Raises :class:`ProtocolError` with the reason."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text:
        raise ProtocolError("empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc.msg}): {text[:80]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(f"not a protocol message (no 'type'): {text[:80]!r}")
    kind = obj["type"]
    required = WORKER_MESSAGES.get(kind, ADDON_MESSAGES.get(kind))
    if required is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise ProtocolError(f"message {kind!r} lacks {', '.join(missing)}")
    if kind == "hello" and obj["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"worker speaks protocol {obj['protocol']}, this side speaks {PROTOCOL_VERSION}: "
            "the add-on and the engine come from different versions; reinstall the extension"
        )
    return obj


def send(stream: IO[str], kind: str, **fields: Any) -> None:
    """Write one message to ``stream`` and flush it, so the reader sees it at once."""
    stream.write(encode(message(kind, **fields)))
    stream.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
