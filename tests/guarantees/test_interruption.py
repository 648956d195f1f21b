"""Interrupting a folder replacement (SIGINT or SIGKILL, at every phase) leaves the old or the
new version complete, and the next run neither refuses nor mixes them.

The replacement runs in a child process over a folder of many files. The child announces each
phase — half of the new version written, the old version moved aside (the portable path's gap),
the old version about to be deleted — and lingers there 0.3 s, so the parent's signal (after a
random delay) lands inside that phase rather than by luck.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import atomic, owned

REPO = Path(__file__).resolve().parents[2]
FILES = 150

CHILD = r"""
import os, shutil, sys, time
from pathlib import Path
from engine import atomic, owned

mode, target, exchange, files = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
atomic._USE_EXCHANGE = exchange

def version(tag):
    def write(staging):
        for i in range(files):
            sub = staging / f"d{i % 10}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.txt").write_text(f"{tag} {i}")
            if tag == "new" and i == files // 2 and hooked:  # half of the new version written
                print("writing", flush=True)
                time.sleep(0.3)
    return write

hooked = False

replace = {
    "plain": lambda tag: atomic.replace_dir_atomic(target, version(tag)),
    "owned-dir": lambda tag: owned.replace_owned_dir(target, "test", version(tag)),
    "owned-entry": lambda tag: owned.replace_owned_entry(target, version(tag)),
}[mode]
if mode == "owned-entry":
    owned.claim_dir(target.parent, "job")
replace("old")

real_rmtree, real_rename = shutil.rmtree, os.rename
def rmtree(path, *args, **kwargs):  # announce the deletion of the old version, and linger there
    if (atomic.NEW_TAG in str(path) or atomic.OLD_TAG in str(path) or Path(path) == target) and Path(path).exists():
        print("deleting", flush=True)
        time.sleep(0.3)
    return real_rmtree(path, *args, **kwargs)
def rename(source, destination):  # announce the gap of the portable swap, and linger there
    real_rename(source, destination)
    if atomic.OLD_TAG in str(destination):
        print("aside", flush=True)
        time.sleep(0.3)
shutil.rmtree, os.rename = rmtree, rename
hooked = True

print("ready", flush=True)
start = time.perf_counter()
replace("new")
print("done", time.perf_counter() - start, flush=True)
"""


def state_of(target: Path) -> str:
    """'old' or 'new' when the folder holds exactly one complete version; fails otherwise."""
    assert target.is_dir(), f"{target} is missing"
    tags = set()
    for i in range(FILES):
        path = target / f"d{i % 10}" / f"f{i}.txt"
        assert path.is_file(), f"{path} missing: a half-deleted or half-written version"
        tag, number = path.read_text().split()
        assert number == str(i)
        tags.add(tag)
    files = [p for p in target.rglob("*") if p.is_file() and p.name != owned.MARKER]
    assert len(files) == FILES, "files of two versions mixed"
    assert len(tags) == 1, f"a mix of versions: {tags}"
    return tags.pop()


def run_child(mode, target, exchange, marker=None, delay=0.0, sig=None) -> None:
    """Run one replacement; signal it ``delay`` s after it prints ``marker`` (if given)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(target), "1" if exchange else "0", str(FILES)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        while True:
            line = child.stdout.readline().decode()
            assert line, f"child ended early: {lines} {child.stderr.read().decode()}"
            lines.append(line.split()[0])
            if sig is not None and lines[-1] == marker:
                time.sleep(delay)
                child.send_signal(sig)
                child.wait(60)
                return None
            if lines[-1] == "done":
                child.wait(60)
                return None
    finally:
        child.kill()
        child.stdout.close()
        child.stderr.close()


CASES = [("plain", True), ("plain", False), ("owned-dir", True), ("owned-dir", False), ("owned-entry", True),
         ("owned-entry", False)]
PHASES = [(mode, exchange, phase) for mode, exchange in CASES
          for phase in (("writing", "deleting") if exchange else ("writing", "aside", "deleting"))]
EXPECTED = {"writing": "old", "aside": "old", "deleting": "new"}


@pytest.mark.parametrize("mode, exchange, phase", PHASES,
                         ids=[f"{m}-{'exchange' if e else 'rename-aside'}-{p}" for m, e, p in PHASES])
def test_old_or_new_version_survives_an_interruption(mode, exchange, phase, tmp_path):
    target = tmp_path / "job" / "folder"
    run_child(mode, target, exchange)
    assert state_of(target) == "new"
    rng = random.Random(f"{mode}{exchange}{phase}")
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL):
        shutil.rmtree(tmp_path / "job")
        # inside the announced phase, which lasts 0.3 s
        run_child(mode, target, exchange, phase, rng.uniform(0.0, 0.2), sig)
        if exchange or phase != "aside" or sig == signal.SIGINT:
            # complete before any recovery: at every instant with the exchange; on the portable
            # path a Ctrl-C in its gap puts the old version back at once
            assert state_of(target) == EXPECTED[phase]
        else:
            assert not target.exists()  # SIGKILL in the portable swap's gap: the old version waits aside
        atomic.recover_dir(target)  # what the next replacement does first
        assert state_of(target) == EXPECTED[phase]
        assert [p.name for p in target.parent.iterdir() if p.name not in (target.name, owned.MARKER)] == []
        if mode != "plain":  # the next run is not refused because of the interruption, and replaces it
            assert owned.foreign_entries(target) == []
            again = (lambda w: owned.replace_owned_dir(target, "test", w)) if mode == "owned-dir" else \
                (lambda w: owned.replace_owned_entry(target, w))
            again(lambda staging: (staging / "again.txt").write_text("x"))
            assert [p.name for p in target.iterdir() if p.name != owned.MARKER] == ["again.txt"]


def test_a_killed_dataset_rebuild_leaves_a_whole_dataset_and_reruns(tmp_path, heads):
    """The real command: `build-prior-dataset` killed at random moments of a rebuild; afterwards the
    dataset reads complete (old or new) and the next rebuild is not refused."""
    from engine.prior.dataset import read_dataset

    out = tmp_path / "ds"
    command = [sys.executable, "-m", "engine", "build-prior-dataset", f"--heads={heads}", f"--out={out}",
               "--domain=normal", "--resolution=64"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    duration = time.perf_counter() - start
    expected = len(read_dataset(out))
    rng = random.Random(7)
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT):
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        child.send_signal(sig)
        child.wait(60)
        atomic.recover_dir(out)
        assert len(read_dataset(out)) == expected  # every listed image and embedding is there
        assert owned.foreign_entries(out) == []
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
