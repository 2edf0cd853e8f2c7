"""Fuzzing with hypothesis: the settings parser and the folder walker meet random input and
either succeed or raise a UserError (one line), never any other exception.

Bounded (tens of examples each, no deadline) so the file runs in well under a minute on CI.
"""

import string
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import DATASET_SETTINGS, SETTINGS, VERSIONS, build_config
from common.settings_file import parse_override
from common.errors import UserError
from common.image_io import IMAGE_EXTENSIONS

# derandomized: CI runs the same examples every time (a failure is reproducible, never a fluke)
_FUZZ_OPTIONS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ = settings(max_examples=80, **_FUZZ_OPTIONS)
SMALL_FUZZ = settings(max_examples=50, **_FUZZ_OPTIONS)
DATASETS = ("mvtec", "visa", "ksdd2", "sensum", "folder", "demo")
KNOWN_KEYS = sorted({*SETTINGS, *DATASET_SETTINGS, "version"})


# Text that str.splitlines() breaks. A `--set` text holding one is echoed into its UserError; the
# printed line is flattened by common/errors.one_line (table case "set-with-a-line-break" of
# tests/test_bad_inputs.py), so the raw messages checked here leave these characters out.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def one_line_user_error(error: UserError) -> None:
    message = str(error).strip()
    assert message and len(message.splitlines()) == 1, repr(message)


def text(max_size: int, alphabet: str | None = None) -> st.SearchStrategy[str]:
    characters = st.sampled_from([c for c in alphabet if c not in LINE_BREAKS]) if alphabet else \
        st.characters(exclude_characters=LINE_BREAKS, exclude_categories=("Cs",))  # Cs: lone surrogates, not text
    return st.text(alphabet=characters, max_size=max_size)


# ---------------------------------------------------------------- settings

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), text(12),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text(6), inner, max_size=3)),
    max_leaves=8,
)
# value text: YAML-looking fragments, plain numbers, and arbitrary characters
value_text = st.one_of(
    st.sampled_from(["", "[", "]", "{", "[64,64]", "[1e3,2]", "1e-3", ".nan", "-.inf", "true", "no", "~",
                     "!!python/object:os.system", "&a [*a]", "0x1F", "1_000", "'quoted'", "\"x", "[[]]",
                     "{a: 1}", "- 1", "3.0", "-0", "null", "%"]),
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False).map(repr),
    text(20, alphabet=string.printable),
    text(10),
)
key_text = st.one_of(st.sampled_from(KNOWN_KEYS), text(12))


@FUZZ
@given(
    dataset=st.sampled_from(DATASETS),
    version=st.sampled_from(VERSIONS),
    overrides=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", key_text, value_text), text(15)),
                       max_size=4),
)
def test_set_overrides_give_a_config_or_a_user_error(dataset, version, overrides):
    try:
        for text in overrides:
            parse_override(text)
        config = build_config(dataset, overrides=overrides, version=version)
    except UserError as error:
        one_line_user_error(error)
        return
    assert config["version"] == version
    for key, setting in {**SETTINGS, **DATASET_SETTINGS}.items():
        if key in config:
            assert setting.check(config[key]), (key, config[key])


@FUZZ
@given(
    dataset=st.sampled_from(DATASETS),
    mapping=st.dictionaries(key_text, yaml_values, max_size=5),
    raw=st.one_of(st.none(), text(40), st.binary(max_size=30)),
)
def test_yaml_config_files_give_a_config_or_a_user_error(tmp_path, dataset, mapping, raw):
    path = tmp_path / "settings.yaml"
    if raw is None:
        path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    elif isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw, encoding="utf-8")
    try:
        config = build_config(dataset, config_file=path)
    except UserError as error:
        one_line_user_error(error)
        return
    for key, setting in {**SETTINGS, **DATASET_SETTINGS}.items():
        if key in config:
            assert setting.check(config[key]), (key, config[key])


# ---------------------------------------------------------------- the folder walker

names = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=10).filter(
    lambda name: name not in (".", ".."))
extensions = st.sampled_from([*IMAGE_EXTENSIONS, ".PNG", ".JPG", ".txt", "", ".png.bak", ".gif"])
file_kinds = st.sampled_from(["image", "image", "mask", "empty", "garbage", "directory"])
folders = st.sampled_from(["good", "defect", "masks", "train/good", "test/good", "test/crack", "ground_truth/crack",
                           "", "other", "good/nested"])
entries = st.lists(st.tuples(folders, names, extensions, file_kinds, st.integers(1, 40), st.integers(1, 40)),
                   max_size=14)


def write_entry(base: Path, folder: str, name: str, extension: str, kind: str, height: int, width: int, seed: int):
    path = base / folder / f"{name}{extension}"
    if path.exists() or any(parent.is_file() for parent in path.parents):
        return
    if kind == "directory":
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind in ("image", "mask") and extension.lower() in IMAGE_EXTENSIONS:
        shape = (height, width, 3) if kind == "image" else (height, width)
        array = rng.integers(0, 256 if kind == "image" else 2, size=shape, dtype=np.uint8)
        encoded, data = cv2.imencode(".png" if extension.lower() in (".png", "") else extension.lower(), array)
        if encoded:
            path.write_bytes(data.tobytes())
            return
    if kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes())


@SMALL_FUZZ
@given(tree=entries, weak_labels=st.booleans())
def test_folder_walker_succeeds_or_raises_a_user_error(tmp_path_factory, tree, weak_labels):
    from datamodules.folder import load_folder, validate_folder

    root = tmp_path_factory.mktemp("tree")
    base = root / "cat"
    base.mkdir()
    for seed, entry in enumerate(tree):
        write_entry(base, *entry, seed=seed)
    for check in (lambda: validate_folder(root, "cat", weak_labels=weak_labels),
                  lambda: load_folder(root, "cat", (32, 32), weak_labels=weak_labels)):
        try:
            result = check()
        except UserError as error:
            one_line_user_error(error)
            continue
        assert result


@pytest.mark.parametrize("name", ["", "..", "does/not/exist"])
def test_folder_walker_on_odd_category_names(tmp_path, name):
    from datamodules.folder import load_folder

    with pytest.raises(UserError):
        load_folder(tmp_path, name, (32, 32))
