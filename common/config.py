"""A run's settings: the published defaults of the dataset and version, then an optional YAML
file, then `key=value` overrides, then the rules that derive settings from others.

`SETTINGS` is the one table of every setting: its default, the values it accepts (checked at
start, the message naming the setting, the value and the range) and what it means. Dataset
defaults come from the dataset catalogue (common/catalog.py), version defaults from
`VERSION_SETTINGS`. An unknown key or a wrong type is a UserError, never silently ignored.
"""

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.catalog import CATALOG, KSDD2_NUM_SEGMENTED, SENSUM_FOLDS, dataset_entry
from common.errors import UserError
from common.fileio import is_plain_name
from common.settings_file import load_config_file, parse_override

VERSIONS = ("jims", "icpr")
DEFAULT_VERSION = "jims"  # as the authors' code today
BACKBONES = ("wide_resnet50_2", "wide_resnet101_2", "resnet18", "resnet34", "resnet50", "resnet101")  # torchvision
BACKBONE_LAYERS = ("layer1", "layer2", "layer3", "layer4")
TIMM_PREFIX = "timm:"  # backbone: timm:<model name>, any timm model that builds with features_only=True
NO_ANOMALY_CHOICES = ("empty", "full", "none")
MIN_IMAGE_SIDE = 32
MAX_SEED = 2**32 - 1  # numpy's generators take seeds up to here (torch and Python's take more)


@dataclass(frozen=True)
class Setting:
    """One setting: default value, a check of its value, the accepted values in words, its meaning."""

    default: Any
    check: Callable[[Any], bool]
    accepted: str
    meaning: str


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _at_least(low: int) -> Callable[[int], bool]:
    return lambda value: value >= low


def _one_of(choices: tuple) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _image_size(value: list) -> bool:
    # [] = the dataset's own size per category
    return value == [] or (len(value) == 2 and all(isinstance(v, int) and v >= MIN_IMAGE_SIDE for v in value))


def is_timm_backbone(backbone: str) -> bool:
    """True for `timm:<model name>` (the name itself is checked by model/backbone.py `check_backbone`)."""
    return isinstance(backbone, str) and backbone.startswith(TIMM_PREFIX)


def _backbone(value: str) -> bool:
    if is_timm_backbone(value):
        name = value[len(TIMM_PREFIX):]
        return bool(name) and not any(c.isspace() for c in name)
    return value in BACKBONES


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _layers(value: list) -> bool:
    """Distinct torchvision stage names (layer1 ... layer4) or distinct timm feature indices (ints >= 0)."""
    names = all(isinstance(v, str) and v in BACKBONE_LAYERS for v in value)
    indices = all(_is_index(v) for v in value)
    return bool(value) and (names or indices) and len(set(value)) == len(value)


def _any(_value: Any) -> bool:
    return True


