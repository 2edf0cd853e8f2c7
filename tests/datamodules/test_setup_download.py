"""download_file against a local HTTP server (Range, cuts, checksums, failures) and safe extraction."""

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from common.errors import UserError
from datamodules.setup.download import (
    download_file,
    extract_archive,
    move_into_place,
    prepare_entry_point,
    staging_folder,
)

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, every byte position distinguishable
HALF = len(PAYLOAD) // 2


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.payload at /file, honouring `Range: bytes=N-` unless told not to."""

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state["ranges"].append(self.headers.get("Range"))
        if self.path != "/file":
            self.send_error(404)
            return
        payload = state["payload"]
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not state["ignore_range"]:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state["cuts_left"] > 0:
            # Promise the whole body, send half of it, hang up.
            state["cuts_left"] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    """A 127.0.0.1 server on a free port; yields (base URL, state dict); shut down afterwards."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = {"payload": PAYLOAD, "ranges": [], "ignore_range": False, "cuts_left": 0}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_verifies_sha256_and_md5(server, tmp_path):
    url, state = server
    target = tmp_path / "data.bin"
    result = download_file(
        f"{url}/file", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), md5=hashlib.md5(PAYLOAD).hexdigest(),
        timeout_s=10, chunk_size=4096,
    )
    assert result == target
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()
    assert state["ranges"] == [None]


def test_download_resumes_after_a_cut_connection(server, tmp_path):
    url, state = server
    state["cuts_left"] = 1
    target = tmp_path / "data.bin"
    download_file(f"{url}/file", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), timeout_s=10, chunk_size=4096)
    assert target.read_bytes() == PAYLOAD
    # The second request asked only for what the first one did not deliver.
    assert state["ranges"] == [None, f"bytes={HALF}-"]


def test_download_resumes_an_existing_part_file(server, tmp_path):
    url, state = server
    target = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:HALF])
    download_file(f"{url}/file", target, md5=hashlib.md5(PAYLOAD).hexdigest(), timeout_s=10)
    assert target.read_bytes() == PAYLOAD
    assert state["ranges"] == [f"bytes={HALF}-"]


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    url, state = server
    state["ignore_range"] = True
    target = tmp_path / "data.bin"
    # Wrong bytes in the .part: appending the 200 body to them would give a corrupt file.
    (tmp_path / "data.bin.part").write_bytes(b"\xff" * HALF)
    download_file(f"{url}/file", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), timeout_s=10)
    assert target.read_bytes() == PAYLOAD
    assert state["ranges"] == [f"bytes={HALF}-"]


def test_download_accepts_a_part_that_is_already_complete(server, tmp_path):
    url, state = server
    target = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download_file(f"{url}/file", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), timeout_s=10)
    assert target.read_bytes() == PAYLOAD
    assert state["ranges"] == [f"bytes={len(PAYLOAD)}-"]


def test_checksum_mismatch_deletes_the_file(server, tmp_path):
    url, _ = server
    target = tmp_path / "data.bin"
    with pytest.raises(UserError, match="corrupt") as error:
        download_file(f"{url}/file", target, sha256="0" * 64, timeout_s=10)
    assert "deleted" in str(error.value)
    assert "\n" not in str(error.value)
    assert not target.exists()
    assert not (tmp_path / "data.bin.part").exists()


def test_existing_corrupt_destination_is_reported_and_deleted(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"not the payload")
    with pytest.raises(UserError, match="corrupt"):
        download_file("http://127.0.0.1:9/never-contacted", target, md5=hashlib.md5(PAYLOAD).hexdigest())
    assert not target.exists()


def test_http_error_is_a_user_error(server, tmp_path):
    url, _ = server
    with pytest.raises(UserError, match="HTTP 404") as error:
        download_file(f"{url}/missing", tmp_path / "data.bin", timeout_s=10)
    assert "--archive" in str(error.value)
    assert not (tmp_path / "data.bin").exists()


