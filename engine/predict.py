"""Using a trained model on new images (what predict.py does; docs/deployment.md): a checkpoint
(engine/checkpoints.py) or an exported file (engine/backends.py) and images or folders in;
per-image files (engine/overlay.py) and `predictions.csv`, `summary.json` (and `skipped.csv`) out.

- Outputs per image: the raw score (sigmoid of the score logit, never normalised over a set),
  the decision at the image threshold, the probability map resized to the image's own size
  (heatmap PNG, optional float32 .npy), the binary mask at the pixel threshold, and an overlay
  with a colour bar and a title that gives the score, the thresholds and whether they are
  calibrated; `predictions.csv` lists them all. Unreadable images are reported and skipped.
- Calibration (engine/calibrate.py): thresholds at a chosen false-positive rate on normal images,
  or F1-optimal on a labelled folder, stored in model.yaml (or the export sidecar).
"""

import argparse
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from common.device import resolve_device
from common.errors import UserError
from common.fileio import check_writable_dir, write_csv_atomic, write_json_atomic
from common.image_io import image_to_tensor_array, read_rgb
from deploy.report import write_prediction_report
from engine.backends import Backend, TorchBackend, open_exported
from engine.calibrate import (
    PREDICT_EXTENSIONS, UNCALIBRATED_THRESHOLD, Thresholds, calibrate_labelled_folder, calibrate_normal_folder,
    store_thresholds_in_card, store_thresholds_in_sidecar,
)
from engine.checkpoints import LoadedCheckpoint, load_checkpoint
from engine.overlay import ImageResult, write_image_outputs


# ---------------------------------------------------------------- images


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


