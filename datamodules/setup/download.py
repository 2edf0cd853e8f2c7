"""Fetching and unpacking dataset archives: resumable, checksummed downloads and safe extraction.

`download_file(url, path)` -> the verified file at `path` (partial data waits in `<path>.part`);
`extracted_archive(args, url, name, final)` -> a given or downloaded archive unpacked (safely, by
archives.extract_archive) into a staging sibling of `final`.
`staging_folder(final)` + `move_into_place(staging, final)` -> a dataset folder that appears under
its final name only once it is complete, so a failed run never leaves a half-made one behind.
`prepare_entry_point` -> the error handling every prepare script shares (one `error:` line, exit 2).
"""

import argparse
import contextlib
import functools
import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from common.cli import path_argument
from common.errors import OneLineArgumentParser, UserError, exit_on_user_error
from common.fileio import check_writable_dir, file_digest, make_temporary_dir, process_start_time
from datamodules.setup.archives import extract_archive, flatten_message, merge_move

# A cut connection is retried (resuming) only while each attempt adds bytes, and at most this often.
MAX_ATTEMPTS = 5
MANUAL_HINT = "download it manually (browser or wget) and pass --archive PATH"
USER_AGENT = "Mozilla/5.0 (compatible; supersimplenet-dataset-setup)"
SIBLING_STAGING_MARK = ".staging-"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class _ConnectionCut(Exception):
    """An attempt ended early. `.part` keeps what arrived (or was reset when `restart`), so the next
    attempt resumes from there."""

    def __init__(self, message: str, restart: bool = False):
        super().__init__(message)
        self.restart = restart


def checksum_mismatch(path: Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """None when `path` matches every given checksum, else a short description of the mismatch."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                return f"{algorithm} is {actual}, expected {expected}"
    return None


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _remote_size_if_range_unsatisfiable(error: urllib.error.HTTPError) -> int | None:
    """The full size a 416 answer reports (`Content-Range: bytes */SIZE`), if it reports one."""
    match = _UNSATISFIED_RANGE.match(error.headers.get("Content-Range", "") if error.headers else "")
    return int(match.group(1)) if match else None


def _download_attempt(url: str, part: Path, timeout_s: float, chunk_size: int) -> None:
    """Fetch what `part` lacks (all of it when the server ignores Range). Raises _ConnectionCut when short."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout_s)
    except urllib.error.HTTPError as error:
        # 416: we asked for bytes past the end. When .part is exactly the remote size it is complete.
        if error.code == 416 and offset > 0 and _remote_size_if_range_unsatisfiable(error) == offset:
            return
        if error.code == 416:
            part.unlink()
            raise _ConnectionCut("the partial download did not fit the remote file", restart=True) from error
        raise
    with response:
        total: int | None = None
        append = False
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            append = bool(match) and int(match.group(1)) == offset
            if not append:
                part.unlink(missing_ok=True)
                raise _ConnectionCut("the server resumed at the wrong byte", restart=True)
            total = int(match.group(3)) if match.group(3) != "*" else None
        else:
            # 200: the server ignored the Range header and sends everything, so start over.
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        start = offset if append else 0
        with open(part, "ab" if append else "wb") as handle, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5]
        ) as progress:
            try:
                for chunk in iter(lambda: response.read(chunk_size), b""):
                    handle.write(chunk)
                    progress.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise _ConnectionCut(f"connection lost: {error}") from error
    received = part.stat().st_size
    if total is not None and received < total:
        raise _ConnectionCut(f"connection closed after {received} of {total} bytes")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch_with_resume(url: str, part: Path, timeout_s: float, chunk_size: int) -> None:
    """Complete `part` from `url`, resuming after cuts; raise a one-line UserError when it cannot."""
    problem = "too many interrupted attempts"
    for _ in range(MAX_ATTEMPTS):
        size_before = _size(part)
        try:
            _download_attempt(url, part, timeout_s, chunk_size)
            return
        except _ConnectionCut as cut:
            problem = str(cut)
            if not cut.restart and _size(part) <= size_before:
                break  # no progress: another attempt would only repeat the failure
        except urllib.error.HTTPError as error:
            raise UserError(f"cannot download {url}: HTTP {error.code} {error.reason}; {MANUAL_HINT}") from None
        except (OSError, http.client.HTTPException) as error:
            # URLError (DNS, connection refused) and connect timeouts.
            problem = str(getattr(error, "reason", None) or error)
            break
    kept = _size(part)
    rerun = f"{kept} bytes are kept in {part}, so a rerun resumes" if kept else "check the network and rerun"
    raise UserError(f"cannot download {url}: {problem}; {rerun}, or {MANUAL_HINT}")


