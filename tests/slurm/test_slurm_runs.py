"""run_slurm_train.sh on the private Slurm cluster (tests/slurm/cluster.sh): a 2-unit x 2-run demo
array plus its aggregation, and the first task of an array preempted mid-training while its
sibling runs: that task alone is requeued (its job id is the array's: requeueing that id would
restart the whole array), the sibling runs on undisturbed, and the preempted unit ends with the
same checkpoint, byte for byte, as an uninterrupted run. Without Slurm, the same script runs
plainly and writes what train.py writes (that test needs no cluster).

The module fixture submits B first and waits until both its tasks run (the node has few CPUs),
then A and C, which share the node's CPUs with what is left of B:
  B  demo fabric+metal run 0, 3 epochs, checkpoint_every=1: TERM to the task whose job id is the
     array's (Slurm gives it to one of the tasks) once its first resume.pt exists
  A  demo fabric+metal, runs 0-1, 2 epochs, 64x64 (4 tasks) + aggregation
  C  B's units, uninterrupted (the reference)
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.jobs import TERMINAL, job_records, sh, wait_for

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--set", "image_size=[64,64]", "--set", "eval_step_size=2", "--set", "checkpoint_every=1", "--no-figures"]
METRICS = ["I-AUROC", "AP-det", "P-AUROC", "AUPRO", "AP-loc", "seg-I-AUROC", "seg-AP-det"]


def wait_done(job_id: str, timeout: float) -> list[dict]:
    def done():
        records = job_records(job_id)
        return records if records and all(r["JobState"] in TERMINAL for r in records) else None

    try:
        return wait_for(done, timeout, f"job {job_id} to end")
    except AssertionError as error:
        raise AssertionError(f"{error}: {[(r.get('JobId'), r.get('JobState')) for r in job_records(job_id)]}") from None


def start_submission(tmp: Path, results: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "SSN_CPUS": "1", "SSN_MEM": "1500M", "SSN_TIME": "15", "SSN_AGGREGATE_MEM": "500M",
           "SSN_LOG_DIR": str(tmp / "logs"), "SSN_SKIP_SETUP": "1"}
    env.pop("SSN_NO_SLURM", None)
    command = ["bash", str(REPO / "run_slurm_train.sh"), "demo", *args, *SMALL,
               "--results-path", str(tmp / results), "--datasets-folder", str(tmp / "datasets")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)


def submitted(process: subprocess.Popen) -> dict[str, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    match = re.search(r"^submitted array=(\d+) aggregate=(\d+) manifest=(\S+)$", out, re.M)
    assert match, out + err
    return {"array": match[1], "aggregate": match[2], "manifest": match[3], "out": out + err}


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm_runs")
    started = time.monotonic()
    (tmp / "datasets").mkdir()
    from datamodules.demo import ensure_demo_dataset

    ensure_demo_dataset(tmp / "datasets")  # once, so the three submissions below can list their units at once
    jobs = {"B": submitted(start_submission(tmp, "B", "--set", "epochs=3"))}
    jobs["B"]["preempted"] = preempt_the_task_named_like_the_array(tmp, jobs["B"]["array"])
    processes = {  # submitted side by side: the manifests are built in parallel
        "A": start_submission(tmp, "A", "--runs", "0-1", "--set", "epochs=2", "--max-parallel", "2"),
        "C": start_submission(tmp, "C", "--set", "epochs=3"),
    }
    jobs.update({name: submitted(process) for name, process in processes.items()})
    yield tmp, jobs
    print(f"slurm runs: {time.monotonic() - started:.0f} s from the first submission")
    ids = [j[k] for j in jobs.values() for k in ("array", "aggregate")]
    subprocess.run(["scancel", *ids], timeout=30)


def preempt_the_task_named_like_the_array(tmp: Path, array: str) -> dict:
    """Once both tasks of B run, TERM (as on preemption) to the one whose own job id is the array's
    (requeueing that id would restart every task), as soon as its first resume.pt is there, that is
    during its second of three epochs, while its sibling runs. Returns what the test checks."""
    wait_for(lambda: [r["JobState"] for r in job_records(array)] == ["RUNNING", "RUNNING"], 240,
             "both tasks of B to run", interval=0.5)
    [named] = [r for r in job_records(array) if r["JobId"] == array]
    index = int(named["ArrayTaskId"])
    unit = ("fabric", "metal")[index]
    unit_dir = tmp / "B" / "demo" / "checkpoints" / "demo" / unit / "1"
    wait_for(lambda: (unit_dir / "resume.pt").is_file(), 240, "B's first resume.pt", interval=0.1)
    [sibling] = job_records(f"{array}_{1 - index}")
    sh("scancel", "--signal=TERM", "--batch", f"{array}_{index}")
    return {"index": index, "unit": unit, "unit_dir": unit_dir, "sibling_state": sibling["JobState"]}


def log_text(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((tmp / "logs").glob("*.out")))


@pytest.mark.slurm
def test_submission_has_the_requested_shape(jobs):
    tmp, submitted = jobs
    records = job_records(submitted["A"]["array"])
    assert any(r.get("ArrayTaskThrottle") == "2" for r in records), records
    for record in records:
        assert record["Requeue"] == "1", record
        assert "gpu" not in record.get("TRES", "") + record.get("TresPerNode", ""), record  # no GPU asked for
    [aggregation] = job_records(submitted["A"]["aggregate"])
    if aggregation["JobState"] == "PENDING":
        assert aggregation["Dependency"].startswith(f"afterany:{submitted['A']['array']}"), aggregation
    manifest = json.loads((Path(submitted["A"]["manifest"]) / "manifest.json").read_text())
    assert [(u["unit"], u["run_id"]) for u in manifest["units"]] == [
        ("fabric", 0), ("metal", 0), ("fabric", 1), ("metal", 1)]


@pytest.mark.slurm
def test_a_preempted_task_is_requeued_alone_and_ends_as_an_uninterrupted_run(jobs):
    tmp, submitted = jobs
    array, preempted = submitted["B"]["array"], submitted["B"]["preempted"]
    index, unit, unit_dir = str(preempted["index"]), preempted["unit"], preempted["unit_dir"]
    task, sibling = f"{array}_{index}", f"{array}_{1 - int(index)}"
    assert preempted["sibling_state"] == "RUNNING", preempted  # preempted while its sibling ran
    [b] = wait_done(submitted["B"]["aggregate"], 400)
    assert b["JobState"] == "COMPLETED", (b, log_text(tmp))
    [record] = job_records(task)
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", record
    [other] = job_records(sibling)
    assert other["JobState"] == "COMPLETED" and other["Restarts"] == "0", other  # never touched
    status = (Path(submitted["B"]["manifest"]) / "status" / index).read_text().split("\n")
    assert [line.split()[2] for line in status if line] == ["3", "0"], status  # preempted, then done
    sibling_status = (Path(submitted["B"]["manifest"]) / "status" / str(1 - int(index))).read_text().split("\n")
    assert [line.split()[2] for line in sibling_status if line] == ["0"], sibling_status  # one attempt
    log = next((tmp / "logs").glob(f"*-{array}_{index}.out")).read_text()
    assert f"requeueing task {task} (this task only)" in log and f"requeued {task}" in log, log
    assert "resumed from" in log and "submit the same command again" not in log, log
    assert not (unit_dir / "resume.pt").exists()
    report = json.loads((Path(submitted["B"]["manifest"]) / "report.json").read_text())
    assert report["complete"] and report["counts"]["complete"] == 2, report

    [c] = wait_done(submitted["C"]["aggregate"], 300)
    assert c["JobState"] == "COMPLETED", (c, log_text(tmp))
    reference = tmp / "C" / "demo" / "checkpoints" / "demo" / unit / "1" / "weights.pt"
    assert (unit_dir / "weights.pt").read_bytes() == reference.read_bytes()


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return {row["category"]: row for row in csv.DictReader(handle)}


@pytest.mark.slurm
def test_array_and_aggregation(jobs):
    tmp, submitted = jobs
    [aggregation] = wait_done(submitted["A"]["aggregate"], 400)
    assert aggregation["JobState"] == "COMPLETED", (aggregation, log_text(tmp))
    tasks = job_records(submitted["A"]["array"])
    assert sorted(r["ArrayTaskId"] for r in tasks) == ["0", "1", "2", "3"]
    assert all(r["JobState"] == "COMPLETED" for r in tasks), tasks

    runs = {run: read_rows(tmp / "A" / folder / "demo" / "1" / "last.csv") for run, folder in (("0", "demo"), ("1", "demo_run1"))}
    for rows in runs.values():
        assert set(rows) == {"fabric", "metal"}
    summary = json.loads((tmp / "A" / "demo" / "results_avg_std.json").read_text())
    for metric in METRICS:
        for category in ("fabric", "metal"):
            values = [float(runs[run][category][metric]) for run in ("0", "1")]
            assert summary["avg"]["1"]["demo"][metric][category] == pytest.approx(statistics.mean(values))
            assert summary["std"]["1"]["demo"][metric][category] == pytest.approx(statistics.stdev(values))
    agg_log = next((tmp / "logs").glob(f"*-aggregate-{submitted['A']['aggregate']}.out")).read_text()
    assert "4/4 unit(s) x run(s) complete" in agg_log and "total" in agg_log and "(paper" in agg_log, agg_log

    # resubmitting skips the complete units and only aggregates again
    env = {**os.environ, "SSN_SKIP_SETUP": "1", "SSN_LOG_DIR": str(tmp / "logs")}
    again = subprocess.run(["bash", str(REPO / "run_slurm_train.sh"), "demo", "--runs", "0-1", "--set", "epochs=2",
                            *SMALL, "--results-path", str(tmp / "A"), "--datasets-folder", str(tmp / "datasets")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 complete (skipped), 0 to run" in again.stderr and "Every unit is complete" in again.stdout, again.stdout


def path_without_sbatch(tmp: Path) -> str:
    """A PATH with every program of the usual folders except Slurm's."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for program in Path(folder).glob("*"):
            target = bin_dir / program.name
            if program.name in ("sbatch", "srun", "scontrol", "squeue") or target.exists():
                continue
            target.symlink_to(program)
    return str(bin_dir)


