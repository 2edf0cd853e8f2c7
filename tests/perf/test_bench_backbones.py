"""perf/bench_backbones.py (its --help: tests/test_help.py): the layers chosen for a timm
backbone are its stride-8 and stride-16 features; a tiny run writes one CSV row per backbone with
the device named, both paths measured and the fast path's maps within 1e-4 of the eager ones.
(Its bad inputs are in tests/test_bad_inputs.py.)"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from perf.bench_backbones import CSV_HEADER, backbone_and_layers

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_layers_are_the_stride_8_and_16_features_unless_given():
    assert backbone_and_layers("wide_resnet50_2") == ("wide_resnet50_2", ["layer2", "layer3"])
    assert backbone_and_layers("timm:convnext_tiny") == ("timm:convnext_tiny", [1, 2])  # strides 4, 8, 16, 32
    assert backbone_and_layers("timm:efficientnet_b0") == ("timm:efficientnet_b0", [2, 3])
    assert backbone_and_layers("timm:resnet18@3,2") == ("timm:resnet18", [3, 2])
    with pytest.raises(UserError, match="feature indices"):
        backbone_and_layers("timm:resnet18@a,b")


def test_tiny_run_writes_one_row_per_backbone(tmp_path):
    output = tmp_path / "backbones_cpu.csv"
    command = [sys.executable, "perf/bench_backbones.py", "--backbones", "resnet18", "timm:efficientnet_b0@2,3",
               "--size", "32", "32", "--reps", "1", "--output", str(output)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RANDOM weights" in result.stdout and f"Wrote {output}" in result.stdout
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_HEADER
    assert [row["backbone"] for row in rows] == ["resnet18", "timm:efficientnet_b0"]
    assert [row["channels"] for row in rows] == ["384", "152"]
    for row in rows:
        assert row["device"].startswith("cpu: ") and row["weights"] == "random" and row["image_size"] == "32x32"
        assert row["fast_path"] == "yes (every BatchNorm folded)"
        assert float(row["max_map_difference"]) < 1e-4
        assert float(row["gflops_fast"]) < float(row["gflops_eager"])
        for column in ("latency_ms_eager", "latency_ms_fast", "throughput_eager", "throughput_fast"):
            assert float(row[column]) > 0, column

