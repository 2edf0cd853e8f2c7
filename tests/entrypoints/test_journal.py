"""The journal version (`--version jims`, the default) end to end on generated supervised trees:
the weakly supervised KolektorSDD2 regime (num_segmented=0) trained and evaluated through
train.py and eval.py in the journal layout, a mixed SensumSODF run, the training step of the
weak regime, and ICPR's num_segmented=0 (unsupervised) on the same tree."""

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import eval as eval_cli
import train as train_cli
from common.config import build_config
from common.loss import downsample_mask, focal_loss
from common.metrics import METRIC_NAMES
from datamodules.base import MaskProcessing
from datamodules.ksdd2 import load_ksdd2
from datamodules.sampling import make_train_loader
from engine.fit import step_loss
from model.supersimplenet import SuperSimpleNet
from tests.datamodules.tree_helpers import make_ksdd2_tree, make_sensum_category, write_sensum_split

MODEL = ["backbone=resnet18", "pretrained=false", "image_size=[64,32]"]
TINY = [*MODEL, "epochs=2", "batch=4", "num_workers=0"]
KSDD2_TRAIN, KSDD2_TEST = (6, 3), (4, 3)  # (normals, positives)


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_main(main, argv: list[str]) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(argv)
    return printed.getvalue()


def train_ksdd2(datasets: Path, results: Path, *extra: str) -> str:
    return run_main(train_cli.main, [
        "ksdd2", "--datasets-folder", str(datasets), "--results-path", str(results), "--device", "cpu",
        "--no-progress", "--no-figures", *extra, *sets([*TINY, "num_segmented=0"]),
    ])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    make_ksdd2_tree(root / "KolektorSDD2", train=KSDD2_TRAIN, test=KSDD2_TEST)
    return root


