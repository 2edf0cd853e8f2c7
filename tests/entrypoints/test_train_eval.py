"""End to end: train.py and eval.py (journal version, the default) on a tiny generated
MVTec-layout dataset with a random resnet18 backbone, plus their one-line errors for bad input."""

import contextlib
import csv
import re
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import eval as eval_cli
import train as train_cli
from common.metrics import METRIC_NAMES
from common.visualize import BAR_WIDTH, GAP, panel_size

REPO = Path(__file__).resolve().parents[2]
TINY = ["backbone=resnet18", "pretrained=false", "image_size=[64,64]", "epochs=2", "batch=4",
        "num_workers=0", "eval_step_size=1"]


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def make_mvtec_tree(root: Path, category: str = "widget", seed: int = 0) -> Path:
    """A 1-category MVTec-layout dataset: 5 good train, 3 good + 3 defective test images (72x72).
    With batch 4 (train) and 5 (eval) the last batch holds a single image."""
    rng = np.random.default_rng(seed)
    base = root / "mvtec" / category

    def texture() -> np.ndarray:
        return (rng.random((72, 72, 3)) * 60 + 100).astype(np.uint8)

    for i in range(5):
        (base / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(base / "train" / "good" / f"{i:03d}.png"), texture())
    for i in range(3):
        (base / "test" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(base / "test" / "good" / f"{i:03d}.png"), texture())
    for i in range(3):
        image, mask = texture(), np.zeros((72, 72), np.uint8)
        mask[20 + 5 * i:40, 20:44] = 255
        image[mask > 0] = 10
        (base / "test" / "hole").mkdir(parents=True, exist_ok=True)
        (base / "ground_truth" / "hole").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(base / "test" / "hole" / f"{i:03d}.png"), image)
        cv2.imwrite(str(base / "ground_truth" / "hole" / f"{i:03d}_mask.png"), mask)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class FakeWandb:
    """Stands in for the wandb package: records what train.py logs."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values):
        self.logged.append(dict(values))

    def finish(self):
        self.finished += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (logging to a stand-in wandb), shared by the tests that inspect it."""
    root = tmp_path_factory.mktemp("run")
    datasets = make_mvtec_tree(root / "datasets")
    results = root / "results"
    fake_wandb = FakeWandb()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setitem(sys.modules, "wandb", fake_wandb)
        train_cli.main(["folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"),
                        "--results-path", str(results), "--device", "cpu", "--no-progress", "--wandb", *_sets(TINY)])
    return datasets, results, fake_wandb, printed.getvalue()


def test_train_prints_config_folder_check_metrics_and_paper_table(trained):
    printed = trained[3]
    assert "noise_std" in printed and re.search(r"image_size +=  *\[64, 64\]", printed)
    assert "(mvtec layout)" in printed and "training: unsupervised" in printed  # the folder check
    assert "size 64x64; regime: unsupervised" in printed
    # --no-progress: no bars, but a line per epoch (2 epochs, evaluated after the first)
    assert re.search(r"^  epoch 1/2: loss \d+\.\d{4}  I-AUROC", printed, re.MULTILINE), printed
    assert re.search(r"^  epoch 2/2: loss \d+\.\d{4} \(\d+ s\)$", printed, re.MULTILINE), printed
    assert "I-AUROC" in printed and "RANDOM backbone weights" in printed


def test_wandb_gets_one_run_with_epoch_logs(trained):
    fake_wandb = trained[2]
    assert len(fake_wandb.inits) == 1 and fake_wandb.finished == 1
    assert fake_wandb.inits[0]["project"] == "supersimplenet" and fake_wandb.inits[0]["config"]["epochs"] == 2
    assert [entry["epoch"] for entry in fake_wandb.logged] == [1, 2]
    assert all(entry["loss"] > 0 for entry in fake_wandb.logged)
    assert "I-AUROC" in fake_wandb.logged[0]  # evaluated every epoch (eval_step_size=1) except the last


