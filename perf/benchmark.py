"""The paper's speed protocol (docs/method.md, "Speed protocol") for the published eager model
("reference") and our fast path ("fast", model/fast_inference.py), timed in the same run: what
perf/perf_main.py runs once its options are checked (`run_benchmark`).

Latency at batch 1 and throughput at the throughput batch, each with the host-to-device copy, the
forward and the copy back; peak reserved GPU memory of a batch-1 forward; the profiler's FLOPs;
cycles interleaving the two paths, the first dropped. Results go to perf/report.py's CSVs and table.
"""


import argparse
import copy
import gc
import sys
from dataclasses import dataclass
from timeit import default_timer
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from common.config import DEFAULT_VERSION, default_config
from common.device import resolve_device
from common.fileio import check_writable_dir
from model.card import apply_card, read_model_card
from model.fast_inference import Outputs, build_fast_model
from model.supersimplenet import SuperSimpleNet
from perf.protocol import (CPU_CYCLES, CPU_REPS, CPU_THROUGHPUT_BATCH, GPU_CYCLES, GPU_REPS, GPU_THROUGHPUT_BATCH,
                           LATENCY_BATCH, PATH_NAMES)
from perf.report import device_name, format_value, paper_means, print_table, write_results

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# largest accepted |fast - eager fp32| on maps and scores (bf16 keeps 3 fewer mantissa bits than fp16)
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 8e-2}


@dataclass
class InferencePath:
    """One way of running the model, as the benchmark needs it."""

    from_host: Callable[[Tensor], Outputs]  # host images -> host outputs (copies included): timed
    on_device: Callable[[Tensor], Outputs]  # device images -> device outputs: memory
    eager: Callable[[Tensor], Outputs]  # plain ops the profiler can count: FLOPs
    pinned_input: bool  # whether its host images sit in page-locked memory
    clears_cublas: bool  # the published memory loop frees cuBLAS workspaces between forwards


def reference_path(master: SuperSimpleNet, device: torch.device, dtype: torch.dtype) -> InferencePath:
    """The published eager model: the whole model cast to `dtype`, plain `.to()` copies."""
    model = copy.deepcopy(master).to(device=device, dtype=dtype).eval()

    @torch.no_grad()
    def from_host(images: Tensor) -> Outputs:
        anomaly_map, score = model(images.to(device))
        return anomaly_map.to("cpu"), score.to("cpu")

    @torch.no_grad()
    def on_device(images: Tensor) -> Outputs:
        return model(images)

    return InferencePath(from_host, on_device, on_device, pinned_input=False, clears_cublas=True)


_NOTES_PRINTED: set[str] = set()  # each cycle builds the fast model again; its note is printed once


def fast_path(
    master: SuperSimpleNet, device: torch.device, dtype: torch.dtype, compile: bool, cuda_graphs: bool
) -> InferencePath:
    """Our fast model; on CUDA its host images are pinned, as DataLoader(pin_memory=True) gives them."""
    fast = build_fast_model(master, device, dtype, compile=compile, cuda_graphs=cuda_graphs)
    if fast.folding_note and fast.folding_note not in _NOTES_PRINTED:  # a timm backbone's norms that run as is
        _NOTES_PRINTED.add(fast.folding_note)
        print(f"fast path: {fast.folding_note}")

    def eager(images: Tensor) -> Outputs:
        with torch.inference_mode():
            return fast.compute(images)

    # a captured CUDA graph uses cuBLAS workspaces that must stay where they are
    return InferencePath(
        fast.infer_from_host, fast, eager, pinned_input=device.type == "cuda", clears_cublas=not cuda_graphs
    )


# ---------------------------------------------------------------- the four measurements


def host_images(batch: int, image_size: tuple[int, int], dtype: torch.dtype, pinned: bool) -> Tensor:
    images = torch.randn(batch, 3, *image_size).to(dtype)
    return images.pin_memory() if pinned else images


