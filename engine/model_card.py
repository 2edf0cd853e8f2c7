"""model.yaml, the card beside every weights.pt we train: what a checkpoint is (version, input
size, backbone, settings, the backbone weights used, calibrated thresholds), written by training
and read by eval.py, predict.py and perf/ so that nothing has to be repeated to use the model.
Published checkpoints have no card; they use their version's defaults."""

from pathlib import Path
from typing import Any

from common.errors import UserError
from common.fileio import file_digest
from model.checkpoint import model_card_path
from model.supersimplenet import MODEL_SETTINGS, SuperSimpleNet

# the settings a card fixes for whoever uses the checkpoint
CARD_SETTINGS = (*MODEL_SETTINGS, "image_size", "seed")


def make_card(
    config: dict[str, Any], model: SuperSimpleNet, dataset: str, unit_name: str, backbone_weights: str
) -> dict[str, Any]:
    """The card of a freshly trained model (no thresholds yet)."""
    return {
        "version": config["version"],
        "dataset": dataset,
        "unit": unit_name,
        "image_size": list(model.image_size),
        "backbone": config["backbone"],
        "layers": list(config["layers"]),
        "patch_size": config["patch_size"],
        "adapt_cls_features": config["adapt_cls_features"],
        "seed": config["seed"],
        "backbone_weights": backbone_weights,
        # where the backbone's weights came from: kind torchvision | timm | file | random, a file's path and sha256
        "backbone_weights_source": dict(model.feature_extractor.weights_source),
        "settings": {key: value for key, value in config.items() if key != "version"},
        "thresholds": {},
    }


def apply_card(
    config: dict[str, Any], card: dict[str, Any] | None, chosen: dict[str, Any], weights_path: Path,
    version_chosen: bool = True,
) -> dict[str, Any]:
    """`config` with the settings the card fixes. A setting the user chose (`chosen`, or the
    version) that contradicts the card is a UserError naming both values."""
    if card is None:
        return config
    where = model_card_path(weights_path)
    if card.get("version") != config["version"] and version_chosen:
        raise UserError(f"--version {config['version']} contradicts {where} (version {card.get('version')}); "
                        f"drop --version or pass --version {card.get('version')}")
    updated = {**config, "version": card.get("version", config["version"])}
    for key in CARD_SETTINGS:
        if key not in card["settings"]:
            continue
        value = card["settings"][key]
        if key == "backbone_weights" and value:  # the file may move, its content may not change
            value = chosen.get(key) or value
            _check_backbone_file(value, card, where)
        elif key in chosen and chosen[key] != value:
            raise UserError(f"--set {key}={chosen[key]!r} contradicts {where} ({key}: {value!r}); "
                            "drop the setting: the checkpoint was trained with the card's value")
        updated[key] = value
    return updated


def _check_backbone_file(path: str, card: dict[str, Any], where: Path) -> None:
    """A backbone_weights file that exists must be the one the card recorded (its SHA-256); a missing one
    is reported when the model is built."""
    recorded = (card.get("backbone_weights_source") or {}).get("sha256")
    file = Path(path).expanduser()
    if recorded and file.is_file() and file_digest(file) != recorded:
        raise UserError(f"backbone_weights file {file} is not the one {where} was trained with (SHA-256 "
                        f"{file_digest(file)[:12]}..., recorded {recorded[:12]}...); give that file, e.g. "
                        "--set backbone_weights=PATH where it now lies")
