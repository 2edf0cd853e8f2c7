"""Results files (docs/method.md, "Evaluation"): per-category CSVs, mean and sample std over runs, the paper comparison,
the summary JSON layout; and the atomic file writing they rely on."""

import csv
import json
import os
import statistics
from pathlib import Path

import pytest

from common.errors import UserError
from common.fileio import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from common.metrics import METRIC_NAMES
from common.results import (
    paper_results_path,
    ResultsWriter,
    comparison_table,
    read_last_csv,
    summarize_runs,
    write_summary_json,
)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_metric_names_match_the_paper_results():
    paper = json.loads(paper_results_path("icpr").read_text(encoding="utf-8"))
    assert set(METRIC_NAMES) == set(paper["avg"]["mvtec"])


def test_results_writer_last_and_avg(tmp_path):
    writer = ResultsWriter(["I-AUROC", "AUPRO"], extra_columns=("run_id", "backbone_weights"))
    writer.add("bottle", {"I-AUROC": 1.0, "AUPRO": 0.5}, run_id="0", backbone_weights="imagenet")
    writer.add("cable", {"I-AUROC": 0.75, "AUPRO": None}, run_id="0", backbone_weights="random")
    writer.save(tmp_path)
    last = read_csv(tmp_path / "last.csv")
    assert last[0] == ["category", "I-AUROC", "AUPRO", "run_id", "backbone_weights"]
    assert last[1][0] == "bottle" and float(last[1][1]) == 1.0 and float(last[1][2]) == 0.5
    assert last[1][3:] == ["0", "imagenet"]
    assert last[2][0] == "cable" and float(last[2][1]) == 0.75 and last[2][2] == "n/a"
    assert len(last) == 3
    avg = read_csv(tmp_path / "avg.csv")
    assert avg[0] == ["category", "I-AUROC", "AUPRO"]
    assert avg[1][0] == "avg"
    assert float(avg[1][1]) == pytest.approx(0.875)
    assert float(avg[1][2]) == pytest.approx(0.5)  # None is ignored, not counted as 0
    assert len(avg) == 2
    assert sorted(os.listdir(tmp_path)) == ["avg.csv", "last.csv"]


def test_results_writer_all_none_gives_na(tmp_path):
    writer = ResultsWriter(["AUPRO"])
    writer.add("x", {"AUPRO": None})
    writer.save(tmp_path)
    assert read_csv(tmp_path / "avg.csv")[1] == ["avg", "n/a"]


def test_read_last_csv_round_trip(tmp_path):
    writer = ResultsWriter(["I-AUROC", "AUPRO"], extra_columns=("run_id",))
    writer.add("bottle", {"I-AUROC": 0.9876543210123, "AUPRO": None}, run_id="3")
    writer.save(tmp_path)
    rows = read_last_csv(tmp_path / "last.csv")
    assert rows == [{"category": "bottle", "I-AUROC": 0.9876543210123, "AUPRO": None, "run_id": "3"}]
    with pytest.raises(UserError, match="nothing.csv"):
        read_last_csv(tmp_path / "nothing.csv")


def test_summarize_two_runs():
    runs = {
        "0": [{"category": "bottle", "I-AUROC": 1.0}, {"category": "cable", "I-AUROC": 0.8}],
        "1": [{"category": "bottle", "I-AUROC": 0.9}, {"category": "cable", "I-AUROC": 0.6}],
    }
    summary = summarize_runs(runs, ["I-AUROC"])
    avg, std = summary["avg"]["I-AUROC"], summary["std"]["I-AUROC"]
    assert list(avg) == ["bottle", "cable", "total"]
    assert avg["bottle"] == pytest.approx(0.95)
    assert avg["cable"] == pytest.approx(0.7)
    # totals per run: 0.9 and 0.75
    assert avg["total"] == pytest.approx(0.825)
    # sample std (ddof=1) of two values a, b is |a - b| / sqrt(2)
    assert std["bottle"] == pytest.approx(0.1 / 2**0.5)
    assert std["cable"] == pytest.approx(0.2 / 2**0.5)
    assert std["total"] == pytest.approx(0.15 / 2**0.5)


