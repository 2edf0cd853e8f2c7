"""predict.py end to end on a tiny random-weight checkpoint: odd sizes, grayscale, RGBA and
16-bit images, an unreadable file among good ones, the outputs and their layout, calibration
into model.yaml, and the one-line errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from common.calibration import threshold_at_fpr
from common.config import build_config
from common.image_io import image_to_tensor_array
from common.seeding import seed_everything
from deploy.calibrate import Thresholds, store_thresholds_in_card
from deploy.checkpoints import load_checkpoint
from deploy.overlay import heatmap_rgb, overlay_layout, render_overlay
from model.card import make_card, read_model_card, write_model_card
from model.supersimplenet import SuperSimpleNet

REPO = Path(__file__).resolve().parents[2]
SIZE = [64, 64]


def make_checkpoint(folder: Path, card: bool = True, version: str = "jims") -> Path:
    config = build_config("demo", None, [f"image_size={SIZE}".replace(" ", "")], version)
    seed_everything(config["seed"])
    model = SuperSimpleNet.from_config(tuple(SIZE), config)
    with torch.no_grad():  # non-trivial head outputs
        model.discriminator.seg[1].running_var.uniform_(0.5, 2.0)
    weights = model.save_model(folder)
    if card:
        write_model_card(folder, make_card(config, model, "demo", "fabric", "random"))
    return weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def write_images(folder: Path) -> dict[str, Path]:
    """Images of odd sizes and kinds; also the 8-bit RGB twin of each special kind, for comparison."""
    rng = np.random.default_rng(0)
    (folder / "nested" / "deeper").mkdir(parents=True)
    rgb = (rng.random((45, 77, 3)) * 255).astype(np.uint8)  # odd size, wide
    gray16 = (rng.random((93, 31)) * 65535).astype(np.uint16)  # odd size, tall
    paths = {
        "rgb": folder / "rgb.png",
        "gray": folder / "nested" / "gray.png",
        "rgba": folder / "nested" / "rgba.png",
        "gray16": folder / "nested" / "deeper" / "gray16.png",
        "color16": folder / "color16.tif",
        "jpeg": folder / "photo.jpg",
        "bad": folder / "nested" / "broken.png",
    }
    cv2.imwrite(str(paths["rgb"]), rgb[..., ::-1])
    cv2.imwrite(str(paths["gray"]), rgb[..., 0])
    cv2.imwrite(str(paths["rgba"]), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 90, np.uint8)]))
    cv2.imwrite(str(paths["gray16"]), gray16)
    color16 = (rng.random((33, 129, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(paths["color16"]), color16)
    cv2.imwrite(str(paths["jpeg"]), rgb[:40, :71, ::-1])
    paths["bad"].write_bytes(b"this is not an image")
    # 8-bit twins: what the special files must be read as
    twins = folder.parent / f"{folder.name}_twins"
    twins.mkdir()
    cv2.imwrite(str(twins / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
    cv2.imwrite(str(twins / "rgba.png"), rgb[..., ::-1])
    cv2.imwrite(str(twins / "gray16.png"), np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2))
    # OpenCV's codecs (and so training's reader) take the high byte of a 16-bit PNG but round
    # v / 257 for a 16-bit TIFF: both within one 8-bit level of the exact value
    cv2.imwrite(str(twins / "color16.png"), np.round(color16 / 257).astype(np.uint8))
    paths["twins"] = twins
    return paths


def run_predict(argv: list[str], capsys) -> tuple[int, str, str]:
    """predict.py in this process. A --weights run without --backend gets --backend torch: these
    tests are about predict's outputs, not its runtimes (tests/deploy/test_runtime_cache.py)."""
    if "--weights" in argv and "--backend" not in argv:
        argv = [*argv, "--backend", "torch"]
    try:
        predict.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def eager_probabilities(weights: Path, image_rgb: np.ndarray) -> tuple[float, np.ndarray]:
    """The published eager model's sigmoid(score) and sigmoid(map), computed here independently."""
    loaded = load_checkpoint(weights, "jims", verbose=False)
    inputs = torch.from_numpy(image_to_tensor_array(image_rgb, tuple(SIZE)))[None]
    with torch.no_grad():
        anomaly_map, score = loaded.model(inputs)
    return float(torch.sigmoid(score)[0]), torch.sigmoid(anomaly_map)[0, 0].numpy()


