"""The worker's control channel cannot be broken by one line (engine/protocol.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import protocol

REPO = Path(__file__).resolve().parents[2]
DEEP = "[" * 200_000 + "]" * 200_000
HELLO = protocol.encode(protocol.hello("0.1", 1))
DONE = protocol.encode(protocol.message("done", ok=True))


@pytest.mark.parametrize("line, reason", [
    (DEEP, "nested too deeply"),
    ('{"type": "cancel", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    (b'{"type": "cancel"}\xff\xfe', "not UTF-8"),
    (b"\xc3\x28", "not UTF-8"),
    ("x" * (protocol.MAX_LINE_BYTES + 1), "limit"),
    (b"x" * (protocol.MAX_LINE_BYTES + 1), "limit"),
    ("[1, 2]", "no 'type'"),
    ('"cancel"', "no 'type'"),
    ("null", "no 'type'"),
    ('{"type": ["cancel"]}', "no 'type'"),
    ('{"type": "hello", "protocol": "1", "engine_version": "x", "pid": 1}', "'protocol' is a str"),
    ('{"type": "hello", "protocol": true, "engine_version": "x", "pid": 1}', "'protocol' is a bool"),
    ('{"type": "hello", "protocol": 1.0, "engine_version": "x", "pid": 1}', "'protocol' is a float"),
    ('{"type": "hello", "protocol": null, "engine_version": "x", "pid": 1}', "'protocol' is a NoneType"),
    ('{"type": "hello", "protocol": {"v": 1}, "engine_version": "x", "pid": 1}', "'protocol' is a dict"),
    ('{"type": "progress", "step": NaN, "total": 1}', "NaN is not a JSON number"),
    ('{"type": "progress", "step": "3", "total": 1}', "'step' is a str"),
    ('{"type": "done", "ok": 1}', "'ok' is a int"),
    ('{"type": "preview", "path": 7}', "'path' is a int"),
    ('{"type": "result", "folder": ["a"]}', "'folder' is a list"),
    ('{"type": "x' + "y" * 1000 + '"}', "unknown message type"),
    ('{"type": "progress", "step": 1' + "0" * 5000 + ', "total": 1}', "usable JSON value"),
    (12, "must be str or bytes"),
])
def test_every_malformed_line_is_a_protocol_error(line, reason):
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.decode(line)


def test_file_names_that_are_not_utf8_survive_encode_and_decode():
    name = os.fsdecode(b"/photos/caf\xe9-\xff.jpg")
    line = protocol.encode(protocol.message("preview", path=name, step=1))
    assert line.isascii()  # lone surrogates made the line escaped ASCII, not invalid UTF-8
    assert protocol.decode(line.encode("utf-8"))["path"] == name
    assert os.fsencode(protocol.decode(line)["path"]) == b"/photos/caf\xe9-\xff.jpg"
    plain = protocol.encode(protocol.message("warning", code="c", message="Gesicht zu klein – ✓"))
    assert "✓" in plain  # ordinary text stays readable UTF-8


def test_reader_aborts_on_a_missing_or_mismatched_hello_and_on_lines_after_done():
    with pytest.raises(protocol.ProtocolError, match="not 'hello'"):
        list(protocol.read_stream(io.StringIO(protocol.encode(protocol.message("result", folder="/x")) + DONE)))
    other = json.dumps({"type": "hello", "protocol": 2, "engine_version": "9", "pid": 1}) + "\n"
    with pytest.raises(protocol.ProtocolError, match="different versions"):
        list(protocol.read_stream(io.StringIO(other + DONE)))
    with pytest.raises(protocol.ProtocolError, match="without 'done'"):
        list(protocol.read_stream(io.StringIO(HELLO)))
    with pytest.raises(protocol.ProtocolError, match="wrote nothing"):
        list(protocol.read_stream(io.StringIO("")))
    reader = protocol.Reader()
    reader.feed(HELLO)
    reader.feed(DONE)
    with pytest.raises(protocol.ProtocolError, match="after 'done'"):
        reader.feed(protocol.encode(protocol.message("result", folder="/x")))
    good = list(protocol.read_stream(io.BytesIO((HELLO + DONE).encode())))
    assert [m["type"] for m in good] == ["hello", "done"]


def test_reader_refuses_a_huge_line_without_holding_it():
    stream = io.BytesIO(HELLO.encode() + b"x" * (5 * protocol.MAX_LINE_BYTES) + b"\n" + DONE.encode())
    messages = protocol.read_stream(stream)
    assert next(messages)["type"] == "hello"
    with pytest.raises(protocol.ProtocolError, match="limit"):
        next(messages)


def test_cancel_watcher_survives_every_bad_line_in_process():
    garbage = [DEEP.encode(), b"\xff\xfe\xfd", b"y" * (3 * protocol.MAX_LINE_BYTES), b"[]", b'{"type": "hello"}',
               b'{"type": "progress", "step": NaN}', b"", b"   "]
    stream = io.BytesIO(b"\n".join(garbage) + b"\n" + b'{"type": "cancel"}\n')
    event, seen = threading.Event(), []
    assert protocol.watch_for_cancel(stream, event, log=seen.append) == "cancel"
    assert event.is_set() and len(seen) >= 5
    closed = threading.Event()
    assert protocol.watch_for_cancel(io.BytesIO(b"\xff\n"), closed) == "closed" and closed.is_set()


CHILD = """
import sys, threading
from engine import protocol
event, result = threading.Event(), []
log = lambda m: print(m[:60], file=sys.stderr)
thread = threading.Thread(target=lambda: result.append(protocol.watch_for_cancel(sys.stdin, event, log=log)))
thread.start()
print("ready", flush=True)
thread.join(60)
print("stopped:", event.is_set(), result, flush=True)
"""


@pytest.mark.parametrize("ending", ["cancel", "closed"])
def test_cancel_watcher_in_a_worker_process_under_utf8_io(ending):
    """The add-on sets PYTHONIOENCODING=utf-8; the watcher must read bytes, not decoded text."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"ready\n"
        child.stdin.write(DEEP.encode() + b"\n" + b"\xff\xfe not utf-8\n" + b"z" * (2 * protocol.MAX_LINE_BYTES)
                          + b"\n")
        if ending == "cancel":
            child.stdin.write(b'{"type":"cancel"}\n')
            child.stdin.flush()
            stopped = child.stdout.readline()  # stdin still open: only the cancel line can stop it
            child.stdin.close()
        else:
            child.stdin.close()
            stopped = child.stdout.readline()
        err = child.stderr.read()
        child.wait(60)
    finally:
        child.kill()
    assert child.returncode == 0, err.decode(errors="replace")
    assert stopped == f"stopped: True ['{ending}']\n".encode()
    assert b"Traceback" not in err
    assert b"nested too deeply" in err and b"not UTF-8" in err and b"limit" in err


