"""What became of each attempt of a batch task: `<manifest folder>/status/<index>` gets one line per
attempt, `<time> exit <code> [job ... restart ...]` (the task script writes it through
`python slurm/manifest.py status`), and the aggregation reads the last one."""

import os
import time
from pathlib import Path


def record_status(folder: Path, index: int, exit_code: int, note: str = "") -> None:
    """Appends one line per attempt to `status/<index>`: `<time> exit <code> [job ...]`."""
    path = Path(folder) / "status" / str(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} exit {exit_code}{' ' + note if note else ''}\n")
        handle.flush()
        os.fsync(handle.fileno())


def last_status(folder: Path, index: int) -> int | None:
    """The exit code of the unit's last attempt, None when it never ended (or never ran)."""
    path = Path(folder) / "status" / str(index)
    if not path.is_file():
        return None
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return int(lines[-1][2]) if lines else None
