"""The manifest of a batch submission (run_slurm_train.sh, run_slurm_eval.sh; docs/slurm.md): every
unit x run id the submission covers, where its checkpoint and result row live, the command that
trains or evaluates it, and which of them still have to run.

One manifest = one folder `<results>/slurm/<kind>_<dataset>_<stamp>/` holding `manifest.json`;
array task i runs unit i (indices are stable; only the pending ones are submitted). The folder
also collects `status/<i>` (one line per attempt with its exit code; slurm/status.py) for the aggregation.

A training unit is complete when its `weights.pt` is there, no `resume.pt` is beside it (an
interrupted run leaves one) and its row is in the run's `last.csv`. An evaluation unit is complete
when its row (category, fold, run id) is in the run's `last.csv`, written after the weights.

Importing this module is cheap (no torch): the batch tasks call it for their command line.

    python slurm/manifest.py build [--dry-run] train|eval [script options...]   # prints folder=, pending=, ...
    python slurm/manifest.py argv FOLDER INDEX                       # task INDEX's command, NUL-separated
    python slurm/manifest.py complete FOLDER INDEX                   # exit 0 when the unit is complete
    python slurm/manifest.py status FOLDER INDEX CODE [NOTE]         # record an attempt's exit code
    python slurm/manifest.py label FOLDER INDEX                      # e.g. "demo/fabric run 1"
"""

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (the batch tasks): the repository root holds our packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import cli  # noqa: E402
from common.catalog import DATASET_NAMES, PAPER_DATASETS, ratio_folder  # noqa: E402
from common.config import DEFAULT_VERSION  # noqa: E402
from common.errors import UserError, exit_on_user_error  # noqa: E402
from common.fileio import write_json_atomic  # noqa: E402
from slurm.status import record_status  # noqa: E402

MANIFEST_NAME = "manifest.json"
RESUME_NAME = "resume.pt"
WEIGHTS_NAME = "weights.pt"
KINDS = ("train", "eval")
_RUNS = re.compile(r"^\d+(-\d+)?$")


def parse_runs(text: str) -> list[int]:
    """`0-4` -> [0, 1, 2, 3, 4]; `0,2,5-6` -> [0, 2, 5, 6]; `3` -> [3]. Duplicates are an error."""
    runs: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not _RUNS.match(part):
            raise UserError(f"--runs {text}: expected run ids like 0-4, 0,2,4 or 3")
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise UserError(f"--runs {text}: the range {part} is empty (write {high}-{low})")
        runs += range(low, high + 1)
    if len(set(runs)) != len(runs):
        raise UserError(f"--runs {text} lists a run twice")
    return runs


