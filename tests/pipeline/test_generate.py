"""``python -m engine generate`` as a farm uses it: resume from the job folder alone, refusals that
name what differs and change nothing, stdin at /dev/null, plain progress lines in a log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import owned
from engine.cli import main
from engine.pipeline.generate import ProgressLines
from engine.pipeline.job_folder import checkpoint_step, place_job

REPO_ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def embedding(tmp_path) -> Path:
    path = tmp_path / "identity.npy"
    np.save(path, np.random.default_rng(3).normal(size=512).astype(np.float32))
    return path


def job_args(embedding: Path, models: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--embedding", str(embedding), "--expressions", "smiling", "--preset", "test",
            "--models", str(models), "--device", "cpu", "--out", str(out), *extra]


def engine(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_a_requeued_command_starts_then_continues_then_only_reports(tmp_path, embedding, tiny_models_root):
    """As under SLURM with --requeue: the very same command each time, stdin at /dev/null, stderr a
    file. With --resume and the job's arguments it starts the job in an empty folder; SIGTERM (a
    preemption) stops it with a checkpoint, exit 143, naming the command that continues; the
    identical command then continues from the next step (not from 0), printing plain timestamped
    lines; run once more, it only reports the finished job and changes nothing."""
    out = tmp_path / "head"
    command = job_args(embedding, tiny_models_root, out, "--set", "geometry_steps=40", "--set", "checkpoint_every=2",
                       "--progress-every", "0.5", "--resume")
    first = engine(*command)
    deadline = time.monotonic() + 180
    while (checkpoint_step(out) or 0) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-3000:]
    step = checkpoint_step(out)
    assert 2 <= step < 40, "the first run was meant to stop in the geometry stage"
    assert f"cancelled at step {step}; continue with: {sys.executable} -m engine generate --out {out} --resume" in err

    second = engine(*command)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert f"continuing the job in {out} from its checkpoint at step {step}" in err
    assert "\r" not in err  # no redrawn bar, nor the libraries' tqdm bars
    lines = err.splitlines()
    ours = [line for line in lines if STAMP.match(line)]
    assert any(line.endswith("stage 3/6 geometry") for line in ours)
    geometry = [int(m.group(1)) for line in ours if (m := re.search(r" geometry step (\d+)/40 ", line))]
    assert geometry[0] == step + 1 and geometry[-1] == 40  # resumed, not restarted
    assert len(geometry) < 40 - step  # at a steady interval, not one line per step
    for name in ("head.npz", "head.glb", "result.json"):
        assert (out / "result" / name).is_file()
    result = json.loads((out / "result" / "result.json").read_text())
    assert result["job"]["settings"]["geometry_steps"] == 40 and result["job"]["overrides"]["checkpoint_every"] == 2

    before = checksums(out)
    third = engine(*command)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err[-3000:]
    assert f"{out} already holds the result of this job" in err and "--new" in err
    assert checksums(out) == before


def test_progress_lines_come_at_a_steady_interval():
    clock = [0.0]
    lines: list[str] = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    printer = ProgressLines(Stream(), every_s=4.0, clock=lambda: clock[0])
    printer({"type": "stage", "name": "geometry", "index": 3, "count": 6})
    for step in range(1, 101):  # 100 steps of 0.125 s (exact in binary): 12.5 s
        clock[0] = step * 0.125
        printer({"type": "progress", "step": step, "total": 100, "loss": 0.5, "eta_s": (100 - step) * 0.125,
                 "stage": "geometry"})
    shown = [int(re.search(r"step (\d+)/100", line).group(1)) for line in lines if "step" in line]
    assert shown == [1, 33, 65, 97, 100]  # the first, then one per 4 s, and the last
    assert all(line.endswith("\n") and "\r" not in line and STAMP.match(line) for line in lines)
    assert "eta 8 s" in lines[2] and "(33%)" in lines[2]


def _placed(out: Path, embedding: Path, models: Path, **fields) -> None:
    place_job(out, {"photos": [], "embedding": str(embedding), "expressions": ["neutral", "smiling"],
                    "preset": "test", "models": str(models), "device": "cpu", **fields})


def test_resume_refuses_what_the_job_makes_and_accepts_where_it_runs(tmp_path, embedding, tiny_models_root, capsys,
                                                                     monkeypatch):
    out = tmp_path / "head"
    assert main(["generate", "--out", str(out), "--resume"]) == 2
    assert "holds no job.json" in capsys.readouterr().err and not out.exists()

    _placed(out, embedding, tiny_models_root, device="auto", overrides={"geometry_steps": 4, "checkpoint_every": 2},
            expression_prompts={"smiling": "a broad smile"})
    before = checksums(out)
    code = main(["generate", "--out", str(out), "--resume", "--seed", "3", "--preset", "preview",
                 "--expressions", "smiling", "--embedding", str(embedding)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--seed 3 (job.json: 0)" in err and '--preset "preview" (job.json: "test")' in err
    assert "--expressions" not in err and "--embedding" not in err  # those match the job
    assert checksums(out) == before

    # Other expressions are a difference (not a complaint about the job's own expression_prompts);
    # --set replaces all the overrides, and the refusal says so.
    code = main(["generate", "--out", str(out), "--resume", "--expressions", "angry", "--set", "geometry_steps=4"])
    err = capsys.readouterr().err
    assert code == 2 and "job_bad_expression_prompts" not in err and "expression_prompts" not in err
    assert '--expressions ["neutral", "angry"] (job.json: ["neutral", "smiling"])' in err
    assert '--set {"geometry_steps": 4} (job.json: {"geometry_steps": 4, "checkpoint_every": 2}; --set replaces ' \
           "all of them" in err
    assert checksums(out) == before

    # A device this Python does not have: exit 4, and job.json is not rewritten with it
    code = main(["generate", "--out", str(out), "--resume", "--device", "cuda:99"])
    assert code == 4 and "torch" in capsys.readouterr().err and checksums(out) == before

    # Equal values, even spelt differently (a relative embedding path, the preset's own texture
    # size for null), are no difference; where the job runs may change: job.json is rewritten.
    monkeypatch.chdir(embedding.parent)
    code = main(["generate", "--out", str(out), "--resume", "--embedding", embedding.name, "--seed", "0",
                 "--preset", "test", "--texture-size", "64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "job.json's device is now \"cpu\"" in err and "no checkpoint in the job folder" not in err
    job = json.loads((out / "job.json").read_text())
    assert job["device"] == "cpu" and job["texture_size"] is None and job["expression_prompts"] == {
        "smiling": "a broad smile"}
    assert owned.is_own(out / "job.json") and (out / "result" / "head.npz").is_file()
    assert json.loads((out / "result" / "result.json").read_text())["job"]["device"] == "cpu"


def test_the_same_job_continues_without_resume_and_new_starts_it_over(tmp_path, embedding, tiny_models_root):
    """What the command would do, without running the job: plain generate on a folder holding this
    job continues from its checkpoint; --new deletes the engine's checkpoints and result (never
    the user's files) so it starts from step 0."""
    from engine.cli import build_parser
    from engine.pipeline.generate import _place

    out = tmp_path / "head"
    _placed(out, embedding, tiny_models_root)
    owned.write_owned_file(out / "checkpoints" / "ckpt-0000004.pt", lambda p: p.write_bytes(b"step 4"))
    owned.write_owned_file(out / "checkpoints" / "latest.json",
                           lambda p: p.write_text('{"format": 1, "file": "ckpt-0000004.pt", "step": 4}'))
    (out / "notes.txt").write_text("mine")
    args = job_args(embedding, tiny_models_root, out)[1:]
    placed = _place(build_parser().parse_args(["generate", *args]), out)
    assert placed.same and placed.checkpoint_step == 4 and (out / "checkpoints" / "ckpt-0000004.pt").is_file()
    placed = _place(build_parser().parse_args(["generate", *args, "--new"]), out)
    assert placed.same and placed.checkpoint_step is None
    assert list((out / "checkpoints").iterdir()) == [] and checkpoint_step(out) is None
    assert (out / "notes.txt").read_text() == "mine"


