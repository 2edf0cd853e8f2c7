import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from datamodules.safe_pickle import dump_plain_pickle, is_plain, load_plain_pickle


class WritesMarker:
    """Unpickling this calls Path.write_text(marker): code execution if the loader allowed it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


class CallsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_of_a_split_pair(tmp_path):
    split = ([(10000, True), (10001, False)], [("20000", True)])
    path = tmp_path / "split.pyb"
    dump_plain_pickle(path, split)
    assert load_plain_pickle(path) == split
    assert [p.name for p in tmp_path.iterdir()] == ["split.pyb"]  # no temporary file left


def test_loads_pickles_of_every_protocol(tmp_path):
    value = [(1, True), (2.5, "a"), [3, [4, (False,)]]]
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pckl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        assert load_plain_pickle(path) == value


@pytest.mark.parametrize("payload", [WritesMarker, CallsSystem])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "split_weakly_16.pyb"
    path.write_bytes(pickle.dumps([(1, True), payload(marker)]))
    with pytest.raises(UserError, match="contains objects other than lists/tuples/numbers/strings/booleans") as error:
        load_plain_pickle(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    # Control: the same bytes do run code under plain pickle, so the refusal above is what stopped it.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("value", [{"a": 1}, [None], [b"bytes"], [{1, 2}]])
def test_containers_without_globals_but_not_plain_are_refused(tmp_path, value):
    path = tmp_path / "split.pyb"
    path.write_bytes(pickle.dumps(value))
    with pytest.raises(UserError, match="refusing to load it"):
        load_plain_pickle(path)


def test_numpy_scalars_are_refused(tmp_path):
    path = tmp_path / "split.pyb"
    path.write_bytes(pickle.dumps([(np.int64(7), True)]))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)


def test_truncated_and_corrupt_files_are_user_errors(tmp_path):
    whole = pickle.dumps(([(1, True)] * 50, [(2, True)]))
    truncated = tmp_path / "truncated.pyb"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.pyb"
    garbage.write_bytes(b"\x00not a pickle at all")
    empty = tmp_path / "empty.pyb"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(UserError, match="corrupt or truncated") as error:
            load_plain_pickle(path)
        assert str(path) in str(error.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_plain_pickle(tmp_path / "absent.pyb")


def test_deep_nesting_is_checked_without_recursion():
    deep: list = [1]
    for _ in range(100_000):
        deep = [deep]
    assert is_plain(deep)
    assert not is_plain([[[(1, None)]]])


def test_dump_refuses_objects_that_are_not_plain(tmp_path):
    with pytest.raises(TypeError):
        dump_plain_pickle(tmp_path / "x.pyb", [{"a": 1}])
    assert not (tmp_path / "x.pyb").exists()