@pytest.fixture(scope="module")
def prediction_run(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    paths = write_images(root / "images")
    output = root / "out"
    argv = ["--weights", str(checkpoint), "--backend", "torch", str(root / "images"), str(paths["twins"]), "--output", str(output),
            "--save-maps", "--batch", "3", "--no-progress", "--device", "cpu"]
    return paths, output, argv


def test_predict_writes_every_output_and_skips_the_unreadable_file(prediction_run, capsys):
    paths, output, argv = prediction_run
    code, out, err = run_predict(argv, capsys)
    assert code == 0
    assert "broken.png" in err and "skipped" in err  # reported ...
    with open(output / "skipped.csv", newline="") as handle:
        assert [Path(r["path"]).name for r in csv.DictReader(handle)] == ["broken.png"]
    rows = read_rows(output / "predictions.csv")
    assert len(rows) == 6 + 4  # ... and every other image done (images/ and the twins)
    assert "uncalibrated" in out
    for name, row in rows.items():
        assert row["calibration"] == "uncalibrated"
        assert float(row["image_threshold"]) == 0.5 and float(row["pixel_threshold"]) == 0.5
        assert row["decision"] == ("defect" if float(row["score"]) > 0.5 else "normal")
        original = cv2.imread(row["path"], cv2.IMREAD_UNCHANGED)
        height, width = original.shape[:2]
        assert (int(row["width"]), int(row["height"])) == (width, height)
        stem = row["output_name"]
        heatmap = cv2.imread(str(output / "heatmaps" / f"{stem}.png"))
        mask = cv2.imread(str(output / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(output / "overlays" / f"{stem}.png"))
        anomaly_map = np.load(output / "maps" / f"{stem}.npy")
        assert heatmap.shape == (height, width, 3)
        assert anomaly_map.shape == (height, width) and anomaly_map.dtype == np.float32
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, anomaly_map > float(row["pixel_threshold"]))
        assert int(row["defect_area_px"]) == int((mask == 255).sum())
        assert float(row["max_pixel"]) == pytest.approx(float(anomaly_map.max()), abs=1e-6)
        title, bar = overlay_layout(height, width)
        assert overlay.shape == (height + title, width + bar, 3)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["thresholds"]["calibrated"] is False and summary["skipped"] == 1 and summary["images"] == 10


def test_scores_and_maps_are_the_raw_sigmoid_outputs_of_the_model(prediction_run, checkpoint, capsys):
    paths, output, argv = prediction_run
    if not (output / "predictions.csv").is_file():
        assert run_predict(argv, capsys)[0] == 0
    rows = read_rows(output / "predictions.csv")
    rgb = cv2.imread(str(paths["rgb"]))[..., ::-1]
    score, probabilities = eager_probabilities(checkpoint, rgb)
    assert float(rows[str(paths["rgb"])]["score"]) == pytest.approx(score, abs=1e-5)  # not normalised over the run
    height, width = rgb.shape[:2]
    expected_map = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    stem = rows[str(paths["rgb"])]["output_name"]
    np.testing.assert_allclose(np.load(output / "maps" / f"{stem}.npy"), expected_map, atol=1e-4)


def test_grayscale_rgba_and_16_bit_images_are_read_as_their_8_bit_rgb_twins(prediction_run, capsys):
    paths, output, argv = prediction_run
    if not (output / "predictions.csv").is_file():
        assert run_predict(argv, capsys)[0] == 0
    rows = read_rows(output / "predictions.csv")
    for kind in ("gray", "rgba", "gray16", "color16"):
        special = rows[str(paths[kind])]
        twin = rows[str(paths["twins"] / f"{kind}.png")]
        assert float(special["score"]) == pytest.approx(float(twin["score"]), abs=1e-6), kind
        assert special["defect_area_px"] == twin["defect_area_px"]


def test_overlay_layout_is_exact():
    rng = np.random.default_rng(1)
    for height, width in ((45, 77), (93, 31), (600, 1100), (300, 400)):
        image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        probabilities = rng.random((height, width)).astype(np.float32) * 0.4  # below the threshold: no outline
        overlay = render_overlay(image, probabilities, probabilities > 0.5, 0.3, False, Thresholds())
        unit = max(1.0, max(height, width) / 512)
        bar = round(56 * unit)
        title = (2 if width + bar >= round(300 * unit) else 6) * round(18 * unit)
        assert overlay.shape == (height + title, width + bar, 3)
        # the image region is the blend of the image and its heatmap, pixel for pixel, below the title
        blend = cv2.addWeighted(image, 0.55, heatmap_rgb(probabilities), 0.45, 0)
        np.testing.assert_array_equal(overlay[title:, :width], blend)
        assert (overlay[:title] == 255).mean() > 0.6  # a white title strip with text on it
        assert (overlay[:title] != 255).any()
        # the colour bar: 1.0 (dark red) at its top, 0.0 (dark blue) at its bottom
        column = overlay[title:, width + max(2, round(4 * unit)) + 1]
        coloured = np.flatnonzero((column != 255).any(axis=1))
        top, bottom = column[coloured[0] + 1].astype(int), column[coloured[-1] - 1].astype(int)
        assert top[0] > 100 and top[2] < 50 and bottom[2] > 100 and bottom[0] < 50


def test_calibration_stores_thresholds_in_model_yaml_and_predict_uses_them(checkpoint, tmp_path, capsys):
    weights = make_checkpoint(tmp_path / "model")
    before = read_model_card(weights)
    normal = tmp_path / "normal"
    normal.mkdir()
    rng = np.random.default_rng(3)
    for index in range(12):
        cv2.imwrite(str(normal / f"n{index}.png"), (rng.random((50 + index, 70, 3)) * 255).astype(np.uint8))
    output = tmp_path / "out"
    code, out, _ = run_predict(["--weights", str(weights), "--calibrate", str(normal), "--fpr", "0.1",
                                str(normal), "--output", str(output), "--save-maps", "--no-progress"], capsys)
    assert code == 0
    card = read_model_card(weights)
    thresholds = card["thresholds"]
    assert set(thresholds) >= {"image", "pixel", "method", "fpr", "count"}
    assert thresholds["method"] == "fpr" and thresholds["fpr"] == 0.1 and thresholds["count"] == 12
    def unchanged(c: dict) -> dict:  # calibration changes the thresholds and so their digest, nothing else
        return {k: v for k, v in c.items() if k not in ("thresholds", "digests")}

    assert unchanged(card) == unchanged(before)
    assert card["weights_sha256"] == before["weights_sha256"]
    rows = read_rows(output / "predictions.csv")
    scores = np.array([float(row["score"]) for row in rows.values()])
    # the same images predicted: the stored threshold is the quantile rule on their scores
    assert thresholds["image"] == pytest.approx(threshold_at_fpr(scores, 0.1), abs=1e-6)
    # what predict.py decided on the very images the threshold came from: strictly above it (one image
    # sits exactly at it), so at most floor(fpr x n) = floor(0.1 x 12) = 1 normal image is a defect
    decisions = [row["decision"] for row in rows.values()]
    assert decisions.count("defect") <= 1 and len(decisions) == 12, decisions
    assert any(float(row["score"]) == pytest.approx(thresholds["image"], abs=1e-7) for row in rows.values())
    assert json.loads((output / "summary.json").read_text())["defects"] == decisions.count("defect")
    for row in rows.values():
        assert row["calibration"].startswith("calibrated") and float(row["image_threshold"]) == pytest.approx(
            thresholds["image"], abs=1e-6)
    # a later run reads them from model.yaml
    code, out, _ = run_predict(["--weights", str(weights), str(normal / "n0.png"), "--output", str(tmp_path / "o2"),
                                "--no-progress"], capsys)
    assert code == 0 and "uncalibrated" not in out
    row = next(iter(read_rows(tmp_path / "o2" / "predictions.csv").values()))
    assert float(row["pixel_threshold"]) == pytest.approx(thresholds["pixel"], abs=1e-6)


def test_model_yaml_thresholds_round_trip(tmp_path):
    weights = make_checkpoint(tmp_path)
    loaded = load_checkpoint(weights, "jims", verbose=False)
    stored = {"image": 0.123456789, "pixel": 0.87654321, "method": "fpr", "fpr": 0.01, "count": 40}
    store_thresholds_in_card(loaded, stored)
    card = read_model_card(weights)
    assert card["thresholds"] == stored
    again = Thresholds.from_mapping(load_checkpoint(weights, "jims", verbose=False).card["thresholds"])
    assert (again.image, again.pixel, again.calibrated) == (0.123456789, 0.87654321, True)
    assert Thresholds.from_mapping({}).calibrated is False


def test_published_checkpoint_gets_a_card_on_calibration(tmp_path, capsys):
    weights = make_checkpoint(tmp_path / "published", card=False)
    normal = tmp_path / "normal"
    normal.mkdir()
    for index in range(3):
        cv2.imwrite(str(normal / f"{index}.png"), np.full((40, 40, 3), 60 * index, np.uint8))
    settings = ["--set", "backbone=resnet18", "--set", "pretrained=false", "--set", "image_size=[64,64]",
                "--set", "seed=42", "--dataset", "demo"]
    code, out, _ = run_predict(["--weights", str(weights), "--calibrate", str(normal), "--no-progress", *settings],
                               capsys)
    assert code == 0 and "no model.yaml" in out
    card = read_model_card(weights)
    assert card["version"] == "jims" and card["image_size"] == [64, 64] and card["backbone"] == "resnet18"
    assert card["thresholds"]["count"] == 3 and card["backbone_weights"] == "random"
    # the card now fixes the settings: a contradicting --set is one error line
    code, _, err = run_predict(["--weights", str(weights), str(normal), "--set", "backbone=resnet34",
                                "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "contradicts" in err


def test_labelled_calibration_is_f1_optimal(checkpoint, tmp_path, capsys):
    weights = make_checkpoint(tmp_path / "model")
    labelled = tmp_path / "labelled"
    for sub in ("good", "defect", "masks"):
        (labelled / sub).mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(4):
        cv2.imwrite(str(labelled / "good" / f"g{index}.png"), (rng.random((64, 64, 3)) * 80).astype(np.uint8))
        image = (rng.random((64, 64, 3)) * 80).astype(np.uint8)
        image[20:40, 10:30] = 255
        cv2.imwrite(str(labelled / "defect" / f"d{index}.png"), image)
        mask = np.zeros((64, 64), np.uint8)
        mask[20:40, 10:30] = 1  # 0/1 masks count
        cv2.imwrite(str(labelled / "masks" / f"d{index}_mask.png"), mask)
    code, out, _ = run_predict(["--weights", str(weights), "--calibrate-labelled", str(labelled), "--no-progress"],
                               capsys)
    assert code == 0
    thresholds = read_model_card(weights)["thresholds"]
    assert thresholds["method"] == "f1" and thresholds["pixel_method"] == "f1"
    assert thresholds["count"] == 8 and 0 < thresholds["f1_image"] <= 1 and 0 < thresholds["f1_pixel"] <= 1


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_bad_weights_is_one_line_and_exit_2(tmp_path, case):
    weights = tmp_path / "weights.pt"
    if case == "corrupt":
        weights.write_bytes(b"not a checkpoint")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    result = subprocess.run([sys.executable, "predict.py", "--weights", str(weights), "--backend", "torch", str(image), "--output",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(weights) in result.stderr


def test_nothing_to_do_and_no_images_are_errors(checkpoint, tmp_path, capsys):
    code, _, err = run_predict(["--weights", str(checkpoint)], capsys)
    assert code == 2 and "nothing to do" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_predict(["--weights", str(checkpoint), str(tmp_path / "empty"), "--output",
                                str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "no images found" in err


def png_claiming(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width x height (a decompression bomb's header)."""
    import struct
    import zlib

    ok, encoded = cv2.imencode(".png", np.zeros((2, 2), np.uint8))
    data = bytearray(encoded.tobytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def test_images_over_max_pixels_are_skipped_unread_and_listed(checkpoint, tmp_path, capsys):
    from deploy.images import DEFAULT_MAX_PIXELS, image_pixels

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    cv2.imwrite(str(folder / "small.png"), (rng.random((60, 80, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "large.png"), (rng.random((100, 120, 3)) * 255).astype(np.uint8))
    (folder / "bomb.png").write_bytes(png_claiming(20000, 20000))
    assert image_pixels(folder / "bomb.png") == 400_000_000 > DEFAULT_MAX_PIXELS
    assert image_pixels(folder / "large.png") == 12_000

    code, out, err = run_predict(["--weights", str(checkpoint), str(folder), "--output", str(tmp_path / "out"),
                                  "--max-pixels", "10000", "--no-progress"], capsys)
    assert code == 0
    assert list(read_rows(tmp_path / "out" / "predictions.csv")) == [str(folder / "small.png")]
    with open(tmp_path / "out" / "skipped.csv", newline="") as handle:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(skipped) == {str(folder / "bomb.png"), str(folder / "large.png")}
    assert "has 400.0 megapixels, more than --max-pixels 10000" in skipped[str(folder / "bomb.png")]
    assert "has 0.0 megapixels, more than --max-pixels 10000" in skipped[str(folder / "large.png")]
    assert err.count("skipped: ") == 2 and "Traceback" not in err

    # with the default limit the bomb is still refused before any decoding; the 12 000-pixel image is predicted
    code, out, err = run_predict(["--weights", str(checkpoint), str(folder), "--output", str(tmp_path / "out2"),
                                  "--no-progress"], capsys)
    assert code == 0 and len(read_rows(tmp_path / "out2" / "predictions.csv")) == 2
    assert "bomb.png has 400.0 megapixels, more than --max-pixels 100000000" in err