def test_refusals_found_when_the_run_starts_keep_their_exit_status(tmp_path, embedding, tiny_models_root, capsys,
                                                                  monkeypatch):
    """A checkpoint the engine did not record is an output-folder refusal (3) and a job another
    process runs is busy (5), also when found by the run itself, not "failed" (1)."""
    from engine.pipeline import job_folder

    out = tmp_path / "head"
    _placed(out, embedding, tiny_models_root)
    monkeypatch.setattr(job_folder, "RUN_LOCK_WAIT_S", 0.3)
    holder = job_folder.JobLock(out).acquire()
    try:
        assert main(["generate", "--out", str(out), "--resume"]) == 5
        assert "another process is running the job" in capsys.readouterr().err
    finally:
        holder.release()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest.json").write_text('{"format": 1, "file": "ckpt-0000002.pt", "step": 2}')
    (out / "checkpoints" / "ckpt-0000002.pt").write_bytes(b"copied by hand")
    before = checksums(out)
    assert main(["generate", "--out", str(out), "--resume"]) == 3
    err = capsys.readouterr().err
    assert "did not record" in err and "--adopt-checkpoints" in err and "cp -a" in err
    assert checksums(out) == before


def test_heartbeat_lines_while_a_stage_reports_no_steps():
    clock = [0.0]
    lines: list[str] = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    printer = ProgressLines(Stream(), every_s=10.0, clock=lambda: clock[0], heartbeat_s=60.0)
    printer({"type": "stage", "name": "prior", "index": 2, "count": 6})
    for now in (30.0, 59.0):
        clock[0] = now
        printer.beat()
    assert len(lines) == 1  # the stage line only: not yet a minute of silence
    clock[0] = 61.0
    printer.beat()
    assert len(lines) == 2 and lines[1].endswith("prior: still working (61 s in this stage)\n")
    clock[0] = 100.0
    printer.beat()  # 39 s after the heartbeat: quiet again
    assert len(lines) == 2


