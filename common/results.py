"""Results files: per-category CSVs (`last.csv`, `avg.csv`), the mean/std JSON over runs,
and the printed table with the paper's figure beside each of ours (docs/method.md, "Evaluation").

The papers' figures live in `paper_results/<version>/results_avg_std.json`: the ICPR file is
keyed {avg|std: {dataset: ...}}, the journal one {regime: {ratio: {avg|std: {dataset: ...}}}}."""

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.fileio import locked_folder, write_csv_atomic, write_json_atomic

PAPER_RESULTS_DIR = Path(__file__).resolve().parent.parent / "paper_results"
PAPER_RESULTS_NAME = "results_avg_std.json"
NOT_AVAILABLE = "n/a"
TEXT_COLUMNS = ("category", "fold", "run_id", "backbone_weights", "version", "regime")


def format_value(value: float | None) -> str:
    """A metric value as the results CSVs hold it: repr of the float, or 'n/a' for None."""
    return NOT_AVAILABLE if value is None else repr(float(value))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


# Columns that, with `category`, tell which unit a row belongs to (SensumSODF: one row per fold).
KEY_COLUMNS = ("category", "fold", "run_id")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as written: every value a string) of a results CSV; ([], []) when absent."""
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


class ResultsWriter:
    """One row of metrics per unit, merged into `last.csv` (rows) and `avg.csv` (their mean).

    Saving never reduces a results file: rows of units that are not in this writer are kept,
    a unit written again replaces its own row (same `category`, `fold`, `run_id`), and the
    read-merge-write happens under a lock on the folder, so concurrent runs keep every row.
    """

    def __init__(self, metric_names: list[str], extra_columns: tuple[str, ...] = ()):
        self.metric_names = list(metric_names)
        self.extra_columns = list(extra_columns)
        self.rows: list[dict[str, Any]] = []

    def add(self, category: str, values: dict[str, float | None], **extra: Any) -> None:
        self.rows.append({"category": category, **values, **extra})

    @property
    def header(self) -> list[str]:
        return ["category", *self.metric_names, *self.extra_columns]

    def _as_text(self, row: dict[str, Any]) -> dict[str, str]:
        text = {"category": str(row["category"])}
        text.update({m: format_value(row.get(m)) for m in self.metric_names})
        text.update({c: str(row.get(c, "")) for c in self.extra_columns})
        return text

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        header = self.header
        with locked_folder(directory):
            _, existing = read_rows(directory / "last.csv")
            ours = [self._as_text(row) for row in self.rows]

            def key(row: dict[str, str]) -> tuple[str, ...]:
                return tuple(str(row.get(c, "")) for c in KEY_COLUMNS)

            replaced = {key(row): row for row in ours}
            merged = [replaced.pop(key(row), row) for row in existing]
            merged += [row for row in ours if key(row) in replaced]
            write_csv_atomic(directory / "last.csv", header, [[row.get(c, "") for c in header] for row in merged])
            means = [
                format_value(_mean([_parse_value(row.get(m, "")) for row in merged])) for m in self.metric_names
            ]
            write_csv_atomic(directory / "avg.csv", ["category", *self.metric_names], [["avg", *means]])


def _parse_value(text: str) -> float | None:
    return None if text in (NOT_AVAILABLE, "") else float(text)


def read_last_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a `last.csv` with metric values as floats (None for 'n/a')."""
    if not Path(path).is_file():
        raise UserError(f"results file {path} not found; run the evaluation for that run id first")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    parsed = []
    for row in rows:
        entry: dict[str, Any] = {}
        for key, value in row.items():
            if key in TEXT_COLUMNS:
                entry[key] = value
            else:
                entry[key] = _parse_value(value)
        parsed.append(entry)
    return parsed


