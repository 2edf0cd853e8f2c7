"""Train SuperSimpleNet: `python train.py mvtec|visa|ksdd2|sensum|folder|demo [options]`.

Settings are the dataset's published defaults, then --config FILE.yaml, then --set key=value.
"""

import argparse
from pathlib import Path

from common.config import build_config, format_config
from common.errors import UserError, exit_on_user_error
from common.evaluation import format_metrics
from common.metrics import METRIC_NAMES
from common.results import ResultsWriter, comparison_table
from common.device import resolve_device
from common.training import UnitOutputs, train_unit
from datamodules.registry import DATASET_NAMES, dataset_units


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASET_NAMES)
    parser.add_argument("--category", nargs="+", dest="categories", help="categories to train (default: all)")
    parser.add_argument("--run-id", type=int, default=0, help="run N uses seed+N and writes to <setup_name>_runN")
    parser.add_argument("--config", type=Path, help="YAML file of settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting (YAML value)")
    parser.add_argument("--datasets-folder", type=Path, default=Path("./datasets"))
    parser.add_argument("--results-path", type=Path, default=Path("./results"))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-figures", action="store_true", help="skip the per-image figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = build_config(args.dataset, args.config, args.set)
    if args.run_id < 0:
        raise UserError(f"--run-id must be >= 0, got {args.run_id}")
    config["seed"] += args.run_id
    setup_name = config["setup_name"] + (f"_run{args.run_id}" if args.run_id else "")
    device = resolve_device(args.device)
    print(f"SuperSimpleNet training: dataset {args.dataset}, device {device}, run {args.run_id}")
    print(format_config(config))

    units = dataset_units(args.dataset, config, args.datasets_folder, args.categories)
    run_root = args.results_path / setup_name
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("backbone_weights",))
    ours: dict[str, dict[str, float | None]] = {}
    weights_tags = set()
    for unit in units:
        print(f"Training {args.dataset}/{unit.name}")
        split = unit.load()
        print(f"  {len(split.train)} train images ({len(split.train_anomalous)} anomalous), "
              f"{len(split.test)} test images, size {split.image_size[0]}x{split.image_size[1]}")
        logger = None
        if args.wandb:
            from common.wandb_logger import WandbLogger

            logger = WandbLogger(config["wandb_project"], f"{unit.name}_{setup_name}", config)
        outputs = UnitOutputs(
            checkpoint_dir=run_root / "checkpoints" / args.dataset / unit.name,
            scores_path=run_root / "scores" / args.dataset / unit.name / "scores.json",
            figures_dir=run_root / "visual" / args.dataset / unit.name,
        )
        values, notes, tag = train_unit(
            split, config, device, outputs, save_figures=not args.no_figures, progress=not args.no_progress,
            logger=logger,
        )
        if logger is not None:
            logger.finish()
        weights_tags.add(tag)
        print(f"  {format_metrics(values)}")
        for note in notes:
            print(f"  note: {note}")
        writer.add(unit.report_category, values, backbone_weights=tag)
        writer.save(run_root / args.dataset)  # after every unit, so a crash keeps what is done
        for metric, value in values.items():
            ours.setdefault(metric, {}).setdefault(unit.report_category, [])
            ours[metric][unit.report_category].append(value)

    averaged = {
        metric: {c: (sum(v) / len(v) if v and None not in v else None) for c, v in per_category.items()}
        for metric, per_category in ours.items()
    }
    title = f"{args.dataset} results (last epoch) vs paper"
    if "random" in weights_tags:
        title += "  [RANDOM backbone weights: not comparable to the paper]"
    print(comparison_table(args.dataset, averaged, METRIC_NAMES, title=title))
    print(f"Results: {run_root / args.dataset / 'last.csv'}")


if __name__ == "__main__":
    main()
