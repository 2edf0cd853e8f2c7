"""An evaluation run: checkpoints of one or more run ids and datasets, their result files, the
mean and std over runs, and the comparison with the paper (what eval.py does)."""

import argparse
from pathlib import Path
from typing import Any

import torch

from common.catalog import ratio_folder
from common.config import VERSIONS, build_config, check_seed_for_runs, chosen_settings, supervision_regime
from common.device import resolve_device
from common.errors import UserError
from common.fileio import check_writable_dir
from common.metrics import METRIC_NAMES
from common.results import ResultsWriter, comparison_table, read_last_csv, summarize_runs, write_summary_json
from common.seeding import seed_everything
from deploy.report import describe_unit, write_run_report, write_summary_report, write_unit_data
from engine.evaluate import check_finite, evaluate, format_metrics, make_test_loader, predict
from engine.outputs import EvalLayout, write_figures, write_scores_json
from engine.train_run import setup_name
from engine.units import dataset_units, fold_column
from model.backbone import check_backbone
from model.card import apply_card, backbone_description, backbone_weights_tag, read_model_card
from model.supersimplenet import SuperSimpleNet


def weights_base(args: argparse.Namespace, config: dict[str, Any], run_id: int) -> Path:
    """The folder holding `<dataset>/<unit>[/<ratio>]/weights.pt` for `run_id`."""
    if args.from_training is not None:
        return args.from_training / setup_name(config, run_id) / "checkpoints"
    return args.weights_path / str(run_id)


def other_layout(layout: EvalLayout, unit_name: str, version: str, ratio: str) -> tuple[str, Path]:
    """(the other version, where its layout puts this unit's weights.pt)."""
    other_version, other_ratio = ("icpr", "") if version == "jims" else ("jims", ratio)
    return other_version, layout.weights_path(unit_name, other_ratio)


def missing_checkpoint(layout: EvalLayout, unit_name: str, version: str, ratio: str) -> UserError:
    """The error for a missing weights.pt. When the other version's layout holds one, it says what to
    do: run with that version, or, when its model.yaml says it is of this version, move it here."""
    path = layout.weights_path(unit_name)
    other_version, other = other_layout(layout, unit_name, version, ratio)
    if other.is_file():
        card = read_model_card(other)
        if card is not None and card.get("version") == version:
            return UserError(f"checkpoint {path} not found; {other} is there, but its model.yaml says version "
                             f"{version}, whose layout puts it at {path}: move weights.pt and model.yaml there")
        return UserError(f"checkpoint {path} not found, but {other} is there: it is laid out for "
                         f"--version {other_version}; run with --version {other_version}")
    return UserError(f"checkpoint {path} not found; place the published weights as "
                     "weights/<run_id>/<dataset>/<category>/<ratio>/weights.pt (journal) or without "
                     "<ratio>/ (--version icpr); see weights/README.md")


