"""Owned folders: the engine deletes or replaces only what it wrote (engine/owned.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine import atomic, owned
from engine.owned import ForeignFolderError


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: equal listings mean nothing changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def three_files(staging: Path) -> None:
    (staging / "a.txt").write_text("a")
    (staging / "sub").mkdir()
    (staging / "sub" / "b.txt").write_text("b")


def test_claim_refuses_a_foreign_folder_and_changes_nothing(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    before = listing(tmp_path)
    with pytest.raises(ForeignFolderError, match="nothing was changed") as info:
        owned.claim_dir(tmp_path, "job")
    assert "thesis.tex" in info.value.message
    assert listing(tmp_path) == before


def test_claim_accepts_new_empty_and_same_kind_refuses_other_kind_and_files(tmp_path):
    owned.claim_dir(tmp_path / "new", "job")
    (tmp_path / "empty").mkdir()
    owned.claim_dir(tmp_path / "empty", "job")
    owned.write_owned_file(tmp_path / "new" / "x", lambda p: p.write_text("x"))
    assert owned.claim_dir(tmp_path / "new", "job") == tmp_path / "new"
    with pytest.raises(ForeignFolderError, match="another kind"):
        owned.claim_dir(tmp_path / "new", "result")
    (tmp_path / "file").write_text("f")
    with pytest.raises(ForeignFolderError) as info:
        owned.claim_dir(tmp_path / "file", "job")
    assert info.value.code == "out_not_a_folder"


def test_remove_owned_keeps_what_the_user_added_or_changed(tmp_path):
    root = owned.claim_dir(tmp_path / "job", "job")
    owned.replace_owned_entry(root / "res", three_files)
    (root / "res" / "notes.txt").write_text("mine")
    (root / "res" / "sub" / "b.txt").write_text("edited by the user")
    with pytest.raises(ForeignFolderError, match="nothing was changed"):
        owned.remove_owned(root / "res")
    assert sorted(listing(root / "res")) == ["a.txt", "notes.txt", "sub/b.txt"]
    kept = owned.remove_owned(root / "res", keep_foreign=True)
    assert sorted(p.name for p in kept) == ["b.txt", "notes.txt"]
    assert listing(root / "res") == {"notes.txt": b"mine", "sub/b.txt": b"edited by the user"}


def test_remove_owned_refuses_an_entry_it_never_wrote(tmp_path):
    root = owned.claim_dir(tmp_path / "m", "models", shared=True)
    (root / "antelopev2").mkdir()
    (root / "antelopev2" / "scrfd.onnx").write_bytes(b"real weights")
    with pytest.raises(ForeignFolderError, match="not written by the engine"):
        owned.remove_owned(root / "antelopev2")
    with pytest.raises(ForeignFolderError, match="overwrite"):
        owned.write_owned_file(root / "antelopev2" / "scrfd.onnx", lambda p: p.write_bytes(b"random"))
    assert (root / "antelopev2" / "scrfd.onnx").read_bytes() == b"real weights"


def test_replace_owned_dir_refuses_user_files_and_otherwise_swaps_whole(tmp_path):
    target = tmp_path / "ds"
    owned.replace_owned_dir(target, "prior-dataset", three_files)
    owned.replace_owned_dir(target, "prior-dataset", lambda s: (s / "only.txt").write_text("new"))
    after = listing(target)
    assert set(after) == {owned.MARKER, "only.txt"} and after["only.txt"] == b"new"  # the old files are gone
    (target / "user.txt").write_text("u")
    before = listing(target)
    with pytest.raises(ForeignFolderError, match="user.txt"):
        owned.replace_owned_dir(target, "prior-dataset", three_files)
    assert listing(target) == before


def test_whole_owned_folder_removed_with_its_marker(tmp_path):
    root = owned.claim_dir(tmp_path / "j", "job")
    owned.write_owned_file(root / "f.bin", lambda p: p.write_bytes(b"1"))
    assert owned.remove_owned(root) == []
    assert not root.exists()


def test_non_utf8_names_are_recorded_exactly(tmp_path):
    root = owned.claim_dir(tmp_path / "j", "job")
    name = os.fsdecode(b"caf\xe9.png")  # not valid UTF-8: a surrogate-escaped str
    owned.write_owned_file(root / name, lambda p: p.write_bytes(b"x"))
    assert owned.foreign_entries(root) == []
    owned.remove_owned(root / name)
    assert not os.path.lexists(os.fsencode(root) + b"/caf\xe9.png")


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)  # not the usual 022: a hard-coded 0644/0755 would not pass
    try:
        atomic.write_text_atomic(tmp_path / "f.txt", "x")
        atomic.replace_dir_atomic(tmp_path / "d", three_files)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o750


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_replace_dir_atomic_old_version_kept_until_new_is_in(tmp_path, monkeypatch, exchange):
    monkeypatch.setattr(atomic, "_USE_EXCHANGE", exchange)
    target = tmp_path / "t"
    atomic.replace_dir_atomic(target, lambda s: (s / "v").write_text("1"))

    def failing(staging):
        (staging / "v").write_text("2")
        raise RuntimeError("write failed half way")

    with pytest.raises(RuntimeError):
        atomic.replace_dir_atomic(target, failing)
    assert (target / "v").read_text() == "1"
    atomic.replace_dir_atomic(target, lambda s: (s / "v").write_text("3"))
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no staging or old folder left


def test_recover_dir_restores_the_old_version_after_a_gap(tmp_path):
    target = tmp_path / "t"
    atomic.replace_dir_atomic(target, lambda s: (s / "v").write_text("old"))
    # The portable swap's one gap: old moved aside, new not yet in (as if killed there); the
    # names are exactly those replace_dir_atomic makes (token_hex(4), tempfile's 8 characters).
    os.rename(target, tmp_path / f".t{atomic.OLD_TAG}0a1b2c3d")
    (tmp_path / f".t{atomic.NEW_TAG}k2_x9q0z").mkdir()
    # A user's folders that merely contain a tag are not the engine's: never restored or deleted.
    (tmp_path / f".t{atomic.NEW_TAG}mine").mkdir()
    (tmp_path / f".t{atomic.OLD_TAG}0a1b2c3d-notes").mkdir()
    atomic.recover_dir(target)
    assert (target / "v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["t", f".t{atomic.NEW_TAG}mine", f".t{atomic.OLD_TAG}0a1b2c3d-notes"])


def test_nested_owned_folder_is_judged_by_its_own_manifest(tmp_path):
    job = owned.claim_dir(tmp_path / "job", "job")
    owned.replace_owned_dir(job / "identity", "identity", three_files)
    assert owned.foreign_entries(job) == []
    (job / "identity" / "mine.txt").write_text("u")
    assert owned.foreign_entries(job) == [job / "identity" / "mine.txt"]
    kept = owned.remove_owned(job, keep_foreign=True)
    assert kept == [job / "identity" / "mine.txt"]
    assert listing(job / "identity")["mine.txt"] == b"u"
    assert sorted(listing(job / "identity")) == [".idto3d-owned.json", "mine.txt"]


def test_leftovers_are_only_the_exact_temporary_names_atomic_makes(tmp_path):
    import re
    import tempfile

    root = owned.claim_dir(tmp_path / "job", "job")
    # What an interrupted atomic write really leaves: mkstemp's name with the target's suffix.
    fd, real = tempfile.mkstemp(prefix=f".head.npz{atomic.TMP_TAG}", suffix=".npz", dir=root)
    os.close(fd)
    staging = Path(tempfile.mkdtemp(prefix=f".result{atomic.NEW_TAG}", dir=root))
    # The user's files that merely contain a tag.
    lookalikes = [root / f"notes{atomic.TMP_TAG}draft.txt", root / f".report.pdf{atomic.TMP_TAG}ab.pdf",
                  root / f".report.pdf{atomic.TMP_TAG}abcdefgh.txt", root / f".old{atomic.OLD_TAG}zzzzzzzz"]
    for path in lookalikes:
        path.write_text("mine")
    assert owned.foreign_entries(root) == sorted(lookalikes)
    assert owned.remove_owned(real) == [] and not os.path.exists(real)  # the engine's own: removable
    assert atomic.temporary_target(staging.name) == ("result", atomic.NEW_TAG)
    for path in lookalikes:
        with pytest.raises(ForeignFolderError, match="not written by the engine"):
            owned.remove_owned(path)
        assert path.read_text() == "mine"
    assert re.fullmatch(r"[a-z0-9_]{8}", Path(real).name[len(f".head.npz{atomic.TMP_TAG}"):-len(".npz")])


def test_prune_owned_deletes_only_recorded_unchanged_files(tmp_path):
    import re

    folder = owned.claim_dir(tmp_path / "job", "job") / "checkpoints"
    for step in (1, 2, 3, 4):
        owned.write_owned_file(folder / f"ckpt-{step:07d}.pt", lambda p, s=step: p.write_bytes(b"s" * s))
    (folder / "ckpt-0000001.pt").write_bytes(b"the user's edit")  # changed since: the user's now
    (folder / "ckpt-0000009.pt").write_bytes(b"dropped in by hand")  # matches, never recorded
    deleted = owned.prune_owned(folder, re.compile(r"ckpt-(\d+)\.pt"), keep=2)
    assert deleted == [folder / "ckpt-0000002.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-0000001.pt", "ckpt-0000003.pt", "ckpt-0000004.pt",
                                                        "ckpt-0000009.pt"]
    assert (folder / "ckpt-0000001.pt").read_bytes() == b"the user's edit"
    assert "checkpoints/ckpt-0000002.pt" not in owned.read_manifest(folder.parent)["entries"]


@pytest.mark.parametrize("moment", ["before the rename", "after the rename"])
def test_a_write_killed_at_any_moment_leaves_a_file_the_manifest_accepts(tmp_path, monkeypatch, moment):
    """write_owned_file records the new file before renaming it (and keeps the old version's
    signature), so a kill right before or right after the rename leaves an owned file, not one
    that later counts as the user's and blocks every rerun."""
    root = owned.claim_dir(tmp_path / "job", "job")
    target = root / "checkpoints" / "latest.json"
    owned.write_owned_file(target, lambda p: p.write_text("old"))
    real_replace = os.replace

    def killed(src, dst, *args, **kwargs):
        if Path(dst) == target:
            if moment == "after the rename":
                real_replace(src, dst, *args, **kwargs)
            raise KeyboardInterrupt  # as a SIGINT (or the power) at that instant
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        owned.write_owned_file(target, lambda p: p.write_text("new, longer"))
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert target.read_text() == ("old" if moment == "before the rename" else "new, longer")
    assert owned.foreign_entries(root) == []
    owned.write_owned_file(target, lambda p: p.write_text("next"))  # the next run is not refused
    assert len(owned.read_manifest(root)["entries"]["checkpoints/latest.json"]["sig"]) <= 2
