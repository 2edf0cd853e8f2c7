"""The manifest of a batch submission: which units x run ids it covers, their commands and paths,
`--runs` parsing, and which units are skipped as complete (engine/manifest.py)."""

from pathlib import Path

import pytest

from common.errors import UserError
from common.results import ResultsWriter
from slurm import manifest as m
from slurm import status

SMALL = ["--set", "epochs=1", "--no-figures"]


def build(kind: str, tmp_path: Path, *args: str) -> m.Manifest:
    return m.build_manifest(kind, [*args, "--datasets-folder", str(tmp_path / "data"),
                                   "--results-path", str(tmp_path / "res")])


@pytest.fixture
def data(tmp_path):
    for folder in ("mvtec", "KolektorSDD2", "SensumSODF"):  # the loaders are lazy: a folder is enough here
        (tmp_path / "data" / folder).mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("text, runs", [("0-4", [0, 1, 2, 3, 4]), ("3", [3]), ("0,2,4", [0, 2, 4]),
                                        ("0-1,5-6", [0, 1, 5, 6]), (" 1 , 2", [1, 2])])
def test_runs_parsing(text, runs):
    assert m.parse_runs(text) == runs


@pytest.mark.parametrize("text", ["4-0", "a", "0-", "-1", "1,1", "0-2,2", ""])
def test_bad_runs_are_refused(text):
    with pytest.raises(UserError, match="--runs"):
        m.parse_runs(text)


def test_array_spec_compresses_ranges():
    assert m.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert m.array_spec([4]) == "4"
    assert m.array_spec([]) == ""


def test_units_times_runs_with_their_commands_and_paths(data):
    manifest = build("train", data, "mvtec", "--category", "bottle", "cable", "--runs", "0-1", *SMALL)
    res = data / "res"
    assert [(u.index, u.unit, u.run_id) for u in manifest.units] == [
        (0, "bottle", 0), (1, "cable", 0), (2, "bottle", 1), (3, "cable", 1)]
    assert manifest.pending == [0, 1, 2, 3] and manifest.runs == [0, 1]
    assert manifest.datasets == {"mvtec": "1"} and manifest.version == "jims"
    first, last = manifest.units[0], manifest.units[3]
    assert first.weights == str(res / "superSimpleNet" / "checkpoints" / "mvtec" / "bottle" / "1" / "weights.pt")
    assert last.weights == str(res / "superSimpleNet_run1" / "checkpoints" / "mvtec" / "cable" / "1" / "weights.pt")
    assert last.results_dir == str(res / "superSimpleNet_run1" / "mvtec" / "1")
    assert manifest.summary_path == str(res / "superSimpleNet" / "results_avg_std.json")
    argv = last.argv
    assert argv[:2] == ["train.py", "mvtec"]
    pairs = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--category"] == "cable" and pairs["--run-id"] == "1" and pairs["--resume"] == "auto"
    assert pairs["--device"] == "auto" and pairs["--results-path"] == str(res)
    assert "--no-progress" in argv and "--no-figures" in argv and argv[argv.index("--set") + 1] == "epochs=1"
    assert "--version" not in argv  # only when given: train.py keeps its own default


def test_icpr_has_no_ratio_folder(data):
    manifest = build("train", data, "mvtec", "--category", "bottle", "--version", "icpr")
    [unit] = manifest.units
    assert unit.ratio == "" and manifest.datasets == {"mvtec": ""}
    assert unit.weights.endswith("superSimpleNet/checkpoints/mvtec/bottle/weights.pt")
    assert unit.argv[unit.argv.index("--version") + 1] == "icpr"


def test_sensum_units_are_category_fold_and_ratio_comes_from_the_settings(data):
    manifest = build("train", data, "sensum", "--category", "capsule", "--set", "ratio_segmented=0.5")
    assert [u.unit for u in manifest.units] == ["capsule_0", "capsule_1", "capsule_2"]
    assert [(u.report_category, u.fold) for u in manifest.units] == [("capsule", "0"), ("capsule", "1"), ("capsule", "2")]
    assert manifest.datasets == {"sensum": "0.5"}
    assert manifest.units[1].weights.endswith("checkpoints/sensum/capsule_1/0.5/weights.pt")
    ksdd2 = build("train", data, "ksdd2", "--set", "num_segmented=53", "--runs", "0-4")
    assert [u.unit for u in ksdd2.units] == ["ksdd2"] * 5 and ksdd2.datasets == {"ksdd2": "53"}