def test_summarize_three_runs_sample_std():
    values = [0.9, 0.7, 0.8]
    runs = {str(i): [{"category": "ksdd2", "AP-det": v}] for i, v in enumerate(values)}
    summary = summarize_runs(runs, ["AP-det"])
    assert summary["avg"]["AP-det"]["ksdd2"] == pytest.approx(0.8)
    assert summary["std"]["AP-det"]["ksdd2"] == pytest.approx(0.1)  # ddof=1: sqrt(0.02 / 2)
    assert summary["std"]["AP-det"]["total"] == pytest.approx(statistics.stdev(values))


def test_summarize_sensum_folds():
    def rows(capsule, softgel):
        return [{"category": "capsule", "I-AUROC": v} for v in capsule] + [
            {"category": "softgel", "I-AUROC": v} for v in softgel
        ]

    runs = {"0": rows([0.9, 0.8, 1.0], [0.6, 0.7, 0.8]), "1": rows([0.7, 0.7, 0.7], [1.0, 1.0, 0.7])}
    summary = summarize_runs(runs, ["I-AUROC"])
    avg, std = summary["avg"]["I-AUROC"], summary["std"]["I-AUROC"]
    # per run: capsule 0.9 / 0.7, softgel 0.7 / 0.9; totals (mean of all six rows) 0.8 / 0.8
    assert avg["capsule"] == pytest.approx(0.8)
    assert avg["softgel"] == pytest.approx(0.8)
    assert avg["total"] == pytest.approx(0.8)
    assert std["capsule"] == pytest.approx(0.2 / 2**0.5)
    assert std["softgel"] == pytest.approx(0.2 / 2**0.5)
    assert std["total"] == pytest.approx(0.0, abs=1e-12)


def test_summarize_total_is_the_mean_of_all_rows():
    # unequal fold counts (e.g. an interrupted run): the total weights every row, not every category
    rows = [{"category": "capsule", "I-AUROC": v} for v in (0.9, 0.6, 0.9)] + [{"category": "softgel", "I-AUROC": 0.2}]
    summary = summarize_runs({"0": rows}, ["I-AUROC"])
    assert summary["avg"]["I-AUROC"]["capsule"] == pytest.approx(0.8)
    assert summary["avg"]["I-AUROC"]["softgel"] == pytest.approx(0.2)
    assert summary["avg"]["I-AUROC"]["total"] == pytest.approx(0.65)  # (0.9 + 0.6 + 0.9 + 0.2) / 4, not 0.5


def test_summarize_single_run_has_no_std():
    summary = summarize_runs({"0": [{"category": "bottle", "I-AUROC": 0.5}]}, ["I-AUROC"])
    assert summary["avg"]["I-AUROC"] == {"bottle": 0.5, "total": 0.5}
    assert not summary["std"]


def test_summarize_ignores_none():
    runs = {
        "0": [{"category": "good_only", "AUPRO": None}, {"category": "bottle", "AUPRO": 0.6}],
        "1": [{"category": "good_only", "AUPRO": None}, {"category": "bottle", "AUPRO": 0.8}],
    }
    summary = summarize_runs(runs, ["AUPRO"])
    assert summary["avg"]["AUPRO"]["good_only"] is None
    assert summary["avg"]["AUPRO"]["bottle"] == pytest.approx(0.7)
    assert summary["avg"]["AUPRO"]["total"] == pytest.approx(0.7)


def test_comparison_table_shows_paper_figure():
    ours = {"I-AUROC": {"bottle": 0.987, "cable": None}, "AUPRO": {"bottle": 0.5, "cable": 0.25}}
    table = comparison_table("mvtec", ours, ["I-AUROC", "AUPRO"], title="my title")
    lines = table.splitlines()
    assert lines[0] == "my title"
    assert "I-AUROC" in lines[1] and "AUPRO" in lines[1]
    bottle = next(line for line in lines if line.startswith("bottle"))
    assert "98.7 (100.0)" in bottle
    paper = json.loads(paper_results_path("icpr").read_text(encoding="utf-8"))
    assert f"50.0 ({100 * paper['avg']['mvtec']['AUPRO']['bottle']:.1f})" in bottle
    cable = next(line for line in lines if line.startswith("cable"))
    assert f"n/a ({100 * paper['avg']['mvtec']['I-AUROC']['cable']:.1f})" in cable


def test_comparison_table_unknown_category_has_no_paper_value():
    table = comparison_table("mvtec", {"I-AUROC": {"my_part": 0.5}}, ["I-AUROC"])
    row = next(line for line in table.splitlines() if line.startswith("my_part"))
    assert "50.0 (-)" in row


