"""Safe extraction of dataset archives (.tar, .tar.gz, .tgz, .tar.xz, .zip): members with absolute
paths, `..` or links leaving the target are refused before anything is written, and a broken
archive leaves nothing behind (everything is extracted into a hidden staging folder first)."""

import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from common.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip")
STAGING_PREFIX = ".extracting-"


def flatten_message(text: str) -> str:
    """`text` on one line: line breaks (from a path or a library's message) and runs of spaces become
    one space, so the user sees a single `error: ...` line."""
    return " ".join(str(text).split())


def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name could land outside the target directory, or None when it cannot."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return "absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return "'..' in path"
    return None


def _strict_tar_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    """Refuse absolute or '..' names (the 'data' filter would silently strip a leading '/'), then
    apply the 'data' filter (no links leaving the target, no devices, no set-uid bits)."""
    reason = _unsafe_reason(member.name)
    if reason:
        raise tarfile.FilterError(f"{member.name!r}: {reason}")
    if member.issym() or member.islnk():
        link_reason = _unsafe_reason(member.linkname)
        if link_reason:
            raise tarfile.FilterError(f"{member.name!r} links to {member.linkname!r}: {link_reason}")
    if hasattr(tarfile, "data_filter"):
        return tarfile.data_filter(member, dest_path)
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise tarfile.FilterError(f"{member.name!r}: not a regular file or directory")
    return member


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return "zip" if suffix == ".zip" else "tar"
    raise UserError(f"cannot extract {archive}: unknown archive type; expected one of {', '.join(ARCHIVE_SUFFIXES)}")


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tqdm(tar, unit=" files", desc=f"extracting {archive.name}", file=sys.stdout)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(staging, members=members, filter=_strict_tar_filter)
        else:  # Python without extraction filters: apply ours member by member
            for member in members:
                tar.extract(_strict_tar_filter(member, str(staging)), staging)


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zip_file:
        infos = zip_file.infolist()
        # zipfile would silently rewrite bad names; refuse the whole archive before writing anything.
        for info in infos:
            reason = _unsafe_reason(info.filename)
            if reason:
                raise tarfile.FilterError(f"{info.filename!r}: {reason}")
        for info in tqdm(infos, unit=" files", desc=f"extracting {archive.name}", file=sys.stdout):
            zip_file.extract(info, staging)


def merge_move(source: Path, target: Path) -> None:
    """Move `source` onto `target`, merging into directories that already exist there."""
    if target.is_dir() and source.is_dir() and not target.is_symlink():
        for child in source.iterdir():
            merge_move(child, target / child.name)
        source.rmdir()
    else:
        os.replace(source, target)


def extract_archive(archive: Path, target_dir: Path) -> None:
    """Extract a .tar, .tar.gz, .tgz, .tar.xz or .zip into `target_dir` (merging with what is there).

    Everything is first extracted into a hidden staging folder inside `target_dir` and moved in only
    when the whole archive came out, so an unsafe member or a broken archive leaves nothing behind.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise UserError(f"cannot extract {archive}: no such file; check the path")
    kind = _archive_kind(archive)
    target_dir.mkdir(parents=True, exist_ok=True)
    for stale in target_dir.glob(STAGING_PREFIX + "*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target_dir))
    try:
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, staging)
        except tarfile.FilterError as error:
            raise UserError(flatten_message(
                f"refusing to extract {archive}: unsafe member {error}; the archive is not the official one, "
                "download it again from the official source"
            )) from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
            raise UserError(flatten_message(
                f"cannot extract {archive}: {error}; check free disk space, or download the archive again "
                "if it is damaged"
            )) from None
        for entry in list(staging.iterdir()):
            merge_move(entry, target_dir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