def download_file(
    url: str,
    destination: Path,
    sha256: str | None = None,
    md5: str | None = None,
    timeout_s: float = 60,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download `url` to `destination` (resuming `<destination>.part`), verify it, return `destination`.

    An existing `destination` is only verified. A corrupt file is deleted and reported; a network
    failure is reported with how to download by hand. The rename onto `destination` is atomic.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    source = destination
    if not destination.exists():
        _fetch_with_resume(url, part, timeout_s, chunk_size)
        source = part
    mismatch = checksum_mismatch(source, sha256, md5)
    if mismatch:
        source.unlink()
        raise UserError(
            f"download of {url} is corrupt ({mismatch}); deleted {source} so a rerun starts clean; "
            f"rerun, or {MANUAL_HINT}"
        )
    if source == part:
        os.replace(part, destination)
    return destination


def resolve_archive(
    user_archive: Path | None,
    url: str,
    download_path: Path,
    sha256: str | None = None,
    md5: str | None = None,
) -> tuple[Path, bool]:
    """`--archive PATH` (checked, never deleted) or a download to `download_path` -> (archive, downloaded)."""
    if user_archive is None:
        print(f"downloading {url}\n  -> {download_path}")
        return download_file(url, download_path, sha256=sha256, md5=md5), True
    user_archive = Path(user_archive).expanduser()
    if not user_archive.is_file():
        raise UserError(f"--archive {user_archive} does not exist or is not a file; pass the downloaded archive's path")
    mismatch = checksum_mismatch(user_archive, sha256, md5) if (sha256 or md5) else None
    if mismatch:
        # A re-packed official archive has another checksum but the same content; the layout check
        # after extraction is what decides, so this is only a warning.
        print(f"warning: {user_archive} differs from the published archive ({mismatch}); continuing")
    return user_archive, False


def remove_downloaded_archive(archive: Path, downloaded: bool, keep_archive: bool) -> None:
    """Delete an archive this run downloaded, unless asked to keep it; a user's --archive is never touched."""
    if downloaded and not keep_archive:
        archive.unlink(missing_ok=True)
        print(f"deleted the downloaded archive {archive} (use --keep-archive to keep it)")


@contextlib.contextmanager
def extracted_archive(args: argparse.Namespace, url: str, archive_name: str, final: Path,
                      **checksum: str) -> Iterator[tuple[Path, Path]]:
    """The archive of a prepare script (`--archive`, or downloaded from `url` into the datasets
    folder and checked against `checksum`), extracted into a staging sibling of `final`.
    Yields (archive, staging); the caller checks the staging folder and moves it into place.
    A downloaded archive is deleted afterwards unless --keep-archive."""
    archive, downloaded = resolve_archive(args.archive, url, args.datasets_folder / archive_name, **checksum)
    print(f"extracting {archive}\n  -> {final}")
    with staging_folder(final, shown_as=archive) as staging:
        extract_archive(archive, staging)
        yield archive, staging
    remove_downloaded_archive(archive, downloaded, args.keep_archive)


def archive_arguments(argv: list[str] | None, description: str, epilog: str, archive_name: str) -> argparse.Namespace:
    """The parsed options of a prepare script that has only the shared ones (archive_argument_parser)."""
    return archive_argument_parser(description, epilog, archive_name).parse_args(argv)


def archive_argument_parser(description: str, epilog: str, archive_name: str) -> argparse.ArgumentParser:
    """The options every prepare script shares: --datasets-folder, --archive, --keep-archive."""
    parser = OneLineArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep URLs in the epilog unbroken
        description=description,
        epilog=epilog,
    )
    parser.add_argument("--datasets-folder", type=path_argument, default=Path("./datasets"), help="default: ./datasets")
    parser.add_argument("--archive", type=path_argument, help=f"an already downloaded {archive_name} (no download)")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    return parser