def array_spec(indices: list[int]) -> str:
    """Indices as sbatch --array wants them: [0, 1, 2, 5, 7, 8] -> `0-2,5,7-8`."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


@dataclass
class ManifestUnit:
    """One task of the array: a unit (checkpoint) of one dataset for one run id."""

    index: int
    dataset: str
    unit: str  # the checkpoint folder name (SensumSODF: <category>_<fold>)
    report_category: str  # its row's `category`
    fold: str  # its row's `fold` ("" except SensumSODF)
    run_id: int
    ratio: str  # the journal ratio folder ("" under --version icpr)
    weights: str  # absolute path of weights.pt (written by training, read by evaluation)
    results_dir: str  # absolute path of the folder with the run's last.csv
    argv: list[str]  # the command, relative to the repository root (`train.py ...`, `eval.py ...`)
    complete: bool = False  # when the manifest was written

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.unit} run {self.run_id}"


@dataclass
class Manifest:
    kind: str  # "train" or "eval"
    name: str  # e.g. train_demo
    version: str
    summary_path: str  # results_avg_std.json written by the aggregation
    datasets: dict[str, str]  # dataset -> ratio folder ("" under icpr)
    runs: list[int]
    units: list[ManifestUnit] = field(default_factory=list)
    created: str = ""
    results_path: str = ""  # --results-path, absolute (the manifest folder is under <results>/slurm/)
    folder: str = ""  # where manifest.json lives

    @property
    def pending(self) -> list[int]:
        return [u.index for u in self.units if not u.complete]

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        (folder / "status").mkdir(parents=True, exist_ok=True)
        self.folder = str(folder.resolve())
        write_json_atomic(folder / MANIFEST_NAME, asdict(self))
        return folder / MANIFEST_NAME


def load_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"no manifest at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    units = [ManifestUnit(**u) for u in data.pop("units")]
    manifest = Manifest(**data, units=[])
    manifest.units = units
    manifest.folder = str(Path(folder).resolve())
    return manifest


# ---------------------------------------------------------------------------------------------
# completeness

def row_key(row: dict[str, Any], with_run_id: bool) -> tuple[str, str, str]:
    return (str(row.get("category", "")), str(row.get("fold", "") or ""),
            str(row.get("run_id", "") or "") if with_run_id else "")


def rows_of(results_dir: Path) -> list[dict[str, str]]:
    path = Path(results_dir) / "last.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def unit_key(unit: ManifestUnit, kind: str) -> tuple[str, str, str]:
    return unit.report_category, unit.fold, str(unit.run_id) if kind == "eval" else ""


def has_row(unit: ManifestUnit, kind: str, rows: list[dict[str, str]] | None = None) -> bool:
    rows = rows_of(Path(unit.results_dir)) if rows is None else rows
    return any(row_key(row, kind == "eval") == unit_key(unit, kind) for row in rows)


def is_complete(unit: ManifestUnit, kind: str) -> bool:
    weights = Path(unit.weights)
    if kind == "train":
        return weights.is_file() and not (weights.parent / RESUME_NAME).exists() and has_row(unit, kind)
    last = Path(unit.results_dir) / "last.csv"
    return (has_row(unit, kind) and weights.is_file()
            and last.stat().st_mtime >= weights.stat().st_mtime)


# ---------------------------------------------------------------------------------------------
# building from the command line of the scripts

def _parser(kind: str) -> argparse.ArgumentParser:
    parser = cli.new_parser("options not listed here are passed on to train.py / eval.py (checked first)",
                            prog=f"run_slurm_{kind}.sh")
    parser.allow_abbrev = False
    if kind == "train":
        parser.add_argument("dataset", choices=DATASET_NAMES)
        parser.add_argument("--results-path", type=cli.path_argument, default=Path("./results"))
    else:
        parser.add_argument("--dataset", "--datasets", nargs="+", dest="datasets", default=list(PAPER_DATASETS),
                            choices=DATASET_NAMES, metavar="DATASET")
        parser.add_argument("--results-path", type=cli.path_argument, default=Path("./eval_res"))
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--weights-path", type=cli.path_argument, default=Path("./weights"))
        source.add_argument("--from-training", type=cli.path_argument, metavar="RESULTS_PATH")
    parser.add_argument("--runs", help="run ids: 0-4, 0,2,4 or 3 (default 0)")
    cli.add_version(parser)
    cli.add_categories(parser)
    cli.add_run_ids(parser, default=None)
    cli.add_settings(parser)
    cli.add_datasets_folder(parser)
    cli.add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="(always on in the tasks)")
    if kind == "train":
        parser.add_argument("--resume", default="auto", choices=["auto"], help="(always auto in the tasks)")
    parser.add_argument("--redo", action="store_true", help="run every unit, also the complete ones")
    return parser


def _runs(args: argparse.Namespace) -> list[int]:
    if args.runs is not None and args.run_ids is not None:
        raise UserError("give the run ids once: --runs 0-4 or --run-id 0 1 2 3 4, not both")
    runs = parse_runs(args.runs) if args.runs is not None else (args.run_ids or [0])
    return cli.check_run_ids(runs)


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _common_argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The options every task of the submission gets, paths made absolute."""
    argv = ["--datasets-folder", _absolute(args.datasets_folder), "--results-path", _absolute(args.results_path),
            "--device", args.device, "--no-progress"]
    if args.version is not None:
        argv += ["--version", args.version]
    if args.config is not None:
        argv += ["--config", _absolute(args.config)]
    for item in args.set:
        argv += ["--set", item]
    return argv + list(extra)


def check_task_options(kind: str, args: argparse.Namespace, common: list[str]) -> None:
    """Parse what every task will be given with train.py's or eval.py's own parser, so that an
    unknown or malformed option is one error line before anything is written or submitted."""
    prog = f"run_slurm_{kind}.sh"
    categories = ["--category", *args.categories] if args.categories else []
    if kind == "train":
        cli.settle(cli.train_parser(prog=prog).parse_args([args.dataset, *categories, *common]))
    else:
        cli.settle(cli.eval_parser(prog=prog).parse_args(["--datasets", *args.datasets, *categories, *common]))


