"""The prediction report: `report.html` in predict.py's output folder, built from what the run
wrote there (predictions.csv, summary.json, skipped.csv, thumbnails/ or overlays/).

Every predicted image is a card with data-path, data-score (as in predictions.csv) and
data-decision (defect or normal); its thumbnail is referenced by a relative path and loaded as
the page scrolls (loading="lazy"), so thousands of images stay usable. The threshold slider
(<input type="range" id="image-threshold">, starting at the threshold used) re-decides every
card in the page (defect when score > threshold, as predict.py decides) and updates
#defect-count, whose text starts with the number of images decided defect."""

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.report.figures import prediction_histogram
from deploy.report.page import (
    element, fill, json_for_script, never_fatal, relative_url, script, text, void_element, write_page,
)
from deploy.report.thumbnails import thumbnail_size

REPORT_NAME = "report.html"
THUMBNAIL_FOLDER = "thumbnails"
UNCALIBRATED_NOTE = ("Uncalibrated: the threshold 0.5 is a placeholder, not a calibrated probability (a model's "
                     "sigmoid outputs are not calibrated). Set thresholds with predict.py --calibrate NORMAL_DIR "
                     "(defect-free images the model was not trained on) or --calibrate-labelled DIR.")


def thumbnail_path(output: Path, name: str) -> Path:
    """Where predict.py keeps the thumbnail of the image whose output name is `name`."""
    return Path(output) / THUMBNAIL_FOLDER / f"{name}.jpg"


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def threshold_source(summary: dict[str, Any], rows: list[dict[str, str]]) -> tuple[str, bool]:
    """(how the thresholds were set, in words; whether they are calibrated)."""
    thresholds = summary.get("thresholds") or {}
    calibrated = bool(thresholds.get("calibrated", rows[0]["calibration"] != "uncalibrated" if rows else False))
    label = thresholds.get("label") or (rows[0]["calibration"] if rows else "uncalibrated")
    details = thresholds.get("details") or {}
    if calibrated and details.get("source"):
        label += f"; images from {details['source']}"
    return label, calibrated


def _card(output: Path, row: dict[str, str]) -> str:
    name = row["output_name"]
    decision = row["decision"]
    picture = ""
    if thumbnail_path(output, name).is_file():
        height, width = thumbnail_size(int(row["height"]), int(row["width"]))
        picture = void_element("img", src=relative_url(f"{THUMBNAIL_FOLDER}/{name}.jpg"), loading="lazy",
                               width=width, height=height, alt=Path(row["path"]).name)
    elif (Path(output) / "overlays" / f"{name}.png").is_file():
        picture = void_element("img", src=relative_url(f"overlays/{name}.png"), loading="lazy",
                               alt=Path(row["path"]).name)
    caption = (element("div", text(name), class_="name", title=row["path"])  # unique, unlike the file name
               + element("div", f"score {text(row['score'])} &middot; " + element("span", text(decision),
                                                                               class_="decision"))
               + element("div", text(f"defect area {row['defect_area_percent']} %"), class_="muted"))
    return element("figure", picture + element("figcaption", caption), class_="card", data_path=row["path"],
                   data_score=row["score"], data_decision=decision, data_csv_decision=decision, data_name=name)


def render_prediction_page(output: Path, rows: list[dict[str, str]], summary: dict[str, Any],
                           skipped: list[dict[str, str]]) -> str:
    """The HTML of a prediction report (see the module docstring) from the run's files' contents."""
    threshold_text = rows[0]["image_threshold"] if rows else "0.5"
    threshold = float(threshold_text)
    source, calibrated = threshold_source(summary, rows)
    scores = [float(row["score"]) for row in rows]
    histogram, left, right = prediction_histogram(scores, threshold)
    defects = sum(row["decision"] == "defect" for row in rows)
    header = "".join(f"<tr><th>{text(k)}</th><td>{text(v)}</td></tr>" for k, v in (
        ("model", summary.get("model", "not recorded")), ("backend", summary.get("backend", "not recorded")),
        ("images", f"{len(rows)} predicted, {len(skipped)} skipped"),
        ("image threshold", f"{threshold_text} ({source})"),
        ("pixel threshold", rows[0]["pixel_threshold"] if rows else "-"),
        ("decision rule", "defect when score > image threshold; a pixel is defect when its map value > pixel "
                          "threshold"),
    ))
    skipped_list = "".join(element("li", text(f"{row.get('path', '')}: {row.get('reason', '')}")) for row in skipped)
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return fill(
        "prediction.html", title=text(f"SuperSimpleNet predictions: {len(rows)} images"),
        header=header,
        warning="" if calibrated else element("p", text(UNCALIBRATED_NOTE), class_="warning"),
        slider=void_element("input", type="range", id="image-threshold", min="0", max="1", step="any",
                            value=threshold_text, aria_label="image threshold"),
        threshold=text(threshold_text), count=text(f"{defects} of {len(rows)} images decided defect"),
        histogram=void_element("img", src=histogram, alt="histogram of the predicted scores with the threshold"),
        plot_left=text(repr(left)), plot_right=text(repr(right)),
        cards="".join(_card(output, row) for row in rows),
        skipped=element("h2", "Skipped") + element("ul", skipped_list) if skipped else "",
        data=json_for_script({"thresholds": summary.get("thresholds", {}), "images": len(rows),
                              "skipped": len(skipped), "threshold_used": threshold_text}),
        script=script("prediction.js"), built=text(built))


@never_fatal("the prediction report")
def write_prediction_report(output: Path) -> Path | None:
    """Build `<output>/report.html` from the prediction run's files; returns its path (None when
    the folder holds no predictions.csv)."""
    output = Path(output)
    if not (output / "predictions.csv").is_file():
        return None
    rows = _read_csv(output / "predictions.csv")
    summary_file = output / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    page = render_prediction_page(output, rows, summary, _read_csv(output / "skipped.csv"))
    return write_page(output / REPORT_NAME, page)
