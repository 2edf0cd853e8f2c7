"""The run report: `report.html` beside a `last.csv`, rebuilt from that file and every unit's data
file (deploy/report/unit_data.py) under the folder's lock, so that units trained or evaluated by
separate processes (Slurm array tasks) all appear. A unit without a data file (or with one from
an earlier run, whose metrics differ from the row) still shows its metric row.

Interface for tests and tools: every metric cell has data-unit (the CSV's category), data-metric
(the column) and data-value (the CSV's text); each unit's plots have data-unit and data-curve
(roc, pr, pro) or data-plot (histogram); galleries have data-gallery (false-positives,
false-negatives, true-positives) and say "none" when empty."""

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.catalog import dataset_entry
from common.fileio import locked_folder
from common.metrics import METRIC_NAMES
from common.results import NOT_AVAILABLE, paper_figures, read_rows
from deploy.report.header import BACKBONE_WEIGHTS, shared_value
from deploy.report.page import (
    element, fill, json_for_script, never_fatal, percent, text, void_element, write_page,
)
from deploy.report.unit_data import read_unit_data, row_key

REPORT_NAME = "report.html"
VERSION_NAMES = {"jims": "journal 2025 (JIMS), --version jims", "icpr": "ICPR 2024, --version icpr"}
GALLERY_TITLES = {"false-positives": "Worst false positives", "false-negatives": "False negatives",
                  "true-positives": "True positives"}
PLOT_NAMES = {"roc": "image ROC curve", "pr": "image precision-recall curve", "pro": "PRO curve",
              "histogram": "histogram of image scores"}


def unit_label(row: dict[str, str]) -> str:
    """'capsule' or 'capsule, fold 1' (SensumSODF rows share a category)."""
    return row["category"] + (f", fold {row['fold']}" if row.get("fold") else "")


def _current(data: dict[str, Any] | None, row: dict[str, str]) -> bool:
    """Whether a unit's data file belongs to the row: the metrics it recorded are the row's."""
    return data is not None and all(data["metrics"]["csv"].get(m) == row.get(m) for m in METRIC_NAMES)


def _header_rows(rows: list[dict[str, str]], units: dict, dataset: str, version: str, ratio: str,
                 paper_source: str, built: str) -> str:
    labelled = {unit_label(row): units[row_key(row)] for row in rows if _current(units.get(row_key(row)), row)}

    def from_units(describe) -> str:
        return shared_value({label: describe(data) for label, data in labelled.items()}) or "not recorded"

    def differences(data: dict[str, Any]) -> str:
        return ", ".join(f"{key} = {value!r} (published {default!r})" for key, value, default in
                         data["header"]["differences"]) or "none"

    def thresholds(data: dict[str, Any]) -> str:
        stored = data.get("thresholds") or {}
        if "image" not in stored:
            return "not calibrated (no thresholds in model.yaml)"
        return (f"image {stored['image']:.4f}, pixel {stored.get('pixel', float('nan')):.4f} "
                f"({stored.get('method', '?')} on {stored.get('count', '?')} images, {stored.get('source', '')})")

    run_ids = sorted({row["run_id"] for row in rows if row.get("run_id")}) or sorted(
        {str(data.get("run_id")) for data in labelled.values()})
    dates = sorted(data["created"] for data in labelled.values())
    fields = [
        ("version", VERSION_NAMES.get(version, version)),
        ("regime", from_units(lambda d: d["header"]["regime"])),
        ("dataset", f"{dataset_entry(dataset).title} ({dataset})" + (f", ratio folder {ratio}" if ratio else "")),
        ("backbone", from_units(lambda d: f"{d['header']['backbone']} with "
                                          f"{BACKBONE_WEIGHTS.get(d['header']['backbone_weights'], '?')}")),
        ("backbone weights (last.csv)", shared_value({unit_label(r): r.get("backbone_weights", "?") for r in rows})),
        ("image size", from_units(lambda d: "{} x {} (height x width)".format(*d["header"]["image_size"]))),
        ("run id" + ("s" if len(run_ids) > 1 else ""), ", ".join(run_ids) or "not recorded"),
        ("seed", from_units(lambda d: str(d["header"]["seed"]))),
        ("date", (f"evaluated {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") if dates
                  else "not recorded") + f"; page built {built}"),
        ("settings that differ from the published defaults", from_units(differences)),
        ("thresholds", from_units(thresholds)),
        ("source", from_units(lambda d: d["source"])),
        ("paper figures", paper_source),
    ]
    return "".join(f"<tr><th>{text(name)}</th><td>{text(value)}</td></tr>" for name, value in fields)