@pytest.fixture(scope="module")
def weak_run(datasets, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, train_ksdd2(datasets, results)


def test_weak_regime_trains_on_label_only_positives(weak_run):
    printed = weak_run[1]
    assert "version jims" in printed
    assert re.search(r"^ +perlin_thr += 0\.2$", printed, re.MULTILINE)  # the weak-regime rule
    assert re.search(r"^ +num_segmented += 0$", printed, re.MULTILINE)
    # every train positive is trained on, with its image label only
    assert "9 train images (3 anomalous, 3 with image labels only), 7 test images" in printed
    assert "weak regime, ratio 0" in printed  # the paper comparison of the weak regime


def test_weak_regime_writes_the_journal_layout(weak_run):
    results = weak_run[0] / "superSimpleNet"
    weights = torch.load(results / "checkpoints" / "ksdd2" / "ksdd2" / "0" / "weights.pt", weights_only=True)
    assert len(weights) == 19 and not any(k.startswith("feature_extractor") for k in weights)
    rows = read_csv(results / "ksdd2" / "0" / "last.csv")
    assert len(rows) == 1 and rows[0]["category"] == "ksdd2" and rows[0]["version"] == "jims"
    assert rows[0]["regime"] == "weak"  # recorded in last.csv, scores.json and model.yaml
    assert json.loads((results / "scores" / "ksdd2" / "ksdd2" / "0" / "scores.json").read_text())["regime"] == "weak"
    card = yaml.safe_load((results / "checkpoints" / "ksdd2" / "ksdd2" / "0" / "model.yaml").read_text())
    assert card["regime"] == {"name": "weak", "defects_with_masks": 0, "defects_with_labels_only": 3,
                              "normal_images": 6}
    assert all(0.0 <= float(rows[0][m]) <= 1.0 for m in METRIC_NAMES)
    assert not (results / "ksdd2" / "last.csv").exists()  # no ICPR-layout file


def test_eval_from_training_reproduces_the_weak_run(weak_run, datasets, tmp_path):
    results = weak_run[0]
    out = tmp_path / "eval_res"
    printed = run_main(eval_cli.main, [
        "--datasets", "ksdd2", "--from-training", str(results), "--datasets-folder", str(datasets),
        "--results-path", str(out), "--device", "cpu", "--num-workers", "0", "--batch", "3", "--no-progress",
        *sets([*MODEL, "num_segmented=0"]),
    ])
    evaluated = read_csv(out / "0" / "0" / "ksdd2" / "last.csv")
    trained = read_csv(results / "superSimpleNet" / "ksdd2" / "0" / "last.csv")
    assert len(evaluated) == 1 and evaluated[0]["run_id"] == "0" and evaluated[0]["version"] == "jims"
    for metric in METRIC_NAMES:
        assert float(evaluated[0][metric]) == pytest.approx(float(trained[0][metric]), abs=1e-6), metric
    assert "weak regime, ratio 0" in printed


def test_icpr_num_segmented_zero_is_unsupervised(datasets, tmp_path):
    printed = train_ksdd2(datasets, tmp_path, "--version", "icpr")
    assert "version icpr" in printed
    assert "6 train images (0 anomalous), 7 test images" in printed  # normals only
    assert re.search(r"^ +perlin_thr += 0\.6$", printed, re.MULTILINE)  # no weak-regime rule
    run = tmp_path / "superSimpleNet"
    assert (run / "checkpoints" / "ksdd2" / "ksdd2" / "weights.pt").is_file()  # ICPR: no ratio folder
    assert (run / "ksdd2" / "last.csv").is_file() and not (run / "ksdd2" / "0").exists()


def test_sensum_mixed_run_writes_ratio_folder(tmp_path):
    root = tmp_path / "datasets" / "SensumSODF"
    make_sensum_category(root, "capsule", num_negative=9, num_positive=4)
    write_sensum_split(root, "capsule", 0, "train", "neg.pckl", [(i, True) for i in range(6)])
    write_sensum_split(root, "capsule", 0, "train", "pos_50.pckl", [(0, True), (1, False)])
    write_sensum_split(root, "capsule", 0, "test", "neg.pckl", [(6, True), (7, True), (8, True)])
    write_sensum_split(root, "capsule", 0, "test", "pos.pckl", [(2, True), (3, True)])
    printed = run_main(train_cli.main, [
        "sensum", "--category", "capsule_0", "--datasets-folder", str(tmp_path / "datasets"),
        "--results-path", str(tmp_path / "results"), "--device", "cpu", "--no-progress", "--no-figures",
        *sets([*TINY, "ratio_segmented=0.5", "folds=[0]"]),
    ])
    assert "8 train images (2 anomalous, 1 with image labels only), 5 test images" in printed
    assert re.search(r"^ +perlin_thr += 0\.6$", printed, re.MULTILINE)  # mixed: the supervised threshold
    run = tmp_path / "results" / "superSimpleNet"
    assert (run / "checkpoints" / "sensum" / "capsule_0" / "0.5" / "weights.pt").is_file()
    rows = read_csv(run / "sensum" / "0.5" / "last.csv")
    assert [row["category"] for row in rows] == ["capsule"]


def test_sensum_card_holds_the_category_size_and_eval_and_predict_need_nothing_more(tmp_path, capsys):
    """SensumSODF sizes its categories itself (softgel 144 x 144; the image_size setting stays []): the
    card records the model's size, and eval.py and predict.py work from the card alone."""
    import predict as predict_cli

    root = tmp_path / "datasets" / "SensumSODF"
    make_sensum_category(root, "softgel", num_negative=5, num_positive=2)
    write_sensum_split(root, "softgel", 0, "train", "neg.pckl", [(i, True) for i in range(3)])
    write_sensum_split(root, "softgel", 0, "train", "pos_100.pckl", [(0, True)])
    write_sensum_split(root, "softgel", 0, "test", "neg.pckl", [(3, True), (4, True)])
    write_sensum_split(root, "softgel", 0, "test", "pos.pckl", [(1, True)])
    model = ["backbone=resnet18", "pretrained=false", "folds=[0]"]
    run_main(train_cli.main, ["sensum", "--category", "softgel_0", "--datasets-folder", str(tmp_path / "datasets"),
                              "--results-path", str(tmp_path / "results"), "--device", "cpu", "--no-progress",
                              "--no-figures", *sets([*model, "epochs=1", "batch=4", "num_workers=0"])])
    folder = tmp_path / "results" / "superSimpleNet" / "checkpoints" / "sensum" / "softgel_0" / "1"
    card = yaml.safe_load((folder / "model.yaml").read_text())
    assert card["image_size"] == [144, 144] and card["settings"]["image_size"] == []

    capsys.readouterr()
    run_main(eval_cli.main, ["--datasets", "sensum", "--category", "softgel_0", "--from-training",
                             str(tmp_path / "results"), "--datasets-folder", str(tmp_path / "datasets"),
                             "--results-path", str(tmp_path / "eval"), "--device", "cpu", "--num-workers", "0",
                             "--no-progress", *sets(model)])
    evaluated = read_csv(tmp_path / "eval" / "0" / "1" / "sensum" / "last.csv")
    trained = read_csv(tmp_path / "results" / "superSimpleNet" / "sensum" / "1" / "last.csv")
    assert evaluated[0]["I-AUROC"] == trained[0]["I-AUROC"] and evaluated[0]["fold"] == "0"

    predict_cli.main(["--weights", str(folder / "weights.pt"), "--backend", "torch",
                      str(root / "softgel" / "negative" / "data" / "003.png"),
                      "--output", str(tmp_path / "predicted"), "--device", "cpu", "--no-progress"])
    assert "input 144x144" in capsys.readouterr().out
    assert (tmp_path / "predicted" / "predictions.csv").is_file()


# --- one training step of the weak regime ---------------------------------------------------------


def weak_batch(datasets: Path, config: dict) -> dict:
    """One batch of the journal weak-regime loader holding both label-only positives and normals."""
    split = load_ksdd2(datasets / "KolektorSDD2", 0, tuple(config["image_size"]), weak_labels=True)
    loader = make_train_loader(split, 8, 0, config["flips"], config["seed"], MaskProcessing.from_config(config))
    batch = next(iter(loader))
    labels, segmented = batch["label"], batch["is_segmented"]
    assert 0 < int(labels.sum()) < len(labels)
    assert torch.equal(segmented, labels == 0)  # the positives are label-only, the normals segmented
    assert float(batch["mask"].abs().sum()) == 0  # no pixel label anywhere
    return batch


def model_grads(model: SuperSimpleNet, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters() if p.requires_grad
    }


@pytest.mark.parametrize("stop_grad", [True, False])
def test_weak_step_trains_the_score_head_and_not_the_map_on_label_only_samples(datasets, stop_grad):
    config = build_config("ksdd2", overrides=[*TINY, "num_segmented=0", f"stop_grad={str(stop_grad).lower()}"])
    assert (config["version"], config["dilate"], config["dt"]) == ("jims", 7, [3, 2])
    model = SuperSimpleNet.from_config(tuple(config["image_size"]), config)
    model.train()
    batch = weak_batch(datasets, config)
    device = torch.device("cpu")
    # segmented only as the labels say: normals (and their noised copies) train the map; positives do not
    torch.manual_seed(0)
    loss = step_loss(model, batch, device, journal=True)
    grads = model_grads(model, loss)
    dec_names = [n for n in grads if n.startswith(("discriminator.dec_head", "discriminator.fc_score"))]
    seg_names = [n for n in grads if n.startswith("discriminator.seg")]
    assert dec_names and seg_names
    assert float(grads["discriminator.fc_score.weight"].abs().sum()) > 0

    # Now every sample label-only: the loss is exactly the score focal loss of the same forward pass,
    # and so are its gradients: no map term reaches the segmentation head.
    weak_only = dict(batch, is_segmented=torch.zeros_like(batch["is_segmented"]))
    torch.manual_seed(0)
    loss_weak = step_loss(model, weak_only, device, journal=True)
    grads_weak = model_grads(model, loss_weak)
    torch.manual_seed(0)
    mask = downsample_mask(batch["mask"], model.fh, model.fw, align_corners=True)
    _, score, _, label = model(batch["image"], mask, batch["label"].float())
    score_only = focal_loss(torch.sigmoid(score), label)
    grads_score = model_grads(model, score_only)
    assert float(loss_weak.detach()) == pytest.approx(float(score_only.detach()), rel=1e-6)
    for name in grads_weak:
        torch.testing.assert_close(grads_weak[name], grads_score[name], rtol=1e-5, atol=1e-8, msg=name)
    assert any(float(grads_weak[n].abs().sum()) > 0 for n in dec_names)  # the score head trains
    if stop_grad:
        assert all(float(grads_weak[n].abs().sum()) == 0 for n in seg_names)
    # with segmented normals the map is trained too: a different, larger loss
    assert float(loss.detach()) > float(loss_weak.detach())
    assert any(not torch.allclose(grads[n], grads_weak[n]) for n in seg_names)
