"""common/fileio: permissions of atomic writes, stale temporaries, writable-folder checks."""

import contextlib
import errno
import os
import re
import stat
import time

import pytest

from common import fileio
from common.errors import UserError
from common.fileio import (
    atomic_path,
    check_writable_dir,
    clean_stale_temporaries,
    make_temporary_dir,
    process_start_time,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)


@contextlib.contextmanager
def umask(value: int):
    """Run a block under `value` as umask, restoring the previous one afterwards."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_old(path) -> None:
    """Give `path` a modification time well before this process started."""
    old = process_start_time() - 3600
    os.utime(path, (old, old))


@pytest.mark.parametrize("mask, expected", [(0o002, 0o664), (0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_path_gives_the_mode_of_a_plain_open(tmp_path, mask, expected):
    with umask(mask):
        with atomic_path(tmp_path / "result.txt") as tmp:
            tmp.write_text("x", encoding="utf-8")
        with open(tmp_path / "plain.txt", "w", encoding="utf-8") as handle:
            handle.write("x")
    assert mode(tmp_path / "result.txt") == expected == mode(tmp_path / "plain.txt")


def test_atomic_path_replacing_a_private_file_gives_the_umask_mode(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old", encoding="utf-8")
    os.chmod(target, 0o600)  # e.g. written by a version that used mkstemp's 0600
    with umask(0o002):
        write_csv_atomic(target, ["a"], [[1]])
    assert mode(target) == 0o664
    assert target.read_text(encoding="utf-8").splitlines() == ["a", "1"]


@pytest.mark.parametrize("write", [
    lambda path: write_text_atomic(path, "t"),
    lambda path: write_json_atomic(path, {"a": 1}),
    lambda path: write_csv_atomic(path, ["h"], [["v"]]),
])
def test_atomic_writers_respect_the_umask(tmp_path, write):
    with umask(0o022):
        write(tmp_path / "out")
    assert mode(tmp_path / "out") == 0o644


def test_atomic_path_temporary_is_a_hidden_sibling_and_vanishes_on_error(tmp_path):
    target = tmp_path / "scores.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.exists()
            assert re.fullmatch(r"\.scores\.csv\.[A-Za-z0-9_]{8}\.tmp", tmp.name)
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


def test_make_temporary_dir_respects_the_umask(tmp_path):
    with umask(0o002):
        first = make_temporary_dir(tmp_path, ".data.staging-")
        second = make_temporary_dir(tmp_path, ".data.staging-")
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith(".data.staging-")
    assert mode(first) == 0o775  # tempfile.mkdtemp would give 0700


def test_clean_stale_temporaries_removes_only_old_leftovers(tmp_path):
    with atomic_path(tmp_path / "result.csv") as tmp:
        real_name = tmp.name  # a name atomic_path really uses
    leftover = tmp_path / real_name
    leftover.write_text("half")
    old_mkstemp_style = tmp_path / ".metrics.json.k2_x9q0a.tmp"
    old_mkstemp_style.write_text("half")
    fresh = tmp_path / ".weights.pt.0123abcd.tmp"  # a concurrent write of this process
    fresh.write_text("in progress")
    unrelated = [tmp_path / "notes.0123abcd.tmp", tmp_path / ".hidden.tmp", tmp_path / "result.csv"]
    for path in unrelated:
        path.write_text("keep")
    folder_like = tmp_path / ".cache.0123abcd.tmp"
    folder_like.mkdir()
    for path in (leftover, old_mkstemp_style, *unrelated, folder_like):
        make_old(path)

    removed = clean_stale_temporaries(tmp_path)

    assert removed == sorted([leftover, old_mkstemp_style])
    assert not leftover.exists() and not old_mkstemp_style.exists()
    assert fresh.exists() and folder_like.is_dir()
    assert all(path.exists() for path in unrelated)


def test_clean_stale_temporaries_keeps_the_temporary_of_a_write_in_progress(tmp_path):
    with atomic_path(tmp_path / "result.csv") as tmp:
        tmp.write_text("partial")
        assert clean_stale_temporaries(tmp_path) == []
        assert tmp.exists()
    assert (tmp_path / "result.csv").read_text() == "partial"


def test_clean_stale_temporaries_of_a_missing_folder_is_empty(tmp_path):
    assert clean_stale_temporaries(tmp_path / "absent") == []


def test_process_start_time_is_before_now():
    assert 0 < process_start_time() <= time.time()


def test_check_writable_dir_creates_the_folder_and_leaves_it_empty(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable_dir(target, "--output-dir") == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_check_writable_dir_refuses_a_file(tmp_path):
    target = tmp_path / "results"
    target.write_text("not a folder")
    with pytest.raises(UserError) as error:
        check_writable_dir(target, "--output-dir")
    message = str(error.value)
    assert message.startswith(f"--output-dir {target} is a file") and "\n" not in message
    assert target.read_text() == "not a folder"


def test_check_writable_dir_refuses_a_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "plain_file").write_text("x")
    target = tmp_path / "plain_file" / "sub"
    with pytest.raises(UserError, match=r"--datasets-folder .* cannot be created") as error:
        check_writable_dir(target, "--datasets-folder")
    assert "\n" not in str(error.value)


def test_check_writable_dir_refuses_a_folder_without_write_permission(tmp_path, monkeypatch):
    """The probe file cannot be created (as on a read-only share; simulated, so it also runs as root)."""
    target = tmp_path / "shared"
    target.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(target) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "open", refusing_open)
    with pytest.raises(UserError, match=r"--output-dir .* is not writable \(Permission denied\)") as error:
        check_writable_dir(target, "--output-dir")
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_dir_refuses_a_read_only_folder(tmp_path):
    target = tmp_path / "read_only"
    target.mkdir()
    os.chmod(target, 0o555)
    try:
        with pytest.raises(UserError, match="is not writable"):
            check_writable_dir(target, "--output-dir")
    finally:
        os.chmod(target, 0o755)


# ---------------------------------------------------------------- names, space, full disks


@pytest.mark.parametrize("name, plain", [
    ("bottle", True), ("metal_nut", True), ("capsule_1", True), ("a b", True), ("résumé", True),
    ("", False), (".", False), ("..", False), (".hidden", False), ("../x", False), ("a/b", False),
    ("/abs", False), ("a\\b", False), ("a\0b", False), ("a\nb", False),
])
def test_plain_names_stay_where_they_are_put(name, plain):
    assert fileio.is_plain_name(name) is plain
    if plain:
        assert fileio.check_plain_name(name, "--category") == name
    else:
        with pytest.raises(UserError, match="--category .* is not a plain name"):
            fileio.check_plain_name(name, "--category")


def test_a_full_disk_names_the_file_and_the_space_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", no_space)
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 1_500)
    with pytest.raises(fileio.DiskFull) as caught:
        fileio.write_bytes_atomic(target, b"x" * 2_500_000)
    assert str(caught.value) == (f"no space left on the device for {target} (2.5 MB needed, 1.5 KB free); "
                                 "nothing partial was kept")
    assert isinstance(caught.value, UserError) and caught.value.path == target
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


def test_other_write_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileio.os, "replace", denied)
    with pytest.raises(PermissionError):
        fileio.write_text_atomic(tmp_path / "a.txt", "text")


def test_free_space_check(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 10_000_000)
    fileio.check_free_space(tmp_path / "not" / "yet", 9_000_000, "training x")  # enough: nothing happens
    with pytest.raises(UserError, match=r"not enough free space in .*: 10.0 MB free, training x writes about 12.0 MB"):
        fileio.check_free_space(tmp_path, 12_000_000, "training x")


def test_free_bytes_looks_at_the_nearest_existing_folder(tmp_path):
    assert fileio.free_bytes(tmp_path / "a" / "b" / "c") == fileio.free_bytes(tmp_path) > 0


def test_format_bytes():
    assert [fileio.format_bytes(n) for n in (0, 999, 1_000, 1_536, 2_500_000, 7.2e9, 3e15)] == [
        "0 bytes", "999 bytes", "1.0 KB", "1.5 KB", "2.5 MB", "7.2 GB", "3000.0 TB"]
