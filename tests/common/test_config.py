"""Configuration (published defaults per dataset and version; YAML then --set precedence; type and
range checks) and the CLI error wrapper."""

import pytest

from common.config import (
    apply_settings,
    build_config,
    default_config,
    load_config_file,
    parse_override,
    validate,
)
from common.errors import EXIT_USER_ERROR, UserError, exit_on_user_error

UNSUPERVISED = {
    "seed": 42,
    "batch": 32,
    "epochs": 300,
    "noise": True,
    "perlin": True,
    "no_anomaly": "empty",
    "bad": True,
    "overlap": True,
    "noise_std": 0.015,
    "seg_lr": 2e-4,
    "dec_lr": 2e-4,
    "adapt_lr": 1e-4,
    "gamma": 0.4,
    "stop_grad": True,
    "clip_grad": False,
    "eval_step_size": 4,
    "backbone": "wide_resnet50_2",
    "layers": ["layer2", "layer3"],
    "patch_size": 3,
    "adapt_cls_features": True,
}

SUPERVISED = {
    **UNSUPERVISED,
    "seed": 456654,
    "perlin_thr": 0.6,
    "overlap": False,
    "flips": True,
    "stop_grad": False,
    "clip_grad": True,
}


def assert_subset(config, expected):
    for key, value in expected.items():
        assert key in config, key
        assert config[key] == value and type(config[key]) is type(value), (key, config[key], value)


def test_mvtec_icpr_defaults():
    config = default_config("mvtec", "icpr")
    assert_subset(config, {**UNSUPERVISED, "perlin_thr": 0.2, "image_size": [256, 256], "flips": False})


def test_visa_icpr_defaults():
    config = default_config("visa", "icpr")
    assert_subset(config, {**UNSUPERVISED, "perlin_thr": 0.6, "image_size": [256, 256]})


def test_ksdd2_icpr_defaults():
    config = default_config("ksdd2", "icpr")
    assert_subset(config, {**SUPERVISED, "image_size": [640, 232], "num_segmented": 246})


def test_sensum_icpr_defaults():
    config = default_config("sensum", "icpr")
    assert_subset(config, SUPERVISED)
    assert config["ratio_segmented"] == 1.0
    assert config["folds"] == [0, 1, 2]


JOURNAL_SUPERVISED = {**SUPERVISED, "adapt_cls_features": False, "dilate": 7, "dt": [3, 2]}


def test_journal_is_the_default_version():
    assert default_config("mvtec")["version"] == "jims"
    assert build_config("mvtec")["version"] == "jims"
    assert default_config("mvtec", "icpr")["version"] == "icpr"


@pytest.mark.parametrize("dataset, perlin_thr", [("mvtec", 0.2), ("visa", 0.6)])
def test_journal_unsupervised_defaults(dataset, perlin_thr):
    config = default_config(dataset, "jims")
    assert_subset(config, {**UNSUPERVISED, "adapt_cls_features": False, "perlin_thr": perlin_thr,
                           "dilate": 0, "dt": []})


def test_journal_supervised_defaults():
    assert_subset(default_config("ksdd2", "jims"), {**JOURNAL_SUPERVISED, "num_segmented": 246})
    assert_subset(default_config("sensum", "jims"), {**JOURNAL_SUPERVISED, "ratio_segmented": 1.0})
    # ICPR supervised runs neither dilate nor weight
    assert_subset(default_config("ksdd2", "icpr"), {"dilate": 0, "dt": [], "adapt_cls_features": True})


@pytest.mark.parametrize("dataset, ratio_setting, ratio, perlin_thr", [
    ("ksdd2", "num_segmented", 0, 0.2), ("ksdd2", "num_segmented", 16, 0.6), ("ksdd2", "num_segmented", 246, 0.6),
    ("sensum", "ratio_segmented", 0, 0.2), ("sensum", "ratio_segmented", 0.1, 0.6),
    ("sensum", "ratio_segmented", 1, 0.6),
])
def test_journal_weak_regime_uses_the_unsupervised_perlin_threshold(dataset, ratio_setting, ratio, perlin_thr):
    config = build_config(dataset, None, [f"{ratio_setting}={ratio}"], "jims")
    assert config["perlin_thr"] == perlin_thr
    # ICPR has no such rule, and a threshold the user sets wins
    assert build_config(dataset, None, [f"{ratio_setting}={ratio}"], "icpr")["perlin_thr"] == 0.6
    assert build_config(dataset, None, [f"{ratio_setting}={ratio}", "perlin_thr=0.5"], "jims")["perlin_thr"] == 0.5


def test_version_is_not_a_setting():
    with pytest.raises(UserError, match="--version"):
        build_config("mvtec", None, ["version=icpr"])
    with pytest.raises(UserError, match="--version"):
        default_config("mvtec", "v3")


def test_defaults_are_independent_copies():
    first = default_config("mvtec")
    first["layers"].append("layer4")
    first["image_size"][0] = 1
    second = default_config("mvtec")
    assert second["layers"] == ["layer2", "layer3"] and second["image_size"] == [256, 256]


