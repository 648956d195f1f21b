"""The add-on's reader side of the protocol, against real processes that misbehave on purpose.

Each "worker" here is a short Python program standing in for a broken or foreign engine (a test
double of a failing worker, named as such); the real worker is exercised in test_generate_head.py.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import pytest


@pytest.fixture()
def monitor_module(blender_addon):
    return importlib.import_module(f"{blender_addon}.worker_monitor")


def _start(monitor_module, tmp_path, program: str):
    return monitor_module.WorkerMonitor(
        [sys.executable, "-c", program], cwd=str(tmp_path), env=None, stderr_path=tmp_path / "stderr.log"
    )


def _pump_until_done(monitor, timeout_s: float = 20.0) -> list[dict]:
    messages, deadline = [], time.monotonic() + timeout_s
    while not monitor.finished and time.monotonic() < deadline:
        messages += monitor.pump()
        time.sleep(0.02)
    assert monitor.finished, "the monitor never finished"
    return messages


HELLO = json.dumps({"type": "hello", "protocol": 1, "engine_version": "test", "pid": 1})


def test_a_process_that_does_not_greet_is_stopped_and_refused(monitor_module, tmp_path):
    monitor = _start(
        monitor_module,
        tmp_path,
        "import time; print('Hello, I am some other program', flush=True); time.sleep(60)",
    )
    messages = _pump_until_done(monitor)
    assert [m["type"] for m in messages] == ["error", "done"]
    assert (
        messages[0]["code"] == "protocol_error"
        and "did not start with a valid greeting" in messages[0]["message"]
    )
    assert "Engine Python" in messages[0]["hint"]
    assert monitor.process.poll() is not None  # it was stopped, not left running for 60 s


def test_a_first_message_other_than_hello_is_refused(monitor_module, tmp_path):
    stage = json.dumps({"type": "stage", "name": "identity", "index": 1, "count": 5})
    monitor = _start(monitor_module, tmp_path, f"print({stage!r}, flush=True); print({HELLO!r}, flush=True)")
    messages = _pump_until_done(monitor)
    assert messages[0]["code"] == "protocol_error" and "first message is 'stage', not 'hello'" in messages[0]["message"]
    assert monitor.hello is None


def test_a_mismatched_protocol_version_is_refused(monitor_module, tmp_path):
    hello2 = json.dumps({"type": "hello", "protocol": 2, "engine_version": "9", "pid": 1})
    monitor = _start(monitor_module, tmp_path, f"print({hello2!r}, flush=True)")
    messages = _pump_until_done(monitor)
    assert messages[0]["code"] == "protocol_error" and "protocol 2" in messages[0]["message"]


def test_a_worker_that_dies_without_done_is_reported_with_its_log(monitor_module, tmp_path):
    program = (
        f"import sys; print({HELLO!r}, flush=True); "
        "sys.stderr.write('RuntimeError: CUDA out of memory\\n'); sys.exit(3)"
    )
    monitor = _start(monitor_module, tmp_path, program)
    messages = _pump_until_done(monitor)
    assert [m["type"] for m in messages] == ["hello", "error", "done"]
    assert messages[1]["code"] == "worker_exited" and "exit code 3" in messages[1]["message"]
    assert "CUDA out of memory" in monitor.stderr_tail()


def test_stray_lines_after_hello_are_skipped_and_oversized_lines_never_reach_json(monitor_module, tmp_path):
    done = json.dumps({"type": "done", "ok": True})
    program = (
        f"import sys; print({HELLO!r}); print('progress 50%'); "
        f"sys.stdout.write('x' * {monitor_module.MAX_LINE_BYTES + 10} + '\\n'); print({done!r})"
    )
    monitor = _start(monitor_module, tmp_path, program)
    messages = _pump_until_done(monitor)
    assert [m["type"] for m in messages] == ["hello", "warning", "warning", "done"]
    assert monitor.skipped_lines == 2 and monitor.done["ok"] is True
    assert "exceeds the 1048576-byte limit" in messages[2]["message"]


def test_pump_never_waits_for_a_silent_worker(monitor_module, tmp_path):
    monitor = _start(monitor_module, tmp_path, f"import time; print({HELLO!r}, flush=True); time.sleep(30)")
    try:
        first = []
        while not first:
            first = monitor.pump()
        assert [m["type"] for m in first] == ["hello"]
        assert monitor.pump() == [] and monitor.running  # nothing new: returns, does not wait 30 s
    finally:
        started = time.monotonic()
        monitor.request_cancel()
        messages = _pump_until_done(monitor, timeout_s=5)
        assert time.monotonic() - started < 2.0  # ignored the cancel: killed after the grace
        assert messages[-1] == {"type": "done", "ok": False, "code": "cancelled"}