def test_another_jobs_folder_is_refused_unchanged_and_replaced_only_with_new(tmp_path, embedding,
                                                                           tiny_models_root, capsys):
    out = tmp_path / "head"
    _placed(out, embedding, tiny_models_root, seed=5)
    # the old job's own checkpoint, recorded by the engine (a later step than the new job will reach)
    owned.write_owned_file(out / "checkpoints" / "ckpt-0000100.pt", lambda p: p.write_bytes(b"old job's state"))
    (out / "notes.txt").write_text("the client wants a beard")
    (out / "reference.jpg").write_bytes(b"\xff\xd8 a photo of the user's")
    before = checksums(out)

    code = main(job_args(embedding, tiny_models_root, out, "--seed", "7"))
    err = capsys.readouterr().err
    assert code == 3
    assert "holds another job" in err and "seed: 5 there, 7 here" in err and "--resume" in err and "--new" in err
    assert checksums(out) == before

    strangers = tmp_path / "documents"
    strangers.mkdir()
    (strangers / "thesis.tex").write_text("years of work")
    assert main(job_args(embedding, tiny_models_root, strangers)) == 3
    assert "holds no job" in capsys.readouterr().err and checksums(strangers) == {
        "thesis.tex": hashlib.sha256(b"years of work").hexdigest()}

    code = main(job_args(embedding, tiny_models_root, out, "--seed", "7", "--new"))
    err = capsys.readouterr().err
    assert code == 0, err
    after = checksums(out)
    for name in ("notes.txt", "reference.jpg"):
        assert after[name] == before[name]  # the user's files are untouched
    # the old job's checkpoint went with --new (left there, pruning by name would have kept it and
    # dropped one of the new job's); the new job's newest two and latest.json are all there is
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-0000008.pt", "ckpt-0000009.pt",
                                                                     "latest.json"]
    assert json.loads((out / "job.json").read_text())["seed"] == 7
    assert json.loads((out / "result" / "result.json").read_text())["seed"] == 7


def test_new_refuses_when_a_checkpoint_of_someone_elses_would_stay(tmp_path, embedding, tiny_models_root, capsys):
    """A file under a checkpoint name that the engine did not record cannot be deleted, and left
    there it would be resumed as the new job's: --new refuses, changing nothing."""
    out = tmp_path / "head"
    _placed(out, embedding, tiny_models_root, seed=5)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "ckpt-0000004.pt").write_bytes(b"copied here by hand")
    before = checksums(out)
    assert main(job_args(embedding, tiny_models_root, out, "--seed", "7", "--new")) == 3
    err = capsys.readouterr().err
    assert "ckpt-0000004.pt" in err and "nothing was changed" in err
    assert checksums(out) == before


def test_a_second_ctrl_c_leaves_at_once_while_no_step_runs(tmp_path, embedding, tiny_models_root, capsys,
                                                          monkeypatch):
    """The first Ctrl-C asks for a checkpoint at the next step; during minutes of model loading no
    step comes, so a second one leaves at once, naming the command that continues. The job's run
    is replaced by a TEST DOUBLE that waits like model loading does (and holds the lock), since a
    real model load with the tiny models is over before a signal can land in it."""
    import threading

    from engine.pipeline import run as run_module

    loading = threading.Event()

    def slow_model_loading(job_dir, **kwargs):
        loading.set()
        for _ in range(600):  # 60 s unless interrupted; the first Ctrl-C only sets the stop flag
            time.sleep(0.1)
        raise AssertionError("the second Ctrl-C did not interrupt model loading")

    monkeypatch.setattr(run_module, "run_job", slow_model_loading)

    def two_ctrl_c() -> None:
        loading.wait(60)
        for _ in range(2):
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=two_ctrl_c, daemon=True).start()
    started = time.monotonic()
    out = tmp_path / "head"
    assert main(job_args(embedding, tiny_models_root, out)) == 130
    err = capsys.readouterr().err
    assert time.monotonic() - started < 30
    assert "Ctrl-C again to leave at once" in err
    assert f"left at once before the first checkpoint; continue with: {sys.executable} -m engine generate --out {out} " \
           "--resume" in err
