"""Evaluate checkpoints: `python eval.py [--datasets mvtec visa ksdd2 sensum] [--run-ids 0 1 ...]`.

Reads `<weights-path>/<run_id>/<dataset>/<category>/weights.pt`, writes
`<results-path>/<run_id>/<dataset>/last.csv` + `avg.csv`, `<results-path>/results_avg_std.json`
(mean and std over the run ids, laid out like paper_results/results_avg_std.json) and prints
each figure beside the paper's.
"""

import argparse
from pathlib import Path

import torch

from common.config import build_config
from common.errors import UserError, exit_on_user_error
from common.evaluation import evaluate, format_metrics, make_test_loader, predict, write_figures, write_scores_json
from common.metrics import METRIC_NAMES
from common.results import ResultsWriter, comparison_table, read_last_csv, summarize_runs, write_summary_json
from common.device import resolve_device
from common.training import backbone_description, backbone_weights_tag, seed_everything
from datamodules.registry import DATASET_NAMES, dataset_units
from model.supersimplenet import SuperSimpleNet

EVAL_DATASETS = ("mvtec", "visa", "ksdd2", "sensum")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(EVAL_DATASETS), choices=DATASET_NAMES)
    parser.add_argument("--categories", nargs="+", help="only these categories (default: all)")
    parser.add_argument("--run-ids", nargs="+", default=["0"], help="checkpoint run directories under --weights-path")
    parser.add_argument("--weights-path", type=Path, default=Path("./weights"))
    parser.add_argument("--datasets-folder", type=Path, default=Path("./datasets"))
    parser.add_argument("--results-path", type=Path, default=Path("./eval_res"))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model setting, e.g. adapt_cls_features=false for journal-variant checkpoints")
    parser.add_argument("--save-images", action="store_true", help="write a figure per test image")
    parser.add_argument("--save-scores", action="store_true", help="write per-image scores (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def evaluate_dataset(args: argparse.Namespace, run_id: str, dataset: str, device: torch.device) -> set[str]:
    """Evaluate every unit of one dataset for one run id; returns the backbone weight tags used."""
    config = build_config(dataset, None, args.set)
    units = dataset_units(dataset, config, args.datasets_folder, args.categories)
    writer = ResultsWriter(METRIC_NAMES, extra_columns=("run_id", "backbone_weights"))
    out_dir = args.results_path / run_id / dataset
    tags = set()
    for unit in units:
        weights = args.weights_path / run_id / dataset / unit.name / "weights.pt"
        if not weights.is_file():
            raise UserError(
                f"checkpoint {weights} not found; place the published weights as "
                "weights/<run_id>/<dataset>/<category>/weights.pt (see weights/README.md)"
            )
        split = unit.load()
        # seeded like training, so even a random backbone (pretrained=false) is rebuilt identically
        seed_everything(config["seed"])
        model = SuperSimpleNet(image_size=split.image_size, config=config)
        model.load_model(weights)
        model.to(device)
        print(f"Evaluating {dataset}/{unit.name} (run {run_id}): {weights}; backbone {backbone_description(model, config)}")
        predictions = predict(model, make_test_loader(split, args.batch, args.num_workers), device,
                              progress=not args.no_progress)
        values, notes = evaluate(predictions, split)
        tag = backbone_weights_tag(model)
        tags.add(tag)
        print(f"  {format_metrics(values)}")
        for note in notes:
            print(f"  note: {note}")
        if args.save_scores:
            write_scores_json(args.results_path / run_id / "scores" / dataset / unit.name / "scores.json",
                              predictions, tag)
        if args.save_images:
            write_figures(args.results_path / run_id / "visual" / dataset / unit.name, predictions,
                          progress=not args.no_progress)
        writer.add(unit.report_category, values, run_id=run_id, backbone_weights=tag)
        writer.save(out_dir)
    return tags


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch < 1 or args.num_workers < 0:
        raise UserError("--batch must be >= 1 and --num-workers >= 0")
    device = resolve_device(args.device)
    tags = set()
    for run_id in args.run_ids:
        for dataset in args.datasets:
            tags |= evaluate_dataset(args, run_id, dataset, device)

    summaries = {}
    for dataset in args.datasets:
        rows = {run_id: read_last_csv(args.results_path / run_id / dataset / "last.csv") for run_id in args.run_ids}
        summaries[dataset] = summarize_runs(rows, METRIC_NAMES)
        title = f"{dataset}: mean over run ids {', '.join(args.run_ids)} vs paper"
        if "random" in tags:
            title += "  [RANDOM backbone weights: not comparable to the paper]"
        print(comparison_table(dataset, summaries[dataset]["avg"], METRIC_NAMES, title=title))
    summary_path = args.results_path / "results_avg_std.json"
    write_summary_json(summary_path, summaries)
    print(f"Summary: {summary_path}")


if __name__ == "__main__":
    main()
