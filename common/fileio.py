"""Atomic file writing: a crash or a bad input never leaves a half-written result behind.

Every file and folder made here gets the permissions a plain `open(path, "w")` / `mkdir` would
give (0666 / 0777 less the umask), so results on a shared machine are as readable as the user's
umask allows. Temporaries live next to their target (same file system, so the final rename is
atomic) under hidden names `.<name>.<8 random characters>.tmp`; `clean_stale_temporaries` removes
those a killed earlier run left behind.
"""

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from common.errors import UserError

TEMP_SUFFIX = ".tmp"
_RANDOM_LENGTH = 8
# `.<name>.<8 random chars>.tmp`; the random part also matches what tempfile.mkstemp made in the past.
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{%d}\.tmp$" % _RANDOM_LENGTH)
_MAX_NAME_TRIES = 100
_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process started (seconds since the epoch); the module's import time where the
    system does not say. Anything older than this cannot be a temporary of this process."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
        ticks_after_boot = int(fields[19])  # field 22 of proc(5); fields[0] is field 3
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        started = boot + ticks_after_boot / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return _IMPORTED_AT
    return min(started, _IMPORTED_AT)


def _random_part() -> str:
    return secrets.token_hex(_RANDOM_LENGTH // 2)


def _temporary_file_beside(path: Path) -> Path:
    """Create an empty `.<name>.<random>.tmp` next to `path`, with the mode `open(..., "w")` gives."""
    for _ in range(_MAX_NAME_TRIES):
        candidate = path.with_name(f".{path.name}.{_random_part()}{TEMP_SUFFIX}")
        try:
            # 0o666 and not 0o600 (mkstemp): the kernel takes the umask (and any default ACL) off it,
            # exactly as for a plain open(); O_EXCL keeps the name ours alone.
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return candidate
    raise FileExistsError(f"no free temporary name next to {path}")


def make_temporary_dir(parent: Path, prefix: str) -> Path:
    """Create a new folder `<parent>/<prefix><random>` with the mode a plain `mkdir` gives
    (0777 less the umask; tempfile.mkdtemp would give 0700, which survives a later rename)."""
    parent = Path(parent)
    for _ in range(_MAX_NAME_TRIES):
        candidate = parent / f"{prefix}{_random_part()}"
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary folder name in {parent}")


def is_plain_name(name: str) -> bool:
    """A name that stays in the folder it is joined to: not empty, no path separator, not starting
    with a dot (so neither '.', '..' nor a hidden name), no NUL or line break."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".")
            and not any(c in name for c in "/\\\0\n\r"))


def check_plain_name(name: str, what: str) -> str:
    """`name` when it is plain (is_plain_name), else a UserError naming `what` (e.g. "--category")."""
    if not is_plain_name(name):
        raise UserError(f"{what} {name!r} is not a plain name: it becomes a folder of the results, so it may not be "
                        "empty, hold '/' or '\\', or start with '.' (no '..'); use letters, digits, '_' or '-'")
    return name


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KB', 7.2e9 -> '7.2 GB' (powers of 1000, as disk tools print them)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def free_bytes(path: Path) -> int | None:
    """Free space, in bytes, of the file system holding `path` (or its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class DiskFull(UserError):
    """A write failed for lack of space (or quota): which file, how much it needed, how much was free.
    Nothing partial is left: the file is the old one (or absent)."""

    def __init__(self, path: Path, size: int | None):
        self.path = Path(path)
        free = free_bytes(self.path)
        needed = f"{format_bytes(size)} needed, " if size is not None else ""
        have = f"{format_bytes(free)} free" if free is not None else "free space unknown"
        super().__init__(f"no space left on the device for {self.path} ({needed}{have}); nothing partial was kept")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """A UserError when the file system of `folder` clearly lacks `needed` bytes for `what`."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise UserError(f"not enough free space in {folder}: {format_bytes(free)} free, {what} writes about "
                        f"{format_bytes(needed)}; free some space or choose a folder on another disk")


@contextlib.contextmanager
def atomic_path(path: Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    The temporary exists (empty) when yielded. The final file has the mode a plain
    `open(path, "w")` gives a new file (0666 less the umask), also when it replaces an older file.
    A full disk (or quota) becomes `DiskFull` naming `path` and `size` (the bytes to be written,
    when the caller knows them); the temporary is removed and an older `path` stays as it was.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _temporary_file_beside(path)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path, size) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the `.<name>.<random>.tmp` files of `folder` (not its subfolders) that are older than
    this process: what `atomic_path` left when an earlier run was killed. Files of this process, and
    files that cannot be deleted (another user's), are left alone. Returns the deleted paths."""
    folder = Path(folder)
    started = process_start_time()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no such folder, or not readable: nothing of ours to clean
        return removed
    for entry in entries:
        if not _TEMPORARY_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime >= started:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return sorted(removed)


def check_writable_dir(path: Path, what: str) -> Path:
    """Make sure `path` is a folder this process can write in (creating it when absent); returns it.

    Raises a one-line UserError naming `what` (e.g. "--output-dir") when `path` is a file, cannot be
    created, or refuses a new file. Meant for entry points, before any long work starts.
    """
    path = Path(path)
    shown = " ".join(f"{what} {path}".split())
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{shown} is a file, not a folder; pass a folder path (or move the file away)")
        path.mkdir(parents=True, exist_ok=True)
    except UserError:
        raise
    except OSError as error:
        raise UserError(
            f"{shown} cannot be created ({error.strerror or error}); pass a folder you can create"
        ) from None
    try:
        probe = _temporary_file_beside(path / "write-check")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"{shown} is not writable ({error.strerror or error}); fix its permissions or pass another folder"
        ) from None
    return path


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str = ",") -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(header)
            writer.writerows(rows)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so multi-GB archives need no memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def locked_folder(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` (flock on the folder itself: no lock file is left behind),
    so that processes merging into files of one folder at once never lose each other's work."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)
