"""predict.py --weights runs the fastest exact runtime that is installed (deploy/runtime_cache.py):
an export made once beside the weights, checked against the eager model, reused while the weights
and model.yaml stay as they are, made again when they change; the outputs are the torch path's up
to float rounding; --backend torch skips it, and an export that cannot be written falls back to the
torch fast path with one warning line. Skipped where neither OpenVINO nor ONNX Runtime is installed."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import predict
from deploy.runtime_cache import RUNTIMES, cache_path, installed_runtimes
from model.card import write_model_card
from tests.deploy.test_predict import make_checkpoint

pytestmark = pytest.mark.skipif(not installed_runtimes(), reason="neither openvino nor onnxruntime is installed")


def _predict(argv: list[str], capsys) -> tuple[str, str, dict[str, dict]]:
    predict.main([*argv, "--no-progress", "--device", "cpu", "--save-maps"])
    printed = capsys.readouterr()
    output = Path(argv[argv.index("--output") + 1])
    with open(output / "predictions.csv", newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    return printed.out, printed.err, rows


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate([(64, 64), (50, 90), (120, 40)]):
        cv2.imwrite(str(folder / f"{index}.png"), (rng.random((height, width, 3)) * 255).astype(np.uint8))
    return folder


def test_the_default_is_the_cached_export_of_the_fastest_runtime_and_it_gives_the_torch_outputs(tmp_path, images,
                                                                                              capsys):
    weights = make_checkpoint(tmp_path / "model")
    runtime = installed_runtimes()[0]
    assert runtime == next(r for r in RUNTIMES if r in installed_runtimes())
    out, err, fast = _predict(["--weights", str(weights), str(images), "--output", str(tmp_path / "a")], capsys)
    cached = cache_path(weights, runtime)
    assert f"Exporting {weights} for {runtime}" in out and f"Backend: {runtime} (cached export {cached.name}" in out
    assert cached.is_file() and Path(f"{cached}.json").is_file() and "warning" not in err

    _, _, torch_rows = _predict(["--weights", str(weights), "--backend", "torch", str(images), "--output",
                                 str(tmp_path / "t")], capsys)
    assert fast.keys() == torch_rows.keys() and len(fast) == 3
    for name, row in fast.items():
        assert float(row["score"]) == pytest.approx(float(torch_rows[name]["score"]), abs=1e-5)
        assert row["decision"] == torch_rows[name]["decision"]
        stem = Path(name).stem
        ours, theirs = (np.load(tmp_path / run / "maps" / images.name / f"{stem}.npy") for run in ("a", "t"))
        assert np.abs(ours - theirs).max() < 1e-5

    # a second run reuses the export: nothing exported, the file untouched
    stamp = cached.stat().st_mtime_ns
    out, _, again = _predict(["--weights", str(weights), str(images), "--output", str(tmp_path / "b")], capsys)
    assert "Exporting" not in out and cached.stat().st_mtime_ns == stamp
    assert {k: v["score"] for k, v in again.items()} == {k: v["score"] for k, v in fast.items()}

    # other weights in the same file (retrained: a new card beside them too): exported again, their own outputs
    state = torch.load(weights, weights_only=True)
    state["discriminator.fc_score.bias"] = state["discriminator.fc_score.bias"] + 1.0
    torch.save(state, weights)
    card = yaml.safe_load((weights.parent / "model.yaml").read_text())
    write_model_card(weights.parent, card)  # records the new weights' SHA-256
    out, _, changed = _predict(["--weights", str(weights), str(images), "--output", str(tmp_path / "c")], capsys)
    assert f"Exporting {weights} for {runtime}" in out
    assert all(float(changed[k]["score"]) > float(fast[k]["score"]) for k in fast)  # the bias went up


def test_each_runtime_can_be_asked_for_and_torch_skips_the_export(tmp_path, images, capsys):
    weights = make_checkpoint(tmp_path / "model")
    out, _, _ = _predict(["--weights", str(weights), "--backend", "torch", str(images), "--output",
                          str(tmp_path / "t")], capsys)
    assert "Backend: torch fast" in out and not any(cache_path(weights, r).exists() for r in RUNTIMES)
    for runtime in installed_runtimes():
        out, _, rows = _predict(["--weights", str(weights), "--backend", runtime, str(images), "--output",
                                 str(tmp_path / runtime)], capsys)
        assert f"Backend: {runtime} (cached export" in out and len(rows) == 3


def test_an_export_that_cannot_be_written_falls_back_to_the_torch_fast_path(tmp_path, images, capsys):
    weights = make_checkpoint(tmp_path / "model")
    runtime = installed_runtimes()[0]
    cache_path(weights, runtime).mkdir()  # a folder in the way of the cached file
    out, err, rows = _predict(["--weights", str(weights), str(images), "--output", str(tmp_path / "a")], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"no {runtime} export of {weights}" in warnings[0], err
    assert "Backend: torch fast" in out and len(rows) == 3
