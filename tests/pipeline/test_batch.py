"""``python -m engine batch``: every manifest row checked with its own error, the local runner
stopped with Ctrl-C and continued, a rerun that only reports, and a Ray runner that cannot start."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.pipeline.batch import ManifestError, read_manifest
from engine.pipeline.job_folder import checkpoint_step

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path):
    return read_manifest(path, models="/models", device="cpu", preset="standard")


def test_every_row_is_checked_with_its_own_error(tmp_path, photos_dir):
    np.save(tmp_path / "anna.npy", np.ones(512, np.float32))
    (tmp_path / "faces").mkdir()
    shutil.copy(photos_dir / "grace_hopper.jpg", tmp_path / "faces" / "bob.jpg")
    shutil.copy(photos_dir / "grace_hopper.jpg", tmp_path / "faces" / "ivy|1.jpg")
    manifest = tmp_path / "faces.csv"
    manifest.write_text(
        "\ufeffid,photos,embedding,expressions,preset,seed,overrides\n"  # Excel's byte-order mark
        "anna,,anna.npy,smiling|with curly red hair,test,1,\n"
        "bob,faces/bob.jpg,,,,2,\"{\"\"geometry_steps\"\": 8}\"\n"
        "carol,carol1.jpg|faces/bob.jpg|carol3.jpg,,smiling,test,0,\n"
        "../evil,,anna.npy,,test,0,\n"
        "\n"
        "Anna,,anna.npy,,test,0,\n"
        "dave,,anna.npy,Basis,test,0,\n"
        "erin,,anna.npy,,ultra,0,\n"
        "fay,,anna.npy,,test,abc,\n"
        "gus,,anna.npy,,test,0,\"{\"\"grid\"\": -1}\"\n"
        "hal,,,,test,0,\n"
        "José,,anna.npy,,test,0,\n"
        "ivy,faces/ivy|1.jpg,,,test,0,\n"
        "Index.JSON,,anna.npy,,test,0,\n"
        "batch.log,,anna.npy,,test,0,\n", encoding="utf-8")
    rows = {row.line: row for row in _rows(manifest)}
    assert rows[2].job == {"photos": [], "embedding": str(tmp_path / "anna.npy"),
                           "expressions": ["smiling", "with curly red hair"], "preset": "test", "seed": 1,
                           "texture_size": None, "overrides": {}, "expression_prompts": {}, "models": "/models",
                           "device": "cpu"}
    assert rows[3].error is None and rows[3].job["photos"] == [str(tmp_path / "faces" / "bob.jpg")]
    assert rows[3].job["preset"] == "standard" and rows[3].job["overrides"] == {"geometry_steps": 8}
    errors = {line: row.error for line, row in rows.items() if row.error}
    assert sorted(errors) == [4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # the blank line 6 is no row
    assert errors[4]["code"] == "batch_missing_photo" and errors[4]["field"] == "photos"
    assert errors[4]["message"].startswith("line 4 (id 'carol'): photos ")
    assert str(tmp_path / "carol1.jpg") in errors[4]["message"] and str(tmp_path / "carol3.jpg") in errors[4]["message"]
    assert "bob.jpg" not in errors[4]["message"]  # that one exists
    assert errors[5]["field"] == "id" and "'../evil' cannot be used: ids are limited to A-Z a-z 0-9 . _ -" in \
        errors[5]["message"]
    assert "'José' cannot be used: ids are limited to A-Z a-z 0-9 . _ -" in errors[13]["message"]
    # a path with '|' cannot be written in CSV: the error says why, and what to use instead
    assert errors[14]["code"] == "batch_missing_photo" and "'|' separates photos" in errors[14]["hint"]
    assert f"{tmp_path / 'faces' / 'ivy|1.jpg'} exists" in errors[14]["hint"] and "JSON Lines" in errors[14]["hint"]
    assert "'|'" not in errors[4]["hint"]  # carol's photos are three photos: nothing to say
    for line in (15, 16):  # ROOT's own files: never a job folder (on a case-insensitive disk either)
        assert errors[line]["field"] == "id" and "a name the batch uses for its own files" in errors[line]["message"]
    assert "used by line 2" in errors[7]["message"]  # Anna and anna would share a folder on some systems
    expected = {8: ("job_bad_expressions", "Basis"), 9: ("job_bad_preset", "ultra"), 10: ("job_bad_seed", "abc"),
                11: ("job_bad_overrides", "grid"), 12: ("job_bad_photos", "no photos and no embedding")}
    for line, (code, text) in expected.items():
        assert errors[line]["code"] == code and text in errors[line]["message"], errors[line]
        assert errors[line]["message"].startswith(f"line {line} (id ") and errors[line]["hint"]


def test_manifest_formats_and_whole_manifest_errors(tmp_path):
    np.save(tmp_path / "e.npy", np.ones(512, np.float32))
    semicolons = tmp_path / "excel.csv"  # a spreadsheet in a locale that separates with ';'
    semicolons.write_text("id;embedding;seed\nanna;e.npy;4\n", encoding="utf-8")
    assert [(r.id, r.job["seed"]) for r in _rows(semicolons)] == [("anna", 4)]

    lines = tmp_path / "faces.jsonl"
    lines.write_text('{"id": "anna", "embedding": "e.npy", "expressions": ["smiling", "jawOpen"], '
                     '"expression_prompts": {"jawOpen": "mouth wide open"}}\n'
                     '{"id": "bob", "embedding": "e.npy", "seeds": 3}\n'
                     '{"id": "carol", \n', encoding="utf-8")
    anna, bob, carol = _rows(lines)
    assert anna.error is None and anna.job["expressions"] == ["smiling", "jawOpen"]
    assert anna.job["expression_prompts"] == {"jawOpen": "mouth wide open"}
    assert bob.error["field"] == "seeds" and "unknown field 'seeds'" in bob.error["message"]
    assert carol.error["message"].startswith("line 3: not valid JSON")

    quoted = tmp_path / "quoted.csv"  # R's write.csv, pandas QUOTE_ALL, LibreOffice: every cell quoted
    quoted.write_text('"id","embedding","seed"\n"anna","e.npy","4"\n', encoding="utf-8")
    assert [(r.id, r.job["seed"]) for r in _rows(quoted)] == [("anna", 4)]
    quoted.write_text('"id";"embedding";"seed"\n"anna";"e.npy";"5"\n', encoding="utf-8")
    assert [(r.id, r.job["seed"]) for r in _rows(quoted)] == [("anna", 5)]

    typo = tmp_path / "typo.csv"
    typo.write_text("id,photo,seed\nanna,a.jpg,1\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="unknown columns 'photo'") as info:
        _rows(typo)
    assert "photos" in info.value.hint
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="no rows"):
        _rows(tmp_path / "empty.jsonl")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def batch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "batch", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), **kwargs)


def write_manifest(folder: Path, geometry_steps: int = 40) -> Path:
    np.save(folder / "anna.npy", np.random.default_rng(0).normal(size=512).astype(np.float32))
    rows = [{"id": "anna", "embedding": "anna.npy", "expressions": ["smiling"], "preset": "test",
             "overrides": {"geometry_steps": geometry_steps, "checkpoint_every": 2}},
            {"id": "carol", "photos": ["carol.jpg"], "preset": "test"}]
    manifest = folder / "faces.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def index(root: Path) -> dict:
    return {job["id"]: job for job in json.loads((root / "index.json").read_text())["jobs"]}


def test_local_batch_stopped_with_ctrl_c_continues_and_a_rerun_only_reports(tmp_path, tiny_models_root):
    manifest, root = write_manifest(tmp_path), tmp_path / "root"
    args = (str(manifest), "--out", str(root), "--models", str(tiny_models_root), "--device", "cpu",
            "--progress-every", "1")
    first = batch(*args)
    deadline = time.monotonic() + 180
    while (checkpoint_step(root / "anna") or 0) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)  # to the batch alone: it must stop its worker itself
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-3000:]
    step = checkpoint_step(root / "anna")
    assert 2 <= step < 40
    jobs = index(root)
    assert json.loads((root / "index.json").read_text())["status"] == "interrupted"
    assert jobs["anna"]["status"] == "cancelled" and jobs["anna"]["error"] == f"stopped with a checkpoint at step {step}"
    assert jobs["carol"]["status"] == "invalid" and str(tmp_path / "carol.jpg") in jobs["carol"]["error"]
    assert "carol.jpg" in (root / "index.csv").read_text()

    second = batch(*args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1, err[-3000:]  # carol's row is still bad
    log = (root / "anna" / "batch.log").read_text()
    assert f"resuming from checkpoint step {step}" in log and f"resumed at geometry step {step + 1}/40" in log
    jobs = index(root)
    assert jobs["anna"]["status"] == "done" and jobs["anna"]["resumed_from"] == [step]
    assert Path(jobs["anna"]["result"], "head.npz").is_file() and Path(jobs["anna"]["glb"]).is_file()
    assert jobs["anna"]["identity_score"] is None and "no face was found" in jobs["anna"]["identity_score_note"]
    assert jobs["anna"]["compute_seconds"] < jobs["anna"]["seconds"]

    stamps = {p: p.stat().st_mtime_ns for p in (root / "anna").rglob("*") if p.is_file()}
    third = batch(*args)
    _, err = third.communicate(timeout=60)
    assert third.returncode == 1 and "anna: done already" in err
    assert {p: p.stat().st_mtime_ns for p in (root / "anna").rglob("*") if p.is_file()} == stamps  # nothing ran
    assert index(root)["anna"]["note"] == "finished in an earlier run"

    # The scratch copy of anna's embedding is cleaned up: her row cannot run any more, but the
    # result her folder holds stays in the index.
    (tmp_path / "anna.npy").unlink()
    fourth = batch(*args)
    _, err = fourth.communicate(timeout=60)
    anna = index(root)["anna"]
    assert fourth.returncode == 1 and anna["status"] == "invalid" and anna["error_code"] == "job_bad_embedding"
    assert anna["result"] == str(root / "anna" / "result") and Path(anna["glb"]).is_file()
    assert "result of an earlier run" in anna["note"]


def test_a_ray_runner_that_cannot_start_says_why_and_runs_nothing(tmp_path, tiny_models_root, monkeypatch, capsys):
    from engine.cli import main

    manifest, root = write_manifest(tmp_path, geometry_steps=6), tmp_path / "root"
    args = ["batch", str(manifest), "--out", str(root), "--models", str(tiny_models_root), "--device", "cpu"]
    assert main([*args, "--ray", "127.0.0.1:9"]) == 2  # nobody listens there: seconds, not Ray's minutes
    err = capsys.readouterr().err
    assert "no Ray cluster answers at 127.0.0.1:9" in err and "ray start --head" in err
    assert json.loads((root / "index.json").read_text())["status"] == "not started"
    assert not (root / "anna" / "checkpoints").exists()

    monkeypatch.setitem(sys.modules, "ray", None)  # a Python without the optional extra
    assert main([*args, "--ray"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray, an optional extra" in err and "pip install 'ray==2.60.0'" in err
    assert re.search(r"anna", (root / "index.csv").read_text())


def _worker_pids(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker pid (\d+)", log.read_text())] if log.exists() else []


def _wait_gone(pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z":
            return  # a zombie: it has exited
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        time.sleep(0.1)


def test_a_second_ctrl_c_leaves_at_once_and_the_index_says_what_the_folder_holds(tmp_path, tiny_models_root):
    """The first Ctrl-C tells the worker to stop with a checkpoint; a second one, while the worker
    still stops, leaves at once. No row may stay "running": the job is "cancelled", left at once,
    and the step the index names is never beyond the newest checkpoint on disk once the worker,
    which stops itself, is gone."""
    manifest, root = write_manifest(tmp_path, geometry_steps=400), tmp_path / "root"
    first = batch(str(manifest), "--out", str(root), "--models", str(tiny_models_root), "--device", "cpu",
                  "--progress-every", "1")
    deadline = time.monotonic() + 180
    while (checkpoint_step(root / "anna") or 0) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    while "cancel sent to the worker" not in (root / "anna" / "batch.log").read_text():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-3000:]
    head = json.loads((root / "index.json").read_text())
    jobs = index(root)
    assert head["status"] == "interrupted" and head["counts"].get("running", 0) == 0
    assert jobs["anna"]["status"] == "cancelled" and "left at once" in jobs["anna"]["note"], jobs["anna"]
    _wait_gone(_worker_pids(root / "anna" / "batch.log")[-1])
    step = checkpoint_step(root / "anna")
    said = int(re.search(r"step (\d+)", jobs["anna"]["error"]).group(1))
    if jobs["anna"]["error"].startswith("stopped with a checkpoint"):
        assert said == step  # read holding the job's lock: the worker had finished
    else:
        assert "the worker writes a later one" in jobs["anna"]["error"] and said <= step


def test_one_busy_folder_does_not_stop_the_others_and_roots_own_files_stay(tmp_path, tiny_models_root,
                                                                           monkeypatch, capsys):
    """Under --new, anna's folder holds another job that a worker runs now: anna alone is "busy",
    bob runs. ROOT holds the user's own index.json: left as it is, this batch's index is
    index-2.*; the manifest is a CSV with a quoted header; --models comes from $IDTO3D_MODELS and
    is written, resolved, into the job."""
    from engine.cli import main
    from engine.pipeline.job_folder import JobLock, place_job

    for name in ("anna", "bob"):
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(len(name)).normal(size=512).astype(np.float32))
    root = tmp_path / "root"
    place_job(root / "anna", {"photos": [], "embedding": str(tmp_path / "anna.npy"), "preset": "test", "seed": 9,
                              "models": str(tiny_models_root), "device": "cpu"})
    (root / "index.json").write_text('{"mine": "a report I keep here"}')
    manifest = tmp_path / "faces.csv"
    manifest.write_text('"id","embedding","preset","overrides"\n'
                        '"anna","anna.npy","test",""\n'
                        '"bob","bob.npy","test","{""geometry_steps"": 2, ""texture_steps"": 1}"\n', encoding="utf-8")
    monkeypatch.setenv("IDTO3D_MODELS", str(tiny_models_root))
    holder = JobLock(root / "anna").acquire()  # a worker of anna's other job, on another node
    try:
        code = main(["batch", str(manifest), "--out", str(root), "--device", "cpu", "--new"])
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert (root / "index.json").read_text() == '{"mine": "a report I keep here"}'
    assert f"this batch's index is {root / 'index-2.json'}" in err
    jobs = {job["id"]: job for job in json.loads((root / "index-2.json").read_text())["jobs"]}
    assert jobs["anna"]["status"] == "busy" and jobs["anna"]["error_code"] == "job_busy"
    assert json.loads((root / "anna" / "job.json").read_text())["seed"] == 9  # the other job, untouched
    assert jobs["bob"]["status"] == "done" and Path(jobs["bob"]["result"], "head.npz").is_file()
    assert json.loads((root / "bob" / "job.json").read_text())["models"] == str(tiny_models_root.resolve())
    csv_bytes = (root / "index-2.csv").read_bytes()
    assert csv_bytes.startswith(b"\xef\xbb\xbfid,line,status,")  # Excel reads UTF-8 only with the mark


def test_the_index_is_rewritten_at_most_every_few_seconds_and_formulas_stay_text(tmp_path, monkeypatch):
    from engine import owned
    from engine.pipeline import batch

    owned.claim_dir(tmp_path, "batch", shared=True)
    writes = []
    real = batch.write_index
    monkeypatch.setattr(batch, "write_index", lambda *a: (writes.append(time.monotonic()), real(*a)))
    entries = [batch.Entry(f"id{i}", i + 2, "pending", tmp_path / f"id{i}") for i in range(1000)]
    index = batch.Index(tmp_path, {"status": "running"}, entries, batch.index_names(tmp_path), every_s=2.0)
    index.write()
    index.start()
    try:
        for entry in entries:  # the Ray runner queues every job: one change each, not one rewrite each
            with index.lock:
                entry.status = "queued"
                index.changed()
        assert len(writes) == 1  # the start only
        for entry in entries[:100]:  # changes spread over 1.5 s: not rewritten at each poll of the flusher
            time.sleep(0.015)
            with index.lock:
                entry.note = "running"
                index.changed()
        assert len(writes) <= 2
        time.sleep(2.5)
        assert len(writes) in (2, 3) and json.loads((tmp_path / "index.json").read_text())["jobs"][99]["note"]
        with index.lock:
            entries[0].status, entries[0].note = "done", "=HYPERLINK(\"http://x\")"
            index.changed()
    finally:
        index.stop()
    index.write()
    rows = json.loads((tmp_path / "index.json").read_text())["jobs"]
    assert rows[0]["status"] == "done" and rows[1]["status"] == "queued"
    assert "'=HYPERLINK" in (tmp_path / "index.csv").read_text(encoding="utf-8-sig")


def test_a_root_without_file_locks_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    import errno

    from engine.cli import main
    from engine.pipeline import job_folder

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    np.save(tmp_path / "anna.npy", np.ones(512, np.float32))
    (tmp_path / "faces.jsonl").write_text('{"id": "anna", "embedding": "anna.npy", "preset": "test"}\n')
    monkeypatch.setattr(job_folder, "lock_file", no_locks)
    assert main(["batch", str(tmp_path / "faces.jsonl"), "--out", str(tmp_path / "root"), "--models",
                 str(tmp_path), "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert "cannot lock files" in err and "-o flock" in err and not (tmp_path / "root" / "anna").exists()


FAKE_WORKER = '''#!{python}
"""A TEST DOUBLE of the engine's Python, for the batch's per-job runner only: the real worker cannot
be made to exit before it starts, hang, or leave a grandchild holding its stdout on cue. It
records its arguments, speaks the real protocol (engine.protocol) and ends as $FAKE_WORKER says."""
import os, subprocess, sys, time
from engine import protocol

with open(os.environ["FAKE_WORKER_ARGS"], "a") as record:
    record.write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ["FAKE_WORKER"]
if mode == "exit1":
    sys.exit(1)


def send(msg):
    sys.stdout.write(protocol.encode(msg))
    sys.stdout.flush()


send(protocol.hello("test-double", os.getpid()))
if mode == "hang":
    time.sleep(120)
elif mode == "grandchild":  # inherits this process's stdout and outlives it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(os.environ["FAKE_WORKER_ARGS"] + ".pid", "w").write(str(child.pid))
elif mode == "stopped":  # SIGTERM from an admin: the worker stops with a checkpoint
    send(protocol.message("error", code="cancelled", message="stopped", hint=None))
    send(protocol.message("done", ok=False, code="cancelled"))
    sys.exit(130)
send(protocol.message("done", ok=True))
'''


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    script = tmp_path / "fake-python"
    script.write_text(FAKE_WORKER.replace("{python}", sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_WORKER_ARGS", str(tmp_path / "argv.txt"))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    return script


def _placed_job(tmp_path) -> Path:
    from engine.pipeline.job_folder import place_job

    np.save(tmp_path / "e.npy", np.ones(512, np.float32))
    return place_job(tmp_path / "job", {"photos": [], "embedding": str(tmp_path / "e.npy"), "preset": "test",
                                        "device": "cpu"}).spec.job_dir


def test_the_checkpoint_a_worker_resumes_from_is_read_once_the_job_lock_is_free(tmp_path, fake_python, monkeypatch):
    """A Ray retry: the orphaned worker of the dead runner still holds the job's lock and writes
    one more checkpoint (step 4) before it lets go. The new start reads the step after that, and
    the worker always gets --resume."""
    import threading

    from engine import owned
    from engine.pipeline.batch_job import read_state, run_one
    from engine.pipeline.job_folder import JobLock

    job = _placed_job(tmp_path)
    monkeypatch.setenv("FAKE_WORKER", "done")
    orphan = JobLock(job).acquire()

    def orphan_finishes() -> None:
        time.sleep(1.0)
        owned.write_owned_file(job / "checkpoints" / "ckpt-0000004.pt", lambda p: p.write_bytes(b"step 4"))
        owned.write_owned_file(job / "checkpoints" / "latest.json",
                               lambda p: p.write_text('{"format": 1, "file": "ckpt-0000004.pt", "step": 4}'))
        orphan.release()

    threading.Thread(target=orphan_finishes).start()
    record = run_one(job, batch_id="b1", python=str(fake_python))
    assert record["status"] == "done" and record["resumed_from"] == [4]
    assert (tmp_path / "argv.txt").read_text().split() == ["-m", "engine", "run", str(job), "--resume"]
    assert "resuming from checkpoint step 4" in (job / "batch.log").read_text()
    assert read_state(job)["attempts"][0]["resumed_from"] == 4
    # batch.json is the engine's; batch.log, appended to by every worker, is never recorded (a
    # record would be stale at the next line)
    assert owned.is_own(job / "batch.json") and "batch.log" not in owned.read_manifest(job)["entries"]


@pytest.mark.parametrize("mode, status, attempts, says", [
    ("exit1", "failed", 1, "exited with status 1 before it started"),  # a node without the packages: not retried
    ("stopped", "cancelled", 1, "stopped from outside"),  # an admin's SIGTERM: not retried
    ("hang", "failed", 2, "stalled (no message for 1 s)"),  # hung: killed, retried, then given up
    ("grandchild", "done", 1, None),  # a grandchild holding stdout does not hang the runner
])
def test_how_a_worker_ends_decides_whether_it_is_retried(tmp_path, fake_python, monkeypatch, mode, status, attempts,
                                                         says):
    from engine.pipeline.batch_job import run_one

    job = _placed_job(tmp_path)
    monkeypatch.setenv("FAKE_WORKER", mode)
    started = time.monotonic()
    try:
        record = run_one(job, batch_id="b1", retries=1, python=str(fake_python), stall_timeout_s=1.0)
    finally:
        pid_file = tmp_path / "argv.txt.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert time.monotonic() - started < 60
    assert record["status"] == status and record["attempts"] == attempts, record
    text = json.dumps(record)
    assert says is None or says in text, record


def test_an_index_write_that_fails_while_jobs_run_does_not_stop_them(tmp_path, monkeypatch, capsys):
    """A full disk or an index edited meanwhile: the jobs go on, the failure is said once, and the
    last write (at the end) decides the exit status, not a "not started" with jobs already run."""
    from engine import owned
    from engine.errors import EngineError
    from engine.pipeline import batch

    owned.claim_dir(tmp_path, "batch", shared=True)
    entries = [batch.Entry("anna", 2, "running", tmp_path / "anna")]
    index = batch.Index(tmp_path, {"status": "running"}, entries, batch.index_names(tmp_path), every_s=0.1)
    index.write()
    real, fail = batch.write_index, [True]

    def flaky(*args):
        if fail[0]:
            raise EngineError("No space left on device", code="disk_full")
        return real(*args)

    monkeypatch.setattr(batch, "write_index", flaky)
    index.start()
    for _ in range(3):
        index.changed()
        time.sleep(0.7)
    index.stop()
    assert isinstance(index.error, EngineError) and capsys.readouterr().err.count("cannot write the index") == 1
    entries[0].status = "done"
    assert batch._write_last(index) is False  # still failing at the end: exit 3 in the command
    fail[0] = False
    assert batch._write_last(index) is True
    assert json.loads((tmp_path / "index.json").read_text())["jobs"][0]["status"] == "done"