def load_image(path: Path, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3 at its own size, network input 3 x h x w float32). Grayscale, RGBA
    (alpha dropped) and 16-bit files (scaled to 8 bit) are read as training reads them."""
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


def _load(item: ImageItem, image_size: tuple[int, int]) -> Loaded:
    try:
        image, array = load_image(item.path, image_size)
    except UserError as error:
        return Loaded(item, error=str(error))
    except (cv2.error, OSError, ValueError, MemoryError) as error:
        return Loaded(item, error=f"cannot read image {item.path}: {type(error).__name__}: {str(error).strip()[:120]}")
    return Loaded(item, image, array)


def loaded_batches(items: list[ImageItem], image_size: tuple[int, int], batch: int,
                   pool: ThreadPoolExecutor, prefetch: int = 2) -> Iterator[list[Loaded]]:
    """Batches of decoded and resized images, decoded by `pool` ahead of time (in order)."""
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    pending: deque[list[Future]] = deque()
    for chunk in chunks[:prefetch]:
        pending.append([pool.submit(_load, item, image_size) for item in chunk])
    next_chunk = prefetch
    while pending:
        futures = pending.popleft()
        if next_chunk < len(chunks):
            pending.append([pool.submit(_load, item, image_size) for item in chunks[next_chunk]])
            next_chunk += 1
        yield [f.result() for f in futures]


def infer_loaded(backend: Backend, loaded: list[Loaded]) -> tuple[list[Loaded], np.ndarray, np.ndarray]:
    """Run the readable images of one batch: (those images, maps N x h x w, scores N)."""
    good = [entry for entry in loaded if entry.error is None]
    if not good:
        return [], np.zeros((0, *backend.image_size), np.float32), np.zeros(0, np.float32)
    maps, scores = backend(np.stack([entry.array for entry in good]))
    return good, maps, scores


# ---------------------------------------------------------------- outputs


PREDICTION_COLUMNS = ("path", "score", "decision", "defect_area_px", "defect_area_percent", "max_pixel",
                      "image_threshold", "pixel_threshold", "calibration", "width", "height", "output_name")


def prediction_row(result: ImageResult, thresholds: Thresholds) -> list[Any]:
    return [result.path, f"{result.score:.6f}", "defect" if result.defect else "normal", result.defect_pixels,
            f"{100 * result.area_fraction:.4f}", f"{result.max_pixel:.6f}", f"{thresholds.image:.6f}",
            f"{thresholds.pixel:.6f}", thresholds.label, result.width, result.height, result.name]


# ---------------------------------------------------------------- the prediction run


@dataclass
class RunSummary:
    results: list[ImageResult]
    skipped: list[tuple[str, str]]
    seconds: float


def predict_images(backend: Backend, items: list[ImageItem], thresholds: Thresholds, output: Path,
                   batch: int = 8, save_maps: bool = False, progress: bool = True, workers: int = 4,
                   overlays: bool = True, report: Callable[[str], None] | None = None,
                   thumbnails: bool = False) -> RunSummary:
    """Predict every image of `items` and write its files under `output`; unreadable images are
    reported (through `report`) and skipped. `predictions.csv` (and `skipped.csv`) are written last.
    `thumbnails`: small copies of the overlays for the report page."""
    report = report or (lambda message: tqdm.write(message, file=sys.stderr))
    start = time.perf_counter()
    results: list[ImageResult] = []
    skipped: list[tuple[str, str]] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max(1, workers)) as readers, ThreadPoolExecutor(max(1, workers)) as writers:
        bar = tqdm(total=len(items), desc="predicting", unit="img", disable=not progress)
        for loaded in loaded_batches(items, backend.image_size, batch, readers):
            for entry in loaded:
                if entry.error is not None:
                    skipped.append((str(entry.item.path), entry.error))
                    report(f"skipped: {entry.error}")
            good, maps, scores = infer_loaded(backend, loaded)
            for entry, probabilities, score in zip(good, maps, scores):
                pending.append(writers.submit(write_image_outputs, output, entry, probabilities, float(score),
                                              thresholds, save_maps, overlays, thumbnails))
            while len(pending) > 2 * max(batch, workers):
                results.append(_written(pending.popleft()))
            bar.update(len(loaded))
        while pending:
            results.append(_written(pending.popleft()))
        bar.close()
    write_csv_atomic(output / "predictions.csv", PREDICTION_COLUMNS, [prediction_row(r, thresholds) for r in results])
    if skipped:
        write_csv_atomic(output / "skipped.csv", ("path", "reason"), skipped)
    return RunSummary(results, skipped, time.perf_counter() - start)


def _written(future: Future) -> ImageResult:
    try:
        return future.result()
    except OSError as error:
        raise UserError(f"cannot write the outputs ({error.strerror or error}); check the --output folder "
                        "and the free disk space") from None


def infer_paths(backend: Backend, paths: list[Path], batch: int, progress: bool, desc: str,
                workers: int = 4) -> tuple[list[Path], np.ndarray, list[np.ndarray], list[tuple[str, str]]]:
    """(readable paths, scores N, maps at network size, skipped (path, reason)) of `paths`."""
    items = [ImageItem(Path(p), str(i)) for i, p in enumerate(paths)]
    done, scores, maps, skipped = [], [], [], []
    with ThreadPoolExecutor(max(1, workers)) as readers:
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
        for loaded in loaded_batches(items, backend.image_size, batch, readers):
            skipped += [(str(e.item.path), e.error) for e in loaded if e.error is not None]
            good, batch_maps, batch_scores = infer_loaded(backend, loaded)
            done += [e.item.path for e in good]
            maps += list(batch_maps)
            scores += list(batch_scores)
            bar.update(len(loaded))
        bar.close()
    return done, np.asarray(scores, dtype=np.float64), maps, skipped


def _images_under(folder: Path) -> list[Path]:
    items, _ = find_images([folder])
    return [item.path for item in items]


# ---------------------------------------------------------------- the command


def _workers() -> int:
    import os

    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run_prediction(args: argparse.Namespace) -> None:
    """predict.py: optional calibration, then prediction of every input image."""
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    for name in ("fpr", "pixel_fpr"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
    if not args.inputs and not args.calibrate and not args.calibrate_labelled:
        raise UserError("nothing to do: pass images or folders to predict, or --calibrate / --calibrate-labelled")
    output = None
    if args.inputs:
        output = check_writable_dir(args.output, "--output")
    progress = not args.no_progress

    loaded: LoadedCheckpoint | None = None
    sidecar: dict[str, Any] | None = None
    if args.weights is not None:
        if args.backend not in (None, "torch"):
            raise UserError(f"--backend {args.backend} runs an exported file: pass --model FILE (see export.py)")
        loaded = load_checkpoint(args.weights, args.version, args.version_chosen, args.config, args.set, args.dataset)
        backend: Backend = TorchBackend(loaded.model, resolve_device(args.device), eager=args.eager)
        stored = (loaded.card or {}).get("thresholds")
    else:
        if args.eager:
            raise UserError("--eager applies to --weights (the PyTorch checkpoint), not to an exported --model")
        if args.set or args.config or args.version_chosen or args.dataset:
            raise UserError("--set, --config, --version and --dataset apply to --weights; an exported model "
                            "carries its settings (re-export to change them)")
        backend, sidecar = open_exported(args.model, args.backend, args.device)
        stored = sidecar.get("thresholds") if sidecar.get("thresholds", {}).get("calibrated") else None
        print(f"Model: {args.model} ({sidecar.get('format')}, {sidecar.get('precision')}); "
              f"input {backend.image_size[0]}x{backend.image_size[1]}")
    print(f"Backend: {backend.name}")
    thresholds = Thresholds.from_mapping(stored)

    calibration = None
    if args.calibrate:
        calibration, notes = calibrate_normal_folder(backend, args.calibrate, args.fpr,
                                                     args.pixel_fpr if args.pixel_fpr is not None else args.fpr,
                                                     args.batch, progress)
    elif args.calibrate_labelled:
        calibration, notes = calibrate_labelled_folder(backend, args.calibrate_labelled, args.fpr, args.batch, progress)
    if calibration is not None:
        for note in notes:
            print(f"note: {note}")
        if loaded is not None:
            where = store_thresholds_in_card(loaded, calibration)
        else:
            where = store_thresholds_in_sidecar(args.model, sidecar, calibration)
        thresholds = Thresholds.from_mapping(calibration)
        print(f"Thresholds: image {thresholds.image:.6f}, pixel {thresholds.pixel:.6f} ({thresholds.label}); "
              f"stored in {where}")
    elif not thresholds.calibrated:
        print(f"Thresholds: uncalibrated (image {UNCALIBRATED_THRESHOLD}, pixel {UNCALIBRATED_THRESHOLD}); "
              "calibrate with --calibrate NORMAL_DIR or --calibrate-labelled DIR")
    else:
        print(f"Thresholds: image {thresholds.image:.6f}, pixel {thresholds.pixel:.6f} ({thresholds.label})")

    if not args.inputs:
        return
    items, missing = find_images(args.inputs, exclude=output)
    for path, reason in missing:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    if not items:
        raise UserError(f"no images found in {' '.join(map(str, args.inputs))} "
                        f"(folders are searched recursively for {', '.join(PREDICT_EXTENSIONS)})")
    summary = predict_images(backend, items, thresholds, output, args.batch, args.save_maps, progress, _workers(),
                             thumbnails=not args.no_report)
    summary.skipped[:0] = missing
    if missing:
        write_csv_atomic(output / "skipped.csv", ("path", "reason"), summary.skipped)
    defects = sum(r.defect for r in summary.results)
    write_json_atomic(output / "summary.json", {
        "model": str(args.weights or args.model), "backend": backend.name,
        "thresholds": {"image": thresholds.image, "pixel": thresholds.pixel, "calibrated": thresholds.calibrated,
                       "label": thresholds.label, **({"details": thresholds.details} if thresholds.details else {})},
        "decision_rule": "defect when score > image threshold; mask pixel when map value > pixel threshold",
        "images": len(summary.results), "defects": defects, "skipped": len(summary.skipped),
        "seconds": round(summary.seconds, 3),
    })
    report_page = None if args.no_report else write_prediction_report(output)
    rate = len(summary.results) / summary.seconds if summary.seconds > 0 else float("nan")
    print(f"Predicted {len(summary.results)} image(s): {defects} defect, {len(summary.results) - defects} normal "
          f"({thresholds.label}); {len(summary.skipped)} skipped; {rate:.1f} images/s")
    print(f"Results: {output / 'predictions.csv'} (overlays/, heatmaps/, masks/{', maps/' if args.save_maps else ''})"
          + (f"; report: {report_page}" if report_page else ""))
    if not summary.results:
        raise UserError("no image could be read; see the skipped list above")


__all__ = [
    "ImageItem", "find_images", "load_image", "Loaded", "loaded_batches", "infer_loaded", "PREDICTION_COLUMNS",
    "prediction_row", "RunSummary", "predict_images", "infer_paths", "run_prediction",
]
