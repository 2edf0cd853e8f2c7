"""A SIGKILL at any point of a training run leaves every existing result file intact (each file is
the complete old one or the complete new one, never a partial one), and the temporaries a killed
run leaves are removed when the next run starts."""

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree

REPO = Path(__file__).resolve().parents[2]
TINY = ["backbone=resnet18", "pretrained=false", "image_size=[64,64]", "epochs=3", "batch=4", "num_workers=0",
        "eval_step_size=1", "checkpoint_every=1"]


def _files(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


def _complete(name: str, data: bytes, reference: bytes) -> bool:
    """True when `data` is a whole file of its kind like `reference`: the same bytes, or (figures
    and scores, whose last float bits may differ between processes, and report pages, which say
    when they were built) a file that parses completely to the same shape."""
    if data == reference:
        return True
    if name.endswith(".png"):
        image, expected = (cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in (data, reference))
        return image is not None and image.shape == expected.shape
    if name.endswith(".json"):
        return json.loads(data).keys() == json.loads(reference).keys()
    if name.endswith(".csv"):
        rows, expected = (list(csv.reader(io.StringIO(b.decode()))) for b in (data, reference))
        return rows[0] == expected[0] and len(rows) == len(expected) and all(len(r) == len(rows[0]) for r in rows)
    if name.endswith(".yaml"):
        return yaml.safe_load(data).keys() == yaml.safe_load(reference).keys()
    if name.endswith(".html"):  # a report page: its dates differ between runs; whole means it ends
        return data.count(b"<html") == 1 and data.rstrip().endswith(b"</html>")
    if name.endswith(".pt"):
        return list(torch.load(io.BytesIO(data), weights_only=True)) == list(torch.load(io.BytesIO(reference)))
    return False


def test_sigkill_at_any_point_keeps_every_result_file(tmp_path):
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    results = tmp_path / "results"
    command = [sys.executable, "train.py", "mvtec", "--category", "bottle", "--datasets-folder", str(datasets),
               "--results-path", str(results), "--device", "cpu", "--no-progress", *_sets(TINY)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env=environment, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    first = _files(results)
    assert any(name.endswith("weights.pt") for name in first) and any(name.endswith("last.csv") for name in first)

    # the same seed writes the same weights, so after each kill every file must be whole: the old one or
    # an equally complete new one
    for fraction in (0.45, 0.6, 0.7, 0.8, 0.9, 0.97):
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        process.kill()
        process.wait(timeout=60)
        now = _files(results)
        for name, data in first.items():
            assert _complete(name, now[name], data), f"{name} is not whole after a SIGKILL at {fraction:.0%} of a run"
        weights = [name for name in first if name.endswith("weights.pt")]
        assert all(now[name] == first[name] for name in weights)
        extra = [name for name in now if name not in first]
        assert all(Path(name).name.startswith(".") and name.endswith(".tmp") or name.endswith("resume.pt")
                   for name in extra), extra

    # a temporary left by an earlier run (older than the next process) is removed when it starts
    stale = results / "superSimpleNet" / "mvtec" / "1" / ".last.csv.0123abcd.tmp"
    stale.write_text("half a row", encoding="utf-8")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    subprocess.run(command, cwd=REPO, env=environment, check=True, capture_output=True, timeout=300)
    assert not stale.exists()
    assert not [name for name in _files(results) if name.endswith(".tmp")]
    final = _files(results)
    assert final.keys() == first.keys() and all(_complete(n, final[n], first[n]) for n in first)
