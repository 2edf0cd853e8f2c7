"""End to end with a timm backbone: train.py (timm:resnet18, feature indices [2, 3], a local weights
file of random values, 64 x 64, one epoch) writes the published 19-key checkpoint and a model.yaml
that records the backbone, its layers and the weights file's SHA-256; eval.py --from-training
rebuilds it from that card alone, and the weights file may move but not change; predict.py's fast
path agrees with --eager; export.py's ONNX file agrees with the eager model under onnxruntime
(timm:resnet18 and timm:efficientnet_b0)."""

import contextlib
import csv
import io

import numpy as np
import pytest
import timm
import torch
import yaml

import eval as eval_cli
import predict
import train as train_cli
from common.config import default_config
from common.errors import UserError
from common.fileio import file_digest
from common.metrics import METRIC_NAMES
from deploy.checkpoints import LoadedCheckpoint, load_checkpoint
from deploy.export import export_model
from model.supersimplenet import SuperSimpleNet
from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree, read_csv

PARITY = 1e-4
SETTINGS = ["backbone=timm:resnet18", "layers=[2,3]", "image_size=[64,64]", "epochs=1", "batch=4",
            "num_workers=0", "eval_step_size=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_run")
    datasets = make_mvtec_tree(root / "datasets")
    torch.manual_seed(5)
    weights_file = root / "resnet18_random.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights_file)  # as timm saves it: head included
    results = root / "results"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        train_cli.main(["folder", "--category", "widget", "--datasets-folder", str(datasets / "mvtec"),
                        "--results-path", str(results), "--device", "cpu", "--no-progress", "--no-figures",
                        *_sets([*SETTINGS, f"backbone_weights={weights_file}"])])
    checkpoint = results / "superSimpleNet" / "checkpoints" / "folder" / "widget" / "1" / "weights.pt"
    return datasets, results, checkpoint, weights_file, printed.getvalue()


def test_training_records_backbone_layers_and_weights_file(trained):
    _, results, checkpoint, weights_file, printed = trained
    sha256 = file_digest(weights_file)
    assert f"timm:resnet18 with weights from {weights_file}" in printed
    state = torch.load(checkpoint, weights_only=True)
    assert len(state) == 19 and state["feature_adaptor.projection.weight"].shape == (384, 384, 1, 1)
    card = yaml.safe_load(checkpoint.with_name("model.yaml").read_text())
    assert card["backbone"] == "timm:resnet18" and card["layers"] == [2, 3]
    assert card["backbone_weights"] == f"file:{sha256[:8]}"
    assert card["backbone_weights_source"] == {"kind": "file", "path": str(weights_file), "sha256": sha256}
    assert card["settings"]["backbone_weights"] == str(weights_file)
    row = read_csv(results / "superSimpleNet" / "folder" / "1" / "last.csv")[0]
    assert row["backbone_weights"] == f"file:{sha256[:8]}"


def test_eval_from_training_rebuilds_the_model_from_its_card(trained, tmp_path):
    datasets, results = trained[:2]
    out = tmp_path / "eval_res"
    with contextlib.redirect_stdout(io.StringIO()):
        eval_cli.main(["--datasets", "folder", "--categories", "widget", "--from-training", str(results),
                       "--datasets-folder", str(datasets / "mvtec"), "--results-path", str(out), "--device", "cpu",
                       "--num-workers", "0", "--batch", "5", "--no-progress"])
    evaluated = read_csv(out / "0" / "1" / "folder" / "last.csv")[0]
    trained_row = read_csv(results / "superSimpleNet" / "folder" / "1" / "last.csv")[0]
    for metric in METRIC_NAMES:
        assert float(evaluated[metric]) == pytest.approx(float(trained_row[metric]), abs=1e-6), metric


def test_a_moved_weights_file_is_accepted_and_another_one_refused(trained, tmp_path):
    checkpoint, weights_file = trained[2], trained[3]
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(weights_file.read_bytes())
    loaded = load_checkpoint(checkpoint, "jims", overrides=[f"backbone_weights={moved}"], verbose=False)
    assert loaded.model.feature_extractor.weights_source["path"] == str(moved)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(UserError, match="is not the one .* was trained with"):
        load_checkpoint(checkpoint, "jims", overrides=[f"backbone_weights={other}"], verbose=False)


def predictions(argv: list[str], output, capsys) -> tuple[dict[str, dict], str]:
    predict.main([*argv, "--output", str(output)])
    with open(output / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    return rows, capsys.readouterr().out


def test_predict_fast_path_equals_eager(trained, tmp_path, capsys):
    datasets, _, checkpoint = trained[:3]
    images = datasets / "mvtec" / "widget" / "test"
    argv = ["--weights", str(checkpoint), "--backend", "torch", str(images), "--save-maps", "--batch", "4", "--no-progress",
            "--device", "cpu"]
    fast, fast_out = predictions(argv, tmp_path / "fast", capsys)
    eager, eager_out = predictions([*argv, "--eager"], tmp_path / "eager", capsys)
    assert "Backend: torch fast" in fast_out and "Backend: torch eager" in eager_out
    assert len(fast) == len(eager) == 6
    for path, row in fast.items():
        assert float(row["score"]) == pytest.approx(float(eager[path]["score"]), abs=PARITY)
        stem = row["output_name"]
        difference = np.abs(np.load(tmp_path / "fast" / "maps" / f"{stem}.npy")
                            - np.load(tmp_path / "eager" / "maps" / f"{stem}.npy")).max()
        assert difference < PARITY


def random_checkpoint(folder, backbone: str, layers: list[int]) -> LoadedCheckpoint:
    torch.manual_seed(0)
    model = SuperSimpleNet((64, 64), backbone=backbone, layers=layers, pretrained=False).eval()
    config = default_config("mvtec")
    config.update(backbone=backbone, layers=layers, pretrained=False)
    return LoadedCheckpoint(model, config, None, model.save_model(folder), "mvtec")


@pytest.mark.parametrize("backbone", ["timm:resnet18", "timm:efficientnet_b0"])
def test_onnx_export_matches_the_eager_model(trained, tmp_path, backbone):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    if backbone == "timm:resnet18":  # the trained checkpoint, through its model.yaml
        loaded = load_checkpoint(trained[2], "jims", verbose=False)
    else:
        loaded = random_checkpoint(tmp_path, backbone, [2, 3])
    sidecar, differences = export_model(loaded, "onnx", "fp32", dynamic_batch=False, output=tmp_path / "model.onnx",
                                        check=True)
    assert differences is not None and max(differences) < PARITY, differences
    assert sidecar["model"]["backbone"] == backbone and sidecar["model"]["layers"] == [2, 3]
