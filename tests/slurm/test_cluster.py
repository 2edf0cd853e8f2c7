"""The private Slurm cluster does what the Slurm entry points rely on: job arrays with a throttle,
dependencies, requeue, and signals to the batch shell (scancel --signal and sbatch --signal=B:SIG@N).

No accounting is configured, so job states come from `scontrol show job` (records are kept for
MinJobAge=600 s after a job ends), never from sacct.
"""

import re
import subprocess
from pathlib import Path

import pytest

from tests.slurm.jobs import TERMINAL, job_records, sbatch, sh, wait_for

pytestmark = pytest.mark.slurm

def wait_state(job_id: str, states: set, timeout: float) -> list:
    """Waits until every record of the job (all tasks of an array) is in one of `states`."""
    def reached():
        records = job_records(job_id)
        return records if records and all(r["JobState"] in states for r in records) else None

    try:
        return wait_for(reached, timeout, f"job {job_id} to reach {sorted(states)}")
    except AssertionError as error:
        raise AssertionError(f"{error}; now: {[(r.get('JobId'), r.get('JobState'), r.get('Reason')) for r in job_records(job_id)]}") from None


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    return path


def test_node_is_idle_with_debug_partition(slurm_cluster):
    out = sh("sinfo", "-h", "-o", "%P %a %t")
    partition, avail, state = out.split()[:3]
    assert partition == "debug*" and avail == "up" and state in {"idle", "mix", "alloc"}, out
    config = sh("scontrol", "show", "config")
    assert re.search(r"^JobRequeue\s+=\s+1$", config, re.M), "JobRequeue is not 1"
    assert int(re.search(r"^MaxArraySize\s+=\s+(\d+)", config, re.M).group(1)) >= 1000


def test_array_with_throttle_and_dependent_job(slurm_cluster, tmp_path):
    task = write_script(tmp_path / "task.sh", 'echo "$SLURM_ARRAY_TASK_ID" > "task_$SLURM_ARRAY_TASK_ID.txt"\nsleep 1\n')
    gather = write_script(tmp_path / "gather.sh", "cat task_0.txt task_1.txt task_2.txt > all.txt\n")
    common = ["--chdir", str(tmp_path), "--time", "2", "--output", str(tmp_path / "slurm-%A_%a.out")]

    array_id = sbatch(task, "--array=0-2%2", "--job-name=ssn-array", *common)
    records = job_records(array_id)
    assert any(r.get("ArrayTaskThrottle") == "2" for r in records), records
    dep_id = sbatch(gather, f"--dependency=afterany:{array_id}", "--kill-on-invalid-dep=yes", "--job-name=ssn-gather", *common)

    tasks = wait_state(array_id, TERMINAL, timeout=60)
    assert sorted(r["ArrayTaskId"] for r in tasks) == ["0", "1", "2"]
    assert all(r["JobState"] == "COMPLETED" for r in tasks), tasks
    [dep] = wait_state(dep_id, TERMINAL, timeout=60)
    assert dep["JobState"] == "COMPLETED", dep
    assert (tmp_path / "all.txt").read_text() == "0\n1\n2\n"


def test_requeue_runs_the_job_again(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "requeue.sh", 'echo "${SLURM_RESTART_COUNT:-0}" >> runs.txt\nsleep 300 &\nwait $!\n')
    job_id = sbatch(script, "--chdir", str(tmp_path), "--time", "10", "--requeue", "--output", str(tmp_path / "out.txt"))
    runs = tmp_path / "runs.txt"
    try:
        wait_for(lambda: runs.exists() and runs.read_text() == "0\n", 30, "the first run")
        sh("scontrol", "requeue", job_id)
        wait_for(lambda: runs.read_text() == "0\n1\n", 60, "the second run after requeue")
        [record] = job_records(job_id)
        assert record["Restarts"] == "1" and record["JobState"] == "RUNNING", record
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
    wait_state(job_id, TERMINAL, timeout=30)


TRAP_USR1 = """trap 'echo "USR1 $SECONDS" > signal.txt; exit 0' USR1
echo started > started.txt
sleep 300 &
wait $!
"""


def test_scancel_signal_reaches_batch_shell(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "trap.sh", TRAP_USR1)
    job_id = sbatch(script, "--chdir", str(tmp_path), "--time", "5", "--signal=B:USR1@120", "--output", str(tmp_path / "out.txt"))
    try:
        wait_for(lambda: (tmp_path / "started.txt").exists(), 30, "the job to start")
        sh("scancel", "--signal=USR1", "--batch", job_id)
        wait_for(lambda: (tmp_path / "signal.txt").exists(), 30, "the trap to write signal.txt")
        # the trap exits right after writing the file: wait for that before anything may cancel the job
        [record] = wait_state(job_id, TERMINAL, timeout=30)
    finally:
        subprocess.run(["scancel", job_id], timeout=30)  # only when a step above failed: the job has ended
    assert record["JobState"] == "COMPLETED", record


def test_sbatch_signal_before_time_limit(slurm_cluster, tmp_path):
    """--time=1 --signal=B:USR1@55: due 5 s after the start; slurmctld checks time limits every 30 s."""
    script = write_script(tmp_path / "trap.sh", TRAP_USR1)
    job_id = sbatch(script, "--chdir", str(tmp_path), "--time", "1", "--signal=B:USR1@55", "--output", str(tmp_path / "out.txt"))
    try:
        wait_for(lambda: (tmp_path / "started.txt").exists(), 30, "the job to start")
        wait_for(lambda: (tmp_path / "signal.txt").exists(), 50, "USR1 before the time limit", interval=0.5)
        [record] = wait_state(job_id, TERMINAL, timeout=30)  # the trap's own exit, before any cancel
    finally:
        subprocess.run(["scancel", job_id], timeout=30)  # only when a step above failed: the job has ended
    seconds = int((tmp_path / "signal.txt").read_text().split()[1])
    assert seconds < 60, f"USR1 came {seconds} s after the start, at or after the time limit"
    assert record["JobState"] == "COMPLETED", record