def test_without_slurm_it_runs_plainly_with_train_py_outputs(tmp_path):
    options = ["--category", "fabric", "--set", "epochs=1", "--set", "image_size=[64,64]", "--set", "eval_step_size=2",
               "--no-figures", "--datasets-folder", str(tmp_path / "datasets")]
    env = {**os.environ, "PATH": path_without_sbatch(tmp_path), "SSN_SKIP_SETUP": "1"}
    env.pop("SSN_NO_SLURM", None)
    plain = subprocess.run(["bash", str(REPO / "run_slurm_train.sh"), "demo", "--runs", "1", *options,
                            "--results-path", str(tmp_path / "plain")], capture_output=True, text=True, env=env,
                           timeout=600, cwd=tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "no sbatch on PATH: running plainly" in plain.stderr, plain.stderr
    assert "1/1 unit(s) x run(s) complete" in plain.stdout, plain.stdout
    direct = subprocess.run([sys.executable, "train.py", "demo", "--run-id", "1", *options,
                             "--no-progress", "--results-path", str(tmp_path / "direct")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert direct.returncode == 0, direct.stdout + direct.stderr

    run = Path("demo_run1")
    for relative in ("checkpoints/demo/fabric/1/weights.pt", "checkpoints/demo/fabric/1/model.yaml",
                     "scores/demo/fabric/1/scores.json", "demo/1/last.csv", "demo/1/avg.csv"):
        ours, theirs = tmp_path / "plain" / run / relative, tmp_path / "direct" / run / relative
        assert ours.read_bytes() == theirs.read_bytes(), relative
    summary = json.loads((tmp_path / "plain" / "demo" / "results_avg_std.json").read_text())
    rows = read_rows(tmp_path / "direct" / run / "demo" / "1" / "last.csv")
    assert summary["avg"]["1"]["demo"]["I-AUROC"]["fabric"] == pytest.approx(float(rows["fabric"]["I-AUROC"]))
    assert summary["std"] == {}  # one run


def test_no_slurm_setting_and_argument_errors(tmp_path):
    env = {**os.environ, "SSN_NO_SLURM": "1", "SSN_SKIP_SETUP": "1"}
    result = subprocess.run(["bash", str(REPO / "run_slurm_train.sh"), "demo", "--category", "wool",
                             "--datasets-folder", str(tmp_path / "d"), "--results-path", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "SSN_NO_SLURM=1: running plainly" in result.stderr, result.stderr
    assert "unknown demo categories ['wool']" in result.stderr, result.stderr
    assert not (tmp_path / "r" / "slurm").exists() or not any((tmp_path / "r" / "slurm").iterdir())
    for bad, message in ((["--max-parallel", "0"], "--max-parallel"), (["--runs", "2-1"], "--runs")):
        result = subprocess.run(["bash", str(REPO / "run_slurm_train.sh"), "demo", *bad], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    # options train.py / eval.py would refuse are refused here, before anything is written or submitted
    for script, arguments, message in (
            ("run_slurm_train.sh", ["demo", "--bogus"], "unrecognized arguments: --bogus (see run_slurm_train.sh"),
            ("run_slurm_train.sh", ["demo", "--no-figures", "--resume", "never"], "--resume"),
            ("run_slurm_train.sh", ["demo", "--category", "../up"], "--category '../up' is not a plain name"),
            ("run_slurm_eval.sh", ["--datasets", "demo", "--bogus"], "unrecognized arguments: --bogus"),
            ("run_slurm_eval.sh", ["--datasets", "demo", "--save-images", "--batch", "x"], "--batch")):
        for slurm in ("1", "0"):  # submitting, or running plainly
            result = subprocess.run(["bash", str(REPO / script), *arguments, "--datasets-folder", str(tmp_path / "d2"),
                                     "--results-path", str(tmp_path / "r2")], capture_output=True, text=True,
                                    env={**env, "SSN_NO_SLURM": slurm}, timeout=300)
            assert result.returncode == 2, (script, arguments, result.stdout, result.stderr)
            [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert message in line, line
    assert not (tmp_path / "r2").exists() and not (tmp_path / "d2").exists()


def test_resources_no_gpu_unless_asked(tmp_path):
    """--dry-run prints the sbatch commands: no GPU by default, SSN_* and --sbatch flags passed on."""
    base = ["bash", str(REPO / "run_slurm_train.sh"), "demo", "--category", "metal", "--dry-run",
            "--datasets-folder", str(tmp_path / "d"), "--results-path", str(tmp_path / "r")]
    env = {**os.environ, "SSN_SKIP_SETUP": "1", "SSN_LOG_DIR": str(tmp_path / "logs")}
    for key in ("SSN_GPUS", "SSN_CPUS", "SSN_MEM", "SSN_TIME", "SSN_PARTITION", "SSN_SBATCH_ARGS", "SSN_MAX_PARALLEL"):
        env.pop(key, None)
    plain = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr
    # a dry run writes nothing (no manifest, no logs, not even the demo dataset) and submits nothing
    assert not any((tmp_path / name).exists() for name in ("r", "d", "logs")), list(tmp_path.iterdir())
    assert "dry run: nothing was written and nothing was submitted" in plain.stdout, plain.stdout
    assert "Manifest (dry run, not written):" in plain.stdout and "submitted array=" not in plain.stdout
    array, aggregation = [line for line in plain.stderr.splitlines() if line.startswith("dry-run: sbatch")]
    assert "afterany:\\<job-id\\>" in aggregation, aggregation  # no made-up job id
    assert "--gres" not in array and "--gpus" not in array and "--array=0 " in array and "--requeue" in array, array
    assert "--signal=B:USR1@120" in array and "--open-mode=append" in array and "%x-%A_%a.out" in array, array
    assert "--dependency=afterany:" in aggregation and "--kill-on-invalid-dep=yes" in aggregation, aggregation
    env.update(SSN_GPUS="2", SSN_CPUS="4", SSN_MEM="", SSN_TIME="1:00:00", SSN_PARTITION="gpu",
               SSN_SBATCH_ARGS="--account=proj --qos=low", SSN_MAX_PARALLEL="3")
    asked = subprocess.run([*base, "--signal-lead", "300", "--sbatch", "--constraint=a100"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert asked.returncode == 0, asked.stderr
    array, aggregation = [line for line in asked.stderr.splitlines() if line.startswith("dry-run: sbatch")]
    for flag in ("--array=0%3", "--gres=gpu:2", "--cpus-per-task=4", "--time=1:00:00", "--partition=gpu",
                 "--account=proj", "--qos=low", "--constraint=a100", "--signal=B:USR1@300"):
        assert flag in array, (flag, array)
    assert "--mem=" not in array, array
    assert "gpu:" not in aggregation and "--account=proj" in aggregation, aggregation
