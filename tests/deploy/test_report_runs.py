"""The report pages of real runs, end to end: train.py (two run ids), eval.py over both run ids
and predict.py on a tiny generated dataset whose category name and one image name hold HTML
characters. Checked from the files (every run) and in headless chromium (when it is installed):
the pages load with no console error, hold the CSV's values where the interface says, are
self-contained, and the prediction page's slider re-decides every image."""

import contextlib
import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import eval as eval_cli
import predict as predict_cli
import train as train_cli
from common.metrics import METRIC_NAMES
from tests.deploy.browser import open_page, screenshot_colours, severe
from tests.deploy.dom import elements, external_references, scripts

CATEGORY = "we<ird> \"cat\" & 'x'"  # a folder name that would break a page that is not escaped
ODD_IMAGE = "a<b>&\"c'd #1?.png"
TINY = ["backbone=resnet18", "pretrained=false", "image_size=[64,64]", "epochs=1", "batch=4", "num_workers=0",
        "eval_step_size=4"]
MODEL = ["backbone=resnet18", "pretrained=false", "image_size=[64,64]"]


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def make_tree(root: Path) -> Path:
    """A folder-dataset category in MVTec layout: 5 good training images, 3 good test images and
    two defect types (hole, stain) of 2 images each, 48 x 64 px."""
    rng = np.random.default_rng(0)
    base = root / CATEGORY

    def write(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), image)

    texture = lambda: (rng.random((48, 64, 3)) * 60 + 100).astype(np.uint8)  # noqa: E731
    for i in range(5):
        write(base / "train" / "good" / f"{i:03d}.png", texture())
    for i in range(3):
        write(base / "test" / "good" / f"{i:03d}.png", texture())
    for kind, value in (("hole", 10), ("stain", 240)):
        for i in range(2):
            image, mask = texture(), np.zeros((48, 64), np.uint8)
            mask[10 + 6 * i:30, 20:40] = 255
            image[mask > 0] = value
            write(base / "test" / kind / f"{i:03d}.png", image)
            write(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train run ids 0 and 1, evaluate both, predict the test images (+ one with an odd name)."""
    root = tmp_path_factory.mktemp("reports")
    datasets = make_tree(root / "datasets")
    results, evaluation, predictions = root / "results", root / "eval", root / "predictions"
    images = root / "to_predict"
    for path in (datasets / CATEGORY / "test").rglob("*.png"):
        target = images / path.relative_to(datasets / CATEGORY / "test")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (images / "hole" / ODD_IMAGE).write_bytes((images / "hole" / "000.png").read_bytes())
    with contextlib.redirect_stdout(io.StringIO()):
        train_cli.main(["folder", "--category", CATEGORY, "--datasets-folder", str(datasets), "--run-ids", "0", "1",
                        "--results-path", str(results), "--device", "cpu", "--no-progress", "--no-figures",
                        *sets(TINY)])
        eval_cli.main(["--datasets", "folder", "--categories", CATEGORY, "--from-training", str(results),
                       "--run-ids", "0", "1", "--datasets-folder", str(datasets), "--results-path", str(evaluation),
                       "--device", "cpu", "--num-workers", "0", "--no-progress", *sets(MODEL)])
        predict_cli.main(["--weights", str(results / "superSimpleNet/checkpoints/folder" / CATEGORY / "1/weights.pt"),
                          "--backend", "torch",
                          str(images), "--output", str(predictions), "--device", "cpu", "--no-progress"])
    return {"train": results / "superSimpleNet/folder/1", "train_run1": results / "superSimpleNet_run1/folder/1",
            "eval": [evaluation / "0/1/folder", evaluation / "1/1/folder"], "summary": evaluation / "report.html",
            "summary_json": evaluation / "results_avg_std.json", "predictions": predictions, "root": root}


def run_reports(runs) -> list[Path]:
    return [runs["train"], runs["train_run1"], *runs["eval"]]


def check_run_page(page: str, rows: list[dict[str, str]]) -> None:
    """The interface of a run report against its last.csv."""
    assert not external_references(page)
    for row in rows:
        for metric in METRIC_NAMES:
            cells = elements(page, data_unit=row["category"], data_metric=metric)
            assert [cell["data-value"] for cell in cells] == [row[metric]], metric
        for curve in ("roc", "pr", "pro"):
            assert len(elements(page, data_unit=row["category"], data_curve=curve)) == 1, curve
        for gallery in ("false-positives", "false-negatives"):
            assert len(elements(page, data_unit=row["category"], data_gallery=gallery)) == 1, gallery
    data = json.loads(scripts(page)[-1])  # the embedded JSON parses back to the CSV's rows
    assert data["rows"] == rows


def test_every_run_folder_has_a_report_holding_its_csv_values(runs):
    for folder in run_reports(runs):
        rows = read_csv(folder / "last.csv")
        assert [row["category"] for row in rows] == [CATEGORY]
        page = (folder / "report.html").read_text(encoding="utf-8")
        check_run_page(page, rows)
        assert (folder / "report_units" / f"{CATEGORY}.json").is_file()
        assert "none: the journal paper has no folder run" in page  # no paper row for the user's own folders
        assert page.count('<span class="paper">paper -</span>') == len(METRIC_NAMES) * len(rows)
        assert "unsupervised" in page and "RANDOM weights" in page and "epochs = 1 (published 300)" in page
        assert [row["data-type"] for row in elements(page, data_type=None)] == ["hole", "stain"]
        for kind in ("roc", "pr", "pro"):
            assert elements(page, data_curve=kind)[0]["src"].startswith("data:image/png;base64,")


def test_the_curves_are_those_of_the_metrics_in_the_csv(runs):
    row = read_csv(runs["train"] / "last.csv")[0]
    data = json.loads((runs["train"] / "report_units" / f"{CATEGORY}.json").read_text())
    assert data["metrics"]["csv"] == {m: row[m] for m in METRIC_NAMES}
    roc = data["curves"]["roc"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(float(row["I-AUROC"]), abs=1e-5)
    pr = data["curves"]["pr"]
    ap = sum((r1 - r0) * p1 for r0, r1, p1 in zip(pr["recall"], pr["recall"][1:], pr["precision"][1:]))
    assert ap == pytest.approx(float(row["AP-det"]), abs=1e-5)
    pro = data["curves"]["pro"]
    fpr, overlap = np.array(pro["fpr"]), np.array(pro["pro"])
    inside = fpr < pro["limit"]
    area = np.trapezoid(np.r_[overlap[inside], pro["pro_at_limit"]], np.r_[fpr[inside], pro["limit"]])
    assert area / pro["limit"] == pytest.approx(float(row["AUPRO"]), abs=1e-5)
    assert data["test_images"] == {"normal": 3, "defective": 4}


def test_eval_over_two_run_ids_writes_a_mean_and_std_report(runs):
    summary = json.loads(runs["summary_json"].read_text())
    page = runs["summary"].read_text(encoding="utf-8")
    assert not external_references(page)
    for metric in METRIC_NAMES:
        for unit in (CATEGORY, "total"):
            cell, = elements(page, data_dataset="folder", data_unit=unit, data_metric=metric)
            mean, std = summary["avg"]["1"]["folder"][metric][unit], summary["std"]["1"]["folder"][metric][unit]
            assert float(cell["data-mean"]) == mean and float(cell["data-std"]) == std
    links = [link["href"] for link in elements(page, href=None) if link["tag"] == "a"]
    assert links == ["0/1/folder/report.html", "1/1/folder/report.html"]


def test_no_report_writes_no_page(runs, capsys):
    output = runs["root"] / "quiet"
    predict_cli.main(["--weights", str(runs["train"].parent.parent / "checkpoints/folder" / CATEGORY / "1/weights.pt"),
                      "--backend", "torch",
                      str(runs["root"] / "to_predict" / "good"), "--output", str(output), "--device", "cpu",
                      "--no-progress", "--no-report"])
    assert (output / "predictions.csv").is_file()
    assert not (output / "report.html").exists() and not (output / "thumbnails").exists()


def test_run_reports_in_the_browser(runs, browser, tmp_path):
    for folder in run_reports(runs) + [runs["summary"].parent]:
        log = open_page(browser, folder / "report.html")
        assert not severe(log), severe(log)
    log = open_page(browser, runs["train"] / "report.html")
    rows = read_csv(runs["train"] / "last.csv")
    from selenium.webdriver.common.by import By

    for metric in METRIC_NAMES:
        cell = browser.find_element(By.CSS_SELECTOR, f'[data-metric="{metric}"]')
        assert cell.get_attribute("data-unit") == CATEGORY and cell.get_attribute("data-value") == rows[0][metric]
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('img')).map(i => i.complete && i.naturalWidth > 0)")
    assert loaded and all(loaded)  # every plot and thumbnail is decoded from the page itself
    galleries = {element.get_attribute("data-gallery"): element.text
                 for element in browser.find_elements(By.CSS_SELECTOR, "[data-gallery]")}
    assert set(galleries) == {"false-positives", "false-negatives", "true-positives"}
    assert all(".png" in text or "none" in text for text in galleries.values())
    assert screenshot_colours(browser, tmp_path / "run.png") > 200


def test_prediction_report_in_the_browser(runs, browser, tmp_path):
    from selenium.webdriver.common.by import By

    output = runs["predictions"]
    rows = read_csv(output / "predictions.csv")
    page = (output / "report.html").read_text(encoding="utf-8")
    assert not external_references(page)
    assert not severe(open_page(browser, output / "report.html"))
    cards = browser.find_elements(By.CSS_SELECTOR, "[data-path]")
    by_path = {card.get_attribute("data-path"): card for card in cards}
    assert len(cards) == len(rows) == 8 and set(by_path) == {row["path"] for row in rows}
    assert any(path.endswith(ODD_IMAGE) for path in by_path)  # the odd name survived, as text
    for row in rows:
        card = by_path[row["path"]]
        assert card.get_attribute("data-score") == row["score"]
        assert card.get_attribute("data-decision") == row["decision"]
    slider = browser.find_element(By.ID, "image-threshold")
    assert float(slider.get_attribute("value")) == float(rows[0]["image_threshold"])
    count = browser.find_element(By.ID, "defect-count")
    assert count.text.split()[0] == str(sum(row["decision"] == "defect" for row in rows))
    scores = sorted(float(row["score"]) for row in rows)
    for threshold in (scores[0] - 1e-4, (scores[2] + scores[3]) / 2, scores[-1]):
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input'));", slider, f"{threshold:.7f}")
        expected = sum(float(row["score"]) > float(f"{threshold:.7f}") for row in rows)
        assert count.text.split()[0] == str(expected), threshold
        decided = [card.get_attribute("data-decision") for card in cards]
        assert decided.count("defect") == expected
    # the filter shows only the cards decided defect
    browser.execute_script("const f = document.getElementById('decision-filter'); f.value = 'defect';"
                           "f.dispatchEvent(new Event('change'));")
    assert all(card.is_displayed() == (card.get_attribute("data-decision") == "defect") for card in cards)
    thumbnails = browser.execute_script(
        "const images = Array.from(document.querySelectorAll('[data-path] img'));"
        "return images.map(i => [i.getAttribute('loading'), i.getAttribute('src')]);")
    assert all(loading == "lazy" and src.startswith("thumbnails/") for loading, src in thumbnails)
    assert screenshot_colours(browser, tmp_path / "predictions.png") > 200
