"""A training run: every unit of one dataset, for one or more run ids, with its result files
and the comparison with the paper printed at the end (what train.py does)."""

import argparse
import copy
from functools import partial
from typing import Any

from common.catalog import ratio_folder
from common.config import build_config, check_seed_for_runs, format_config, supervision_regime
from common.device import resolve_device
from common.fileio import check_writable_dir, clean_stale_temporaries
from common.metrics import METRIC_NAMES
from common.results import ResultsWriter, comparison_table, read_last_csv
from deploy.report import describe_unit, write_run_report, write_unit_data
from engine.evaluate import format_metrics
from engine.fit import fit_unit
from engine.outputs import TrainLayout
from engine.resume import resume_path
from engine.units import dataset_units, fold_column
from model.backbone import check_backbone


def setup_name(config: dict[str, Any], run_id: int) -> str:
    """Run 0 keeps the published name; run N writes to `<setup_name>_run<N>`."""
    return config["setup_name"] + (f"_run{run_id}" if run_id else "")


def is_complete(layout: TrainLayout, unit) -> bool:
    """A unit is complete when its weights.pt is there without a resume.pt beside it and its row is
    in last.csv (a unit stopped between its checkpoint and its row is not)."""
    checkpoint_dir = layout.checkpoint_dir(unit.name)
    if not (checkpoint_dir / "weights.pt").is_file() or resume_path(checkpoint_dir).is_file():
        return False
    last = layout.results_dir() / "last.csv"
    fold = str(unit.row_extra.get("fold", ""))
    return last.is_file() and any(row["category"] == unit.report_category and str(row.get("fold") or "") == fold
                                  for row in read_last_csv(last))


def run_training(args: argparse.Namespace) -> None:
    base_config = build_config(args.dataset, args.config, args.set, args.version)
    check_backbone(base_config["backbone"], base_config["layers"], base_config["backbone_weights"])  # before any data
    check_seed_for_runs(base_config["seed"], args.run_ids)
    device = resolve_device(args.device)
    check_writable_dir(args.results_path, "--results-path")  # before any work: never lose a trained model
    for run_id in args.run_ids:
        config = copy.deepcopy(base_config)
        config["seed"] += run_id
        train_one_run(args, config, run_id, device)


def train_one_run(args: argparse.Namespace, config: dict[str, Any], run_id: int, device) -> None:
    version = config["version"]
    print(f"SuperSimpleNet training: dataset {args.dataset}, version {version}, device {device}, run {run_id}")
    print(format_config(config))
    units = dataset_units(args.dataset, config, args.datasets_folder, args.categories)
    ratio = ratio_folder(args.dataset, config) if version == "jims" else ""
    layout = TrainLayout(args.results_path / setup_name(config, run_id), args.dataset, ratio)
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("backbone_weights", "version", "regime",
                                                        *fold_column(args.dataset)))
    ours: dict[str, dict[str, list[float | None]]] = {}
    weights_tags = set()
    for unit in units:
        checkpoint_dir = layout.checkpoint_dir(unit.name)
        for folder in layout.unit_folders(unit.name):
            clean_stale_temporaries(folder)  # what a killed earlier run left
        if args.resume == "auto" and is_complete(layout, unit):
            print(f"{args.dataset}/{unit.name}: already complete ({checkpoint_dir / 'weights.pt'}), skipped")
            continue
        print(f"Training {args.dataset}/{unit.name}")
        split = unit.load()
        weak = len(split.train_weak)
        regime = supervision_regime(args.dataset, config, len(split.train_anomalous) - weak, weak)
        print(f"  {len(split.train)} train images ({len(split.train_anomalous)} anomalous"
              f"{f', {weak} with image labels only' if weak else ''}), "
              f"{len(split.test)} test images, size {split.image_size[0]}x{split.image_size[1]}; regime: {regime}")
        logger = None
        if args.wandb:
            from common.wandb_logger import WandbLogger

            logger = WandbLogger(config["wandb_project"], f"{unit.name}_{setup_name(config, run_id)}", config)
        report = None if args.no_report else partial(write_unit_data, layout.results_dir(), describe_unit(
            args.dataset, unit.name, {"category": unit.report_category, **unit.row_extra}, config, run_id, ratio,
            split, "training"))
        values, notes, tag = fit_unit(
            split, config, device, layout, save_figures=not args.no_figures, progress=not args.no_progress,
            logger=logger, resume=args.resume, regime=regime, after_evaluation=report,
        )
        if logger is not None:
            logger.finish()
        weights_tags.add(tag)
        print(f"  {format_metrics(values)}")
        for note in notes:
            print(f"  note: {note}")
        writer.add(unit.report_category, values, backbone_weights=tag, version=version, regime=regime, **unit.row_extra)
        writer.save(layout.results_dir())  # after every unit, so a crash keeps what is done
        if not args.no_report:
            write_run_report(layout.results_dir(), args.dataset, version, ratio,
                             f"SuperSimpleNet training: {args.dataset}, {setup_name(config, run_id)}")
        resume_path(checkpoint_dir).unlink(missing_ok=True)  # the unit is complete
        for metric, value in values.items():
            ours.setdefault(metric, {}).setdefault(unit.report_category, []).append(value)

    averaged = {
        metric: {c: (sum(v) / len(v) if v and None not in v else None) for c, v in per_category.items()}
        for metric, per_category in ours.items()
    }
    title = f"{args.dataset} results (last epoch, version {version}) vs paper"
    if "random" in weights_tags:
        title += "  [RANDOM backbone weights: not comparable to the paper]"
    print(comparison_table(args.dataset, averaged, METRIC_NAMES, title=title, version=version, ratio=ratio or "1"))
    print(f"Results: {layout.results_dir() / 'last.csv'}"
          + ("" if args.no_report else f"; report: {layout.results_dir() / 'report.html'}"))
