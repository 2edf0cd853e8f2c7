"""A run's settings: the dataset's defaults, then an optional YAML file, then `key=value` overrides.

Every key must already exist in the defaults and keep its type (an int is accepted
where a float is expected); anything else is a UserError, never silently ignored.
"""

import copy
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError

# The paper's unsupervised configuration (SPEC §4); every dataset starts from here.
BASE_CONFIG: dict[str, Any] = {
    # model
    "backbone": "wide_resnet50_2",
    "layers": ["layer2", "layer3"],
    "patch_size": 3,
    "pretrained": True,  # False = random backbone weights; only for smoke tests, every output says so
    "adapt_cls_features": True,  # True = ICPR model; False = journal extension
    "stop_grad": True,
    # anomaly generation
    "noise": True,
    "perlin": True,
    "no_anomaly": "empty",
    "bad": True,
    "overlap": True,
    "noise_std": 0.015,
    "perlin_thr": 0.2,
    # optimisation
    "seed": 42,
    "batch": 32,
    "epochs": 300,
    "seg_lr": 2e-4,
    "dec_lr": 2e-4,
    "adapt_lr": 1e-4,
    "gamma": 0.4,
    "clip_grad": False,
    "eval_step_size": 4,
    # data
    "image_size": [256, 256],
    "flips": False,
    "num_workers": 4,
    # bookkeeping
    "setup_name": "superSimpleNet",
    "wandb_project": "supersimplenet",
}

# The paper's supervised configuration (SPEC §4), shared by KSDD2 and SensumSODF.
SUPERVISED_OVERRIDES: dict[str, Any] = {
    "seed": 456654,
    "perlin_thr": 0.6,
    "overlap": False,
    "flips": True,
    "stop_grad": False,
    "clip_grad": True,
}

DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "mvtec": {},
    "visa": {"perlin_thr": 0.6},
    "ksdd2": {**SUPERVISED_OVERRIDES, "image_size": [640, 232], "num_segmented": 246},
    # image_size per category is fixed by the dataset (capsule 320x192, softgel 144x144)
    # unless the user sets one; an empty list means "the category's own size".
    "sensum": {**SUPERVISED_OVERRIDES, "image_size": [], "ratio_segmented": 1.0, "folds": [0, 1, 2]},
    "folder": {},
    # A CPU-sized run on the generated demo data: small backbone, no downloads.
    # Random resnet18 features vary ~10x more than ImageNet WRN50 ones, so the noise is scaled up.
    "demo": {
        "backbone": "resnet18",
        "pretrained": False,
        "noise_std": 0.15,
        "image_size": [128, 128],
        "batch": 4,
        "epochs": 10,
        "eval_step_size": 10,
        "num_workers": 0,
        "setup_name": "demo",
    },
}


def default_config(dataset: str) -> dict[str, Any]:
    if dataset not in DATASET_PRESETS:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASET_PRESETS)}")
    return {**copy.deepcopy(BASE_CONFIG), **copy.deepcopy(DATASET_PRESETS[dataset])}


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
        if key not in updated:
            known = ", ".join(sorted(updated))
            raise UserError(f"{source}: unknown setting '{key}'; known settings: {known}")
        updated[key] = _coerce(key, value, updated[key], source)
    return updated


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as YAML): `epochs=10`, `image_size=[128,128]`, `perlin=false`."""
    if "=" not in text:
        raise UserError(f"--set '{text}': expected key=value, for example --set epochs=10")
    key, raw_value = text.split("=", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as error:
        raise UserError(f"--set '{text}': the value is not valid YAML ({error.problem})") from None
    return key.strip(), value


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    return data


def build_config(dataset: str, config_file: Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults of `dataset`, then the YAML file, then `key=value` overrides (later wins)."""
    config = default_config(dataset)
    if config_file is not None:
        config = apply_settings(config, load_config_file(config_file), f"config file {config_file}")
    for text in overrides or []:
        key, value = parse_override(text)
        config = apply_settings(config, {key: value}, f"--set {text}")
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Checks beyond types: values a run cannot work with."""
    size = config["image_size"]
    if size and (len(size) != 2 or not all(isinstance(v, int) and v >= 32 for v in size)):
        raise UserError(f"image_size must be [height, width] with integers >= 32, got {size}")
    for key in ("batch", "epochs", "eval_step_size", "patch_size"):
        if config[key] < 1:
            raise UserError(f"{key} must be at least 1, got {config[key]}")
    if config["num_workers"] < 0:
        raise UserError(f"num_workers must be >= 0, got {config['num_workers']}")
    if not config["layers"]:
        raise UserError("layers must name at least one backbone layer")
    if "ratio_segmented" in config and not 0.0 <= config["ratio_segmented"] <= 1.0:
        raise UserError(f"ratio_segmented must be between 0 and 1, got {config['ratio_segmented']}")
    if "num_segmented" in config and config["num_segmented"] not in (0, 16, 53, 126, 246):
        raise UserError(f"num_segmented must be one of 0, 16, 53, 126, 246, got {config['num_segmented']}")


def format_config(config: dict[str, Any]) -> str:
    width = max(len(key) for key in config)
    return "\n".join(f"  {key:<{width}} = {value!r}" for key, value in config.items())
