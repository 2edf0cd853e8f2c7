"""End-to-end prediction speed: images/s of what predict.py does on a folder (decode, resize,
infer, write heatmap, mask and overlay PNGs and the CSV) for the eager model, the fast path and
the exported ONNX model through onnxruntime, on the CPU in one run (and on CUDA when there is a
GPU), printed as ratios to the eager model.

    python perf/bench_predict.py [--weights W] [--images DIR] [--count 32] [--size 256 256]
                                 [--backbone wide_resnet50_2] [--batch 8] [--repeats 2]

Without --weights a random-weight model of --backbone at --size is used (speed does not depend
on the weights); without --images, --count synthetic images of mixed sizes are generated.
Each path runs once untimed (warm-up), then --repeats times; the best time is reported.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.config import default_config  # noqa: E402
from common.seeding import seed_everything  # noqa: E402
from deploy.backends import OnnxRuntimeBackend, TorchBackend, sidecar_path  # noqa: E402
from deploy.calibrate import Thresholds  # noqa: E402
from deploy.checkpoints import LoadedCheckpoint, load_checkpoint  # noqa: E402
from deploy.export import export_model  # noqa: E402
from deploy.images import find_images  # noqa: E402
from deploy.predict import predict_images  # noqa: E402
from model.supersimplenet import SuperSimpleNet  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="a weights.pt (default: random weights)")
    parser.add_argument("--images", type=Path, help="a folder of images (default: synthetic ones)")
    parser.add_argument("--count", type=int, default=32, help="synthetic images (default 32)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                        help="network input of the random model (default 256 256)")
    parser.add_argument("--backbone", default="wide_resnet50_2", help="backbone of the random model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="decode / write threads")
    parser.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    return parser.parse_args(argv)


def synthetic_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    sizes = [(256, 256), (480, 640), (900, 300), (200, 333)]
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        cv2.imwrite(str(folder / f"{index:04d}.png"), (rng.random((height, width, 3)) * 255).astype(np.uint8))


def random_checkpoint(args, folder: Path) -> LoadedCheckpoint:
    config = default_config("mvtec", "jims")
    config.update(backbone=args.backbone, pretrained=False, image_size=list(args.size))
    seed_everything(0)
    model = SuperSimpleNet.from_config(tuple(args.size), config).eval()
    return LoadedCheckpoint(model, config, None, model.save_model(folder), "mvtec")


def time_backend(backend, items, batch, workers, repeats, scratch: Path) -> float:
    """Best images/s over `repeats` timed runs after one warm-up run."""
    best = float("inf")
    for run in range(repeats + 1):
        output = scratch / f"run{run}"
        start = time.perf_counter()
        predict_images(backend, items, Thresholds(), output, batch, progress=False, workers=workers,
                       report=lambda message: None)
        elapsed = time.perf_counter() - start
        if run:
            best = min(best, elapsed)
    return len(items) / best


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if args.images is None:
            args.images = scratch / "images"
            args.images.mkdir()
            synthetic_images(args.images, args.count)
        items, _ = find_images([args.images])
        if args.weights is not None:
            loaded = load_checkpoint(args.weights, "jims", verbose=True)
        else:
            loaded = random_checkpoint(args, scratch)
        height, width = loaded.image_size
        print(f"{len(items)} images from {args.images}; model {loaded.model.backbone_name} at {height}x{width}; "
              f"batch {args.batch}; torch threads {torch.get_num_threads()}; {args.workers} decode/write threads")
        paths: list[tuple[str, object]] = [
            ("eager cpu", lambda: TorchBackend(loaded.model, torch.device("cpu"), eager=True)),
            ("fast cpu", lambda: TorchBackend(loaded.model, torch.device("cpu"), eager=False)),
        ]
        if not args.no_onnx:
            try:
                __import__("onnxruntime")  # ImportError when the optional package is absent

                onnx_file = scratch / "model.onnx"
                export_model(loaded, "onnx", "fp32", dynamic_batch=True, output=onnx_file, check=False)
                paths.append(("onnxruntime cpu", lambda: OnnxRuntimeBackend(onnx_file, "cpu", _sidecar(onnx_file))))
            except ImportError:
                print("onnxruntime not installed: skipped (pip install -r requirements-export.txt)")
        if torch.cuda.is_available():
            paths += [("eager cuda", lambda: TorchBackend(loaded.model, torch.device("cuda"), eager=True)),
                      ("fast cuda", lambda: TorchBackend(loaded.model, torch.device("cuda"), eager=False))]
        rates = {}
        for name, make in paths:
            backend = make()
            rates[name] = time_backend(backend, items, args.batch, args.workers, args.repeats, scratch / name.replace(" ", "_"))
            if name == "eager cuda":
                loaded.model.cpu()
            print(f"  {name:<16} {rates[name]:8.2f} images/s")
        reference = rates["eager cpu"]
        print("\n| path | images/s | vs eager cpu |\n|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.2f} | {rate / reference:.2f}x |")


def _sidecar(path: Path) -> dict:
    import json

    return json.loads(sidecar_path(path).read_text())


if __name__ == "__main__":
    main()
