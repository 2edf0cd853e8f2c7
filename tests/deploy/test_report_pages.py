"""The report pages built from hand-made predictions (no model, no browser): the unit data file,
the run page's interface and escaping, n/a with its reason, the paper's figures, units without
data, the gallery rules, the header's regime and settings, and the prediction page's escaping."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from common.config import build_config
from common.metrics import METRIC_NAMES, compute_metrics
from common.results import ResultsWriter, paper_figures
from deploy.report import describe_unit, write_run_report, write_unit_data
from deploy.report.header import regime, settings_differences, training_counts
from deploy.report.page import json_for_script, relative_url
from deploy.report.prediction_page import render_prediction_page
from deploy.report.unit_data import gallery_members, undefined_reasons
from tests.deploy.dom import elements, external_references, scripts

EVIL = "</script><script>alert(1)</script>\"'&<b>"


def fake_predictions(root: Path, defect_pixels: bool = True, evil_file: bool = False) -> SimpleNamespace:
    """8 test images in MVTec layout (4 good, 2 scratch, 2 dent) with 16 x 16 maps and masks."""
    rng = np.random.default_rng(1)
    paths, labels, masks = [], [], []
    for index, kind in enumerate(["good"] * 4 + ["scratch"] * 2 + ["dent"] * 2):
        name = f"{EVIL}{index}.png" if evil_file and index == 4 else f"{index:03d}.png"
        path = root / "test" / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), (rng.random((20, 30, 3)) * 255).astype(np.uint8))
        paths.append(str(path))
        labels.append(int(kind != "good"))
        mask = np.zeros((16, 16), np.uint8)
        if kind != "good" and defect_pixels:
            mask[4:9, 3 + index:8 + index] = 1
        masks.append(mask)
    masks = np.stack(masks)
    maps = rng.random((8, 16, 16)).astype(np.float32) + masks * 0.6
    scores = np.array([0.10, 0.20, 0.70, 0.30, 0.80, 0.25, 0.90, 0.60], dtype=np.float32)
    return SimpleNamespace(anomaly_maps=maps, gt_masks=masks, scores=scores, labels=np.array(labels),
                           image_paths=paths, mask_paths=[""] * 8)


def build_run(tmp_path: Path, category: str = "widget", dataset: str = "folder", thresholds: dict | None = None,
              defect_pixels: bool = True, evil_file: bool = False, with_data: bool = True) -> tuple[Path, dict]:
    predictions = fake_predictions(tmp_path / "images", defect_pixels, evil_file)
    split = SimpleNamespace(train=[SimpleNamespace(label=0, is_segmented=True)] * 5, info={})
    values, notes = compute_metrics(predictions.anomaly_maps, predictions.gt_masks, predictions.scores,
                                    predictions.labels)
    config = build_config(dataset, None, ["epochs=3"])
    results = tmp_path / "results"
    unit = describe_unit(dataset, "unit_a", {"category": category}, config, 0, "1", split, "training")
    if with_data:
        write_unit_data(results, unit, predictions, values, notes, thresholds, "random")
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("backbone_weights", "version"))
    writer.add(category, values, backbone_weights="random", version="jims")
    writer.save(results)
    return write_run_report(results, dataset, "jims", "1", f"test run of {category}"), values


def csv_row(results: Path) -> dict[str, str]:
    with open(results / "last.csv", newline="", encoding="utf-8") as handle:
        return next(csv.DictReader(handle))


def test_run_page_holds_the_csv_text_and_escapes_every_name(tmp_path):
    page_path, _ = build_run(tmp_path, category=EVIL, evil_file=True)
    page = page_path.read_text(encoding="utf-8")
    row = csv_row(page_path.parent)
    assert len(scripts(page)) == 1  # only the page's own JSON: no name could open or close a script
    assert "<script>alert" not in page and "<b>" not in page
    for metric in METRIC_NAMES:
        cell, = elements(page, data_unit=EVIL, data_metric=metric)
        assert cell["data-value"] == row[metric]
    assert json.loads(scripts(page)[0])["rows"][0]["category"] == EVIL
    assert any(element.get("data-path", "").endswith(f"{EVIL}4.png") for element in elements(page, data_path=None))
    assert not external_references(page)


def test_unit_data_holds_curves_histogram_galleries_and_defect_types(tmp_path):
    page_path, values = build_run(tmp_path)
    data = json.loads((page_path.parent / "report_units" / "unit_a.json").read_text())
    assert data["metrics"]["csv"] == {m: csv_row(page_path.parent)[m] for m in METRIC_NAMES}
    assert set(data["plots"]) == {"roc", "pr", "pro", "histogram"}
    assert data["histogram"]["normal"] == pytest.approx([0.1, 0.2, 0.7, 0.3])
    assert [row["type"] for row in data["defect_types"]] == ["dent", "scratch"]
    dent = data["defect_types"][0]  # dent 0.9, 0.6 against normal 0.1, 0.2, 0.7, 0.3: 7 of 8 pairs won
    assert dent["count"] == 2 and dent["I-AUROC"] == pytest.approx(7 / 8) and dent["detected"] is None
    fp = data["galleries"]["false-positives"]["items"]  # no threshold: normal images above the lowest defect 0.25
    assert [item["score"] for item in fp] == pytest.approx([0.7, 0.3])
    fn = data["galleries"]["false-negatives"]["items"]  # defects below the highest normal 0.7, lowest first
    assert [item["score"] for item in fn] == pytest.approx([0.25, 0.6])
    assert all(item["thumbnail"].startswith("data:image/jpeg;base64,") for item in fp + fn)


def test_undefined_metrics_show_n_a_with_their_reason(tmp_path):
    page_path, values = build_run(tmp_path, defect_pixels=False)
    page = page_path.read_text(encoding="utf-8")
    assert values["P-AUROC"] is None
    cell, = elements(page, data_unit="widget", data_metric="P-AUROC")
    assert cell["data-value"] == "n/a" and cell["title"] == "the test set has no anomalous pixels"
    placeholder, = elements(page, data_unit="widget", data_curve="pro")
    assert placeholder["tag"] == "div" and "class" in placeholder  # no PRO curve, said why
    assert "PRO curve: n/a (the test set has no anomalous pixels)" in page


def test_a_unit_without_data_keeps_its_row_and_says_why(tmp_path):
    page_path, _ = build_run(tmp_path, with_data=False)
    page = page_path.read_text(encoding="utf-8")
    assert len(elements(page, data_unit="widget", data_metric=None)) == len(METRIC_NAMES)
    assert all(element["tag"] == "div" for element in elements(page, data_curve=None))
    for gallery in ("false-positives", "false-negatives"):
        assert len(elements(page, data_gallery=gallery)) == 1
    assert "no report data for this unit" in page


def test_data_from_another_run_is_not_shown_beside_the_csv(tmp_path):
    page_path, _ = build_run(tmp_path)
    results = page_path.parent
    data_file = results / "report_units" / "unit_a.json"
    data = json.loads(data_file.read_text())
    data["metrics"]["csv"]["I-AUROC"] = "0.123"  # as if the row had been rewritten by a later run
    data_file.write_text(json.dumps(data))
    page = write_run_report(results, "folder", "jims", "1", "stale").read_text(encoding="utf-8")
    assert "from another run" in page and not elements(page, data_curve="roc", src=None)


def test_a_report_that_cannot_be_built_is_a_warning_and_the_results_stay(tmp_path, capsys):
    page_path, _ = build_run(tmp_path)
    results = page_path.parent
    before = (results / "last.csv").read_bytes()
    (results / "report_units" / "unit_a.json").write_text(json.dumps({"format": "supersimplenet-report-unit/1",
                                                                      "row": {"category": "widget"}}))
    assert write_run_report(results, "folder", "jims", "1", "damaged") is None
    warning = capsys.readouterr().err
    assert warning.startswith("warning: the run report not written (KeyError") and warning.count("\n") == 1
    assert (results / "last.csv").read_bytes() == before and page_path.is_file()


def _unit_process(root: str, name: str) -> None:
    """One 'array task': its own unit's data, row and page rebuild, as train_run does them."""
    root = Path(root)
    predictions = fake_predictions(root / name)
    split = SimpleNamespace(train=[SimpleNamespace(label=0, is_segmented=True)] * 5, info={})
    values, notes = compute_metrics(predictions.anomaly_maps, predictions.gt_masks, predictions.scores,
                                    predictions.labels)
    unit = describe_unit("folder", name, {"category": name}, build_config("folder"), 0, "1", split, "training")
    assert write_unit_data(root / "results", unit, predictions, values, notes, None, "random") is not None
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("backbone_weights", "version"))
    writer.add(name, values, backbone_weights="random", version="jims")
    writer.save(root / "results")
    assert write_run_report(root / "results", "folder", "jims", "1", "parallel units") is not None


