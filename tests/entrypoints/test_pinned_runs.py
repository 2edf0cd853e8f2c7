"""ICPR runs are pinned: a tiny MVTec (unsupervised) and KolektorSDD2 (supervised, 16 segmented)
training run under `--version icpr` must give the checkpoint bytes, metrics and file layout that
the project gave before the engine layer and the journal version were added. The values were
recorded with the code of commit 6760f7e on this project's CPU machine (torch 2.14.1, one thread);
a change of any of them means the ICPR configuration no longer reproduces what it did. (The files
added since are `model.yaml` beside each checkpoint, which records how it was trained, and the run
report: `report.html` beside last.csv and its unit data in `report_units/`.)"""

import contextlib
import csv
import hashlib
import io
from pathlib import Path

import pytest

import train as train_cli
from tests.datamodules.tree_helpers import make_ksdd2_tree
from tests.entrypoints.test_train_eval import TINY, _sets, make_mvtec_tree

MVTEC_WEIGHTS_SHA256 = "e2f9e69f6d3ca13f80617e1e0b77bf89fdca35a1c76ab2679aa2060f049d615b"
MVTEC_METRICS = {
    "I-AUROC": 0.0, "AP-det": 0.3833333333333333, "P-AUROC": 0.020664880148548278, "AUPRO": 0.0,
    "AP-loc": 0.018294392865207874, "seg-I-AUROC": 0.5555555555555556, "seg-AP-det": 0.7222222222222222,
}
MVTEC_FILES = [
    "superSimpleNet/checkpoints/mvtec/bottle/model.yaml",
    "superSimpleNet/checkpoints/mvtec/bottle/weights.pt",
    "superSimpleNet/mvtec/avg.csv",
    "superSimpleNet/mvtec/last.csv",
    "superSimpleNet/mvtec/report.html",
    "superSimpleNet/mvtec/report_units/bottle.json",
    "superSimpleNet/scores/mvtec/bottle/scores.json",
    *[f"superSimpleNet/visual/mvtec/bottle/good/Normal/00{i}.png" for i in range(3)],
    *[f"superSimpleNet/visual/mvtec/bottle/hole/Anomalous/00{i}.png" for i in range(3)],
]
KSDD2_WEIGHTS_SHA256 = "1b4a24ae33677e343fe1af9cc1828885750f373f54e501aab5f909eb09a09dcb"
KSDD2_METRICS = {
    "I-AUROC": 0.6666666666666666, "AP-det": 0.8333333333333334, "P-AUROC": 0.7208163353704637,
    "AUPRO": 0.32292162531735386, "AP-loc": 0.06040223891710222, "seg-I-AUROC": 0.4444444444444444,
    "seg-AP-det": 0.5555555555555555,
}
KSDD2_FILES = [
    "superSimpleNet/checkpoints/ksdd2/ksdd2/model.yaml",
    "superSimpleNet/checkpoints/ksdd2/ksdd2/weights.pt",
    "superSimpleNet/ksdd2/avg.csv",
    "superSimpleNet/ksdd2/last.csv",
    "superSimpleNet/ksdd2/report.html",
    "superSimpleNet/ksdd2/report_units/ksdd2.json",
    "superSimpleNet/scores/ksdd2/ksdd2/scores.json",
]


def _train(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        train_cli.main(argv)


def _files(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())


def _row(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        return next(csv.DictReader(handle))


def test_icpr_unsupervised_run_is_unchanged(tmp_path):
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    results = tmp_path / "results"
    _train(["mvtec", "--version", "icpr", "--category", "bottle", "--datasets-folder", str(datasets),
            "--results-path", str(results), "--device", "cpu", "--no-progress", *_sets(TINY)])
    assert _files(results) == sorted(MVTEC_FILES)
    weights = results / "superSimpleNet/checkpoints/mvtec/bottle/weights.pt"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == MVTEC_WEIGHTS_SHA256
    row = _row(results / "superSimpleNet/mvtec/last.csv")
    assert {m: float(row[m]) for m in MVTEC_METRICS} == pytest.approx(MVTEC_METRICS, abs=1e-12)
    assert row["version"] == "icpr"


def test_icpr_supervised_run_is_unchanged(tmp_path):
    make_ksdd2_tree(tmp_path / "datasets" / "KolektorSDD2", train=(6, 3), test=(3, 3))
    results = tmp_path / "results"
    tiny = ["backbone=resnet18", "pretrained=false", "image_size=[64,32]", "epochs=2", "batch=4",
            "num_workers=0", "eval_step_size=1", "num_segmented=16"]
    _train(["ksdd2", "--version", "icpr", "--datasets-folder", str(tmp_path / "datasets"),
            "--results-path", str(results), "--device", "cpu", "--no-progress", "--no-figures", *_sets(tiny)])
    assert _files(results) == sorted(KSDD2_FILES)
    weights = results / "superSimpleNet/checkpoints/ksdd2/ksdd2/weights.pt"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == KSDD2_WEIGHTS_SHA256
    row = _row(results / "superSimpleNet/ksdd2/last.csv")
    assert {m: float(row[m]) for m in KSDD2_METRICS} == pytest.approx(KSDD2_METRICS, abs=1e-12)
