"""model.yaml, the card beside every weights.pt we train: what a checkpoint is (version, input
size, backbone, settings, the supervision regime, the backbone weights used, calibrated
thresholds). Training writes it (`make_card`, `write_model_card`); eval.py, predict.py, export.py
and perf/ read it (`read_model_card`) and take the settings it fixes (`apply_card`), so that
nothing has to be repeated to use the model. Published checkpoints have no card; they use their
version's defaults.

A card cannot lie quietly: `write_model_card` records the SHA-256 of the weights.pt beside it
(`weights_sha256`: a card copied next to other weights is an error) and a short digest of each of
its own fields (`digests`: a field edited by hand since is named in one warning line, and the
card is then used as it says). Fields stated twice (top level and `settings`) must agree.
"""

import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError
from common.fileio import file_digest, write_text_atomic
from model.supersimplenet import MODEL_SETTINGS, SuperSimpleNet

MODEL_CARD_NAME = "model.yaml"
MODEL_CARD_FORMAT = 1
WEIGHTS_NAME = "weights.pt"
# the settings a card fixes for whoever uses the checkpoint
CARD_SETTINGS = (*MODEL_SETTINGS, "image_size", "seed")
# fields a card states at its top level and again in `settings`
STATED_TWICE = ("backbone", "layers", "patch_size", "adapt_cls_features", "seed")
# what write_model_card adds: not part of what the digests cover
INTEGRITY_FIELDS = ("format", "weights_sha256", "digests")
_warned: set[Path] = set()


def backbone_weights_tag(model: SuperSimpleNet) -> str:
    """What the backbone's weights are, as results files record it: imagenet (torchvision's), random,
    file:<first 8 hex digits of its SHA-256> or timm:<pretrained tag>."""
    source = model.feature_extractor.weights_source
    if source["kind"] == "file":
        return f"file:{source['sha256'][:8]}"
    if source["kind"] == "timm":
        return f"timm:{source['name'].partition('.')[2] or source['name']}"
    return "imagenet" if model.uses_pretrained_backbone else "random"


def backbone_description(model: SuperSimpleNet) -> str:
    """The backbone and its weights in words, for what a run prints (docs/backbones.md)."""
    source = model.feature_extractor.weights_source
    if source["kind"] == "file":
        return f"{model.backbone_name} with weights from {source['path']} (SHA-256 {source['sha256'][:12]}...)"
    if source["kind"] == "timm":
        return f"{model.backbone_name} with timm's {source['name']} weights ({source['path']})"
    if model.uses_pretrained_backbone:
        return f"{model.backbone_name} with ImageNet IMAGENET1K_V1 weights"
    return f"{model.backbone_name} with RANDOM weights (pretrained=false): not comparable to the paper"


def make_card(
    config: dict[str, Any], model: SuperSimpleNet, dataset: str, unit_name: str, backbone_weights: str,
    regime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a freshly trained model (no thresholds yet). `image_size` is the model's own
    (per-category sizes, e.g. SensumSODF, are not in the settings); `regime` is the supervision it
    was trained under (`DatasetSplit.regime_record`)."""
    return {
        "version": config["version"],
        "dataset": dataset,
        "unit": unit_name,
        **({"regime": regime} if regime else {}),
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


def model_card_path(weights_path: Path | str) -> Path:
    """The `model.yaml` that describes `weights_path` (the two sit in one folder)."""
    return Path(weights_path).parent / MODEL_CARD_NAME


def field_digests(card: dict[str, Any]) -> dict[str, str]:
    """{field: first 8 hex digits of the SHA-256 of its YAML}, for every top-level field and every
    `settings.<key>` of `card` (the integrity fields left out)."""
    fields = {key: value for key, value in card.items() if key not in INTEGRITY_FIELDS and key != "settings"}
    fields.update({f"settings.{key}": value for key, value in (card.get("settings") or {}).items()})
    return {key: hashlib.sha256(yaml.safe_dump(value, sort_keys=True).encode("utf-8")).hexdigest()[:8]
            for key, value in fields.items()}


def write_model_card(directory: Path | str, card: dict[str, Any]) -> Path:
    """Write `directory/model.yaml` atomically (plain YAML: numbers, strings, lists, mappings), with
    the SHA-256 of the weights.pt beside it and the digest of each field (module docstring)."""
    path = Path(directory) / MODEL_CARD_NAME
    content = {key: value for key, value in card.items() if key not in INTEGRITY_FIELDS}
    weights = Path(directory) / WEIGHTS_NAME
    integrity: dict[str, Any] = {"weights_sha256": file_digest(weights)} if weights.is_file() else {}
    integrity["digests"] = field_digests(content)
    text = yaml.safe_dump({"format": MODEL_CARD_FORMAT, **content, **integrity}, sort_keys=False,
                          default_flow_style=None)
    write_text_atomic(path, text)
    return path


def read_model_card(weights_path: Path | str) -> dict[str, Any] | None:
    """The `model.yaml` beside `weights_path` as a mapping, None when there is none (published
    checkpoints). A file that is not a model card, a card recorded for other weights, or fields
    stated twice that disagree are one UserError naming it; fields edited by hand since the card
    was written give one `warning:` line (once per card) and are used as they are."""
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
    _check_weights(card, path, Path(weights_path))
    for key in STATED_TWICE:
        if key in card and key in card["settings"] and card[key] != card["settings"][key]:
            raise UserError(f"{path} contradicts itself: {key} is {card[key]!r} but settings.{key} is "
                            f"{card['settings'][key]!r}; correct one of them (or delete the card)")
    _warn_on_edits(card, path)
    return card


def _check_weights(card: dict[str, Any], path: Path, weights: Path) -> None:
    recorded = card.get("weights_sha256")
    if not recorded or not weights.is_file():
        return  # a card written before cards recorded it
    actual = file_digest(weights)
    if actual != recorded:
        raise UserError(f"{path} describes other weights: it records weights.pt SHA-256 {str(recorded)[:12]}..., "
                        f"{weights} has {actual[:12]}...; the card belongs to another model: put the right "
                        "model.yaml beside the weights or delete it (then the version's defaults apply)")


def _warn_on_edits(card: dict[str, Any], path: Path) -> None:
    recorded = card.get("digests")
    if not isinstance(recorded, dict):
        return
    now = field_digests(card)
    changed = sorted(key for key in set(now) | set(recorded) if now.get(key) != recorded.get(key))
    if changed and path.resolve() not in _warned:
        _warned.add(path.resolve())
        listed = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        print(f"warning: {path} was edited by hand after it was written ({listed} changed); using it as it "
              "says", file=sys.stderr)


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