def test_every_preset_validates():
    for dataset in ("mvtec", "visa", "ksdd2", "sensum", "folder", "demo"):
        validate(default_config(dataset))


def test_unknown_dataset():
    with pytest.raises(UserError, match="nosuchset"):
        default_config("nosuchset")


def test_parse_override_values():
    assert parse_override("image_size=[128,128]") == ("image_size", [128, 128])
    assert parse_override("perlin=false") == ("perlin", False)
    assert parse_override("epochs=10") == ("epochs", 10)
    assert parse_override("no_anomaly=full") == ("no_anomaly", "full")
    assert parse_override("seg_lr=0.001") == ("seg_lr", 0.001)
    with pytest.raises(UserError):
        parse_override("epochs")


def test_exponent_notation_for_float_keys(tmp_path):
    assert build_config("mvtec", None, ["seg_lr=1e-3"])["seg_lr"] == 1e-3
    path = tmp_path / "run.yaml"
    path.write_text("adapt_lr: 5e-5\n", encoding="utf-8")
    assert build_config("mvtec", path, [])["adapt_lr"] == 5e-5


def test_yaml_then_set_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 5\nbatch: 8\nperlin: false\n", encoding="utf-8")
    config = build_config("mvtec", path, ["epochs=7", "image_size=[128,128]"])
    assert config["epochs"] == 7  # --set wins over the file
    assert config["batch"] == 8  # the file wins over the defaults
    assert config["perlin"] is False
    assert config["image_size"] == [128, 128]
    assert config["seed"] == 42  # untouched default
    # later --set wins over earlier ones
    assert build_config("mvtec", None, ["epochs=3", "epochs=4"])["epochs"] == 4


def test_int_accepted_for_float_keys():
    config = build_config("mvtec", None, ["noise_std=1", "gamma=1"])
    assert config["noise_std"] == 1.0 and type(config["noise_std"]) is float
    assert config["gamma"] == 1.0 and type(config["gamma"]) is float


@pytest.mark.parametrize("text", ["epochs=abc", "perlin=3", "epochs=true", "epochs=2.5", "image_size=5", "backbone=7"])
def test_wrong_types_are_user_errors(text):
    key = text.split("=")[0]
    with pytest.raises(UserError, match=key):
        build_config("mvtec", None, [text])


def test_unknown_key_names_the_key(tmp_path):
    with pytest.raises(UserError, match="epoch_count"):
        build_config("mvtec", None, ["epoch_count=3"])
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(UserError, match="learning_rate"):
        build_config("mvtec", path, [])
    # a dataset-specific key is unknown for another dataset
    with pytest.raises(UserError, match="num_segmented"):
        apply_settings(default_config("mvtec"), {"num_segmented": 16}, "test")


