"""Loading a trained checkpoint for prediction: a weights.pt (with its model.yaml, or a published
checkpoint with the version's defaults) in, a `LoadedCheckpoint` (eval-mode CPU float32 model, the
settings it was built with, its card, its dataset) out."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.catalog import DATASET_NAMES
from common.config import build_config, chosen_settings
from common.errors import UserError
from common.seeding import seed_everything
from model.backbone import check_backbone
from model.card import apply_card, backbone_description, model_card_path, read_model_card
from model.checkpoint import read_checkpoint
from model.supersimplenet import SuperSimpleNet

DEFAULT_DATASET = "mvtec"  # version defaults for a checkpoint without model.yaml (256 x 256)


@dataclass
class LoadedCheckpoint:
    model: SuperSimpleNet
    config: dict[str, Any]
    card: dict[str, Any] | None
    weights: Path
    dataset: str

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)


def resolve_checkpoint_config(
    weights: Path, version: str, version_chosen: bool, config_file: Path | None, overrides: list[str],
    dataset: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, str, tuple[int, int]]:
    """(settings, card or None, dataset, image size) of `weights`: the card's values win over the
    version's defaults; a --set or --version that contradicts the card is a UserError."""
    card = read_model_card(weights)
    if card is not None and not version_chosen and card.get("version") in ("jims", "icpr"):
        version = card["version"]
    if dataset is None:
        dataset = card.get("dataset") if card is not None and card.get("dataset") in DATASET_NAMES else DEFAULT_DATASET
    config = build_config(dataset, config_file, overrides, version)
    chosen = chosen_settings(dataset, config_file, overrides, version)
    config = apply_card(config, card, chosen, weights, version_chosen)
    check_backbone(config["backbone"], config["layers"], config["backbone_weights"])
    if card is not None and isinstance(card.get("image_size"), list) and len(card["image_size"]) == 2:
        if "image_size" in chosen and list(chosen["image_size"]) != list(card["image_size"]):
            raise UserError(f"--set image_size={chosen['image_size']} contradicts {model_card_path(weights)} "
                            f"(image_size: {card['image_size']}); drop the setting")
        image_size = tuple(int(v) for v in card["image_size"])
    elif config["image_size"]:
        image_size = tuple(config["image_size"])
    else:
        raise UserError(f"{weights} has no model.yaml and the {dataset} defaults give no image size; "
                        "pass --set image_size=[H,W] (the size the model was trained at)")
    return config, card, dataset, image_size


def load_checkpoint(
    weights: Path, version: str, version_chosen: bool = False, config_file: Path | None = None,
    overrides: list[str] | None = None, dataset: str | None = None, verbose: bool = True,
) -> LoadedCheckpoint:
    """The eval-mode model of `weights` (CPU, float32), built as training built it (same seed, so
    a random backbone is rebuilt identically), with its card."""
    weights = Path(weights)
    if not weights.is_file():
        what = "is a folder, not a weights.pt file" if weights.is_dir() else "not found"
        raise UserError(f"--weights {weights}: {what}; pass the weights.pt of a trained or published model")
    read_checkpoint(weights)  # a damaged file is reported before any backbone is built (or downloaded)
    config, card, dataset, image_size = resolve_checkpoint_config(
        weights, version, version_chosen, config_file, overrides or [], dataset)
    seed_everything(config["seed"])
    model = SuperSimpleNet.from_config(image_size, config)
    model.load_model(weights)
    model.eval()
    if verbose:
        source = "model.yaml beside it" if card is not None else (
            f"no model.yaml: the {config['version']} defaults ({dataset} settings)")
        print(f"Model: {weights} ({source}); version {config['version']}, input {image_size[0]}x{image_size[1]}, "
              f"backbone {backbone_description(model)}")
    return LoadedCheckpoint(model, config, card, weights, dataset)


__all__ = ["DEFAULT_DATASET", "LoadedCheckpoint", "resolve_checkpoint_config", "load_checkpoint"]