def test_train_writes_checkpoint_csvs_scores_and_figures(trained):
    results = trained[1]
    run = results / "superSimpleNet"
    # the journal layout: a ratio folder ("1" without a supervision ratio) under each category
    weights = torch.load(run / "checkpoints" / "folder" / "widget" / "1" / "weights.pt", weights_only=True)
    assert len(weights) == 19 and not any(k.startswith("feature_extractor") for k in weights)

    rows = read_csv(run / "folder" / "1" / "last.csv")
    assert list(rows[0]) == ["category", *METRIC_NAMES, "backbone_weights", "version", "regime"]
    assert rows[0]["category"] == "widget" and rows[0]["backbone_weights"] == "random"
    assert rows[0]["version"] == "jims" and rows[0]["regime"] == "unsupervised"
    assert all(0.0 <= float(rows[0][m]) <= 1.0 for m in METRIC_NAMES)
    avg = read_csv(run / "folder" / "1" / "avg.csv")
    assert avg[0]["category"] == "avg" and float(avg[0]["I-AUROC"]) == pytest.approx(float(rows[0]["I-AUROC"]))

    scores = json.loads((run / "scores" / "folder" / "widget" / "1" / "scores.json").read_text())
    assert scores["backbone_weights"] == "random" and scores["version"] == "jims"
    assert scores["regime"] == "unsupervised"
    assert set(scores["scores"]) == {"good", "hole"}
    assert len(scores["scores"]["hole"]["bad"]) == 3 and len(scores["scores"]["good"]["good"]) == 3

    figures = sorted((run / "visual" / "folder" / "widget" / "1").rglob("*.png"))
    assert len(figures) == 6
    height, width = panel_size(72, 72, 64, 64)  # the 72 x 72 images in their own aspect ratio
    figure = cv2.imread(str(figures[0]))
    assert figure.shape[1] == 4 * (width + GAP) + BAR_WIDTH and figure.shape[0] > height


def test_same_seed_gives_bit_identical_checkpoints(trained, tmp_path):
    datasets, results = trained[:2]
    train_cli.main(["folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"), "--results-path",
                    str(tmp_path), "--device", "cpu", "--no-progress", "--no-figures", *_sets(TINY)])
    first = results / "superSimpleNet" / "checkpoints" / "folder" / "widget" / "1" / "weights.pt"
    second = tmp_path / "superSimpleNet" / "checkpoints" / "folder" / "widget" / "1" / "weights.pt"
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert first.read_bytes() == second.read_bytes()


def test_eval_reproduces_training_metrics_and_writes_summary(trained, tmp_path, capsys):
    datasets, results = trained[:2]
    out = tmp_path / "eval_res"
    # reads the training run's checkpoints where training wrote them
    eval_cli.main(["--datasets", "folder", "--categories", "widget", "--from-training", str(results),
                   "--datasets-folder", str(datasets / "mvtec"), "--results-path", str(out), "--device", "cpu",
                   "--num-workers", "0", "--batch", "5", "--no-progress", "--save-scores",
                   *_sets(["backbone=resnet18", "pretrained=false", "image_size=[64,64]"])])
    evaluated = read_csv(out / "0" / "1" / "folder" / "last.csv")[0]
    trained_row = read_csv(results / "superSimpleNet" / "folder" / "1" / "last.csv")[0]
    for metric in METRIC_NAMES:
        assert float(evaluated[metric]) == pytest.approx(float(trained_row[metric]), abs=1e-6), metric
    assert evaluated["run_id"] == "0" and evaluated["version"] == "jims"

    # the official journal layout: {avg|std: {ratio: {dataset: {metric: {category|total: value}}}}}
    summary = json.loads((out / "results_avg_std.json").read_text())
    paper = json.loads((REPO / "paper_results" / "jims" / "results_avg_std.json").read_text())
    assert set(summary) == {"avg", "std"}
    assert set(summary["avg"]["1"]["folder"]) == set(paper["unsup"]["1"]["avg"]["mvtec"])
    assert summary["avg"]["1"]["folder"]["I-AUROC"]["widget"] == pytest.approx(float(evaluated["I-AUROC"]))
    assert summary["avg"]["1"]["folder"]["I-AUROC"]["total"] == pytest.approx(float(evaluated["I-AUROC"]))
    printed = capsys.readouterr().out
    assert "RANDOM backbone weights" in printed
    assert (out / "0" / "scores" / "folder" / "widget" / "scores.json").is_file()


def test_demo_dataset_is_deterministic(tmp_path):
    from datamodules.demo import ensure_demo_dataset

    first = ensure_demo_dataset(tmp_path / "a")
    second = ensure_demo_dataset(tmp_path / "b")
    files_a = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    files_b = sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert files_a == files_b and len(files_a) > 100
    for relative in files_a[::17]:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