def _metric_cell(row: dict[str, str], metric: str, paper: dict, data: dict[str, Any] | None) -> str:
    value = row.get(metric, "")
    reference = paper.get(metric, {}).get(row["category"])
    paper_text = element("span", text(f"paper {percent(reference)}" if reference is not None else "paper -"),
                         class_="paper")
    if value in (NOT_AVAILABLE, ""):
        reason = (data or {}).get("metrics", {}).get("reasons", {}).get(metric, "reason not recorded")
        shown = text(NOT_AVAILABLE) + element("span", text(reason), class_="reason")
        return element("td", shown + " " + paper_text, class_="na", data_unit=row["category"],
                       data_fold=row.get("fold"), data_metric=metric, data_value=value, title=reason)
    return element("td", text(percent(float(value))) + " " + paper_text, data_unit=row["category"],
                   data_fold=row.get("fold"), data_metric=metric, data_value=value,
                   data_paper=None if reference is None else repr(float(reference)))


def metric_table(rows: list[dict[str, str]], units: dict, paper: dict) -> str:
    """One row per results row: the seven metrics in %, the paper's figure beside each, n/a with
    its reason; data-value holds the CSV's own text."""
    head = "<tr><th>unit</th>" + "".join(f"<th>{text(m)}</th>" for m in METRIC_NAMES) + "</tr>"
    body = ""
    for row in rows:
        data = units.get(row_key(row))
        data = data if _current(data, row) else None  # reasons only from this row's own evaluation
        body += "<tr>" + element("td", text(unit_label(row)), class_="unit") + "".join(
            _metric_cell(row, metric, paper, data) for metric in METRIC_NAMES) + "</tr>"
    return f'<div class="scroll"><table class="metrics">{head}{body}</table></div>'


def _plots(row: dict[str, str], data: dict[str, Any] | None, missing: str) -> str:
    parts = []
    for key in ("roc", "pr", "pro", "histogram"):
        kind = {"data_plot": key} if key == "histogram" else {"data_curve": key}
        uri = (data or {}).get("plots", {}).get(key)
        if uri:
            parts.append(void_element("img", src=uri, alt=f"{PLOT_NAMES[key]} of {unit_label(row)}",
                                      data_unit=row["category"], data_fold=row.get("fold"), **kind))
        else:
            reason = (data or {}).get("curves", {}).get(key, {}).get("reason", missing)
            parts.append(element("div", text(f"{PLOT_NAMES[key]}: {NOT_AVAILABLE} ({reason})"), class_="missing",
                                 data_unit=row["category"], data_fold=row.get("fold"), **kind))
    return element("div", "".join(parts), class_="plots")


def _gallery(row: dict[str, str], name: str, gallery: dict[str, Any] | None, missing: str) -> str:
    title = element("h3", text(GALLERY_TITLES[name]))
    if gallery is None:
        return element("div", title + element("p", text(f"{NOT_AVAILABLE}: {missing}"), class_="empty"),
                       class_="gallery", data_unit=row["category"], data_fold=row.get("fold"), data_gallery=name)
    rule = element("p", text(f"{gallery['rule']}; map: {gallery['map']}, ground truth outlined in white"),
                   class_="note")
    thumbs = []
    for item in gallery["items"]:
        caption = text(item["file"]) + (f" ({text(item['type'])})" if item["type"] else "") + \
            f"<br>score {item['score']:.4f}"
        image = void_element("img", src=item["thumbnail"], alt=item["file"], title=item["path"])
        thumbs.append(element("figure", image + element("figcaption", caption), class_="thumb",
                              data_path=item["path"], data_score=repr(item["score"])))
    content = element("div", "".join(thumbs), class_="thumbs") if thumbs else element("p", "none", class_="empty")
    return element("div", title + rule + content, class_="gallery", data_unit=row["category"],
                   data_fold=row.get("fold"), data_gallery=name)


