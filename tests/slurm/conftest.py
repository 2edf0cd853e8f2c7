"""A private single-node Slurm cluster for the tests marked `slurm` (see cluster.sh in this folder).

Use the session fixture `slurm_cluster` in a test (or `pytestmark = pytest.mark.slurm` plus the
fixture): the first test that asks for it runs `cluster.sh up` (root only; installs the Debian
packages when missing, ~20 s the first time, under a second afterwards), sets SLURM_CONF in
os.environ so that sbatch/squeue/scontrol started by the tests talk to that cluster, and
`cluster.sh down` runs once the session ends. When the cluster cannot come up (not root, no
apt-get or package access, daemons fail) every test using the fixture is skipped with the reason.

SSN_SLURM_DIR chooses the state directory (default /tmp/ssn-slurm); SSN_SLURM_TESTS=0 skips these
tests without trying; SSN_SLURM_KEEP=1 leaves the cluster running after the session.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the private Slurm cluster of tests/slurm (root; skipped otherwise)")


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to use the cluster: SLURM_CONF (also exported in os.environ) and the state dir."""

    conf: str
    state_dir: str

    def env(self) -> dict:
        """os.environ with SLURM_CONF, for subprocess calls that pass their own environment."""
        return {**os.environ, "SLURM_CONF": self.conf}


def _run(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), action], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get("SSN_SLURM_TESTS", "1") == "0":
        pytest.skip("Slurm tests disabled (SSN_SLURM_TESTS=0)")
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("Slurm tests need root (tests/slurm/cluster.sh installs and runs the Slurm daemons)")
    try:
        up = _run("up", timeout=900)
    except subprocess.TimeoutExpired:
        _run("down", timeout=120)
        pytest.skip("tests/slurm/cluster.sh up timed out after 900 s")
    if up.returncode != 0:
        lines = [line for line in up.stderr.splitlines() if line.startswith("cluster.sh:")]
        reason = lines[-1] if lines else (up.stderr.strip().splitlines() or [f"exit status {up.returncode}"])[-1]
        pytest.skip(f"no Slurm cluster: {reason}")

    state_dir = os.environ.get("SSN_SLURM_DIR", "/tmp/ssn-slurm")
    conf = os.path.join(state_dir, "etc", "slurm.conf")
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield SlurmCluster(conf=conf, state_dir=state_dir)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if os.environ.get("SSN_SLURM_KEEP", "0") != "1":
            down = _run("down", timeout=120)
            if down.returncode != 0:
                print(f"tests/slurm/cluster.sh down failed: {down.stderr.strip()}")
