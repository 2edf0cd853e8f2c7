"""The aggregation of a batch submission (docs/slurm.md): once every task of the array has ended,
say which units are complete, failed, interrupted or missing, merge the rows of each run into its
`last.csv` and `avg.csv`, write the mean and std over the runs into `results_avg_std.json` (the
official layout, other datasets already in the file kept) and print the table beside the paper's.

Each task writes its own row into its run's `last.csv` (ResultsWriter: merged under a lock on the
folder, a unit replaces only its own row); the aggregation reads those rows back, keeps only the
units of the manifest for the summary, and rewrites the run's files with every row kept.
Torch-free: the aggregation job needs no GPU and starts in a second.

    python slurm/aggregate.py MANIFEST_FOLDER [--log-pattern 'logs/ssn-train-demo-12_%a.out']

prints the units that are not complete and the table beside the paper's; exit status 0 when every
unit is complete, 1 otherwise.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (the aggregation job): the repository root holds our packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import path_argument  # noqa: E402
from common.errors import exit_on_user_error  # noqa: E402
from common.fileio import locked_folder, write_json_atomic  # noqa: E402
from common.metrics import METRIC_NAMES  # noqa: E402
from common.results import (ResultsWriter, comparison_table, read_last_csv, summarize_runs,  # noqa: E402
                            write_summary_json)
from deploy.report.summary_page import write_summary_report  # noqa: E402
from slurm.manifest import Manifest, ManifestUnit, is_complete, load_manifest  # noqa: E402
from slurm.status import last_status  # noqa: E402

STATES = ("complete", "failed", "interrupted", "missing")


@dataclass
class UnitState:
    unit: ManifestUnit
    state: str  # one of STATES
    detail: str


def unit_state(manifest: Manifest, unit: ManifestUnit, log_pattern: str = "") -> UnitState:
    """What became of one unit: complete, failed (its task exited non-zero), interrupted
    (resume.pt left: preempted or out of time) or missing (never ran, cancelled or killed)."""
    if is_complete(unit, manifest.kind):
        return UnitState(unit, "complete", "")
    log = f"; log {log_pattern.replace('%a', str(unit.index))}" if log_pattern else ""
    code = last_status(Path(manifest.folder), unit.index) if manifest.folder else None
    weights = Path(unit.weights)
    if manifest.kind == "train" and (weights.parent / "resume.pt").exists():
        return UnitState(unit, "interrupted", f"stopped with resume.pt kept (exit {code}); resubmit to continue{log}")
    if code is not None and code != 0:
        return UnitState(unit, "failed", f"exit {code}{log}")
    if code == 0:
        what = "no row in last.csv" if weights.is_file() else "no weights.pt"
        return UnitState(unit, "failed", f"exited 0 but {what}{log}")
    return UnitState(unit, "missing", f"never finished (not run, cancelled, killed or out of time){log}")


def merge_run_files(results_dir: Path) -> None:
    """Rewrite a run's last.csv (every row kept) and its avg.csv (mean of those rows)."""
    path = Path(results_dir) / "last.csv"
    if not path.is_file():
        return
    rows = read_last_csv(path)
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    metrics = [c for c in header if c in METRIC_NAMES]
    extras = tuple(c for c in header if c != "category" and c not in METRIC_NAMES)
    writer = ResultsWriter(metrics, extra_columns=extras)
    for row in rows:
        writer.add(row["category"], {m: row.get(m) for m in metrics}, **{c: row.get(c, "") for c in extras})
    writer.save(results_dir)


def _summary_rows(manifest: Manifest, dataset: str) -> dict[str, list[dict[str, Any]]]:
    """{run_id: rows of the manifest's units of `dataset` in that run} (runs without a row left out)."""
    per_run: dict[str, list[dict[str, Any]]] = {}
    for run_id in manifest.runs:
        units = [u for u in manifest.units if u.dataset == dataset and u.run_id == run_id]
        if not units:
            continue
        path = Path(units[0].results_dir) / "last.csv"
        if not path.is_file():
            continue
        wanted = {(u.report_category, u.fold) for u in units}
        rows = [r for r in read_last_csv(path)
                if (r["category"], str(r.get("fold") or "")) in wanted
                and (manifest.kind == "train" or str(r.get("run_id", "")) == str(run_id))]
        if rows:
            per_run[str(run_id)] = rows
    return per_run


