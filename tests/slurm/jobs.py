"""Talking to the private Slurm cluster from the tests: run a command, submit, read job records
(`scontrol show job -o`; no accounting is configured, so never sacct) and wait for a condition."""

import re
import subprocess
import time
from pathlib import Path

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def sh(*args: str, timeout: float = 30) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
    return result.stdout


def sbatch(script: Path, *options: str) -> str:
    out = sh("sbatch", "--parsable", *options, str(script))
    return out.strip().split(";")[0]


def job_records(job_id: str) -> list:
    """One dict per job (or array task) from `scontrol show job -o`: JobId, ArrayTaskId, JobState, ..."""
    out = sh("scontrol", "show", "job", "-o", job_id)
    records = []
    for line in out.splitlines():
        if line.strip():
            records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return records


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