# Every setting a run knows. Defaults are the published unsupervised configuration; the model's
# constructor takes its defaults from here (docs/method.md, "Datasets" and "Optimisation").
SETTINGS: dict[str, Setting] = {
    # model
    "backbone": Setting("wide_resnet50_2", _backbone, f"one of {', '.join(BACKBONES)} (torchvision), or "
                        f"{TIMM_PREFIX}<model name> (any timm model with features_only, e.g. {TIMM_PREFIX}resnet18)",
                        "ImageNet backbone (frozen); docs/backbones.md"),
    "layers": Setting(["layer2", "layer3"], _layers, f"distinct names from {', '.join(BACKBONE_LAYERS)} "
                      "(torchvision), or distinct feature indices >= 0 (timm's out_indices, e.g. [2, 3])",
                      "backbone stages whose features are used, largest first"),
    "backbone_weights": Setting("", lambda v: "\n" not in v, "a file path, or '' (none)",
                                "local state-dict file for the backbone; '' = the library's pretrained weights"),
    "patch_size": Setting(3, lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1",
                          "neighbourhood of the feature average pooling"),
    "pretrained": Setting(True, _any, "true or false",
                          "ImageNet backbone weights; false = random (smoke tests only, every output says so)"),
    "adapt_cls_features": Setting(True, _any, "true or false",
                                  "classification branch on adapted features (ICPR) or raw ones (journal)"),
    "stop_grad": Setting(True, _any, "true or false", "the score loss does not reach the segmentation head"),
    # anomaly generation
    "noise": Setting(True, _any, "true or false", "synthetic feature-space anomalies (batch duplicated)"),
    "perlin": Setting(True, _any, "true or false", "Perlin-shaped noise masks (else SimpleNet's scheme)"),
    "no_anomaly": Setting("empty", _one_of(NO_ANOMALY_CHOICES), f"one of {', '.join(NO_ANOMALY_CHOICES)}",
                          "what replaces half of the Perlin masks"),
    "bad": Setting(True, _any, "true or false", "noise is also added to anomalous samples"),
    "overlap": Setting(True, _any, "true or false", "noise may overlap the ground-truth defect"),
    "noise_std": Setting(0.015, _positive, "a number > 0", "standard deviation of the feature noise"),
    "perlin_thr": Setting(0.2, lambda v: -1.0 <= v < 1.0, "a number in [-1, 1)",
                          "threshold of the Perlin noise (its values lie in about [-1, 1])"),
    # optimisation
    "seed": Setting(42, lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}] (with the run id added)",
                    "random seed (run N adds N)"),
    "batch": Setting(32, _at_least(1), "an integer >= 1", "training batch size"),
    "epochs": Setting(300, _at_least(1), "an integer >= 1", "training epochs; the last one is kept"),
    "seg_lr": Setting(2e-4, _positive, "a number > 0", "learning rate of the segmentation head"),
    "dec_lr": Setting(2e-4, _positive, "a number > 0", "learning rate of the classification head"),
    "adapt_lr": Setting(1e-4, _positive, "a number > 0", "learning rate of the feature adaptor"),
    "gamma": Setting(0.4, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]",
                     "learning-rate factor at 80 % and 90 % of the epochs"),
    "clip_grad": Setting(False, _any, "true or false", "clip the gradient to total norm 1"),
    "eval_step_size": Setting(4, _at_least(1), "an integer >= 1", "evaluate every N epochs (monitoring only)"),
    # data
    "image_size": Setting([256, 256], _image_size, f"[height, width], integers >= {MIN_IMAGE_SIDE}",
                          "network input size"),
    "flips": Setting(False, _any, "true or false", "supervised positives also flipped and rotated (4x)"),
    "dilate": Setting(0, _at_least(0), "an integer >= 0",
                      "journal: dilate training masks with a size x size square (0 = off)"),
    "dt": Setting([], lambda v: v == [] or (len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)),
                  "[] or [weight, power], both > 0",
                  "journal: distance-transform loss weights inside defects ([] = all weights 1)"),
    "num_workers": Setting(4, _at_least(0), "an integer >= 0", "data-loader worker processes"),
    "calibration_split": Setting(0.0, lambda v: 0.0 <= v <= 0.5, "a number in [0, 0.5]",
                                 "share of normal training images held back to calibrate thresholds"),
    "checkpoint_every": Setting(10, _at_least(1), "an integer >= 1",
                                "write resume.pt every N epochs (and when signalled), for --resume auto"),
    # bookkeeping
    "setup_name": Setting("superSimpleNet", is_plain_name, "a plain name (no '/', no leading '.')",
                          "results folder name"),
    "wandb_project": Setting("supersimplenet", lambda v: bool(v), "a non-empty name", "Weights & Biases project"),
}

# Settings that only some datasets have; their defaults come from the catalogue.
DATASET_SETTINGS: dict[str, Setting] = {
    "num_segmented": Setting(246, _one_of(KSDD2_NUM_SEGMENTED), f"one of {', '.join(map(str, KSDD2_NUM_SEGMENTED))}",
                             "KolektorSDD2 positives with a pixel mask (0 = weak labels only)"),
    "ratio_segmented": Setting(1.0, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]",
                               "SensumSODF share of positives with a pixel mask"),
    "folds": Setting(list(SENSUM_FOLDS), lambda v: bool(v) and all(f in SENSUM_FOLDS for f in v) and len(set(v)) == len(v),
                     f"distinct folds from {', '.join(map(str, SENSUM_FOLDS))}", "SensumSODF folds to run"),
}

