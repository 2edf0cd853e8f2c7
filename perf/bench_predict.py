"""Prediction speed of every backend predict.py can use, on the CPU (and CUDA when there is one), in
one run with the same weights: the eager model, the torch fast path, OpenVINO and ONNX Runtime
through the export predict.py caches beside the weights (deploy/runtime_cache.py), and which of
them predict.py takes by default.

Two figures per backend:
- model latency: one forward of a preprocessed batch of 1 and of --batch images, in ms, the
  backends interleaved --repeats times, the best kept (a shared machine only adds time);
- end to end: images/s of predict's whole path on a folder (decode, resize, infer, write heatmap,
  mask, overlay PNGs and the CSV), best of --repeats after one warm-up run.

    python perf/bench_predict.py [--weights W] [--images DIR] [--count 32] [--size 256 256]
                                 [--backbone wide_resnet50_2] [--batch 8] [--repeats 3]

Without --weights a random-weight model of --backbone at --size is used (speed does not depend on
the weights, and the output says so); without --images, --count synthetic images of mixed sizes.
`--help` answers without importing torch.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="a weights.pt (default: random weights)")
    parser.add_argument("--images", type=Path, help="a folder of images (default: synthetic ones)")
    parser.add_argument("--count", type=int, default=32, help="synthetic images (default 32)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                        help="network input of the random model (default 256 256)")
    parser.add_argument("--backbone", default="wide_resnet50_2", help="backbone of the random model")
    parser.add_argument("--batch", type=int, default=8, help="predict's batch (default 8, as predict.py)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="decode / write threads")
    parser.add_argument("--no-end-to-end", action="store_true", help="only the model latencies")
    return parser.parse_args(argv)


def synthetic_images(folder: Path, count: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    sizes = [(256, 256), (480, 640), (900, 300), (200, 333)]
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        cv2.imwrite(str(folder / f"{index:04d}.png"), (rng.random((height, width, 3)) * 255).astype(np.uint8))


def main(argv=None) -> None:
    args = parse_args(argv)
    import numpy as np
    import torch

    from common.config import default_config
    from common.seeding import seed_everything
    from deploy.backends import TorchBackend
    from deploy.calibrate import Thresholds
    from deploy.checkpoints import LoadedCheckpoint, load_checkpoint
    from deploy.images import find_images
    from deploy.predict import predict_images
    from deploy.runtime_cache import cached_backend, default_backend, installed_runtimes
    from model.supersimplenet import SuperSimpleNet

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if args.weights is not None:
            loaded = load_checkpoint(args.weights, "jims", verbose=True)
            weights_line = str(args.weights)
        else:
            config = default_config("mvtec", "jims")
            config.update(backbone=args.backbone, pretrained=False, image_size=list(args.size))
            seed_everything(0)
            model = SuperSimpleNet.from_config(tuple(args.size), config).eval()
            (scratch / "model").mkdir()
            loaded = LoadedCheckpoint(model, config, None, model.save_model(scratch / "model"), "mvtec")
            weights_line = "random weights (pretrained=false): speed does not depend on the weights"
        height, width = loaded.image_size
        cpu = torch.device("cpu")
        default = default_backend(loaded, cpu, "cpu")  # exports into the weights' folder when it must
        paths = {"eager cpu": TorchBackend(loaded.model, cpu, eager=True), "torch fast cpu": TorchBackend(loaded.model, cpu)}
        for runtime in installed_runtimes():
            paths[f"{runtime} cpu"] = cached_backend(loaded, runtime, "cpu")
        if torch.cuda.is_available():
            paths["torch fast cuda"] = TorchBackend(loaded.model, torch.device("cuda"))
        default_name = next((name for name, backend in paths.items() if backend.name == default.name), default.name)
        print(f"model {loaded.model.backbone_name} at {height}x{width}; {weights_line}; torch threads "
              f"{torch.get_num_threads()}; predict.py's default here: {default_name}")

        latency: dict[str, dict[int, float]] = {name: {} for name in paths}
        for batch in (1, args.batch):
            images = np.random.default_rng(batch).standard_normal((batch, 3, height, width)).astype(np.float32)
            for backend in paths.values():
                backend(images)  # warm-up
            for _ in range(args.repeats):
                for name, backend in paths.items():  # interleaved
                    start = time.perf_counter()
                    backend(images)
                    elapsed = 1000 * (time.perf_counter() - start)
                    latency[name][batch] = min(latency[name].get(batch, float("inf")), elapsed)

        throughput: dict[str, float] = {}
        if not args.no_end_to_end:
            if args.images is None:
                args.images = scratch / "images"
                args.images.mkdir()
                synthetic_images(args.images, args.count)
            items, _ = find_images([args.images])
            print(f"end to end: {len(items)} images from {args.images}, batch {args.batch}, {args.workers} "
                  "decode/write threads")
            for name, backend in paths.items():
                best = float("inf")
                for run in range(args.repeats + 1):
                    start = time.perf_counter()
                    predict_images(backend, items, Thresholds(), scratch / "out" / name.replace(" ", "_") / str(run),
                                   args.batch, progress=False, workers=args.workers, report=lambda message: None)
                    if run:
                        best = min(best, time.perf_counter() - start)
                throughput[name] = len(items) / best

        print(f"\n| path | batch 1 (ms) | batch {args.batch} (ms) | predict end to end (images/s) |\n|---|---|---|---|")
        for name in paths:
            mark = " (predict's default)" if name == default_name else ""
            rate = f"{throughput[name]:.2f}" if name in throughput else "-"
            print(f"| {name}{mark} | {latency[name][1]:.0f} | {latency[name][args.batch]:.0f} | {rate} |")


if __name__ == "__main__":
    main()