def test_run_ids_given_once(data):
    assert [u.run_id for u in build("train", data, "mvtec", "--category", "bottle", "--run-id", "2", "3").units] == [2, 3]
    with pytest.raises(UserError, match="not both"):
        build("train", data, "mvtec", "--runs", "0-1", "--run-id", "2")
    with pytest.raises(UserError, match="twice"):
        build("train", data, "mvtec", "--run-id", "1", "1")


def test_a_missing_dataset_is_an_error_before_anything_is_submitted(tmp_path):
    with pytest.raises(UserError, match="prepare_visa.py"):
        build("train", tmp_path, "visa")


def complete_unit(unit: m.ManifestUnit, with_row: bool = True) -> None:
    Path(unit.weights).parent.mkdir(parents=True, exist_ok=True)
    Path(unit.weights).write_bytes(b"weights")
    if with_row:
        writer = ResultsWriter(["I-AUROC"], extra_columns=("fold",))
        writer.add(unit.report_category, {"I-AUROC": 0.9}, fold=unit.fold)
        writer.save(Path(unit.results_dir))


def test_complete_units_are_skipped(data):
    args = ("mvtec", "--category", "bottle", "cable", "--runs", "0-1")
    units = build("train", data, *args).units
    complete_unit(units[0])  # bottle run 0: done
    complete_unit(units[1], with_row=False)  # cable run 0: weights but no row (crashed before its row)
    complete_unit(units[3])  # cable run 1: done ...
    (Path(units[3].weights).parent / "resume.pt").write_bytes(b"state")  # ... but interrupted since
    again = build("train", data, *args)
    assert [u.complete for u in again.units] == [True, False, False, False]
    assert again.pending == [1, 2, 3]
    assert m.array_spec(again.pending) == "1-3"
    assert "1 complete (skipped), 3 to run" in m.describe(again)
    assert build("train", data, *args, "--redo").pending == [0, 1, 2, 3]


def test_sensum_folds_complete_one_by_one(data):
    args = ("sensum", "--category", "softgel")
    units = build("train", data, *args).units
    complete_unit(units[1])
    assert [u.complete for u in build("train", data, *args).units] == [False, True, False]


def test_eval_units_need_weights_and_are_complete_with_a_newer_row(data):
    weights = data / "w"
    args = ("--datasets", "mvtec", "--category", "bottle", "--runs", "0-1", "--weights-path", str(weights))
    with pytest.raises(UserError, match="2 checkpoint"):
        build("eval", data, *args)
    for run in (0, 1):
        path = weights / str(run) / "mvtec" / "bottle" / "1" / "weights.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"w")
    manifest = build("eval", data, *args)
    assert manifest.pending == [0, 1]
    unit = manifest.units[1]
    assert unit.results_dir == str(data / "res" / "1" / "1" / "mvtec")
    assert unit.argv[:6] == ["eval.py", "--datasets", "mvtec", "--category", "bottle", "--run-ids"]
    assert manifest.summary_path == str(data / "res" / "results_avg_std.json")
    writer = ResultsWriter(["I-AUROC"], extra_columns=("run_id",))
    writer.add("bottle", {"I-AUROC": 0.9}, run_id=1)
    writer.save(Path(unit.results_dir))
    assert build("eval", data, *args).pending == [0]
    # a row older than the weights (retrained since) is evaluated again
    import os
    os.utime(unit.weights, (2e9, 2e9))
    assert build("eval", data, *args).pending == [0, 1]


def test_saved_manifest_and_status_round_trip(data):
    manifest = build("train", data, "mvtec", "--category", "bottle")
    folder = m.new_manifest_folder(data / "res", manifest.name)
    manifest.save(folder)
    assert folder.parent == data / "res" / "slurm" and folder.name.startswith("train_mvtec_")
    assert m.task_argv(folder, 0) == manifest.units[0].argv
    assert status.last_status(folder, 0) is None
    status.record_status(folder, 0, 3, "job 5")
    status.record_status(folder, 0, 0, "job 5 restart 1")
    assert status.last_status(folder, 0) == 0
    with pytest.raises(UserError, match="not in"):
        m.task_argv(folder, 1)
