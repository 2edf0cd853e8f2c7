"""The report beside eval.py's results_avg_std.json: per dataset, the mean ± standard deviation
over the run ids of every metric (common/results.summarize_runs), the paper's figure beside each,
and a link to each run's own report. Cells carry data-dataset, data-unit (category or "total"),
data-metric, data-mean and data-std (repr of the floats, "" when undefined)."""

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.metrics import METRIC_NAMES
from common.results import paper_figures
from deploy.report.page import (
    element, fill, json_for_script, never_fatal, percent, relative_url, text, write_page,
)

REPORT_NAME = "report.html"


def _cell(dataset: str, unit: str, metric: str, summary: dict, paper: dict) -> str:
    mean = summary["avg"].get(metric, {}).get(unit)
    std = (summary.get("std") or {}).get(metric, {}).get(unit)
    shown = percent(mean) + ("" if std is None else f" ± {percent(std)}")
    reference = paper.get(metric, {}).get(unit)  # the paper's files also have a "total" per metric
    paper_text = element("span", text(f"paper {percent(reference)}" if reference is not None else "paper -"),
                         class_="paper")
    return element("td", text(shown) + " " + paper_text, class_="na" if mean is None else None,
                   data_dataset=dataset, data_unit=unit, data_metric=metric,
                   data_mean="" if mean is None else repr(float(mean)),
                   data_std="" if std is None else repr(float(std)))


def dataset_section(dataset: str, summary: dict[str, Any], version: str, ratio: str,
                    run_reports: dict[str, str]) -> str:
    """One dataset's table of mean ± std, with links to the runs' reports ({run id: relative path})."""
    paper, source = paper_figures(dataset, version, ratio or "1")
    units: list[str] = []
    for metric in METRIC_NAMES:
        units += [u for u in summary["avg"].get(metric, {}) if u not in units]
    head = "<tr><th>unit</th>" + "".join(f"<th>{text(m)}</th>" for m in METRIC_NAMES) + "</tr>"
    body = "".join("<tr>" + element("td", text(unit), class_="unit")
                   + "".join(_cell(dataset, unit, m, summary, paper) for m in METRIC_NAMES) + "</tr>"
                   for unit in units)
    links = ", ".join(element("a", text(f"run {run_id}"), href=relative_url(path))
                      for run_id, path in run_reports.items())
    title = dataset + (f", ratio folder {ratio}" if ratio else "")
    table = element("div", element("table", head + body, class_="metrics"), class_="scroll")
    return (element("h2", text(title)) + table
            + element("p", text(f"paper: {source if paper else 'none for this dataset and ratio'}"), class_="note")
            + (element("p", "Each run's report: " + links) if links else ""))


@never_fatal("the summary report")
def write_summary_report(results_path: Path, summaries: dict[str, dict], ratios: dict[str, str], version: str,
                         run_ids: list[int], run_reports: dict[str, dict[str, Path]]) -> Path:
    """Write `<results_path>/report.html` for the summaries of eval.py ({dataset: {"avg", "std"}}),
    the journal ratio folder of each dataset, the version, the run ids and each run's report
    ({dataset: {run id: path}}; only existing files are linked). Returns its path."""
    results_path = Path(results_path)
    sections = []
    for dataset, summary in summaries.items():
        # relative links (a training run N > 0 sits beside <setup_name>/, not inside it)
        links = {run_id: Path(os.path.relpath(Path(path).resolve(), results_path.resolve())).as_posix()
                 for run_id, path in run_reports.get(dataset, {}).items() if Path(path).is_file()}
        sections.append(dataset_section(dataset, summary, version, ratios.get(dataset, ""), links))
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = f"SuperSimpleNet evaluation: mean ± std over run ids {', '.join(map(str, run_ids))} ({version})"
    page = fill("summary.html", title=text(title), sections="".join(sections), built=text(built),
                data=json_for_script({"version": version, "run_ids": run_ids, "ratios": ratios,
                                      "summaries": summaries}))
    return write_page(results_path / REPORT_NAME, page)
