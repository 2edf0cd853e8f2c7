"""model.yaml, the card beside every weights.pt we train: what a checkpoint is (version, input
size, backbone, settings, the backbone weights used, calibrated thresholds). Training writes it
(`make_card`, `write_model_card`); eval.py, predict.py, export.py and perf/ read it
(`read_model_card`) and take the settings it fixes (`apply_card`), so that nothing has to be
repeated to use the model. Published checkpoints have no card; they use their version's defaults."""

from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError
from common.fileio import atomic_path
from model.supersimplenet import MODEL_SETTINGS, SuperSimpleNet

MODEL_CARD_NAME = "model.yaml"
MODEL_CARD_FORMAT = 1
# the settings a card fixes for whoever uses the checkpoint
CARD_SETTINGS = (*MODEL_SETTINGS, "image_size", "seed")


def backbone_weights_tag(model: SuperSimpleNet) -> str:
    """What the backbone's weights are, as results files record it: "imagenet" or "random"."""
    return "imagenet" if model.uses_pretrained_backbone else "random"


def backbone_description(model: SuperSimpleNet) -> str:
    """The backbone and its weights in words, for what a run prints."""
    if model.uses_pretrained_backbone:
        return f"{model.backbone_name} with ImageNet IMAGENET1K_V1 weights"
    return f"{model.backbone_name} with RANDOM weights (pretrained=false): not comparable to the paper"


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
        "settings": {key: value for key, value in config.items() if key != "version"},
        "thresholds": {},
    }


def model_card_path(weights_path: Path | str) -> Path:
    """The `model.yaml` that describes `weights_path` (the two sit in one folder)."""
    return Path(weights_path).parent / MODEL_CARD_NAME


def write_model_card(directory: Path | str, card: dict[str, Any]) -> Path:
    """Write `directory/model.yaml` atomically (plain YAML: numbers, strings, lists, mappings)."""
    path = Path(directory) / MODEL_CARD_NAME
    text = yaml.safe_dump({"format": MODEL_CARD_FORMAT, **card}, sort_keys=False, default_flow_style=None)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_model_card(weights_path: Path | str) -> dict[str, Any] | None:
    """The `model.yaml` beside `weights_path` as a mapping, None when there is none (published
    checkpoints); a file that is not a model card is one UserError naming it."""
    path = model_card_path(weights_path)
    if not path.is_file():
        return None
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be read ({reason}); delete it to use the version's defaults") from None
    if not isinstance(card, dict) or card.get("format") != MODEL_CARD_FORMAT or not isinstance(card.get("settings"), dict):
        raise UserError(f"{path} is not a SuperSimpleNet model.yaml (format {MODEL_CARD_FORMAT} with settings); "
                        "delete it to use the version's defaults")
    return card


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
        if key in chosen and chosen[key] != value:
            raise UserError(f"--set {key}={chosen[key]!r} contradicts {where} ({key}: {value!r}); "
                            "drop the setting: the checkpoint was trained with the card's value")
        updated[key] = value
    return updated