def test_yaml_file_errors(tmp_path):
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(UserError, match="list.yaml"):
        build_config("mvtec", not_mapping, [])
    missing = tmp_path / "missing.yaml"
    with pytest.raises(UserError, match="missing.yaml"):
        build_config("mvtec", missing, [])
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError, match="broken.yaml"):
        load_config_file(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert build_config("mvtec", empty, []) == default_config("mvtec")


@pytest.mark.parametrize(
    "dataset, settings",
    [
        ("mvtec", ["image_size=[256]"]),
        ("mvtec", ["image_size=[16,16]"]),
        ("mvtec", ["image_size=[256,256,3]"]),
        ("mvtec", ["batch=0"]),
        ("mvtec", ["epochs=0"]),
        ("sensum", ["ratio_segmented=1.5"]),
        ("sensum", ["ratio_segmented=-0.1"]),
        ("ksdd2", ["num_segmented=100"]),
    ],
)
def test_validate_rejects_bad_values(dataset, settings):
    with pytest.raises(UserError):
        build_config(dataset, None, settings)


@pytest.mark.parametrize(
    "dataset, settings",
    [("sensum", ["ratio_segmented=0"]), ("sensum", ["ratio_segmented=1"]), ("ksdd2", ["num_segmented=0"]),
     ("ksdd2", ["num_segmented=16"]), ("ksdd2", ["num_segmented=53"]), ("ksdd2", ["num_segmented=126"])],
)
def test_validate_accepts_boundary_values(dataset, settings):
    build_config(dataset, None, settings)


def test_exit_on_user_error(capsys):
    @exit_on_user_error
    def main(value):
        if value:
            raise UserError("checkpoint x.pt not found")
        return "ok"

    assert main(False) == "ok"
    with pytest.raises(SystemExit) as info:
        main(True)
    assert info.value.code == EXIT_USER_ERROR == 2
    captured = capsys.readouterr()
    assert captured.err == "error: checkpoint x.pt not found\n"
    assert captured.out == ""


def test_exit_on_user_error_keeps_other_exceptions():
    @exit_on_user_error
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        main()


def test_docs_settings_table_is_the_settings_table():
    # docs/training.md shows every setting; it must say what the code accepts, dataset-specific ones marked
    from pathlib import Path

    from common.config import settings_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- settings table")) + 1
    end = text.index("<!-- end of settings table -->")
    assert text[start:end].strip() == settings_table()
    assert "| `num_segmented` | ksdd2 only |" in settings_table()
    assert "| `folds` | sensum only |" in settings_table()


def test_seeds_are_what_numpy_accepts_with_every_run_id():
    import numpy as np

    from common.config import MAX_SEED, check_seed_for_runs

    np.random.seed(MAX_SEED)  # the largest accepted seed is one numpy takes
    with pytest.raises(ValueError):
        np.random.seed(MAX_SEED + 1)
    assert build_config("mvtec", overrides=[f"seed={MAX_SEED}"])["seed"] == MAX_SEED
    with pytest.raises(UserError, match="seed must be an integer in"):
        build_config("mvtec", overrides=["seed=99999999999999999999"])
    check_seed_for_runs(MAX_SEED - 4, [0, 2, 4])
    with pytest.raises(UserError, match=f"seed={MAX_SEED - 4} with run id 5 gives seed {MAX_SEED + 1}"):
        check_seed_for_runs(MAX_SEED - 4, [0, 5])


@pytest.mark.parametrize("text, lines", [
    ("epochs: 3\nbatch: 4\nepochs: 5\n", (1, 3)),
    ("image_size: [64, 64]\nimage_size: [32, 32]\n", (1, 2)),
    ("epochs: 3\n# a comment\n\n'epochs': 3\n", (1, 4)),  # the same value twice is still twice
])
def test_a_settings_file_with_a_key_twice_is_an_error_naming_both_lines(tmp_path, text, lines):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    key = text.split(":")[0]
    with pytest.raises(UserError) as caught:
        build_config("mvtec", config_file=path)
    assert str(caught.value) == (f"config file {path}: '{key}' is given twice (lines {lines[0]} and {lines[1]}); "
                                 "keep one of them")


def test_a_settings_file_without_duplicates_still_loads(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("epochs: 3\ndt: [3, 2]\nimage_size: [64, 32]\n")
    config = build_config("ksdd2", config_file=path)
    assert (config["epochs"], config["dt"], config["image_size"]) == (3, [3, 2], [64, 32])


@pytest.mark.parametrize("dataset, overrides, with_masks, labels_only, regime", [
    ("mvtec", [], 0, 0, "unsupervised"),
    ("ksdd2", ["num_segmented=0"], 0, 246, "weak"),
    ("ksdd2", ["num_segmented=53"], 53, 193, "mixed"),
    ("ksdd2", ["num_segmented=53"], 53, 0, "mixed"),  # ICPR drops the unlabelled positives: still the mixed setup
    ("ksdd2", [], 246, 0, "full"),
    ("sensum", ["ratio_segmented=0.4"], 4, 6, "mixed"),
    ("sensum", ["ratio_segmented=1"], 10, 0, "full"),
    ("sensum", ["ratio_segmented=0"], 0, 10, "weak"),
    ("folder", [], 0, 0, "unsupervised"),
    ("folder", [], 0, 3, "weak"),
    ("folder", [], 2, 3, "mixed"),
    ("folder", [], 2, 0, "full"),
])
def test_supervision_regime_as_the_papers_name_it(dataset, overrides, with_masks, labels_only, regime):
    from common.config import supervision_regime

    assert supervision_regime(dataset, build_config(dataset, overrides=overrides), with_masks, labels_only) == regime
# ---------------------------------------------------------------- backbones (docs/backbones.md)


def test_timm_backbone_takes_feature_indices_and_a_weights_file():
    config = build_config("mvtec", None, ["backbone=timm:efficientnet_b0", "layers=[3,2]",
                                          "backbone_weights=/models/effnet.safetensors"])
    assert config["backbone"] == "timm:efficientnet_b0" and config["layers"] == [3, 2]
    assert config["backbone_weights"] == "/models/effnet.safetensors"
    assert default_config("mvtec")["backbone_weights"] == ""  # '' = the library's pretrained weights


@pytest.mark.parametrize("settings, fragment", [
    (["backbone=timm:"], "backbone"),
    (["backbone=efficientnet_b0"], "timm:<model name>"),
    (["backbone=timm:resnet18"], "a timm backbone takes feature indices"),  # the default layer names
    (["backbone=timm:resnet18", "layers=[2,2]"], "layers"),
    (["backbone=timm:resnet18", "layers=[-1,2]"], "layers"),
    (["backbone=timm:resnet18", "layers=[true,2]"], "layers"),
    (["backbone=timm:resnet18", "layers=[layer2,3]"], "layers"),
    (["layers=[2,3]"], "a torchvision backbone takes stage names"),
    (["backbone_weights=w.pth", "pretrained=false"], "drop one of the two"),
], ids=["empty-timm-name", "bare-timm-name", "names-on-timm", "repeated-index", "negative-index", "bool-index",
        "mixed", "indices-on-torchvision", "file-and-random"])
def test_backbone_settings_that_cannot_fit_are_one_line(settings, fragment):
    with pytest.raises(UserError) as error:
        build_config("mvtec", None, settings)
    assert fragment in str(error.value) and "\n" not in str(error.value)