def test_write_summary_json_layout(tmp_path):
    runs = {
        "0": [{"category": "bottle", "I-AUROC": 1.0}],
        "1": [{"category": "bottle", "I-AUROC": 0.8}],
    }
    summaries = {
        "mvtec": summarize_runs(runs, ["I-AUROC"]),
        "ksdd2": summarize_runs({"0": [{"category": "ksdd2", "I-AUROC": 0.9}]}, ["I-AUROC"]),
    }
    path = tmp_path / "out" / "results_avg_std.json"
    write_summary_json(path, summaries)
    data = json.loads(path.read_text(encoding="utf-8"))
    paper = json.loads(paper_results_path("icpr").read_text(encoding="utf-8"))
    assert list(data) == list(paper) == ["avg", "std"]
    assert data["avg"]["mvtec"]["I-AUROC"] == {"bottle": pytest.approx(0.9), "total": pytest.approx(0.9)}
    assert data["std"]["mvtec"]["I-AUROC"]["bottle"] == pytest.approx(0.2 / 2**0.5)
    assert data["avg"]["ksdd2"]["I-AUROC"] == {"ksdd2": 0.9, "total": 0.9}
    assert "ksdd2" not in data["std"]  # a single run has no std
    # the paper file has the same nesting: dataset -> metric -> category -> value
    assert isinstance(paper["avg"]["mvtec"]["I-AUROC"]["bottle"], float)
    assert sorted(os.listdir(path.parent)) == ["results_avg_std.json"]


# --- atomic writing ---------------------------------------------------------------------------


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written", encoding="utf-8")
            raise RuntimeError("crash")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["result.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "new_dir" / "result.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new", encoding="utf-8")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text(encoding="utf-8") == "new"
    assert os.listdir(target.parent) == ["result.txt"]


def test_atomic_path_renames_rather_than_copies(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old", encoding="utf-8")
    old_inode = os.stat(target).st_ino
    with atomic_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")
        tmp_inode = os.stat(tmp).st_ino
        assert target.read_text(encoding="utf-8") == "old"  # readers see the old file until the end
    # the finished temp file itself became the target (one rename), never a partly rewritten old file
    assert os.stat(target).st_ino == tmp_inode != old_inode
    assert target.read_text(encoding="utf-8") == "new"


def test_atomic_writers(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "hello")
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
    write_csv_atomic(tmp_path / "c.csv", ["h1", "h2"], [[1, "a,b"]])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "hello"
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == {"x": [1, 2]}
    assert read_csv(tmp_path / "c.csv") == [["h1", "h2"], ["1", "a,b"]]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.csv"]


# --- results files are never reduced -----------------------------------------------------------


def test_saving_keeps_rows_of_other_units_and_replaces_its_own(tmp_path):
    first = ResultsWriter(["I-AUROC"], extra_columns=("fold",))
    first.add("bottle", {"I-AUROC": 0.5})
    first.add("capsule", {"I-AUROC": 0.6}, fold=0)
    first.add("capsule", {"I-AUROC": 0.7}, fold=1)
    first.save(tmp_path)
    again = ResultsWriter(["I-AUROC"], extra_columns=("fold",))
    again.add("capsule", {"I-AUROC": 0.9}, fold=1)  # one fold re-run
    again.add("cable", {"I-AUROC": 0.1})  # a new unit
    again.save(tmp_path)
    rows = [(r["category"], r["fold"], r["I-AUROC"]) for r in read_last_csv(tmp_path / "last.csv")]
    assert rows == [("bottle", "", 0.5), ("capsule", "0", 0.6), ("capsule", "1", 0.9), ("cable", "", 0.1)]
    assert float(read_csv(tmp_path / "avg.csv")[1][1]) == pytest.approx((0.5 + 0.6 + 0.9 + 0.1) / 4)


def _write_rows(directory: str, worker: int, count: int) -> None:
    for index in range(count):
        writer = ResultsWriter(["I-AUROC"])
        writer.add(f"w{worker}_{index}", {"I-AUROC": index / count})
        writer.save(Path(directory))


def test_concurrent_writers_lose_no_row(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_rows, args=(str(tmp_path), w, 15)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    categories = sorted(r["category"] for r in read_last_csv(tmp_path / "last.csv"))
    assert categories == sorted(f"w{w}_{i}" for w in range(3) for i in range(15))
    assert sorted(os.listdir(tmp_path)) == ["avg.csv", "last.csv"]  # no lock or temporary file left