def merge_summary(path: Path, summaries: dict[str, dict], ratios: dict[str, str] | None) -> None:
    """Write `summaries` ({dataset: {avg, std}}) into `path` in the official layout, keeping the
    datasets (and ratios) already there; a dataset summarised without std drops its old std."""
    path = Path(path)
    with locked_folder(path.parent):
        write_summary_json(path.with_name(path.name + ".new"), summaries, ratios)
        fresh = json.loads(path.with_name(path.name + ".new").read_text(encoding="utf-8"))
        path.with_name(path.name + ".new").unlink()
        old: dict[str, Any] = {}
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
        merged: dict[str, Any] = {"avg": dict(old.get("avg", {})), "std": dict(old.get("std", {}))}
        for kind in ("avg", "std"):
            for dataset in summaries:
                if ratios:
                    ratio = ratios[dataset]
                    target = merged[kind].setdefault(ratio, {})
                    target.pop(dataset, None)
                    target.update({dataset: fresh[kind][ratio][dataset]} if dataset in fresh[kind].get(ratio, {}) else {})
                    if not target:
                        merged[kind].pop(ratio)
                else:
                    merged[kind].pop(dataset, None)
                    if dataset in fresh[kind]:
                        merged[kind][dataset] = fresh[kind][dataset]
        write_json_atomic(path, merged)


def _run_reports(manifest: Manifest) -> dict[str, dict[str, Path]]:
    """{dataset: {run id: the report.html beside that run's last.csv}} for the summary page's links."""
    reports: dict[str, dict[str, Path]] = {}
    for unit in manifest.units:
        reports.setdefault(unit.dataset, {})[str(unit.run_id)] = Path(unit.results_dir) / "report.html"
    return reports


def aggregate(folder: Path, log_pattern: str = "") -> tuple[int, str]:
    """Aggregate the submission whose manifest is in `folder`; returns (exit code, report text).
    Exit code 0 when every unit is complete, 1 otherwise (the summary covers what is there)."""
    manifest = load_manifest(folder)
    states = [unit_state(manifest, unit, log_pattern) for unit in manifest.units]
    lines = []
    for results_dir in dict.fromkeys(u.results_dir for u in manifest.units):
        merge_run_files(Path(results_dir))

    summaries: dict[str, dict] = {}
    for dataset, ratio in manifest.datasets.items():
        per_run = _summary_rows(manifest, dataset)
        if not per_run:
            lines.append(f"{dataset}: no results to summarise")
            continue
        summaries[dataset] = summarize_runs(per_run, METRIC_NAMES)
        title = (f"{dataset} ({manifest.kind}): mean over runs {', '.join(per_run)} of "
                 f"{len({u.unit for u in manifest.units if u.dataset == dataset})} unit(s), "
                 f"version {manifest.version} vs paper")
        lines.append(comparison_table(dataset, summaries[dataset]["avg"], METRIC_NAMES, title=title,
                                      version=manifest.version, ratio=ratio or "1"))
    if summaries:
        ratios = {d: r for d, r in manifest.datasets.items() if d in summaries}
        merge_summary(Path(manifest.summary_path), summaries, ratios if manifest.version == "jims" else None)
        lines.append(f"Summary (mean and std over runs): {manifest.summary_path}")
        if not any("--no-report" in unit.argv for unit in manifest.units):
            page = write_summary_report(Path(manifest.summary_path).parent, summaries, ratios, manifest.version,
                                        manifest.runs, _run_reports(manifest))
            if page:
                lines.append(f"Report: {page}")

    counts = {state: sum(s.state == state for s in states) for state in STATES}
    problems = [s for s in states if s.state != "complete"]
    for s in problems:
        lines.append(f"{s.state}: {s.unit.label}: {s.detail}")
    lines.append(f"{counts['complete']}/{len(states)} unit(s) x run(s) complete"
                 + "".join(f", {counts[k]} {k}" for k in STATES[1:] if counts[k]))
    if problems:
        lines.append("Submit the same command again to run what is not complete (complete units are skipped).")
    report = {
        "complete": counts["complete"] == len(states),
        "counts": counts,
        "units": [{"index": s.unit.index, "label": s.unit.label, "state": s.state, "detail": s.detail}
                  for s in states],
        "summary_path": manifest.summary_path,
    }
    write_json_atomic(Path(manifest.folder) / "report.json", report)
    return (0 if not problems else 1), "\n".join(lines)


@exit_on_user_error
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=path_argument)
    parser.add_argument("--log-pattern", default="", help="task log path with %%a for the task index")
    args = parser.parse_args(argv)
    code, report = aggregate(args.folder, args.log_pattern)
    print(report)
    return code


__all__ = ["UnitState", "unit_state", "merge_run_files", "merge_summary", "aggregate"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
