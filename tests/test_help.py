"""Every command answers `--help` (and refuses a bad option) at once: it parses its options before it
imports torch, so nobody waits seconds to read a usage line or a typo's error."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["train.py", "eval.py", "predict.py", "export.py", "perf/perf_main.py", "perf/bench_backbones.py",
            "perf/bench_predict.py", "slurm/manifest.py", "slurm/aggregate.py"]

# runs a script as `python <script> <args>` would, then says whether torch was imported meanwhile
PROBE = ("import runpy, sys\n"
         "script, *arguments = sys.argv[1:]\n"
         "sys.argv = [script, *arguments]\n"
         "try:\n    runpy.run_path(script, run_name='__main__')\n"
         "except SystemExit as stop:\n    print(f'exit {stop.code}')\n"
         "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")


def run(script: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, script, *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("script", COMMANDS)
def test_help_answers_without_importing_torch(script):
    result = run(script, "--help")
    assert result.stdout.strip().endswith("torch not imported"), (result.stdout, result.stderr)
    assert "usage" in result.stdout.lower() or "python slurm/manifest.py" in result.stdout, result.stdout


@pytest.mark.parametrize("script, required", [
    ("train.py", ["demo"]), ("eval.py", []), ("predict.py", ["--weights", "w.pt"]),
    ("export.py", ["--weights", "w.pt", "--format", "onnx"]), ("perf/perf_main.py", ["cpu"]),
])
def test_a_bad_option_is_refused_without_importing_torch(script, required):
    result = run(script, *required, "--no-such-option")
    assert "exit 2" in result.stdout and result.stdout.strip().endswith("torch not imported"), result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--no-such-option" in line, result.stderr