@pytest.mark.parametrize("failure, code", [(KeyboardInterrupt(), "cancelled"), (ZeroDivisionError("x"), "internal_error")])
def test_worker_session_ends_every_stream_with_error_and_done(failure, code):
    from engine.errors import EngineError

    stream = io.StringIO()
    with pytest.raises(type(failure)):
        with protocol.WorkerSession(stream, "0.1") as session:
            session.send("stage", name="prior", index=1, count=1)
            raise failure
    messages = list(protocol.read_stream(io.StringIO(stream.getvalue())))
    assert [m["type"] for m in messages] == ["hello", "stage", "error", "done"]
    assert messages[2]["code"] == code and messages[3] == {"type": "done", "ok": False, "code": code}
    stream = io.StringIO()
    with pytest.raises(EngineError):
        with protocol.WorkerSession(stream, "0.1"):
            raise EngineError("bad photo a.jpg", code="bad_photo", hint="use another")
    last = stream.getvalue().splitlines()[-2:]
    assert protocol.decode(last[0])["hint"] == "use another" and protocol.decode(last[1])["code"] == "bad_photo"


def test_train_prior_json_ends_with_error_and_done_on_sigint(tmp_path, tiny_models_root):
    """SIGINT (Ctrl-C, or the add-on stopping it) in the middle of training: the stream still ends
    with error(cancelled) and done, and the exit status is 130."""
    import signal

    from engine.prior.dataset import build_dataset

    heads = tmp_path / "heads" / "head_00"
    heads.mkdir(parents=True)
    import numpy as np
    from PIL import Image

    np.save(heads / "identity.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(heads / "normal_000.png")
    build_dataset(tmp_path / "heads", tmp_path / "ds", "normal", resolution=64)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    child = subprocess.Popen([sys.executable, "-m", "engine", "train-prior", "--domain", "normal",
                              f"--data={tmp_path / 'ds'}", f"--out={tmp_path / 'lora'}", f"--prior={tiny_models_root}",
                              "--steps=1000000", "--batch-size=1", "--rank=2", "--validation-samples=0",
                              "--device=cpu", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        reader = protocol.Reader()
        while reader.feed(child.stdout.readline())["type"] != "stage":  # training has begun
            pass
        child.send_signal(signal.SIGINT)
        rest = [reader.feed(line) for line in child.stdout]
        assert child.wait(60) == 130
    finally:
        child.kill()
        child.stdout.close()
    assert [m["type"] for m in rest][-2:] == ["error", "done"]
    assert rest[-2]["code"] == "cancelled" and rest[-1]["ok"] is False
