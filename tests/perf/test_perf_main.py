"""The benchmark CLIs: perf/perf_main.py (published CSV format, both paths, --check) and perf/train_speed.py."""

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perf import perf_main, train_speed

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--backbone", "resnet18", "--image-size", "64", "64", "--throughput-batch", "2"]




def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter=";"))


def test_icpr_version_is_compared_with_the_icpr_table(tmp_path):
    command = [sys.executable, "perf/perf_main.py", "tiny", "--device", "cpu", "--reps", "1", "--cycles", "2",
               "--path", "fast", "--version", "icpr", "--output-dir", str(tmp_path), *TINY]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    paper_latency = re.search(r"latency \[ms\], batch 1 +(\S+)", result.stdout).group(1)
    assert paper_latency == "9.31"  # the ICPR table's mean; the journal's is 9.49


def test_cpu_run_from_inside_perf_writes_both_csvs(tmp_path):
    """The published way to run it (cwd perf/), end to end on a tiny model, with --check."""
    command = [sys.executable, "perf_main.py", "tiny", "--device", "cpu", "--reps", "2", "--cycles", "2",
               "--check", "--output-dir", str(tmp_path), *TINY]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=REPO_ROOT / "perf", env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout

    for name in ("perf_tiny.csv", "perf_tiny_fast.csv"):
        rows = read_rows(tmp_path / name)
        assert rows[0] == ["time", "throughput", "memory", "tflops"]
        assert len(rows) == 2  # 2 cycles, the first dropped
        time_ms, throughput, memory, gflops = (float(value) for value in rows[1])
        assert time_ms > 0 and throughput > 0 and gflops > 0
        assert math.isnan(memory)  # GPU metric: nan on the CPU
    raw = (tmp_path / "perf_tiny.csv").read_text(encoding="utf-8").splitlines()
    assert raw[0] == "time;throughput;memory;tflops"

    assert "fast vs reference: latency x" in out and "x faster" in out
    # the paper's mean latency of the same version beside ours (journal by default: 9.49 ms)
    assert "paper V100S" in out and "9.49" in out
    assert "random (pretrained=False" in out
    assert "not comparable" in out  # CPU figures are flagged as not the paper's GPU figures
    assert "max |fast - eager fp32|" in out and "TOO LARGE" not in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_measures_memory_and_passes_check(tmp_path, capsys):
    perf_main.main(["tiny", "--device", "cuda", "--reps", "2", "--cycles", "2", "--check",
                    "--output-dir", str(tmp_path), *TINY])
    for name in ("perf_tiny.csv", "perf_tiny_fast.csv"):
        memory = float(read_rows(tmp_path / name)[1][2])
        assert memory > 0  # peak reserved CUDA memory in MB
    out = capsys.readouterr().out
    assert "precision fp16" in out and "CUDA graphs" in out and "TOO LARGE" not in out


def test_single_path_writes_only_its_csv(tmp_path, capsys):
    perf_main.main(["tiny", "--device", "cpu", "--reps", "1", "--cycles", "2", "--path", "fast",
                    "--output-dir", str(tmp_path), *TINY])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["perf_tiny_fast.csv"]
    assert "fast vs reference" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["bad/name", "--device", "cpu"], "file name"),
        (["x", "--device", "cpu", "--cycles", "1"], "at least 2"),
        (["x", "--device", "cpu", "--reps", "0"], "--reps"),
        (["x", "--device", "tpu"], "--device"),
        (["x", "--device", "cpu", "--path", "reference", "--check"], "--check"),
        (["x", "--device", "cpu", "--backbone", "vgg16"], "not supported"),
        (["x", "--device", "cpu", "--weights", "/nonexistent/weights.pt"], "not found"),
    ],
)
def test_bad_input_is_one_line_user_error(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        perf_main.main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    if message:
        assert message in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_gpu(capsys):
    with pytest.raises(SystemExit):
        perf_main.main(["x", "--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_train_speed_prints_both_paths_and_ratio(capsys):
    train_speed.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "2", "--image-size", "64", "64",
                      "--backbone", "resnet18"])
    out = capsys.readouterr().out
    assert "reference:" in out and "ours     :" in out and "ours / reference: x" in out
    # fp32 with a folded backbone and channels-last: the same first step up to rounding
    difference = float(out.split("first-step loss difference ")[1].split()[0])
    assert difference < 1e-4


def test_train_step_with_bf16_autocast_stays_close(tiny_config):
    config = {**tiny_config, "image_size": [64, 64]}
    device = torch.device("cpu")
    reference = train_speed.build_trainer(config, device, fast=False, precision="fp32")
    ours = train_speed.build_trainer(config, device, fast=True, precision="bf16")
    images, mask, label = train_speed.synthetic_batch(reference.model, 2, device)
    initial_weight = ours.model.feature_adaptor.projection.weight.detach().clone()
    losses = []
    for trainer in (reference, ours):
        torch.manual_seed(0)
        losses.append(train_speed.training_step(trainer, images, mask, label))
    assert abs(losses[0] - losses[1]) < 5e-2 * abs(losses[0])
    # the step really updated the trainable weights
    assert not torch.equal(initial_weight, ours.model.feature_adaptor.projection.weight)


def test_weights_with_model_yaml_need_no_model_options(tmp_path):
    """perf_main reads model.yaml beside --weights: the trained backbone and size, no options repeated."""
    import contextlib
    import io

    import train as train_cli
    from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree

    datasets = make_mvtec_tree(tmp_path / "datasets")
    with contextlib.redirect_stdout(io.StringIO()):
        train_cli.main(["folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"),
                        "--results-path", str(tmp_path / "results"), "--device", "cpu", "--no-progress",
                        "--no-figures", *_sets(["backbone=resnet18", "pretrained=false", "image_size=[48,40]",
                                                "epochs=1", "batch=4", "num_workers=0"])])
    weights = tmp_path / "results/superSimpleNet/checkpoints/folder/widget/1/weights.pt"
    command = [sys.executable, "perf/perf_main.py", "tiny", "--device", "cpu", "--reps", "1", "--cycles", "2",
               "--path", "fast", "--weights", str(weights), "--output-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet18" in result.stdout and "image 48x40" in result.stdout
    contradicting = subprocess.run([*command, "--backbone", "resnet34"], cwd=REPO_ROOT, capture_output=True,
                                   text=True, timeout=300)
    assert contradicting.returncode == 2 and "model.yaml" in contradicting.stderr
