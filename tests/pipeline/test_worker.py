"""The worker process: protocol order, announced files, cancel + exact resume, SIGKILL safety."""

from __future__ import annotations

import json
import os
import signal
import sys
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
import pytest

from engine import protocol
from engine.pipeline import checkpoint
from engine.pipeline.run import run_job

REPO_ROOT = Path(__file__).resolve().parents[2]


def worker_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def worker_command(job_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(job_dir), *extra]


class Worker:
    """A worker subprocess whose stdout lines are decoded as they arrive; announced files are checked then."""

    def __init__(self, job_dir: Path, *extra: str):
        self.process = subprocess.Popen(worker_command(job_dir, *extra), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
        self.messages: list[dict] = []
        self.missing: list[str] = []  # announced files that did not exist when announced
        self.bad_lines: list[str] = []
        self.event = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr_text = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                msg = protocol.decode(line)
            except protocol.ProtocolError:
                self.bad_lines.append(line)
                continue
            if msg["type"] in ("preview", "snapshot") and not Path(msg["path"]).is_file():
                self.missing.append(msg["path"])
            with self.event:
                self.messages.append(msg)
                self.event.notify_all()

    def _read_stderr(self) -> None:
        self.stderr_text = self.process.stderr.read()

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.event:
            while True:
                for msg in self.messages:
                    if predicate(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None and not self._pending():
                    raise AssertionError(f"no such message; got {[m['type'] for m in self.messages]}\n"
                                         f"{self.stderr_text[-2000:]}")
                self.event.wait(min(left, 0.2))

    def _pending(self) -> bool:
        return not self.process.stdout.closed

    def finish(self, timeout: float = 180.0) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.2)  # let the reader thread drain the pipe
        return code


def _check_stream(worker: Worker) -> None:
    kinds = [m["type"] for m in worker.messages]
    assert not worker.bad_lines, worker.bad_lines
    assert kinds[0] == "hello" and kinds[-1] == "done" and kinds.count("done") == 1
    assert not worker.missing, f"announced before they existed: {worker.missing}"


def test_protocol_of_a_geometry_run(make_job):
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 8})
    worker = Worker(job)
    code = worker.finish()
    _check_stream(worker)
    assert code == 0, worker.stderr_text[-3000:]
    kinds = [m["type"] for m in worker.messages]
    stages = [m["name"] for m in worker.messages if m["type"] == "stage"]
    assert stages == ["identity", "prior", "geometry", "export"]
    assert kinds[-2] == "result" and worker.messages[-1]["ok"] is True
    progress = [m for m in worker.messages if m["type"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == 8 and all(m["eta_s"] >= 0 for m in progress)
    snapshots = [m for m in worker.messages if m["type"] == "snapshot"]
    assert snapshots and any(m["type"] == "preview" for m in worker.messages)
    live = sorted((job / "live").glob("snapshot-*.npz"))
    assert 1 <= len(live) <= 3  # only the newest three are kept
    with np.load(live[-1]) as snap:
        assert snap["vertices"].dtype == np.float32 and snap["faces"].dtype == np.int32
        assert snap["faces"].max() < len(snap["vertices"])
    assert (job / "result" / "head.npz").is_file()
    result = json.loads((job / "result" / "result.json").read_text())
    assert result["job"]["settings"]["geometry_steps"] == 8 and result["seed"] == 0


def test_bad_job_gets_error_and_done_with_exit_code_2(make_job):
    job = make_job(preset="ultra")
    worker = Worker(job)
    assert worker.finish() == 2
    _check_stream(worker)
    error = next(m for m in worker.messages if m["type"] == "error")
    assert error["code"] == "job_bad_preset" and error["field"] == "preset"
    assert worker.messages[-1] == {"type": "done", "ok": False, "code": "job_bad_preset"}


def test_cancel_then_resume_gives_the_uninterrupted_mesh(make_job):
    overrides = {"geometry_steps": 30, "checkpoint_every": 1000}
    job = make_job("cancelled", stop_after="geometry", overrides=overrides)
    worker = Worker(job)
    worker.wait_for(lambda m: m["type"] == "progress" and m["step"] >= 2)
    sent = time.monotonic()
    worker.process.stdin.write(json.dumps({"type": "cancel"}) + "\n")
    worker.process.stdin.flush()
    code = worker.finish()
    exit_after = time.monotonic() - sent
    _check_stream(worker)
    assert code == 130 and worker.messages[-1] == {"type": "done", "ok": False, "code": "cancelled"}
    assert exit_after < 2.0, f"took {exit_after:.2f} s to stop"
    state = checkpoint.load_latest(job)
    assert state["stage"] == "geometry" and 2 <= state["next_step"] < 30
    done_steps = max(m["step"] for m in worker.messages if m["type"] == "progress")
    assert state["next_step"] == done_steps  # the checkpoint holds exactly the finished steps

    # Bit-exact means same thread count: float sums are grouped per thread, so the in-process runs
    # use the worker's one thread (worker_env), as a resume through the worker would.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed_progress = []
        run_job(job, resume=True, emit=lambda m: resumed_progress.append(m) if m["type"] == "progress" else None)
        steps = [m["step"] for m in resumed_progress]
        assert steps[0] == done_steps + 1 and steps[-1] == 30 and resumed_progress[-1]["total"] == 30

        straight = make_job("straight", stop_after="geometry", overrides=overrides)
        run_job(straight)
    finally:
        torch.set_num_threads(threads)
    with np.load(job / "result" / "head.npz") as a, np.load(straight / "result" / "head.npz") as b:
        for key in ("vertices", "faces", "expression_offsets"):
            assert np.array_equal(a[key], b[key]), f"{key} differs after resume"


def test_stdin_closing_cancels(make_job):
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 200})
    worker = Worker(job)
    worker.wait_for(lambda m: m["type"] == "progress")
    worker.process.stdin.close()
    assert worker.finish(30) == 130
    _check_stream(worker)
    assert worker.messages[-1]["code"] == "cancelled"
    assert worker.messages[-2]["type"] == "error" and worker.messages[-2]["code"] == "cancelled"  # error + done