def test_server_down_is_a_user_error(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file"
    with pytest.raises(UserError) as error:
        download_file(url, tmp_path / "data.bin", timeout_s=5)
    message = str(error.value)
    assert url in message and "--archive" in message and "\n" not in message
    assert not (tmp_path / "data.bin").exists()


def _tar_with(path: Path, members: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zip_file:
        for name, data in members.items():
            zip_file.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tar.xz", "w:xz")])
def test_extract_tar_kinds(tmp_path, suffix, mode):
    archive = _tar_with(tmp_path / f"a{suffix}", {"top/x.txt": b"x", "top/sub/y.txt": b"y"}, mode)
    target = tmp_path / "out"
    (target / "top").mkdir(parents=True)
    (target / "top" / "kept.txt").write_text("kept")  # existing content is merged with, not replaced
    extract_archive(archive, target)
    assert (target / "top" / "x.txt").read_bytes() == b"x"
    assert (target / "top" / "sub" / "y.txt").read_bytes() == b"y"
    assert (target / "top" / "kept.txt").read_text() == "kept"
    assert sorted(p.name for p in target.iterdir()) == ["top"]  # no staging folder left


def test_extract_zip(tmp_path):
    archive = _zip_with(tmp_path / "a.zip", {"train/1.png": b"1", "test/2.png": b"2"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "1.png").read_bytes() == b"1"
    assert (tmp_path / "out" / "test" / "2.png").read_bytes() == b"2"


@pytest.mark.parametrize("bad_name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt"])
def test_extract_tar_refuses_escaping_members(tmp_path, bad_name):
    archive = _tar_with(tmp_path / "bad.tar", {"good.txt": b"fine", bad_name: b"evil"}, "w")
    target = tmp_path / "nest" / "out"
    with pytest.raises(UserError, match="unsafe member"):
        extract_archive(archive, target)
    assert not (tmp_path / "nest" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert list(target.iterdir()) == []  # not even the good member before it stays


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/evil_abs.txt", "a\\..\\..\\evil.txt"])
def test_extract_zip_refuses_escaping_members(tmp_path, bad_name):
    archive = _zip_with(tmp_path / "bad.zip", {"good.txt": b"fine", bad_name: b"evil"})
    target = tmp_path / "nest" / "out"
    with pytest.raises(UserError, match="unsafe member"):
        extract_archive(archive, target)
    assert not (tmp_path / "nest" / "evil.txt").exists()
    assert list(target.iterdir()) == []


def test_extract_refuses_unknown_and_damaged_archives(tmp_path):
    with pytest.raises(UserError, match="unknown archive type"):
        extract_archive(_zip_with(tmp_path / "a.rar", {"x": b"x"}), tmp_path / "out")
    damaged = tmp_path / "damaged.tar.xz"
    damaged.write_bytes(b"this is not xz data")
    with pytest.raises(UserError, match="damaged"):
        extract_archive(damaged, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_error_is_one_line_when_the_path_has_a_line_break(tmp_path):
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    damaged = folder / "damaged.tar.gz"
    damaged.write_bytes(b"\x1f\x8b this is not gzip data")
    with pytest.raises(UserError, match="cannot extract") as error:
        extract_archive(damaged, tmp_path / "out")
    assert "\n" not in str(error.value) and "two lines" in str(error.value)


def test_staging_folder_is_a_hidden_sibling_removed_on_failure(tmp_path):
    final = tmp_path / "mvtec"
    with pytest.raises(RuntimeError):
        with staging_folder(final) as staging:
            assert staging.parent == tmp_path and staging.name.startswith(".mvtec.staging-")
            (staging / "bottle").mkdir()
            raise RuntimeError("archive broke")
    assert list(tmp_path.iterdir()) == []


def test_staging_folder_shows_paths_inside_it_as_archive_members(tmp_path):
    archive = tmp_path / "VisA.tar"
    with pytest.raises(UserError) as error:
        with staging_folder(tmp_path / "visa", shown_as=archive) as staging:
            raise UserError(f"{staging / 'split_csv' / '1cls.csv'} line 3: bad row; in {staging}")
    assert str(error.value) == f"{archive}:split_csv/1cls.csv line 3: bad row; in {archive}"


def test_staging_folder_removes_only_stale_stagings_of_its_own_name(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / ".mvtec.staging-abc"
    other_name = tmp_path / ".visa.staging-abc"
    for folder in (stale, other_name):
        (folder / "partial").mkdir(parents=True)
        os.utime(folder, (old, old))
    recent = tmp_path / ".mvtec.staging-recent"  # e.g. a run that started after this process
    recent.mkdir()
    with staging_folder(tmp_path / "mvtec"):
        pass
    assert not stale.exists() and other_name.is_dir() and recent.is_dir()


def test_move_into_place_renames_when_the_final_folder_is_new(tmp_path):
    staging = tmp_path / ".data.staging-x"
    (staging / "a").mkdir(parents=True)
    (staging / "a" / "f.txt").write_text("new")
    inode = os.stat(staging).st_ino
    move_into_place(staging, tmp_path / "data")
    assert os.stat(tmp_path / "data").st_ino == inode  # one rename: never visible half-moved
    assert (tmp_path / "data" / "a" / "f.txt").read_text() == "new"
    assert not staging.exists()


def test_move_into_place_merges_into_an_existing_folder_and_replaces_whole_entries(tmp_path):
    final = tmp_path / "visa"
    (final / "candle").mkdir(parents=True)
    (final / "candle" / "kept.txt").write_text("kept")
    (final / "visa_pytorch" / "stale_category").mkdir(parents=True)
    staging = tmp_path / ".visa.staging-x"
    (staging / "candle").mkdir(parents=True)
    (staging / "candle" / "new.txt").write_text("new")
    (staging / "visa_pytorch" / "candle").mkdir(parents=True)
    move_into_place(staging, final, replace_whole=("visa_pytorch",))
    assert (final / "candle" / "kept.txt").read_text() == "kept"
    assert (final / "candle" / "new.txt").read_text() == "new"
    assert sorted(p.name for p in (final / "visa_pytorch").iterdir()) == ["candle"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["visa"]


def test_prepare_entry_point_turns_file_system_errors_into_one_line(capsys):
    @prepare_entry_point
    def main():
        raise PermissionError(13, "Permission denied", "/data/sets/mvtec")

    @prepare_entry_point
    def main_with_multiline_user_error():
        raise UserError("while parsing\n  in 'x', line 2\n    ^ here")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    hint = "check the path, its permissions and the free disk space"
    assert err == f"error: Permission denied: /data/sets/mvtec; {hint}\n"
    with pytest.raises(SystemExit):
        main_with_multiline_user_error()
    assert capsys.readouterr().err == "error: while parsing in 'x', line 2 ^ here\n"