def timed_seconds(run: Callable[[Tensor], Outputs], images: Tensor, reps: int, label: str) -> float:
    """`reps` warm-up calls, then the summed wall time of `reps` timed calls (published protocol)."""
    for _ in tqdm(range(reps), desc=f"{label} warm-up", leave=False):
        run(images)
    total = 0.0
    for _ in tqdm(range(reps), desc=label, leave=False):
        start = default_timer()
        run(images)
        total += default_timer() - start
    return total


def free_cuda_memory(clear_cublas: bool) -> None:
    if clear_cublas and hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
        torch._C._cuda_clearCublasWorkspaces()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(path: InferencePath, images: Tensor, reps: int, label: str) -> float:
    """Mean peak reserved CUDA memory of a batch-1 forward, in MB (10**6 bytes), published protocol."""
    for _ in tqdm(range(reps), desc=f"{label} warm-up", leave=False):
        free_cuda_memory(path.clears_cublas)
        path.on_device(images)
    free_cuda_memory(path.clears_cublas)
    total = 0
    for _ in tqdm(range(reps), desc=label, leave=False):
        free_cuda_memory(path.clears_cublas)
        path.on_device(images)
        total += torch.cuda.max_memory_reserved()
    free_cuda_memory(path.clears_cublas)
    return total / 10**6 / reps


def profiler_gflops(path: InferencePath, images: Tensor) -> float:
    """FLOPs of one batch-1 forward as torch.profiler counts them, in GFLOPs."""
    path.eager(images)  # warm-up, as published
    with torch.profiler.profile(with_flops=True) as profile:
        path.eager(images)
    return sum(event.flops for event in profile.key_averages()) / 1e9


# ---------------------------------------------------------------- setup and report


def build_master_model(args: argparse.Namespace) -> tuple[SuperSimpleNet, str]:
    """The float32 eval model on the CPU every path is derived from, and a line naming its weights."""
    config = default_config("mvtec", args.version or DEFAULT_VERSION)
    config["pretrained"] = args.weights is not None
    chosen = {}
    if args.backbone is not None:
        chosen["backbone"] = config["backbone"] = args.backbone
    if args.image_size:
        chosen["image_size"] = config["image_size"] = list(args.image_size)
    if args.weights is not None:
        # a checkpoint we trained says how it was built (version, backbone, size); options may not contradict it
        config = apply_card(config, read_model_card(args.weights), chosen, args.weights, args.version is not None)
    image_size = tuple(config["image_size"])
    # the published perf model: stop_grad False (irrelevant at inference)
    config["stop_grad"] = False
    torch.manual_seed(0)  # the same random weights in every run
    model = SuperSimpleNet.from_config(image_size, config)
    if args.weights is None:
        described = "random (pretrained=False, no checkpoint): timings do not depend on weight values"
    else:
        model.load_model(args.weights)
        described = f"{args.weights} with the ImageNet {config['backbone']} backbone"
    return model.eval(), described