# What the journal version changes (docs/method.md, "Journal version"): the classification
# branch reads raw features, and supervised datasets dilate masks and weight the loss.
VERSION_SETTINGS: dict[str, dict[str, Any]] = {"icpr": {}, "jims": {"adapt_cls_features": False}}
JIMS_SUPERVISED_SETTINGS: dict[str, Any] = {"dilate": 7, "dt": [3, 2]}
WEAK_PERLIN_THRESHOLD = 0.2  # journal: when no training positive has a mask


def check_seed_for_runs(seed: int, run_ids: list[int]) -> None:
    """Run N is seeded with seed + N: every one of them must be a seed numpy accepts."""
    largest = seed + max(run_ids, default=0)
    if largest > MAX_SEED:
        raise UserError(f"setting seed={seed} with run id {max(run_ids)} gives seed {largest}, above {MAX_SEED} "
                        f"(the largest seed numpy accepts); use a seed <= {MAX_SEED - max(run_ids)}")


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise UserError(f"--version {version}: choose one of {', '.join(VERSIONS)}")
    return version


def default_config(dataset: str, version: str = DEFAULT_VERSION) -> dict[str, Any]:
    """The published settings of `dataset` under `version` (before any file or override)."""
    check_version(version)
    try:
        entry = dataset_entry(dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    # the version is recorded with the settings (printed, stored beside checkpoints) but chosen
    # with --version, never with --set
    config: dict[str, Any] = {"version": version}
    config.update({key: copy.deepcopy(setting.default) for key, setting in SETTINGS.items()})
    config["image_size"] = list(entry.image_size) if entry.image_size else []
    config.update(copy.deepcopy(entry.settings))
    config.update(copy.deepcopy(VERSION_SETTINGS[version]))
    if version == "jims" and entry.supervised:
        config.update(copy.deepcopy(JIMS_SUPERVISED_SETTINGS))
    return config


def is_weak_regime(dataset: str, config: dict[str, Any]) -> bool:
    """True when a supervised dataset is set up with no segmented positive (image labels only)."""
    setting = dataset_entry(dataset).ratio_setting
    return bool(setting) and float(config[setting]) == 0.0


REGIMES = ("unsupervised", "weak", "mixed", "full")


def supervision_regime(dataset: str, config: dict[str, Any], with_masks: int, labels_only: int) -> str:
    """The papers' name for what a run trains on: unsupervised (normal images only), weak (defects
    with image labels only), mixed (some defects with masks) or full (every defect with a mask).
    KolektorSDD2 and SensumSODF are named by their ratio setting, as the journal's tables name them
    (so KSDD2 N=53 is mixed under either version); other datasets by the training defects counted."""
    setting = dataset_entry(dataset).ratio_setting
    if setting:
        value = float(config[setting])
        full = float(max(KSDD2_NUM_SEGMENTED)) if setting == "num_segmented" else 1.0
        return "weak" if value == 0.0 else "full" if value >= full else "mixed"
    if not with_masks and not labels_only:
        return "unsupervised"
    return "weak" if not with_masks else "mixed" if labels_only else "full"


def _setting(key: str) -> Setting:
    return SETTINGS.get(key) or DATASET_SETTINGS[key]


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Return `value` converted to the type of `default`, or raise a UserError naming `source`."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise UserError(
        f"{source}: '{key}' must be {type(default).__name__} like the default {default!r}, got {value!r}"
    )


def apply_settings(config: dict[str, Any], settings: dict[str, Any], source: str) -> dict[str, Any]:
    """Return a copy of `config` updated with `settings`, checking every key and type."""
    updated = copy.deepcopy(config)
    for key, value in settings.items():
        if key == "version":
            raise UserError(f"{source}: the version is chosen with --version jims|icpr, not as a setting")
        if key not in updated:
            known = ", ".join(sorted(updated))
            raise UserError(f"{source}: unknown setting '{key}'; known settings: {known}")
        updated[key] = _coerce(key, value, _setting(key).default, source)
    return updated