def summarize_runs(rows_per_run: dict[str, list[dict[str, Any]]], metric_names: list[str]) -> dict[str, dict]:
    """Mean and sample std over runs, shaped like paper_results/results_avg_std.json for one dataset:
    {"avg": {metric: {category: v, "total": v}}, "std": {...}}.

    A category's value per run is the mean of its rows (SensumSODF: its 3 folds); "total" per
    run is the mean of all rows of that run. avg is the mean over runs of those, std their
    sample standard deviation (absent with a single run).
    """
    per_run_category: dict[str, dict[str, dict[str, float | None]]] = {}
    per_run_total: dict[str, dict[str, float | None]] = {}
    categories: list[str] = []
    for run_id, rows in rows_per_run.items():
        by_category: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_category.setdefault(row["category"], []).append(row)
            if row["category"] not in categories:
                categories.append(row["category"])
        per_run_category[run_id] = {
            category: {m: _mean([r.get(m) for r in cat_rows]) for m in metric_names}
            for category, cat_rows in by_category.items()
        }
        per_run_total[run_id] = {m: _mean([r.get(m) for r in rows]) for m in metric_names}

    def collect(metric: str, category: str) -> list[float]:
        if category == "total":
            values = [per_run_total[run][metric] for run in per_run_total]
        else:
            values = [per_run_category[run].get(category, {}).get(metric) for run in per_run_category]
        return [v for v in values if v is not None]

    summary: dict[str, dict] = {"avg": {}, "std": {}}
    for metric in metric_names:
        summary["avg"][metric], summary["std"][metric] = {}, {}
        for category in [*categories, "total"]:
            values = collect(metric, category)
            summary["avg"][metric][category] = sum(values) / len(values) if values else None
            summary["std"][metric][category] = statistics.stdev(values) if len(values) > 1 else None
    if len(rows_per_run) < 2:
        summary["std"] = {}
    return summary


def paper_results_path(version: str) -> Path:
    return PAPER_RESULTS_DIR / version / PAPER_RESULTS_NAME


def load_paper_results(version: str = "icpr") -> dict[str, Any]:
    with open(paper_results_path(version), encoding="utf-8") as handle:
        return json.load(handle)


def journal_regime(dataset: str, ratio: str) -> str:
    """The journal table a run belongs to: unsup (MVTec, VisA), weak (ratio 0), full (all
    positives segmented: KSDD2 246, SensumSODF 1) or mixed (anything between)."""
    if dataset not in ("ksdd2", "sensum"):
        return "unsup"
    if float(ratio) == 0:
        return "weak"
    if ratio in ("246", "1"):
        return "full"
    return "mixed"


def paper_figures(dataset: str, version: str, ratio: str = "1") -> tuple[dict[str, dict[str, float]], str]:
    """({metric: {category: mean}}, description) of the paper's run matching `dataset`, `version`
    and (journal) `ratio`; ({}, why) when the paper has no such run."""
    data = load_paper_results(version)
    if version == "icpr":
        return data["avg"].get(dataset, {}), f"ICPR paper, mean of 5 runs, {paper_results_path(version).relative_to(PAPER_RESULTS_DIR.parent)}"
    regime = journal_regime(dataset, ratio)
    figures = data.get(regime, {}).get(ratio, {}).get("avg", {}).get(dataset, {})
    where = f"journal paper, {regime} regime, ratio {ratio}, mean of 5 runs"
    return figures, where if figures else f"the journal paper has no {dataset} run at ratio {ratio}"


def comparison_table(
    dataset: str,
    ours: dict[str, dict[str, float | None]],
    metric_names: list[str],
    title: str = "",
    version: str = "icpr",
    ratio: str = "1",
) -> str:
    """A printable table: one row per category, each cell `ours (paper)`, in percent; the paper's
    figures are those of the same version and (journal) supervision ratio.

    `ours` is {metric: {category: value}}. Categories the paper does not report show '-'.
    """
    paper, source = paper_figures(dataset, version, ratio)
    categories: list[str] = []
    for metric in metric_names:
        for category in ours.get(metric, {}):
            if category not in categories:
                categories.append(category)
    width = max([len("category"), *(len(c) for c in categories)])
    cell = 15
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'category':<{width}} " + " ".join(f"{m:>{cell}}" for m in metric_names))
    for category in categories:
        cells = []
        for metric in metric_names:
            value = ours.get(metric, {}).get(category)
            reference = paper.get(metric, {}).get(category)
            ours_text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"
            paper_text = "-" if reference is None else f"{100 * reference:.1f}"
            cells.append(f"{ours_text + ' (' + paper_text + ')':>{cell}}")
        lines.append(f"{category:<{width}} " + " ".join(cells))
    lines.append(f"values in %, ours (paper: {source})")
    return "\n".join(lines)


def write_summary_json(
    path: Path, summaries: dict[str, dict[str, dict]], ratios: dict[str, str] | None = None
) -> None:
    """{dataset: {"avg": ..., "std": ...}} -> the official layout: {"avg": {dataset: ...}, "std": ...}
    (ICPR), or with `ratios` ({dataset: ratio}, journal) {"avg": {ratio: {dataset: ...}}, "std": ...}."""
    data: dict[str, dict] = {"avg": {}, "std": {}}
    for dataset, summary in summaries.items():
        for kind in ("avg", "std"):
            if not summary[kind]:
                continue
            target = data[kind].setdefault(ratios[dataset], {}) if ratios else data[kind]
            target[dataset] = summary[kind]
    write_json_atomic(path, data)
