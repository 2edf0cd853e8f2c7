"""The manifest of a batch submission, for the shell scripts (engine/manifest.py; docs/slurm.md).

    python slurm/manifest.py build train|eval [script options...]   # prints folder=, pending=, count=
    python slurm/manifest.py argv FOLDER INDEX                       # task INDEX's command, NUL-separated
    python slurm/manifest.py complete FOLDER INDEX                   # exit 0 when the unit is complete
    python slurm/manifest.py status FOLDER INDEX CODE [NOTE]         # record an attempt's exit code
    python slurm/manifest.py label FOLDER INDEX                      # e.g. "demo/fabric run 1"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from common.errors import UserError, exit_on_user_error  # noqa: E402
from engine import manifest as m  # noqa: E402


@exit_on_user_error
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "build":
        if not rest:
            raise UserError("build needs train or eval")
        manifest = m.build_manifest(rest[0], rest[1:])
        folder = m.new_manifest_folder(Path(manifest.results_path), manifest.name)
        manifest.save(folder)
        print(m.describe(manifest), file=sys.stderr)
        print(f"folder={folder.resolve()}")
        print(f"pending={m.array_spec(manifest.pending)}")
        print(f"count={len(manifest.pending)}")
        print(f"indices={' '.join(map(str, manifest.pending))}")
        print(f"name={manifest.name}")
        return 0
    if len(rest) < 2:
        raise UserError(f"{command} needs FOLDER INDEX")
    folder, index = Path(rest[0]), int(rest[1])
    if command == "argv":
        sys.stdout.write("".join(a + "\0" for a in m.task_argv(folder, index)))
        return 0
    if command == "complete":
        manifest = m.load_manifest(folder)
        return 0 if m.is_complete(m.unit_at(manifest, index), manifest.kind) else 1
    if command == "status":
        if len(rest) < 3:
            raise UserError("status needs FOLDER INDEX CODE [NOTE]")
        m.record_status(folder, index, int(rest[2]), " ".join(rest[3:]))
        return 0
    if command == "label":
        print(m.unit_at(m.load_manifest(folder), index).label)
        return 0
    raise UserError(f"unknown command {command}; see python slurm/manifest.py --help")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