def chosen_settings(
    dataset: str, config_file: Path | None = None, overrides: list[str] | None = None, version: str = DEFAULT_VERSION
) -> dict[str, Any]:
    """The settings the user chose (the YAML file, then `key=value` overrides; later wins), each
    checked for a known key and converted to its type, without any default."""
    config = default_config(dataset, version)
    chosen: dict[str, Any] = {}
    if config_file is not None:
        settings = load_config_file(config_file)
        config = apply_settings(config, settings, f"config file {config_file}")
        chosen.update({key: config[key] for key in settings})
    for text in overrides or []:
        key, value = parse_override(text)
        config = apply_settings(config, {key: value}, f"--set {text}")
        chosen[key] = config[key]
    return chosen


def build_config(
    dataset: str,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    version: str = DEFAULT_VERSION,
) -> dict[str, Any]:
    """Defaults of `dataset` and `version`, then the YAML file, then `key=value` overrides (later
    wins), then derived settings; checked against `SETTINGS`."""
    chosen = chosen_settings(dataset, config_file, overrides, version)
    config = {**default_config(dataset, version), **chosen}
    # journal: with image labels only, the Perlin threshold of the unsupervised runs is used
    if version == "jims" and "perlin_thr" not in chosen and is_weak_regime(dataset, config):
        config["perlin_thr"] = WEAK_PERLIN_THRESHOLD
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Every value within its accepted range; the message names the setting, the value and the range."""
    for key, value in config.items():
        if key not in SETTINGS and key not in DATASET_SETTINGS:
            continue
        setting = _setting(key)
        if not setting.check(value):
            raise UserError(f"setting {key}={value!r} is out of range: {key} must be {setting.accepted}")
    _check_backbone_settings(config)


def _check_backbone_settings(config: dict[str, Any]) -> None:
    """The settings that must agree with each other: the kind of `layers` with the backbone's library, and
    `backbone_weights` with `pretrained` (whether a timm name exists is model/backbone.py's check)."""
    backbone, layers = config.get("backbone"), config.get("layers")
    if backbone is not None and layers:
        if is_timm_backbone(backbone) and not all(_is_index(v) for v in layers):
            raise UserError(f"setting layers={layers!r} does not fit backbone={backbone}: a timm backbone takes "
                            "feature indices (timm's out_indices), e.g. layers=[2,3]")
        if not is_timm_backbone(backbone) and not all(isinstance(v, str) for v in layers):
            raise UserError(f"setting layers={layers!r} does not fit backbone={backbone}: a torchvision backbone "
                            f"takes stage names from {', '.join(BACKBONE_LAYERS)}, e.g. layers=[layer2,layer3] "
                            f"(feature indices are for {TIMM_PREFIX}<name> backbones)")
    if config.get("backbone_weights") and config.get("pretrained") is False:
        raise UserError(f"setting backbone_weights={config['backbone_weights']} loads weights from a file and "
                        "pretrained=false asks for random ones: drop one of the two")


def format_config(config: dict[str, Any]) -> str:
    width = max(len(key) for key in config)
    return "\n".join(f"  {key:<{width}} = {value!r}" for key, value in config.items())


def settings_table() -> str:
    """Markdown table of every setting (docs/training.md holds it; a test keeps the two equal): name,
    the datasets it applies to, default, accepted values, meaning."""
    lines = ["| setting | applies to | default | accepted | meaning |", "|---|---|---|---|---|"]
    for key, setting in {**SETTINGS, **DATASET_SETTINGS}.items():
        owners = [name for name, entry in CATALOG.items() if key in entry.settings] if key in DATASET_SETTINGS else []
        applies = f"{', '.join(owners)} only" if owners else "every dataset"
        lines.append(f"| `{key}` | {applies} | `{setting.default!r}` | {setting.accepted} | {setting.meaning} |")
    return "\n".join(lines)
