"""export.py: the exported fast model (ONNX through onnxruntime, OpenVINO IR) against the eager
fp32 model at a rectangular size (640 x 232, KSDD2's), batch 1 and 4, both versions; the sidecar;
predict.py running the exported file. Skipped only when the optional package is absent."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.config import default_config
from common.image_io import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor_array
from deploy.export import default_output, export_model
from deploy.backends import OnnxRuntimeBackend, OpenVinoBackend, sidecar_path
from deploy.checkpoints import LoadedCheckpoint
from tests.model.random_models import images, make_model

REPO = Path(__file__).resolve().parents[2]
SIZE = (640, 232)
PARITY = 1e-4  # the bound on probabilities, fp32
VERSIONS = {"icpr": True, "journal": False}  # adapt_cls_features


def loaded_checkpoint(folder: Path, adapt_cls_features: bool) -> LoadedCheckpoint:
    model = make_model(SIZE, adapt_cls_features)
    folder.mkdir(parents=True, exist_ok=True)
    weights = model.save_model(folder)
    config = default_config("ksdd2", "icpr" if adapt_cls_features else "jims")
    config.update(backbone="resnet18", pretrained=False, adapt_cls_features=adapt_cls_features, seed=0)
    return LoadedCheckpoint(model, config, None, weights, "ksdd2")


@pytest.fixture(scope="module", params=list(VERSIONS), ids=list(VERSIONS))
def exported(request, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    loaded = loaded_checkpoint(tmp_path_factory.mktemp(request.param), VERSIONS[request.param])
    onnx_file = loaded.weights.parent / "model.onnx"
    export_model(loaded, "onnx", "fp32", dynamic_batch=True, output=onnx_file, check=False)
    return loaded, onnx_file


def expected_probabilities(model, inputs):
    with torch.no_grad():
        anomaly_map, score = model(inputs)
    return torch.sigmoid(anomaly_map[:, 0]).numpy(), torch.sigmoid(score).numpy(), anomaly_map


def check_parity(backend, model, batch: int) -> tuple[float, float]:
    inputs = images(batch, SIZE, seed=batch)
    expected_map, expected_score, logits = expected_probabilities(model, inputs)
    maps, scores = backend(inputs.numpy())
    assert maps.shape == (batch, *SIZE) and scores.shape == (batch,)
    assert maps.dtype == np.float32 and scores.dtype == np.float32
    assert logits.std() > 0.05 and expected_map.std() > 1e-3  # not saturated: the comparison means something
    differences = float(np.abs(maps - expected_map).max()), float(np.abs(scores - expected_score).max())
    assert max(differences) < PARITY, differences
    return differences


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_matches_the_eager_model(exported, batch):
    pytest.importorskip("onnxruntime")
    loaded, onnx_file = exported
    sidecar = json.loads(sidecar_path(onnx_file).read_text())
    backend = OnnxRuntimeBackend(onnx_file, "cpu", sidecar)
    assert backend.fixed_batch is None  # --dynamic-batch
    check_parity(backend, loaded.model, batch)
    names = ([i.name for i in backend.session.get_inputs()], [o.name for o in backend.session.get_outputs()])
    assert names == (["images"], ["anomaly_map", "score"])


@pytest.fixture(scope="module")
def openvino_exported(exported):
    pytest.importorskip("openvino")
    loaded, onnx_file = exported
    xml = onnx_file.with_name("model.xml")
    export_model(loaded, "openvino", "fp32", dynamic_batch=True, output=xml, check=False)
    return loaded, xml


@pytest.mark.parametrize("batch", [1, 4])
def test_openvino_matches_the_eager_model(openvino_exported, batch):
    loaded, xml = openvino_exported
    assert xml.with_suffix(".bin").is_file()
    backend = OpenVinoBackend(xml, "cpu", json.loads(sidecar_path(xml).read_text()))
    check_parity(backend, loaded.model, batch)


def test_sidecar_documents_the_preprocessing(exported):
    loaded, onnx_file = exported
    sidecar = json.loads(sidecar_path(onnx_file).read_text())
    assert sidecar["format"] == "onnx" and sidecar["precision"] == "fp32" and sidecar["dynamic_batch"] is True
    assert sidecar["input"]["name"] == "images" and sidecar["input"]["shape"] == ["batch", 3, *SIZE]
    assert sidecar["input"]["image_size"] == list(SIZE) and sidecar["input"]["channel_order"] == "RGB"
    assert sidecar["input"]["mean"] == pytest.approx(IMAGENET_MEAN.tolist())
    assert sidecar["input"]["std"] == pytest.approx(IMAGENET_STD.tolist())
    assert sidecar["input"]["scale"] == pytest.approx(1 / 255)
    assert sidecar["input"]["resize"]["interpolation"] == "bilinear"
    assert set(sidecar["outputs"]) == {"anomaly_map", "score"}
    assert sidecar["thresholds"] == {"image": 0.5, "pixel": 0.5, "calibrated": False}
    assert sidecar["model"]["adapt_cls_features"] is loaded.model.adapt_cls_features
    assert sidecar["model"]["image_size"] == list(SIZE)


def test_fixed_batch_export_runs_any_batch_one_by_one(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    loaded = loaded_checkpoint(tmp_path, True)
    output = default_output(loaded.weights, "onnx", "fp32")
    assert output == tmp_path / "model.onnx"
    _, differences = export_model(loaded, "onnx", "fp32", dynamic_batch=False, output=output, check=True)
    assert max(differences) < PARITY
    backend = OnnxRuntimeBackend(output, "cpu", json.loads(sidecar_path(output).read_text()))
    assert backend.fixed_batch == 1
    check_parity(backend, loaded.model, 3)


def test_predict_runs_the_exported_file_like_the_checkpoint(exported, tmp_path):
    pytest.importorskip("onnxruntime")
    loaded, onnx_file = exported
    if not loaded.model.adapt_cls_features:
        pytest.skip("one version is enough here")
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(700, 250), (100, 333)]):
        cv2.imwrite(str(image_dir / f"{index}.png"), (rng.random((height, width, 3)) * 255).astype(np.uint8))
    output = tmp_path / "onnx"
    result = subprocess.run([sys.executable, "predict.py", "--model", str(onnx_file), str(image_dir), "--output",
                             str(output), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Backend: onnxruntime" in result.stdout and "uncalibrated" in result.stdout
    with open(output / "predictions.csv", newline="") as handle:
        rows = {"onnx": {Path(r["path"]).name: r for r in csv.DictReader(handle)}}
    assert len(rows["onnx"]) == 2
    for file_name, row in rows["onnx"].items():
        rgb = cv2.imread(str(image_dir / file_name))[..., ::-1]
        assert (int(row["height"]), int(row["width"])) == rgb.shape[:2]
        inputs = torch.from_numpy(image_to_tensor_array(rgb, SIZE))[None]
        _, expected_score, _ = expected_probabilities(loaded.model, inputs)
        assert float(row["score"]) == pytest.approx(float(expected_score[0]), abs=2e-6 + PARITY)


def test_torchscript_export_matches(tmp_path):
    model = make_model((64, 96), False)
    weights = model.save_model(tmp_path)
    config = default_config("mvtec", "jims")
    config.update(backbone="resnet18", pretrained=False)
    loaded = LoadedCheckpoint(model, config, None, weights, "mvtec")
    output = tmp_path / "model.torchscript.pt"
    _, differences = export_model(loaded, "torchscript", "fp32", dynamic_batch=True, output=output, check=True)
    assert max(differences) < PARITY


def test_export_cli_bad_weights_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "export.py", "--weights", str(tmp_path / "none.pt"), "--format", "onnx"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
