"""The demo dataset is generated safely under concurrency: two processes at once both end with the
same complete copy, a process killed mid-way never leaves a folder that looks complete, and what it
left is cleaned up once its builder is gone."""

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from datamodules import demo
from datamodules.demo import BUILD_PREFIX, GENERATOR_VERSION, MARKER_NAME, ensure_demo_dataset

REPO = Path(__file__).resolve().parents[2]

# a generator slowed down per image, so that two processes overlap and a kill lands mid-way
SLOW_GENERATOR = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from datamodules import demo
    write = demo._write_png
    def slow_write(path, array):
        time.sleep({delay})
        write(path, array)
    demo._write_png = slow_write
    go = Path({go!r})
    while not go.exists():  # start together
        time.sleep(0.01)
    print(demo.ensure_demo_dataset(Path({folder!r})), flush=True)
""")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    root = ensure_demo_dataset(tmp_path_factory.mktemp("reference"))
    return tree_digest(root)


def start_slow(tmp_path: Path, folder: Path, go: Path, delay: float) -> subprocess.Popen:
    script = SLOW_GENERATOR.format(repo=str(REPO), delay=delay, go=str(go), folder=str(folder))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def builds(folder: Path) -> list[Path]:
    return sorted(folder.glob(BUILD_PREFIX + "*"))


def test_two_processes_at_once_share_one_complete_copy(tmp_path, reference):
    folder, go = tmp_path / "datasets", tmp_path / "go"
    workers = [start_slow(tmp_path, folder, go, delay=0.002) for _ in range(2)]
    go.touch()
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert out.strip().endswith(str(folder / "demo")), out
    # both built (neither found a complete copy at the start); exactly one published its copy
    assert sum("Generated the synthetic demo dataset" in out for out, _ in outputs) == 1, outputs
    assert tree_digest(folder / "demo") == reference
    assert builds(folder) == [], "the loser's copy was not discarded"


def test_a_process_killed_mid_way_leaves_nothing_that_looks_complete(tmp_path, reference):
    folder, go = tmp_path / "datasets", tmp_path / "go"
    go.touch()
    worker = start_slow(tmp_path, folder, go, delay=0.05)
    deadline = time.monotonic() + 120
    while not any(folder.rglob("*.png")):
        assert worker.poll() is None and time.monotonic() < deadline, "the generation never started writing"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert not (folder / "demo").exists(), "a half-written copy was put in place"
    [left] = builds(folder)
    assert not (left / MARKER_NAME).exists()

    # a normal run afterwards builds a complete copy, identical to an uninterrupted one
    root = ensure_demo_dataset(folder)
    assert tree_digest(root) == reference
    # the killed build is removed once old enough (its builder holds no lock any more)
    demo._remove_stale_builds(folder, min_age_s=0)
    assert builds(folder) == []


def test_a_live_build_is_not_removed(tmp_path):
    build = tmp_path / (BUILD_PREFIX + "live")
    build.mkdir()
    handle = os.open(build, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        demo._remove_stale_builds(tmp_path, min_age_s=0)
        assert build.is_dir()
    finally:
        os.close(handle)
    demo._remove_stale_builds(tmp_path, min_age_s=3600)  # too young
    assert build.is_dir()
    demo._remove_stale_builds(tmp_path, min_age_s=0)
    assert not build.exists()


@pytest.mark.parametrize("marker", [None, "demo-v0\n"])
def test_a_partial_or_outdated_copy_is_replaced(tmp_path, reference, marker):
    root = tmp_path / "demo"
    (root / "fabric" / "train" / "good").mkdir(parents=True)
    (root / "fabric" / "train" / "good" / "000.png").write_bytes(b"not an image")
    if marker is not None:
        (root / MARKER_NAME).write_text(marker)
    assert ensure_demo_dataset(tmp_path) == root
    assert tree_digest(root) == reference
    assert (root / MARKER_NAME).read_text().strip() == GENERATOR_VERSION
    assert builds(tmp_path) == []


def test_a_complete_copy_is_used_as_it_is(tmp_path, capsys):
    root = ensure_demo_dataset(tmp_path)
    capsys.readouterr()
    stamp = (root / MARKER_NAME).stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path) == root
    assert (root / MARKER_NAME).stat().st_mtime_ns == stamp
    assert "Generated" not in capsys.readouterr().out