def test_sigkill_while_writing_leaves_no_half_written_file(make_job):
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 6, "checkpoint_every": 1})
    worker = Worker(job)
    worker.wait_for(lambda m: m["type"] == "stage" and m["name"] == "export")
    worker.process.send_signal(signal.SIGKILL)
    worker.finish(30)
    # Whatever moment it died at, every file under a final name is complete.
    result = job / "result"
    if result.exists():
        with np.load(result / "head.npz") as mesh:
            assert mesh["vertices"].shape[1] == 3
        json.loads((result / "result.json").read_text())
    state = checkpoint.load_latest(job)
    assert state is not None
    for snap in (job / "live").glob("snapshot-*.npz"):
        np.load(snap)["vertices"]
    leftovers = [p.name for p in job.rglob("*") if p.name.startswith(".") and p.is_file()]
    # temporaries never carry a final name: they start with a dot and are not what readers open
    assert all(not name.endswith((".npz.", ".json.")) for name in leftovers)


def test_a_malformed_stdin_line_does_not_cancel_and_cancel_still_works(make_job):
    """Bytes that are not UTF-8, and a deeply nested line, are skipped: the job goes on, and a later
    cancel line still stops it (the watcher used to die on such a line and cancel the job)."""
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 200})
    worker = Worker(job)
    first = worker.wait_for(lambda m: m["type"] == "progress")["step"]
    worker.process.stdin.buffer.write(b"\xff\xfe not utf-8\n" + b"[" * 100_000 + b"\n")
    worker.process.stdin.flush()
    later = worker.wait_for(lambda m: m["type"] == "progress" and m["step"] >= first + 3)
    assert worker.process.poll() is None and later["step"] >= first + 3  # still running
    worker.process.stdin.write(json.dumps({"type": "cancel"}) + "\n")
    worker.process.stdin.flush()
    assert worker.finish(30) == 130
    _check_stream(worker)
    assert worker.messages[-1]["code"] == "cancelled"


def test_stdin_at_dev_null_stops_the_worker_and_names_the_command_for_schedulers(make_job):
    """`engine run` is the add-on's worker: a closed stdin means "Blender went away". Under a
    scheduler (stdin at /dev/null) it therefore stops at once, and says what to use instead."""
    job = make_job(stop_after="geometry", overrides={"geometry_steps": 200})
    done = subprocess.run(worker_command(job), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=worker_env(), timeout=180)
    assert done.returncode == 130
    messages = [protocol.decode(line) for line in done.stdout.splitlines()]
    assert messages[-1] == {"type": "done", "ok": False, "code": "cancelled"}
    assert f"{sys.executable} -m engine generate --out {job} --resume" in messages[-2]["hint"]  # this very Python
    assert "stdin closed" in done.stderr
    assert not any(m["type"] == "progress" and m["step"] > 1 for m in messages)  # it did not run on
