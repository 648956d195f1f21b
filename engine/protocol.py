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
import threading
from typing import IO, Any, Callable, Iterator

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


# Field types a reader may rely on (required fields, and the optional ones readers use). A value
# of another type is a malformed message: the reader must not crash on it later.
_NUMBER = (int, float)
_FIELD_TYPES: dict[str, dict[str, tuple]] = {
    "hello": {"protocol": (int,), "engine_version": (str,), "pid": (int,)},
    "stage": {"name": (str,), "index": (int,), "count": (int,)},
    "progress": {"step": _NUMBER, "total": _NUMBER, "loss": _NUMBER + (type(None),),
                 "eta_s": _NUMBER + (type(None),), "stage": (str, type(None)), "expression": (str, type(None))},
    "preview": {"path": (str,), "step": _NUMBER + (type(None),)},
    "snapshot": {"path": (str,), "step": _NUMBER + (type(None),)},
    "warning": {"code": (str,), "message": (str,)},
    "error": {"code": (str,), "message": (str,), "hint": (str, type(None)), "field": (str, type(None))},
    "result": {"folder": (str,), "glb": (str, type(None))},
    "done": {"ok": (bool,), "code": (str, type(None))},
}
MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real message, small enough to never exhaust memory


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
    """One line of JSON, newline-terminated. Non-finite floats become null (JSON has no NaN).

    Text stays readable UTF-8; a string holding a file name that is not valid UTF-8 (lone
    surrogates) makes the whole line ASCII with \\u escapes instead, which decode to the same str.
    """
    clean = _finite(msg)
    text = json.dumps(clean, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(clean, separators=(",", ":"), ensure_ascii=True)
    return text + "\n"


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"{name} is not a JSON number")


