"""Using a trained model on new images (what predict.py does; docs/deployment.md): a checkpoint
(deploy/checkpoints.py) or an exported file (deploy/backends.py) and images or folders in
(deploy/images.py); per-image files (deploy/overlay.py) and `predictions.csv`, `summary.json` (and `skipped.csv`) out.

- Outputs per image: the raw score (sigmoid of the score logit, never normalised over a set),
  the decision at the image threshold, the probability map resized to the image's own size
  (heatmap PNG, optional float32 .npy), the binary mask at the pixel threshold, and an overlay
  with a colour bar and a title that gives the score, the thresholds and whether they are
  calibrated; `predictions.csv` lists them all. Unreadable images are reported and skipped.
- Calibration (deploy/calibrate.py): thresholds at a chosen false-positive rate on normal images,
  or F1-optimal on a labelled folder, stored in model.yaml (or the export sidecar).
"""

import argparse
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from common.device import resolve_device
from common.errors import UserError
from common.fileio import check_writable_dir, write_csv_atomic, write_json_atomic
from deploy.backends import Backend, TorchBackend, open_exported
from deploy.calibrate import (
    UNCALIBRATED_THRESHOLD, Thresholds, calibrate_labelled_folder, calibrate_normal_folder, store_thresholds_in_card,
    store_thresholds_in_sidecar,
)
from deploy.checkpoints import LoadedCheckpoint, load_checkpoint
from deploy.images import DEFAULT_MAX_PIXELS, PREDICT_EXTENSIONS, ImageItem, find_images, infer_loaded, loaded_batches
from deploy.overlay import ImageResult, write_image_outputs
from deploy.runtime_cache import cached_backend, default_backend
from deploy.report import write_prediction_report


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
                   max_pixels: int = DEFAULT_MAX_PIXELS, thumbnails: bool = False) -> RunSummary:
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
        for loaded in loaded_batches(items, backend.image_size, batch, readers, max_pixels=max_pixels):
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


# ---------------------------------------------------------------- the command


def _workers() -> int:
    import os

    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run_prediction(args: argparse.Namespace) -> None:
    """predict.py, once its options are checked (predict.py `check_options`): optional calibration,
    then prediction of every input image."""
    output = None
    if args.inputs:
        output = check_writable_dir(args.output, "--output")
    progress = not args.no_progress
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS

    loaded: LoadedCheckpoint | None = None
    sidecar: dict[str, Any] | None = None
    if args.weights is not None:
        loaded = load_checkpoint(args.weights, args.version, args.version_chosen, args.config, args.set, args.dataset)
        device = resolve_device(args.device)
        if args.eager or args.backend == "torch":
            backend: Backend = TorchBackend(loaded.model, device, eager=args.eager)
        elif args.backend is not None:
            backend = cached_backend(loaded, args.backend, args.device)
        else:  # the fastest exact one installed (deploy/runtime_cache.py)
            backend = default_backend(loaded, device, args.device)
        stored = (loaded.card or {}).get("thresholds")
    else:
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
                                                     args.batch, progress, max_pixels)
    elif args.calibrate_labelled:
        calibration, notes = calibrate_labelled_folder(backend, args.calibrate_labelled, args.fpr, args.batch, progress,
                                                       max_pixels)
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
                             max_pixels=max_pixels, thumbnails=not args.no_report)
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


__all__ = ["PREDICTION_COLUMNS", "prediction_row", "RunSummary", "predict_images", "run_prediction"]
