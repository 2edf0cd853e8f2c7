"""The embedded demo: a small synthetic dataset in MVTec layout, generated deterministically.

Two textured surfaces ("fabric": a woven pattern, "metal": brushed streaks) with three defect
kinds each (scratch, spot, stain) and their pixel masks. Made once under `<datasets>/demo/`:
built in a hidden sibling folder, then renamed into place in one step with a marker file that
records the generator version, so concurrent processes never see a partial copy and an outdated
one is rebuilt.
"""

import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from common.fileio import make_temporary_dir, write_text_atomic

DEMO_CATEGORIES = ("fabric", "metal")
DEFECT_TYPES = ("scratch", "spot", "stain")
DEMO_IMAGE_SIZE = 128
NUM_TRAIN_GOOD = 32
NUM_TEST_GOOD = 16
NUM_TEST_PER_DEFECT = 10
GENERATOR_VERSION = "demo-v2"
MARKER_NAME = ".complete"
BUILD_PREFIX = ".demo-build-"  # hidden sibling folders where a copy is generated before its rename
STALE_BUILD_AGE_S = 60.0  # a build folder this old whose builder is gone is removed


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(7.5, 8.5)
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * x / period + phase_x)
    weft = np.sin(2 * np.pi * y / period + phase_y)
    texture = 0.5 + 0.22 * warp * weft + 0.06 * rng.standard_normal((size, size))
    tint = np.array([0.75, 0.62, 0.45]) * rng.uniform(0.95, 1.05)
    return texture[..., None] * tint


def _metal(rng: np.random.Generator, size: int) -> np.ndarray:
    streaks = rng.standard_normal((1, size)).repeat(size, axis=0)
    streaks = cv2.GaussianBlur(streaks.astype(np.float32), (0, 0), sigmaX=1.5, sigmaY=8)
    texture = 0.55 + 0.08 * streaks + 0.04 * rng.standard_normal((size, size))
    texture = texture + 0.05 * np.linspace(-1, 1, size)[None, :] * rng.uniform(-1, 1)
    return texture[..., None] * np.array([0.78, 0.80, 0.84])


SURFACES = {"fabric": _fabric, "metal": _metal}


def _draw_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of `kind` on an H x W x 3 float image in [0, 1]; return (image, uint8 0/255 mask)."""
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=np.uint8)
    margin = size // 8
    cx, cy = rng.integers(margin, size - margin, 2)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.45) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        start = (int(cx - dx), int(cy - dy))
        end = (int(cx + dx), int(cy + dy))
        cv2.line(mask, start, end, 255, thickness=int(rng.integers(2, 4)))
        color = np.array([0.95, 0.95, 0.95]) if rng.random() < 0.5 else np.array([0.1, 0.1, 0.1])
    elif kind == "spot":
        axes = (int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        color = np.array([0.15, 0.12, 0.1])
    else:  # stain: an irregular coloured patch with soft edges
        for _ in range(4):
            offset = rng.integers(-6, 7, 2)
            radius = int(rng.integers(5, 10))
            cv2.circle(mask, (int(cx + offset[0]), int(cy + offset[1])), radius, 255, -1)
        color = np.array([0.2, 0.55, 0.25]) if rng.random() < 0.5 else np.array([0.6, 0.2, 0.55])
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 1.0)[..., None] * 0.85
    painted = image * (1 - alpha) + color * alpha
    return painted, mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _generate_category(category_root: Path, category: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    surface = SURFACES[category]
    size = DEMO_IMAGE_SIZE
    for index in range(NUM_TRAIN_GOOD):
        _write_png(category_root / "train" / "good" / f"{index:03d}.png", _to_uint8(surface(rng, size)))
    for index in range(NUM_TEST_GOOD):
        _write_png(category_root / "test" / "good" / f"{index:03d}.png", _to_uint8(surface(rng, size)))
    for kind in DEFECT_TYPES:
        for index in range(NUM_TEST_PER_DEFECT):
            image, mask = _draw_defect(rng, surface(rng, size), kind)
            _write_png(category_root / "test" / kind / f"{index:03d}.png", _to_uint8(image))
            _write_png(category_root / "ground_truth" / kind / f"{index:03d}_mask.png", mask)


def _is_complete(root: Path) -> bool:
    marker = root / MARKER_NAME
    try:
        return marker.read_text(encoding="utf-8").strip() == GENERATOR_VERSION
    except OSError:
        return False


def _remove_stale_builds(folder: Path, min_age_s: float = STALE_BUILD_AGE_S) -> None:
    """Delete `.demo-build-*` folders that a killed generation left behind: only those older than
    `min_age_s` whose builder is gone (nobody holds the lock its builder keeps on it)."""
    for candidate in folder.glob(BUILD_PREFIX + "*"):
        try:
            if time.time() - candidate.stat().st_mtime < min_age_s:
                continue
            handle = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            continue  # its builder is still at work
        try:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(handle)


def _publish(build: Path, root: Path) -> bool:
    """Rename the finished `build` onto `root` in one step; False when another process got there
    first with a complete copy. An incomplete or outdated `root` is moved aside and removed."""
    for _ in range(10):
        try:
            os.rename(build, root)  # atomic; fails when root exists and is not empty
            return True
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        if _is_complete(root):
            return False
        # an outdated copy, or a half-written one from an older version of this code
        aside = make_temporary_dir(root.parent, BUILD_PREFIX + "old-")
        try:
            os.rename(root, aside / "demo")
        except FileNotFoundError:
            pass  # someone else moved it already
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not put the demo dataset in place at {root}")


def ensure_demo_dataset(datasets_folder: Path, seed: int = 0) -> Path:
    """Create `<datasets_folder>/demo/<category>/...` unless a complete copy exists; return the demo root.

    Safe when several processes (array tasks) ask at once: each builds in its own hidden sibling
    folder and renames it into place in one step, marker included, so `demo/` is either absent or
    complete; the process that loses the race discards its copy and uses the winner's. A process
    killed mid-way leaves only its hidden folder, removed by a later call once its builder is gone.
    """
    folder = Path(datasets_folder)
    root = folder / "demo"
    if _is_complete(root):
        return root
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(folder)
    build = make_temporary_dir(folder, BUILD_PREFIX)
    lock = os.open(build, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tells _remove_stale_builds that this build is alive
        for offset, category in enumerate(DEMO_CATEGORIES):
            _generate_category(build / category, category, seed + offset)
        write_text_atomic(build / MARKER_NAME, GENERATOR_VERSION + "\n")
        if _publish(build, root):
            print(f"Generated the synthetic demo dataset at {root} ({', '.join(DEMO_CATEGORIES)})")
    finally:
        os.close(lock)
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)  # the loser's copy, or what a failure left
    return root