def check_outputs(master: SuperSimpleNet, fast: InferencePath, reference: InferencePath, device: torch.device,
                  precision: str) -> bool:
    """Print the largest |difference| of maps and scores to the fp32 eager model; True when within tolerance.

    The tolerance (CHECK_TOLERANCE) is absolute for outputs up to 1 in size and relative beyond:
    random-weight WRN50 outputs reach ~20, where the fp32 eager model itself is ~1e-4 away from a
    float64 one. Both paths' distance to that float64 model is printed for context.
    """
    images = torch.randn(2, 3, *master.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float64_model = copy.deepcopy(master).to(device, torch.float64)
        truth = [t.double().cpu() for t in float64_model(images.to(device, torch.float64))]
        del float64_model
        eager32 = [t.double().cpu() for t in copy.deepcopy(master).to(device)(images.to(device))]
    dtype = PRECISIONS[precision]
    fast_out = [t.double().cpu() for t in fast.from_host(images.to(dtype))]
    same_precision = [t.double().cpu() for t in reference.from_host(images.to(dtype))]
    tolerance = CHECK_TOLERANCE[precision]
    passed = True
    print(f"check on 2 random images: {precision} fast path vs the fp32 eager model, "
          f"tolerance {tolerance:g} x max(1, output scale):")
    for index, name in enumerate(["anomaly map", "score logits"]):
        difference = (fast_out[index] - eager32[index]).abs().max().item()
        scale = eager32[index].abs().max().item()
        allowed = tolerance * max(1.0, scale)
        ok = difference <= allowed
        passed &= ok
        fast_error = (fast_out[index] - truth[index]).abs().max().item()
        eager_error = (same_precision[index] - truth[index]).abs().max().item()
        print(
            f"  {name:<13} max |fast - eager fp32| = {difference:.3g} (scale {scale:.3g}, allowed {allowed:.3g}) "
            f"{'ok' if ok else 'TOO LARGE'};  vs float64 eager: fast {fast_error:.3g}, "
            f"eager {precision} {eager_error:.3g}"
        )
    return passed


def print_setup(master: SuperSimpleNet, weights_line: str, device: torch.device, precision: str,
                cuda_graphs: bool, args: argparse.Namespace) -> None:
    """What is measured, on which device, with which weights."""
    height, width = master.image_size
    total_params = sum(p.numel() for p in master.parameters())
    trainable_params = sum(p.numel() for p in master.parameters() if p.requires_grad)
    print(f"device: {device} ({device_name(device)}), precision {precision}, cuDNN deterministic")
    print(f"model: {master.backbone_name} {master.feature_extractor.layers}, image {height}x{width}, "
          f"features {master.fh}x{master.fw}; weights: {weights_line}")
    print(f"params: total {total_params:,}, trainable {trainable_params:,}")
    print(f"protocol: {args.cycles} cycles (first dropped), {args.reps} warm-up + {args.reps} timed reps; latency "
          f"batch {LATENCY_BATCH} with host->device and back, throughput batch {args.throughput_batch}")
    print(f"paths: reference = the published eager model in {precision}; fast = folded, channels-last"
          + (", CUDA graphs, pinned inputs" if cuda_graphs else "") + (", torch.compile" if args.compile else ""))
    if device.type == "cpu":
        print("note: the paper's figures are V100S GPU figures (fp16); CPU timings are not comparable to them, "
              "and peak memory is a GPU metric (written as nan)")
        if precision != "fp32":
            print(f"note: {precision} on the CPU is not the paper's setting (fp16 on a GPU)")
    if args.throughput_batch != GPU_THROUGHPUT_BATCH:
        print(f"note: throughput batch {args.throughput_batch}; the paper's is {GPU_THROUGHPUT_BATCH} "
              f"(--throughput-batch {GPU_THROUGHPUT_BATCH})")


def run_benchmark(args: argparse.Namespace) -> None:
    """perf_main.py once its options are checked: time both paths, write the CSVs, print the table."""
    device = resolve_device(args.device)
    check_writable_dir(args.output_dir, "--output-dir")
    choose_repetitions(args, device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    dtype = PRECISIONS[precision]
    cuda_graphs = device.type == "cuda" and not args.no_cuda_graphs
    if args.throughput_batch is None:
        args.throughput_batch = GPU_THROUGHPUT_BATCH if device.type == "cuda" else CPU_THROUGHPUT_BATCH
    torch.backends.cudnn.deterministic = True  # as in the paper
    torch.backends.cudnn.benchmark = False

    master, weights_line = build_master_model(args)
    master_version = "icpr" if master.adapt_cls_features else "jims"
    print_setup(master, weights_line, device, precision, cuda_graphs, args)
    builders = {
        "reference": lambda: reference_path(master, device, dtype),
        "fast": lambda: fast_path(master, device, dtype, args.compile, cuda_graphs),
    }
    if args.check and not check_outputs(master, builders["fast"](), builders["reference"](), device, precision):
        print("check failed: the fast path's outputs differ from the eager model", file=sys.stderr)
        sys.exit(1)

    names = list(PATH_NAMES) if args.path == "both" else [args.path]
    results: dict[str, list[list[float]]] = {name: [] for name in names}
    for cycle in range(args.cycles):
        order = names if cycle % 2 == 0 else names[::-1]  # alternate who goes first
        row = measure_cycle(builders, order, device, dtype, master.image_size, args)
        kept = "dropped (warm-up cycle)" if cycle == 0 else "kept"
        for name in names:
            time_ms, throughput, memory, gflops = row[name]
            print(f"cycle {cycle + 1}/{args.cycles} {name:<9}: {time_ms:.2f} ms, {throughput:.1f} img/s, "
                  f"{format_value(memory)} MB, {gflops:.2f} GFLOPs  [{kept}]")
            if cycle > 0:
                results[name].append(row[name])

    write_results(results, args.gpu_model, args.output_dir)
    print(f"\nmeans over {args.cycles - 1} kept cycles on {device} ({device_name(device)}), {precision}:")
    print_table(results, paper_means(master_version))
    print("GFLOPs: torch.profiler's count, as the paper's; it skips convolutions with padding='same', "
          "so the reference's dec_head 5x5 conv (~40 GFLOPs at 256x256) is not in its figure")


def choose_repetitions(args: argparse.Namespace, device: torch.device) -> None:
    """Fill in --reps/--cycles for the device; on a CPU, say what the paper's protocol would cost."""
    on_gpu = device.type == "cuda"
    if args.reps is None:
        args.reps = GPU_REPS if on_gpu else CPU_REPS
    if args.cycles is None:
        args.cycles = GPU_CYCLES if on_gpu else CPU_CYCLES
    if not on_gpu and args.reps * args.cycles > CPU_REPS * CPU_CYCLES:
        # about 0.8 s per batch-1 and 3 s per batch-4 reference forward on a 2-core CPU, fast ~3x less
        hours = args.reps * args.cycles * 2 * 4.0 * 1.3 / 3600
        print(f"note: --reps {args.reps} x --cycles {args.cycles} on a CPU takes roughly {hours:.1f} h "
              f"(CPU default: --reps {CPU_REPS} --cycles {CPU_CYCLES})")


def measure_cycle(builders: dict[str, Callable[[], InferencePath]], order: list[str], device: torch.device,
                  dtype: torch.dtype, image_size: tuple[int, int], args: argparse.Namespace) -> dict[str, list[float]]:
    """One cycle: latency, throughput and FLOPs of every path (interleaved), then memory of each alone."""
    paths = {name: builders[name]() for name in order}
    row: dict[str, list[float]] = {name: [] for name in order}
    for name in order:
        images = host_images(LATENCY_BATCH, image_size, dtype, paths[name].pinned_input)
        row[name].append(timed_seconds(paths[name].from_host, images, args.reps, f"{name} latency") * 1000 / args.reps)
    for name in order:
        images = host_images(args.throughput_batch, image_size, dtype, paths[name].pinned_input)
        seconds = timed_seconds(paths[name].from_host, images, args.reps, f"{name} throughput")
        row[name].append(args.throughput_batch * args.reps / seconds)
    gflops = {name: profiler_gflops(paths[name], host_images(1, image_size, dtype, False).to(device)) for name in order}
    del paths
    for name in order:
        if device.type == "cuda":
            # a fresh model with nothing else on the GPU, so its peak is its own
            gc.collect()
            torch.cuda.empty_cache()
            path = builders[name]()
            row[name].append(peak_memory_mb(path, host_images(1, image_size, dtype, False).to(device), args.reps,
                                            f"{name} memory"))
            del path
        else:
            row[name].append(float("nan"))
        row[name].append(gflops[name])
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return row

