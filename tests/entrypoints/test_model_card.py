"""model.yaml: training records how a checkpoint was made; eval.py reproduces training's metrics
from it without repeating any setting, and a --set or --version that contradicts it is an error."""

import contextlib
import csv
import io

import pytest
import yaml

import eval as eval_cli
import train as train_cli
from common.errors import UserError
from common.metrics import METRIC_NAMES
from model.card import apply_card
from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree

# a run that differs from every default the card must carry: backbone, random weights, 48x48,
# run id 1 (seed + 1) and the ICPR head on the journal version's defaults
TRAINING = ["backbone=resnet18", "pretrained=false", "image_size=[48,48]", "epochs=1", "batch=4",
            "num_workers=0", "eval_step_size=1", "adapt_cls_features=true"]


def _quiet(main, argv):
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main(argv)
    return printed.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    datasets = make_mvtec_tree(root / "datasets")
    _quiet(train_cli.main, ["folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"),
                            "--results-path", str(root / "results"), "--run-id", "1", "--device", "cpu",
                            "--no-progress", "--no-figures", *_sets(TRAINING)])
    return root, datasets


def _row(path):
    with open(path, newline="") as handle:
        return next(csv.DictReader(handle))


def test_card_records_version_size_backbone_seed_and_settings(trained):
    root, _ = trained
    card = yaml.safe_load((root / "results/superSimpleNet_run1/checkpoints/folder/widget/1/model.yaml").read_text())
    assert card["version"] == "jims" and card["dataset"] == "folder" and card["unit"] == "widget"
    assert card["image_size"] == [48, 48] and card["backbone"] == "resnet18"
    assert card["layers"] == ["layer2", "layer3"] and card["patch_size"] == 3
    assert card["adapt_cls_features"] is True
    assert card["seed"] == 43  # 42 + run id 1
    assert card["backbone_weights"] == "random"
    assert card["settings"]["epochs"] == 1 and card["settings"]["image_size"] == [48, 48]
    assert card["thresholds"] == {}
    # the mvtec-layout folder has defects only in test: unsupervised, 5 normal training images
    assert card["regime"] == {"name": "unsupervised", "defects_with_masks": 0, "defects_with_labels_only": 0,
                              "normal_images": 5}


def test_card_records_its_weights_and_a_digest_of_every_field(trained):
    import hashlib

    from model.card import field_digests

    folder = trained[0] / "results/superSimpleNet_run1/checkpoints/folder/widget/1"
    card = yaml.safe_load((folder / "model.yaml").read_text())
    assert card["weights_sha256"] == hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    digests = card["digests"]
    assert digests == field_digests(card)
    assert {"version", "image_size", "regime", "thresholds", "settings.seed", "settings.backbone"} <= set(digests)
    assert not {"format", "weights_sha256", "digests", "settings"} & set(digests)
    assert all(len(value) == 8 for value in digests.values())