def decode(line: str | bytes) -> dict[str, Any]:
    """Parse and check one line. Raises :class:`ProtocolError` with the reason, for *any* input:
    bytes that are not UTF-8, lines over :data:`MAX_LINE_BYTES`, any nesting depth, NaN, fields
    of the wrong type, a hello of another protocol version."""
    if isinstance(line, (bytes, bytearray)):
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    elif not isinstance(line, str):
        raise ProtocolError(f"a line must be str or bytes, not {type(line).__name__}")
    elif len(line) > MAX_LINE_BYTES or len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise ProtocolError(f"line exceeds the {MAX_LINE_BYTES}-byte limit")
    text = line.strip()
    if not text:
        raise ProtocolError("empty line")
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc.msg}): {text[:80]!r}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except (ValueError, TypeError, MemoryError) as exc:  # e.g. an integer with too many digits
        raise ProtocolError(f"not a usable JSON value ({str(exc)[:80]})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(f"not a protocol message (no 'type'): {text[:80]!r}")
    kind = obj["type"]
    required = WORKER_MESSAGES.get(kind, ADDON_MESSAGES.get(kind))
    if required is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise ProtocolError(f"message {kind!r} lacks {', '.join(missing)}")
    for name, types in _FIELD_TYPES.get(kind, {}).items():
        if name not in obj:
            continue
        value = obj[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(f"message {kind!r}: field {name!r} is a {type(value).__name__}, "
                                f"expected {' or '.join(t.__name__ for t in types)}")
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


def read_line(stream: IO, limit: int = MAX_LINE_BYTES) -> str | bytes | None:
    """One line from ``stream`` (text or binary), never holding more than ``limit`` (+1) in memory.

    Returns None at end of stream. A longer line is read to its end and thrown away, and a
    :class:`ProtocolError` is raised for it: the stream stays usable for the next line.
    """
    chunk = stream.readline(limit + 1)
    if not chunk:
        return None
    newline = b"\n" if isinstance(chunk, bytes) else "\n"
    if len(chunk) > limit and not chunk.endswith(newline):
        while True:  # drain the rest of the oversized line in bounded pieces
            more = stream.readline(limit)
            if not more or more.endswith(newline):
                break
        raise ProtocolError(f"line exceeds the {limit}-byte limit")
    return chunk


class Reader:
    """The reading side of the worker's stdout: checks the order as well as each line.

    ``hello`` must come first and speak this :data:`PROTOCOL_VERSION`, and nothing may follow
    ``done``; anything else raises :class:`ProtocolError`, so the caller aborts the job instead
    of trusting what a mismatched or broken worker says. Use :meth:`feed` from a timer that reads
    lines itself, or iterate :func:`read_stream`.
    """

    def __init__(self) -> None:
        self.hello: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None

    def feed(self, line: str | bytes) -> dict[str, Any]:
        msg = decode(line)
        if self.done is not None:
            raise ProtocolError(f"{msg['type']!r} after 'done': the worker must stop after done")
        if self.hello is None:
            if msg["type"] != "hello":
                raise ProtocolError(f"the worker's first message is {msg['type']!r}, not 'hello': "
                                    "it is not this engine's worker (or it crashed while starting)")
            self.hello = msg
        elif msg["type"] == "hello":
            raise ProtocolError("a second 'hello' from the worker")
        elif msg["type"] == "done":
            self.done = msg
        return msg


def read_stream(stream: IO) -> Iterator[dict[str, Any]]:
    """Yield the checked messages of a worker's stdout until ``done`` or end of stream.

    Raises :class:`ProtocolError` on a malformed line, a missing or mismatched ``hello``, or a
    stream that ends without ``done`` (the worker died).
    """
    reader = Reader()
    while reader.done is None:
        line = read_line(stream)
        if line is None:
            raise ProtocolError("the worker's output ended without 'done' (it stopped unexpectedly)"
                                if reader.hello else "the worker wrote nothing (no 'hello')")
        yield reader.feed(line)


def watch_for_cancel(stream: IO, event: threading.Event, *, log: Callable[[str], None] | None = None) -> str:
    """Worker side of stdin: set ``event`` on a ``cancel`` line or when ``stream`` closes.

    Survives any line (not UTF-8, any size, any nesting, any JSON): a bad line is reported to
    ``log`` and skipped, never fatal, so cancel and "Blender went away" always work. Reads bytes
    when the stream has a binary buffer (a text wrapper would raise on invalid UTF-8). Returns
    why it stopped: ``"cancel"`` or ``"closed"``.
    """
    source = getattr(stream, "buffer", stream)
    reason = "closed"
    try:
        while True:
            try:
                line = read_line(source)
            except ProtocolError as exc:
                if log:
                    log(f"ignored a line on stdin: {exc}")
                continue
            except (OSError, ValueError):  # closed or broken pipe: Blender went away
                break
            if line is None:
                break
            try:
                if decode(line)["type"] == "cancel":
                    reason = "cancel"
                    break
            except ProtocolError as exc:
                if log and line.strip():
                    log(f"ignored a line on stdin: {exc}")
            except Exception as exc:  # never let one line end the watcher  # noqa: BLE001
                if log:
                    log(f"ignored a line on stdin ({type(exc).__name__})")
    finally:
        event.set()
    return reason


def start_cancel_watcher(stream: IO, event: threading.Event, *,
                         log: Callable[[str], None] | None = None) -> threading.Thread:
    """Run :func:`watch_for_cancel` in a daemon thread and return the thread."""
    thread = threading.Thread(target=watch_for_cancel, args=(stream, event), kwargs={"log": log},
                              name="idto3d-cancel-watcher", daemon=True)
    thread.start()
    return thread


class WorkerSession:
    """Worker side of stdout: ``hello`` on entry, and on *every* exit path a closing ``done``.

    Inside ``with WorkerSession(sys.stdout, version) as session:`` call :meth:`send`; on a normal
    exit call :meth:`finish` (``done ok``). An exception leaving the block — KeyboardInterrupt
    (SIGINT), an EngineError, or a bug — first sends ``error`` (code, message, hint) and then
    ``done`` with ok false, so the reader always sees how the stream ended. The exception then
    propagates as usual (exit status chosen by the caller).
    """

    def __init__(self, stream: IO[str], engine_version: str, pid: int | None = None):
        import os

        self.stream, self.engine_version, self.pid = stream, engine_version, pid or os.getpid()
        self.finished = False

    def __enter__(self) -> "WorkerSession":
        self.stream.write(encode(hello(self.engine_version, self.pid)))
        self.stream.flush()
        return self

    def send(self, kind: str, **fields: Any) -> None:
        if self.finished:
            raise ProtocolError(f"{kind!r} after 'done'")
        send(self.stream, kind, **fields)

    def finish(self, ok: bool = True, code: str | None = None) -> None:
        if not self.finished:
            self.send("done", ok=ok, **({"code": code} if code else {}))
            self.finished = True

    def fail(self, code: str, message_text: str, hint: str | None = None) -> None:
        if not self.finished:
            self.send("error", code=code, message=message_text, hint=hint or "")
            self.finish(ok=False, code=code)

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            self.finish(ok=True)
            return False
        try:
            if isinstance(exc, KeyboardInterrupt):
                self.fail("cancelled", "interrupted (Ctrl-C or SIGINT)", "run it again to continue")
            elif isinstance(getattr(exc, "code", None), str) and hasattr(exc, "message"):  # an EngineError
                self.fail(exc.code, exc.message, getattr(exc, "hint", None))
            else:
                self.fail("internal_error", f"{type(exc).__name__}: {exc}"[:2000],
                          "this is a bug in the engine; please report it with the log (stderr)")
        except (OSError, ValueError):
            pass  # stdout is gone (the reader quit): nothing more can be said
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