def evaluate_dataset(args: argparse.Namespace, run_id: int, dataset: str, device: torch.device) -> tuple[set[str], str]:
    """Evaluate every unit of one dataset for one run id; returns (backbone weight tags, ratio)."""
    dataset_config = build_config(dataset, args.config, args.set, args.version)
    dataset_config["seed"] += run_id  # as training seeded it, so a random backbone is rebuilt identically
    chosen = chosen_settings(dataset, args.config, args.set, args.version)
    config = dataset_config
    version = config["version"]
    ratio = ratio_folder(dataset, config)
    units = dataset_units(dataset, config, args.datasets_folder, args.categories)
    layout = EvalLayout(weights_base(args, config, run_id), args.results_path, str(run_id), dataset,
                        ratio if version == "jims" else "")
    columns = ("run_id", "backbone_weights", "version", "regime", *fold_column(dataset))
    writer = ResultsWriter(METRIC_NAMES, extra_columns=columns)
    tags = set()
    for unit in units:
        weights = layout.weights_path(unit.name)
        if not weights.is_file():
            raise missing_checkpoint(layout, unit.name, version, ratio)
        # what training recorded beside the weights (image size, backbone, seed, ...) wins over defaults
        card = read_model_card(weights)
        card_version = (card or {}).get("version")
        if args.version_chosen and card_version in VERSIONS and card_version != version:
            _, belongs = other_layout(layout, unit.name, version, ratio)
            raise UserError(f"{weights} sits in the --version {version} layout, but its model.yaml says version "
                            f"{card_version}, whose layout puts it at {belongs}: move weights.pt and model.yaml "
                            f"there and run with --version {card_version}")
        config = apply_card(dataset_config, card, chosen, weights, args.version_chosen)
        check_backbone(config["backbone"], config["layers"], config["backbone_weights"])  # before the data loads
        split = dataset_units(dataset, config, args.datasets_folder, [unit.name])[0].load()
        split.check_mask_sizes()
        weak = len(split.train_weak)
        regime = supervision_regime(dataset, config, len(split.train_anomalous) - weak, weak)
        seed_everything(config["seed"])
        model = SuperSimpleNet.from_config(split.image_size, config)
        model.load_model(weights)
        model.to(device)
        print(f"Evaluating {dataset}/{unit.name} (run {run_id}, version {version}): {weights}; "
              f"backbone {backbone_description(model)}")
        loader = make_test_loader(split, args.batch, args.num_workers)
        predictions = predict(model, loader, device, not args.no_progress, sigmoid_maps=version == "jims")
        check_finite(predictions, f"checkpoint {weights}")
        values, notes = evaluate(predictions, split)
        tag = backbone_weights_tag(model)
        tags.add(tag)
        print(f"  {format_metrics(values)}")
        for note in notes:
            print(f"  note: {note}")
        if args.save_scores:
            write_scores_json(layout.scores_path(unit.name), predictions, tag, version, regime)
        if args.save_images:
            thresholds = (card or {}).get("thresholds") or {}
            write_figures(layout.figures_dir(unit.name), predictions, progress=not args.no_progress,
                          pixel_threshold=thresholds.get("pixel"), maps_are_probabilities=version == "jims")
        if not args.no_report:
            write_unit_data(layout.results_dir(), describe_unit(
                dataset, unit.name, {"category": unit.report_category, "run_id": run_id, **unit.row_extra}, config,
                run_id, layout.ratio, split, f"evaluation of {weights}", card), predictions, values, notes,
                (card or {}).get("thresholds"), tag)
        writer.add(unit.report_category, values, run_id=run_id, backbone_weights=tag, version=version,
                   regime=regime, **unit.row_extra)
        writer.save(layout.results_dir())
        if not args.no_report:
            write_run_report(layout.results_dir(), dataset, version, layout.ratio,
                             f"SuperSimpleNet evaluation: {dataset}, run id {run_id}")
    return tags, layout.ratio


def run_evaluation(args: argparse.Namespace) -> None:
    if args.batch < 1 or args.num_workers < 0:
        raise UserError("--batch must be >= 1 and --num-workers >= 0")
    for dataset in args.datasets:
        check_seed_for_runs(build_config(dataset, args.config, args.set, args.version)["seed"], args.run_ids)
    device = resolve_device(args.device)
    check_writable_dir(args.results_path, "--results-path")
    tags: set[str] = set()
    ratios: dict[str, str] = {}
    for run_id in args.run_ids:
        for dataset in args.datasets:
            dataset_tags, ratios[dataset] = evaluate_dataset(args, run_id, dataset, device)
            tags |= dataset_tags

    summaries, run_reports = {}, {}
    for dataset in args.datasets:
        ratio = ratios[dataset]
        rows = {}
        for run_id in args.run_ids:
            results = EvalLayout(Path(), args.results_path, str(run_id), dataset, ratio).results_dir()
            rows[str(run_id)] = read_last_csv(results / "last.csv")
            run_reports.setdefault(dataset, {})[str(run_id)] = results / "report.html"
        summaries[dataset] = summarize_runs(rows, METRIC_NAMES)
        title = f"{dataset}: mean over run ids {', '.join(map(str, args.run_ids))} (version {args.version}) vs paper"
        if "random" in tags:
            title += "  [RANDOM backbone weights: not comparable to the paper]"
        print(comparison_table(dataset, summaries[dataset]["avg"], METRIC_NAMES, title=title,
                               version=args.version, ratio=ratio or "1"))
    summary_path = args.results_path / "results_avg_std.json"
    write_summary_json(summary_path, summaries, ratios if args.version == "jims" else None)
    print(f"Summary: {summary_path}")
    report_page = None if args.no_report else write_summary_report(args.results_path, summaries, ratios, args.version,
                                                                    args.run_ids, run_reports)
    if report_page:
        print(f"Report: {report_page}")