def _copy_checkpoint(trained, tmp_path):
    import shutil

    source = trained[0] / "results/superSimpleNet_run1/checkpoints/folder/widget/1"
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def test_a_hand_edited_card_warns_once_and_is_used_as_it_says(trained, tmp_path, capsys):
    import predict as predict_cli

    folder = _copy_checkpoint(trained, tmp_path)
    text = (folder / "model.yaml").read_text()
    assert "image_size: [48, 48]" in text
    (folder / "model.yaml").write_text(text.replace("image_size: [48, 48]", "image_size: [32, 32]", 1))
    images = trained[1] / "mvtec" / "widget" / "test" / "good"
    predict_cli.main(["--weights", str(folder / "weights.pt"), "--backend", "torch", str(images), "--output", str(tmp_path / "out"),
                      "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr()
    warnings = [line for line in printed.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {folder / 'model.yaml'} was edited by hand after it was written (image_size "
                        "changed); using it as it says"], printed.err
    assert "input 32x32" in printed.out  # the card as edited, not the 48 x 48 it was trained at


def test_a_card_copied_from_other_weights_is_refused(trained, tmp_path):
    from model.card import read_model_card

    folder = _copy_checkpoint(trained, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.pt").write_bytes((folder / "weights.pt").read_bytes()[:-8] + b"\0" * 8)
    (other / "model.yaml").write_text((folder / "model.yaml").read_text())
    with pytest.raises(UserError, match="model.yaml describes other weights: it records weights.pt SHA-256"):
        read_model_card(other / "weights.pt")
    assert read_model_card(folder / "weights.pt")["unit"] == "widget"  # the original pair is fine


def test_eval_reproduces_training_without_repeating_settings(trained, tmp_path):
    root, datasets = trained
    _quiet(eval_cli.main, ["--datasets", "folder", "--categories", "widget", "--from-training", str(root / "results"),
                           "--run-id", "1", "--datasets-folder", str(datasets / "mvtec"), "--results-path",
                           str(tmp_path), "--device", "cpu", "--num-workers", "0", "--no-progress"])
    evaluated = _row(tmp_path / "1" / "1" / "folder" / "last.csv")
    trained_row = _row(root / "results/superSimpleNet_run1/folder/1/last.csv")
    for metric in METRIC_NAMES:
        assert float(evaluated[metric]) == pytest.approx(float(trained_row[metric]), abs=1e-6), metric


@pytest.mark.parametrize("arguments, fragments", [
    (["--set", "image_size=[64,64]"], ["image_size=[64, 64]", "image_size: [48, 48]"]),
    (["--set", "backbone=resnet34"], ["backbone='resnet34'", "'resnet18'"]),
])
def test_contradicting_setting_names_both_values(trained, tmp_path, capsys, arguments, fragments):
    root, datasets = trained
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--datasets", "folder", "--categories", "widget", "--from-training", str(root / "results"),
                       "--run-id", "1", "--datasets-folder", str(datasets / "mvtec"), "--results-path", str(tmp_path),
                       "--device", "cpu", "--num-workers", "0", "--no-progress", *arguments])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "model.yaml" in message
    for fragment in fragments:
        assert fragment in message


def test_apply_card_takes_the_card_and_refuses_a_chosen_version(tmp_path):
    card = {"version": "icpr", "settings": {"image_size": [48, 48], "seed": 7, "backbone": "resnet18", "epochs": 3}}
    config = {"version": "jims", "image_size": [256, 256], "seed": 42, "backbone": "wide_resnet50_2", "epochs": 300}
    applied = apply_card(config, card, {}, tmp_path / "weights.pt", version_chosen=False)
    assert applied == {"version": "icpr", "image_size": [48, 48], "seed": 7, "backbone": "resnet18", "epochs": 300}
    with pytest.raises(UserError, match="--version jims contradicts"):
        apply_card(config, card, {}, tmp_path / "weights.pt", version_chosen=True)
    assert apply_card(config, None, {"seed": 1}, tmp_path / "weights.pt") is config  # a published checkpoint


def test_calibration_split_holds_back_normals_and_stores_thresholds(tmp_path):
    datasets = make_mvtec_tree(tmp_path / "datasets")
    printed = _quiet(train_cli.main, [
        "folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"),
        "--results-path", str(tmp_path / "results"), "--device", "cpu", "--no-progress",
        *_sets([*TRAINING, "calibration_split=0.4"])])
    # 5 good training images: 2 held back, 3 trained on
    assert "2 normal training images held back to calibrate thresholds" in printed
    card = yaml.safe_load((tmp_path / "results/superSimpleNet/checkpoints/folder/widget/1/model.yaml").read_text())
    thresholds = card["thresholds"]
    assert thresholds["count"] == 2 and thresholds["method"] == "fpr"
    assert 0.0 < thresholds["image"] < 1.0 and 0.0 < thresholds["pixel"] < 1.0
    figures = sorted((tmp_path / "results/superSimpleNet/visual/folder/widget/1").rglob("*.png"))
    assert len(figures) == 6  # the figures were drawn with the calibrated pixel threshold


def test_hold_out_normals_is_seeded_and_keeps_one_for_training():
    from datamodules.base import DatasetSplit, Sample

    train = [Sample(f"g{i}.png", "", 0) for i in range(10)] + [Sample("d.png", "d_mask.png", 1)]
    split = DatasetSplit("folder", "x", train, [], (64, 64))
    kept, held = split.hold_out_normals(0.3, seed=42)
    assert len(held) == 3 and len(kept.train) == 8 and all(s.label == 0 for s in held)
    assert {s.image_path for s in held}.isdisjoint(s.image_path for s in kept.train)
    assert split.hold_out_normals(0.3, seed=42)[1] == held  # seeded
    assert split.hold_out_normals(0.3, seed=7)[1] != held
    assert split.hold_out_normals(0.0, seed=42) == (split, [])
    single = DatasetSplit("folder", "x", train[:1], [], (64, 64))
    assert single.hold_out_normals(0.5, seed=1)[1] == []  # the only normal image stays in training