def test_units_of_separate_processes_all_reach_the_page(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_unit_process, args=(str(tmp_path), f"unit_{i}")) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    page = (tmp_path / "results" / "report.html").read_text(encoding="utf-8")
    for index in range(3):  # whichever process built the page last saw every unit's row and data
        assert len(elements(page, data_unit=f"unit_{index}", data_metric=None)) == len(METRIC_NAMES)
        assert elements(page, data_unit=f"unit_{index}", data_curve="roc")[0]["tag"] == "img"


def test_paper_figures_stand_beside_ours_for_a_paper_dataset(tmp_path):
    page_path, _ = build_run(tmp_path, category="bottle", dataset="mvtec")
    page = page_path.read_text(encoding="utf-8")
    paper, _ = paper_figures("mvtec", "jims", "1")
    for metric in METRIC_NAMES:
        cell, = elements(page, data_unit="bottle", data_metric=metric)
        assert float(cell["data-paper"]) == paper[metric]["bottle"]


def test_gallery_rules_with_and_without_a_threshold():
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.6, 0.95])
    labels = np.array([0, 0, 0, 1, 1, 1])
    galleries = gallery_members(scores, labels, threshold=0.55)
    assert galleries["false-positives"][0] == [2]  # normal above 0.55
    assert galleries["false-negatives"][0] == [3]  # defective at or below it
    assert galleries["true-positives"][0] == [5, 4]
    ranked = gallery_members(scores, labels, threshold=None)
    assert ranked["false-positives"][0] == [2, 1]  # normal above the lowest defect 0.3, highest first
    assert ranked["false-negatives"][0] == [3, 4]  # defects below the highest normal 0.9, lowest first
    assert ranked["true-positives"][0] == [5]
    perfect = gallery_members(np.array([0.1, 0.9]), np.array([0, 1]), None)
    assert perfect["false-positives"][0] == [] and perfect["false-negatives"][0] == []