def build_manifest(kind: str, argv: list[str], dry_run: bool = False) -> Manifest:
    """Parse a script's command line, list its units (this checks the datasets are there and, unless
    `dry_run`, generates the demo) and mark the complete ones. Writes nothing itself."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind}; choose one of {', '.join(KINDS)}")
    args, extra = _parser(kind).parse_known_args(argv)
    check_task_options(kind, args, _common_argv(args, extra))
    runs = _runs(args)
    version = args.version or DEFAULT_VERSION
    # heavy imports (torch) only here, at submission time
    from common.config import build_config
    from engine.outputs import EvalLayout, TrainLayout
    from engine.train_run import setup_name
    from engine.units import dataset_units

    common = _common_argv(args, extra)
    datasets = [args.dataset] if kind == "train" else list(dict.fromkeys(args.datasets))
    manifest = Manifest(kind=kind, name=f"{kind}_{'+'.join(datasets)}", version=version, summary_path="",
                        datasets={}, runs=runs, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    results_path = Path(_absolute(args.results_path))
    manifest.results_path = str(results_path)
    for dataset in datasets:
        config = build_config(dataset, args.config, args.set, version)
        ratio = ratio_folder(dataset, config) if version == "jims" else ""
        manifest.datasets[dataset] = ratio
        units = dataset_units(dataset, config, Path(_absolute(args.datasets_folder)), args.categories,
                              generate_demo=not dry_run)
        if kind == "train":
            manifest.summary_path = str(results_path / config["setup_name"] / "results_avg_std.json")
        else:
            manifest.summary_path = str(results_path / "results_avg_std.json")
        for run_id in runs:
            for unit in units:
                fold = str(unit.row_extra.get("fold", ""))
                if kind == "train":
                    layout = TrainLayout(results_path / setup_name(config, run_id), dataset, ratio)
                    weights = layout.checkpoint_dir(unit.name) / WEIGHTS_NAME
                    results_dir = layout.results_dir()
                    command = ["train.py", dataset, "--category", unit.name, "--run-id", str(run_id),
                               "--resume", "auto", *common]
                else:
                    if args.from_training is not None:
                        base = Path(_absolute(args.from_training)) / setup_name(config, run_id) / "checkpoints"
                        source = ["--from-training", _absolute(args.from_training)]
                    else:
                        base = Path(_absolute(args.weights_path)) / str(run_id)
                        source = ["--weights-path", _absolute(args.weights_path)]
                    layout = EvalLayout(base, results_path, str(run_id), dataset, ratio)
                    weights = layout.weights_path(unit.name)
                    results_dir = layout.results_dir()
                    command = ["eval.py", "--datasets", dataset, "--category", unit.name, "--run-ids", str(run_id),
                               *source, *common]
                entry = ManifestUnit(
                    index=len(manifest.units), dataset=dataset, unit=unit.name, report_category=unit.report_category,
                    fold=fold, run_id=run_id, ratio=ratio, weights=str(weights), results_dir=str(results_dir),
                    argv=command,
                )
                entry.complete = not args.redo and is_complete(entry, kind)
                manifest.units.append(entry)
    if kind == "eval":
        missing = [u for u in manifest.units if not u.complete and not Path(u.weights).is_file()]
        if missing:
            listed = "\n  ".join(f"{u.label}: {u.weights}" for u in missing)
            raise UserError(f"{len(missing)} checkpoint(s) to evaluate are missing:\n  {listed}\n"
                            "train them first (run_slurm_train.sh) or choose --runs/--category accordingly")
    return manifest


def new_manifest_folder(results_path: Path, name: str) -> Path:
    """`<results>/slurm/<name>_<YYYYmmdd-HHMMSS>[_N]/`, a new folder."""
    base = Path(results_path) / "slurm"
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = base / (f"{name}_{stamp}" + (f"_{attempt}" if attempt else ""))
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise UserError(f"no free manifest folder name under {base}")


def describe(manifest: Manifest) -> str:
    """What the submission covers, for the submitting shell."""
    done = [u for u in manifest.units if u.complete]
    lines = [f"{manifest.kind}: {len(manifest.units)} unit(s) x run(s) over {', '.join(manifest.datasets)}, "
             f"runs {','.join(map(str, manifest.runs))}, version {manifest.version}; "
             f"{len(done)} complete (skipped), {len(manifest.pending)} to run"]
    for unit in done:
        lines.append(f"  complete: {unit.label}")
    return "\n".join(lines)


def task_argv(folder: Path, index: int) -> list[str]:
    manifest = load_manifest(folder)
    return unit_at(manifest, index).argv


def unit_at(manifest: Manifest, index: int) -> ManifestUnit:
    if not 0 <= index < len(manifest.units):
        raise UserError(f"task {index} is not in {manifest.folder} ({len(manifest.units)} units)")
    return manifest.units[index]


# ---------------------------------------------------------------------------------------------
# the command line of the batch scripts

@exit_on_user_error
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "build":
        dry_run = bool(rest) and rest[0] == "--dry-run"
        rest = rest[1:] if dry_run else rest
        if not rest:
            raise UserError("build needs train or eval")
        manifest = build_manifest(rest[0], rest[1:], dry_run)
        if dry_run:
            folder = Path(manifest.results_path) / "slurm" / f"{manifest.name}_<time>"  # not made
        else:
            folder = new_manifest_folder(Path(manifest.results_path), manifest.name).resolve()
            manifest.save(folder)
        print(describe(manifest), file=sys.stderr)
        print(f"folder={folder}")
        print(f"pending={array_spec(manifest.pending)}")
        print(f"count={len(manifest.pending)}")
        print(f"indices={' '.join(map(str, manifest.pending))}")
        print(f"name={manifest.name}")
        return 0
    if len(rest) < 2:
        raise UserError(f"{command} needs FOLDER INDEX")
    folder, index = Path(rest[0]), int(rest[1])
    if command == "argv":
        sys.stdout.write("".join(a + "\0" for a in task_argv(folder, index)))
        return 0
    if command == "complete":
        manifest = load_manifest(folder)
        return 0 if is_complete(unit_at(manifest, index), manifest.kind) else 1
    if command == "status":
        if len(rest) < 3:
            raise UserError("status needs FOLDER INDEX CODE [NOTE]")
        record_status(folder, index, int(rest[2]), " ".join(rest[3:]))
        return 0
    if command == "label":
        print(unit_at(load_manifest(folder), index).label)
        return 0
    raise UserError(f"unknown command {command}; see python slurm/manifest.py --help")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