def _defect_types(row: dict[str, str], data: dict[str, Any]) -> str:
    types = data.get("defect_types") or []
    if not types:
        return ""
    calibrated = any(entry["detected"] is not None for entry in types)
    head = "<tr><th>defect type</th><th>images</th><th>I-AUROC vs normal images</th><th>mean score</th>" + \
        ("<th>detected at the threshold</th>" if calibrated else "") + "</tr>"
    body = ""
    for entry in types:
        auroc = percent(entry["I-AUROC"]) if entry["I-AUROC"] is not None else f"{NOT_AVAILABLE} ({entry['reason']})"
        cells = [entry["type"], entry["count"], auroc, f"{entry['mean_score']:.4f}"]
        if calibrated:
            cells.append(f"{entry['detected']} of {entry['count']}")
        body += element("tr", "".join(element("td", text(cell)) for cell in cells), data_type=entry["type"])
    return element("h3", "Detection per defect type") + element(
        "table", head + body, class_="types", data_unit=row["category"], data_fold=row.get("fold"))


def unit_section(row: dict[str, str], data: dict[str, Any] | None) -> str:
    """One unit's plots, galleries and defect types (or why they are missing)."""
    if data is None:
        missing = "no report data for this unit (written with --no-report, or before reports existed)"
        current = None
    elif not _current(data, row):
        missing = "the report data of this unit is from another run (its metrics differ from last.csv)"
        current = None
    else:
        missing, current = "", data
    parts = [element("h2", text(unit_label(row)))]
    if current is not None:
        counts = current["test_images"]
        parts.append(element("p", text(f"{counts['normal']} normal and {counts['defective']} defective test images; "
                                       f"{current['header']['regime']}; evaluated {current['created']}"),
                             class_="note"))
    else:
        parts.append(element("p", text(missing), class_="note"))
    parts.append(_plots(row, current, missing))
    for name in ("false-positives", "false-negatives", "true-positives"):
        parts.append(_gallery(row, name, None if current is None else current["galleries"].get(name), missing))
    if current is not None:
        parts.append(_defect_types(row, current))
    return element("section", "".join(parts), class_="unit-section", data_unit=row["category"],
                   data_fold=row.get("fold"))


def render_run_page(rows: list[dict[str, str]], units: dict, dataset: str, version: str, ratio: str, title: str,
                    problems: list[str] | None = None) -> str:
    """The HTML of a run report from the results rows (as written), {row key: unit data}, the
    dataset, version and journal ratio folder ("" for ICPR) of the folder, and a title."""
    paper, paper_source = paper_figures(dataset, version, ratio or "1")
    if not paper:
        paper_source = f"none: {paper_source}" if version == "jims" else f"none: the ICPR paper has no {dataset} run"
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    notes = "".join(element("p", text(f"note: {problem}"), class_="note") for problem in problems or [])
    embedded = {"dataset": dataset, "version": version, "ratio": ratio, "metrics": METRIC_NAMES, "rows": rows}
    return fill(
        "run.html", title=text(title),
        header=_header_rows(rows, units, dataset, version, ratio, paper_source, built),
        metrics=metric_table(rows, units, paper), notes=notes,
        units="".join(unit_section(row, units.get(row_key(row))) for row in rows),
        data=json_for_script(embedded), built=text(built))


@never_fatal("the run report")
def write_run_report(results_dir: Path, dataset: str, version: str, ratio: str, title: str) -> Path | None:
    """(Re)build `<results_dir>/report.html` from its last.csv and every unit data file, under the
    folder's lock (the one results are merged under); returns its path (None without a last.csv)."""
    results_dir = Path(results_dir)
    with locked_folder(results_dir):
        _, rows = read_rows(results_dir / "last.csv")
        if not rows:
            return None
        units, problems = read_unit_data(results_dir)
        page = render_run_page(rows, units, dataset, version, ratio, title, problems)
        return write_page(results_dir / REPORT_NAME, page)
