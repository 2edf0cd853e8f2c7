"""The aggregation of a batch submission (engine/aggregate.py): rows of each run merged, units that
failed, were interrupted or never ran reported, mean and std over runs in the official layout."""

import csv
import json
import statistics
from pathlib import Path

import pytest

from common.metrics import METRIC_NAMES
from common.results import ResultsWriter
from slurm import aggregate as agg
from slurm.manifest import Manifest, ManifestUnit
from slurm.status import record_status

CATEGORIES = ("fabric", "metal")


def values(seed: float) -> dict[str, float]:
    return {metric: round(seed + 0.01 * i, 6) for i, metric in enumerate(METRIC_NAMES)}


def make_manifest(tmp_path: Path, runs=(0, 1), categories=CATEGORIES, version="jims") -> Manifest:
    ratio = "1" if version == "jims" else ""
    manifest = Manifest(kind="train", name="train_demo", version=version, datasets={"demo": ratio}, runs=list(runs),
                        summary_path=str(tmp_path / "res" / "demo" / "results_avg_std.json"),
                        results_path=str(tmp_path / "res"))
    for run in runs:
        setup = "demo" + (f"_run{run}" if run else "")
        for category in categories:
            checkpoint = tmp_path / "res" / setup / "checkpoints" / "demo" / category / ratio
            results = tmp_path / "res" / setup / "demo" / ratio
            manifest.units.append(ManifestUnit(
                index=len(manifest.units), dataset="demo", unit=category, report_category=category, fold="",
                run_id=run, ratio=ratio, weights=str(checkpoint / "weights.pt"), results_dir=str(results),
                argv=["train.py", "demo"]))
    manifest.save(tmp_path / "res" / "slurm" / "train_demo_x")
    return manifest