def test_undefined_reasons_come_from_the_notes():
    values = dict.fromkeys(METRIC_NAMES, 0.5) | {"I-AUROC": None, "AUPRO": None}
    notes = ["I-AUROC undefined: the test set has no normal images",
             "pixel metrics withheld: some anomalous test images have no mask"]
    assert undefined_reasons(values, notes) == {
        "I-AUROC": "the test set has no normal images",
        "AUPRO": "pixel metrics withheld: some anomalous test images have no mask"}


def test_regime_and_settings_that_differ_from_the_published_ones():
    weak = build_config("ksdd2", None, ["num_segmented=0"])
    assert settings_differences("ksdd2", "jims", weak, 0) == []  # its derived perlin_thr is the published rule
    run_two = dict(weak, seed=weak["seed"] + 2, epochs=5)
    assert settings_differences("ksdd2", "jims", run_two, 2) == [("epochs", 5, 300)]
    samples = [SimpleNamespace(label=0, is_segmented=True)] * 3 + [SimpleNamespace(label=1, is_segmented=s)
                                                                  for s in (True, False, False)]
    counts = training_counts(samples)
    assert counts == {"normal": 3, "defective": 3, "with_masks": 1, "labels_only": 2}
    assert regime("ksdd2", build_config("ksdd2", None, ["num_segmented=16"]), counts).startswith(
        "mixed: 1 of 3 defective images with masks")
    assert "(num_segmented = 16)" in regime("ksdd2", build_config("ksdd2", None, ["num_segmented=16"]), counts)
    assert regime("mvtec", build_config("mvtec"), training_counts(samples[:3])).startswith("unsupervised")


def test_json_in_a_script_and_relative_urls_cannot_escape():
    encoded = json_for_script({"name": "</script><!-- & \u2028"})
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded and "\u2028" not in encoded
    assert json.loads(encoded) == {"name": "</script><!-- & \u2028"}
    assert relative_url('thumbnails/a b#1?"x.jpg') == "thumbnails/a%20b%231%3F%22x.jpg"
    with pytest.raises(ValueError):
        relative_url("/etc/passwd")
    assert external_references('<img src="http://example.com/x.png"><a href="../up.html">') == [
        "http://example.com/x.png", "../up.html"]  # the check itself finds what it must


def test_prediction_page_escapes_file_names(tmp_path):
    row = {"path": f"/data/{EVIL}.png", "score": "0.700000", "decision": "defect", "defect_area_px": "3",
           "defect_area_percent": "1.0000", "max_pixel": "0.9", "image_threshold": "0.500000",
           "pixel_threshold": "0.500000", "calibration": "uncalibrated", "width": "30", "height": "20",
           "output_name": f"data/{EVIL}"}
    thumbnail = tmp_path / "thumbnails" / f"data/{EVIL}.jpg"
    thumbnail.parent.mkdir(parents=True)
    thumbnail.write_bytes(b"")
    page = render_prediction_page(tmp_path, [row], {}, [{"path": EVIL, "reason": EVIL}])
    assert len(scripts(page)) == 2 and "<script>alert" not in page  # the JSON and the page's own script
    card, = elements(page, data_path=None)
    assert card["data-path"] == row["path"] and card["data-score"] == "0.700000"
    image, = [element for element in elements(page, loading="lazy")]
    # percent-encoded: the page asks for exactly that file ("/" in the name is a folder, as on disk)
    assert image["src"] == "thumbnails/data/%3C/script%3E%3Cscript%3Ealert%281%29%3C/script%3E%22%27%26%3Cb%3E.jpg"
    assert not external_references(page)
    assert "placeholder" in page  # an uncalibrated 0.5 is said to be one
