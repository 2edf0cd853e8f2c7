"""Images in, network outputs out, for everything that uses a trained model (predict, calibrate):
finding the image files of folders (`find_images`), decoding and resizing them in threads ahead
of the model (`loaded_batches`), and running a `Backend` over them (`infer_loaded`, `infer_paths`).
An unreadable image is reported (path, reason) and skipped, never fatal."""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.image_io import IMAGE_EXTENSIONS, header_size, image_to_tensor_array, read_rgb
from deploy.backends import Backend

# what predict.py reads: the training formats and a few more that OpenCV decodes
PREDICT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".webp", ".pgm", ".ppm", ".pnm")
# Larger images are skipped unread (predict.py --max-pixels): decoding a 20000 x 20000 PNG takes
# gigabytes and minutes. 100 MP holds the largest industrial line-scan frames one predicts whole.
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class ImageItem:
    path: Path
    name: str  # output name: relative path without extension, unique within the run


def find_images(inputs: Iterable[Path], exclude: Path | None = None) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Image files of `inputs` (files as given; folders searched recursively for image suffixes,
    hidden files and anything under `exclude` left out), in order, with unique output names;
    plus (path, reason) for inputs that do not exist."""
    exclude = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            files = sorted(
                p for p in given.rglob("*")
                if p.is_file() and p.suffix.lower() in PREDICT_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
                and not (exclude is not None and p.resolve().is_relative_to(exclude))
            )
            prefix = given.resolve().name or "root"
            found += [(p, str(Path(prefix) / p.relative_to(given).with_suffix(""))) for p in files]
        elif given.is_file():
            found.append((given, given.stem))
        else:
            missing.append((str(given), "no such file or folder"))
    items, used = [], set()
    for path, name in found:
        unique = name
        if unique in used:
            unique = f"{name}_{path.suffix.lstrip('.').lower()}"
            counter = 2
            while unique in used:
                unique, counter = f"{name}_{counter}", counter + 1
        used.add(unique)
        items.append(ImageItem(path, unique))
    return items, missing


def image_pixels(path: Path) -> int | None:
    """Width x height from the file's header (nothing decoded); None when Pillow cannot tell (a
    format it does not know: OpenCV decides then)."""
    size = header_size(path)
    return None if size is None else size[0] * size[1]


def load_image(path: Path, image_size: tuple[int, int],
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3 at its own size, network input 3 x h x w float32). Grayscale, RGBA
    (alpha dropped) and 16-bit files (scaled to 8 bit) are read as training reads them. An image of
    more than `max_pixels` pixels is a UserError before it is decoded."""
    pixels = image_pixels(path)
    if pixels is not None and pixels > max_pixels:
        raise UserError(f"image {path} has {pixels / 1e6:.1f} megapixels, more than --max-pixels {max_pixels} "
                        f"({max_pixels / 1e6:g} MP): not read; raise --max-pixels to predict it")
    image = read_rgb(path)
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise UserError(f"cannot read image {path}: empty image")
    return image, image_to_tensor_array(image, image_size)


@dataclass
class Loaded:
    item: ImageItem
    image: np.ndarray | None = None
    array: np.ndarray | None = None
    error: str | None = None


def _load(item: ImageItem, image_size: tuple[int, int], max_pixels: int) -> Loaded:
    try:
        image, array = load_image(item.path, image_size, max_pixels)
    except UserError as error:
        return Loaded(item, error=str(error))
    except (cv2.error, OSError, ValueError, MemoryError) as error:
        return Loaded(item, error=f"cannot read image {item.path}: {type(error).__name__}: {str(error).strip()[:120]}")
    return Loaded(item, image, array)


def loaded_batches(items: list[ImageItem], image_size: tuple[int, int], batch: int,
                   pool: ThreadPoolExecutor, prefetch: int = 2,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[Loaded]]:
    """Batches of decoded and resized images, decoded by `pool` ahead of time (in order)."""
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    pending: deque[list[Future]] = deque()
    for chunk in chunks[:prefetch]:
        pending.append([pool.submit(_load, item, image_size, max_pixels) for item in chunk])
    next_chunk = prefetch
    while pending:
        futures = pending.popleft()
        if next_chunk < len(chunks):
            pending.append([pool.submit(_load, item, image_size, max_pixels) for item in chunks[next_chunk]])
            next_chunk += 1
        yield [f.result() for f in futures]


def infer_loaded(backend: Backend, loaded: list[Loaded]) -> tuple[list[Loaded], np.ndarray, np.ndarray]:
    """Run the readable images of one batch: (those images, maps N x h x w, scores N)."""
    good = [entry for entry in loaded if entry.error is None]
    if not good:
        return [], np.zeros((0, *backend.image_size), np.float32), np.zeros(0, np.float32)
    maps, scores = backend(np.stack([entry.array for entry in good]))
    return good, maps, scores


def infer_paths(backend: Backend, paths: list[Path], batch: int, progress: bool, desc: str, workers: int = 4,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[Path], np.ndarray, list[np.ndarray], list[tuple[str, str]]]:
    """(readable paths, scores N, maps at network size, skipped (path, reason)) of `paths`."""
    items = [ImageItem(Path(p), str(i)) for i, p in enumerate(paths)]
    done, scores, maps, skipped = [], [], [], []
    with ThreadPoolExecutor(max(1, workers)) as readers:
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
        for loaded in loaded_batches(items, backend.image_size, batch, readers, max_pixels=max_pixels):
            skipped += [(str(e.item.path), e.error) for e in loaded if e.error is not None]
            good, batch_maps, batch_scores = infer_loaded(backend, loaded)
            done += [e.item.path for e in good]
            maps += list(batch_maps)
            scores += list(batch_scores)
            bar.update(len(loaded))
        bar.close()
    return done, np.asarray(scores, dtype=np.float64), maps, skipped


def images_under(folder: Path) -> list[Path]:
    items, _ = find_images([folder])
    return [item.path for item in items]
