"""Reading settings written by people: `--set key=value` (the value parsed as YAML) and YAML settings
files, every problem one UserError line. PyYAML's safe loader is used, except that a key given twice
in one mapping is an error naming both lines (PyYAML would keep the last value without a word).
common/config.py checks what is read against the table of settings."""

from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as YAML): `epochs=10`, `image_size=[128,128]`, `perlin=false`."""
    if "=" not in text:
        raise UserError(f"--set '{text}': expected key=value, for example --set epochs=10")
    key, raw_value = text.split("=", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as error:
        raise UserError(f"--set '{text}': the value is not valid YAML ({_one_line_yaml_error(error)})") from None
    return key.strip(), value


def _one_line_yaml_error(error: yaml.YAMLError) -> str:
    """PyYAML's messages span lines with a position pointer; keep the problem and its place."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(key)
        self.key, self.lines = key, (first_line, second_line)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    would keep the last value without a word)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: the usual constructor reports it
            continue
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise UserError(f"cannot read config file {path}: {reason}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {_one_line_yaml_error(error)}") from None
    except _DuplicateKey as duplicate:
        first, second = duplicate.lines
        raise UserError(f"config file {path}: '{duplicate.key}' is given twice (lines {first} and {second}); "
                        "keep one of them") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    return data
