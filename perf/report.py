"""What perf_main.py prints and writes: the machine's name, the published CSV format
(`time;throughput;memory;tflops`), and the table beside the paper's V100S means of a version."""

import csv
import platform
from pathlib import Path

import torch

from common.fileio import write_csv_atomic
from perf.protocol import PATH_NAMES

CSV_HEADER = ["time", "throughput", "memory", "tflops"]
PAPER_RESULTS = Path(__file__).resolve().parent.parent / "paper_results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu_info = Path("/proc/cpuinfo")
    if cpu_info.is_file():
        for line in cpu_info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def paper_means(version: str) -> list[float] | None:
    """Column means of the paper's V100S table of `version`, or None when the file is missing."""
    paper_csv = PAPER_RESULTS / version / "perf_v100s.csv"
    if not paper_csv.is_file():
        return None
    with open(paper_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    return [sum(float(row[key]) for row in rows) / len(rows) for key in CSV_HEADER]


def mean_row(rows: list[list[float]]) -> list[float]:
    return [sum(column) / len(column) for column in zip(*rows)]


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if value != value else f"{value:.2f}"


def print_table(results: dict[str, list[list[float]]], paper: list[float] | None) -> None:
    labels = ["latency [ms], batch 1", "throughput [img/s]", "peak memory [MB]", "GFLOPs (profiler)"]
    means = {name: mean_row(rows) for name, rows in results.items()}
    header = f"{'metric':<24}{'paper V100S':>13}" + "".join(f"{name:>13}" for name in means)
    print(header)
    print("-" * len(header))
    for index, label in enumerate(labels):
        line = f"{label:<24}{format_value(paper[index] if paper else None):>13}"
        print(line + "".join(f"{format_value(row[index]):>13}" for row in means.values()))
    if set(means) == set(PATH_NAMES):
        reference, fast = means["reference"], means["fast"]
        print(
            f"fast vs reference: latency x{fast[0] / reference[0]:.3f} ({reference[0] / fast[0]:.2f}x faster), "
            f"throughput x{fast[1] / reference[1]:.2f}"
        )


def write_results(results: dict[str, list[list[float]]], gpu_model: str, output_dir: Path) -> None:
    """perf_<gpu_model>.csv for the reference path, perf_<gpu_model>_fast.csv for ours (published format)."""
    for name, rows in results.items():
        suffix = "" if name == "reference" else "_fast"
        path = output_dir / f"perf_{gpu_model}{suffix}.csv"
        write_csv_atomic(path, CSV_HEADER, rows, delimiter=";")
        print(f"wrote {path} ({name})")