def _remove_stale_staging(final: Path) -> None:
    """Delete `.<final name>.staging-*` folders that a killed earlier run left next to `final`."""
    started = process_start_time()
    for stale in final.parent.glob(f".{final.name}{SIBLING_STAGING_MARK}*"):
        try:
            if stale.is_dir() and not stale.is_symlink() and stale.stat().st_mtime < started:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


@contextlib.contextmanager
def staging_folder(final: Path, shown_as: Path | None = None) -> Iterator[Path]:
    """A new empty hidden sibling of `final` to build a dataset folder in; deleted on leaving,
    whatever happened (after `move_into_place` nothing is left to delete).

    A UserError raised inside names files by their staging path, which is gone afterwards; with
    `shown_as` (the archive being unpacked) those paths are shown as `<archive>:<member path>`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    staging = make_temporary_dir(final.parent, f".{final.name}{SIBLING_STAGING_MARK}")
    try:
        yield staging
    except UserError as error:
        if shown_as is None:
            raise
        message = str(error).replace(f"{staging}{os.sep}", f"{shown_as}:").replace(str(staging), str(shown_as))
        raise UserError(message) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove the folder `path`: first renamed to a hidden name, so a half-deleted one never stays visible."""
    aside = make_temporary_dir(path.parent, f".{path.name}{SIBLING_STAGING_MARK}old-")
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


def move_into_place(staging: Path, final: Path, replace_whole: Sequence[str] = ()) -> None:
    """Give the complete folder `staging` its final name: one rename when `final` does not exist yet,
    else its entries are merged into `final` (same names replaced, others kept), except those named
    in `replace_whole`, which replace their namesakes as a whole."""
    staging, final = Path(staging), Path(final)
    if not os.path.lexists(final):
        os.replace(staging, final)
        return
    if not final.is_dir():
        raise UserError(flatten_message(f"{final} exists and is not a folder; move it away and rerun"))
    for name in replace_whole:
        if (staging / name).exists() and (final / name).is_dir() and not (final / name).is_symlink():
            _discard(final / name)
    merge_move(staging, final)


def describe_os_error(error: OSError) -> str:
    """A file-system failure (disk full, permission denied, ...) as a message a user can act on."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    what = error.strerror or str(error) or type(error).__name__
    return f"{what}{': ' + paths if paths else ''}; check the path, its permissions and the free disk space"


def needs_preparing(args: argparse.Namespace, title: str, root: Path, what: str, missing: list[str]) -> bool:
    """False (and says so) when nothing is `missing` from `root`: the prepare script has nothing to do;
    else True, once --datasets-folder is known to be writable (before any download)."""
    if not missing:
        print(f"{title} is already prepared in {root} ({what}); nothing to do")
        return False
    check_writable_dir(args.datasets_folder, "--datasets-folder")
    return True


def prepare_entry_point(main: Callable[..., None]) -> Callable[..., None]:
    """`exit_on_user_error` for the prepare scripts: a UserError or a file-system failure (OSError)
    becomes one `error: ...` line on stderr and exit code 2, with no traceback."""

    @functools.wraps(main)
    def one_line_errors(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            raise UserError(flatten_message(str(error))) from None
        except OSError as error:
            raise UserError(flatten_message(describe_os_error(error))) from None

    return exit_on_user_error(one_line_errors)