def finish(unit: ManifestUnit, value: float, folder: Path | None = None) -> None:
    """What a task that trained `unit` leaves: weights.pt, its row in last.csv, exit 0."""
    Path(unit.weights).parent.mkdir(parents=True, exist_ok=True)
    Path(unit.weights).write_bytes(b"w")
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("backbone_weights", "version"))
    writer.add(unit.report_category, values(value), backbone_weights="random", version="jims")
    writer.save(Path(unit.results_dir))
    if folder is not None:
        record_status(folder, unit.index, 0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_unit_complete_gives_mean_and_std_over_runs(tmp_path):
    manifest = make_manifest(tmp_path)
    folder = Path(manifest.folder)
    seeds = {(0, "fabric"): 0.5, (0, "metal"): 0.7, (1, "fabric"): 0.6, (1, "metal"): 0.9}
    for unit in manifest.units:
        finish(unit, seeds[(unit.run_id, unit.unit)], folder)
    code, report = agg.aggregate(folder)
    assert code == 0, report
    assert "4/4 unit(s) x run(s) complete" in report and "fabric" in report and "(paper" in report

    summary = json.loads(Path(manifest.summary_path).read_text())
    assert set(summary) == {"avg", "std"} and set(summary["avg"]) == {"1"}
    for i, metric in enumerate(METRIC_NAMES):
        for category in CATEGORIES:
            per_run = [seeds[(run, category)] + 0.01 * i for run in (0, 1)]
            assert summary["avg"]["1"]["demo"][metric][category] == pytest.approx(statistics.mean(per_run))
            assert summary["std"]["1"]["demo"][metric][category] == pytest.approx(statistics.stdev(per_run))
        totals = [statistics.mean([seeds[(run, c)] + 0.01 * i for c in CATEGORIES]) for run in (0, 1)]
        assert summary["avg"]["1"]["demo"][metric]["total"] == pytest.approx(statistics.mean(totals))
        assert summary["std"]["1"]["demo"][metric]["total"] == pytest.approx(statistics.stdev(totals))

    for run, setup in ((0, "demo"), (1, "demo_run1")):
        rows = read_csv(tmp_path / "res" / setup / "demo" / "1" / "last.csv")
        assert [r["category"] for r in rows] == list(CATEGORIES)
        [avg] = read_csv(tmp_path / "res" / setup / "demo" / "1" / "avg.csv")
        expected = statistics.mean(seeds[(run, c)] for c in CATEGORIES)
        assert float(avg["I-AUROC"]) == pytest.approx(expected)
    report_json = json.loads((folder / "report.json").read_text())
    assert report_json["complete"] and report_json["counts"]["complete"] == 4

    # the mean ± std page beside results_avg_std.json, linking each run's page (run 1 sits beside demo/)
    for setup in ("demo", "demo_run1"):
        (tmp_path / "res" / setup / "demo" / "1" / "report.html").write_text("<html></html>")
    agg.aggregate(folder)
    page = (tmp_path / "res" / "demo" / "report.html").read_text()
    assert 'href="demo/1/report.html"' in page and 'href="../demo_run1/demo/1/report.html"' in page, page


def test_failed_interrupted_and_missing_units_are_reported(tmp_path):
    manifest = make_manifest(tmp_path)
    folder = Path(manifest.folder)
    fabric0, metal0, fabric1, metal1 = manifest.units
    finish(fabric0, 0.5, folder)
    finish(metal0, 0.7, folder)
    record_status(folder, fabric1.index, 1)  # crashed
    Path(metal1.weights).parent.mkdir(parents=True)
    (Path(metal1.weights).parent / "resume.pt").write_bytes(b"state")  # preempted, not requeued
    record_status(folder, metal1.index, 3)

    code, report = agg.aggregate(folder, log_pattern="logs/ssn-train-demo-7_%a.out")
    assert code == 1
    assert "failed: demo/fabric run 1: exit 1; log logs/ssn-train-demo-7_2.out" in report, report
    assert "interrupted: demo/metal run 1" in report and "resubmit" in report, report
    assert "2/4 unit(s) x run(s) complete, 1 failed, 1 interrupted" in report, report
    states = {u["label"]: u["state"] for u in json.loads((folder / "report.json").read_text())["units"]}
    assert states == {"demo/fabric run 0": "complete", "demo/metal run 0": "complete",
                      "demo/fabric run 1": "failed", "demo/metal run 1": "interrupted"}
    # the summary covers what is there: one run, so no std
    summary = json.loads(Path(manifest.summary_path).read_text())
    assert summary["avg"]["1"]["demo"]["I-AUROC"]["metal"] == pytest.approx(0.7)
    assert summary["std"] == {}


def test_missing_and_exit_zero_without_results(tmp_path):
    manifest = make_manifest(tmp_path, runs=(0,))
    folder = Path(manifest.folder)
    fabric, metal = manifest.units
    record_status(folder, fabric.index, 0)  # the task said 0 but left nothing
    code, report = agg.aggregate(folder)
    assert code == 1
    assert "failed: demo/fabric run 0: exited 0 but no weights.pt" in report, report
    assert "missing: demo/metal run 0: never finished" in report, report
    assert "demo: no results to summarise" in report
    assert not Path(manifest.summary_path).exists()


def test_rows_of_other_units_are_kept_but_left_out_of_the_summary(tmp_path):
    manifest = make_manifest(tmp_path, runs=(0,), categories=("fabric",))
    folder = Path(manifest.folder)
    [fabric] = manifest.units
    other = ManifestUnit(index=9, dataset="demo", unit="metal", report_category="metal", fold="", run_id=0, ratio="1",
                         weights=str(tmp_path / "x" / "weights.pt"), results_dir=fabric.results_dir, argv=[])
    finish(other, 0.1)  # an earlier run's row, not part of this submission
    finish(fabric, 0.8, folder)
    code, _ = agg.aggregate(folder)
    assert code == 0
    assert [r["category"] for r in read_csv(Path(fabric.results_dir) / "last.csv")] == ["metal", "fabric"]
    summary = json.loads(Path(manifest.summary_path).read_text())
    assert set(summary["avg"]["1"]["demo"]["I-AUROC"]) == {"fabric", "total"}


def test_summary_keeps_other_datasets_and_ratios(tmp_path):
    path = tmp_path / "results_avg_std.json"
    path.write_text(json.dumps({"avg": {"1": {"mvtec": {"I-AUROC": {"total": 0.9}}}, "53": {"ksdd2": {}}},
                                "std": {"1": {"mvtec": {"I-AUROC": {"total": 0.01}}, "demo": {"old": 1}}}}))
    fresh = {"demo": {"avg": {"I-AUROC": {"fabric": 0.5, "total": 0.5}}, "std": {}}}
    agg.merge_summary(path, fresh, {"demo": "1"})
    data = json.loads(path.read_text())
    assert data["avg"]["1"]["mvtec"] == {"I-AUROC": {"total": 0.9}} and "53" in data["avg"]
    assert data["avg"]["1"]["demo"] == {"I-AUROC": {"fabric": 0.5, "total": 0.5}}
    assert "demo" not in data["std"]["1"], "an old std of a dataset summarised without one stays behind"
    assert data["std"]["1"]["mvtec"] == {"I-AUROC": {"total": 0.01}}
    # ICPR: no ratio level
    icpr = tmp_path / "icpr.json"
    agg.merge_summary(icpr, fresh, None)
    assert json.loads(icpr.read_text()) == {"avg": {"demo": {"I-AUROC": {"fabric": 0.5, "total": 0.5}}}, "std": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icpr.json", "results_avg_std.json"]


def test_icpr_manifest_writes_the_icpr_layout(tmp_path):
    manifest = make_manifest(tmp_path, runs=(0, 1), categories=("fabric",), version="icpr")
    for unit in manifest.units:
        finish(unit, 0.5 + unit.run_id / 10, Path(manifest.folder))
    code, _ = agg.aggregate(Path(manifest.folder))
    assert code == 0
    summary = json.loads(Path(manifest.summary_path).read_text())
    assert summary["avg"]["demo"]["I-AUROC"]["fabric"] == pytest.approx(0.55)
    assert summary["std"]["demo"]["I-AUROC"]["fabric"] == pytest.approx(statistics.stdev([0.5, 0.6]))
