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


def exact_types(value):
    """Nested structure -> the same shape with each leaf replaced by its exact type name."""
    if isinstance(value, (list, tuple)):
        return type(value)(exact_types(v) for v in value)
    return type(value).__name__


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_ids_and_flags_load_as_plain_python_values(tmp_path, protocol):
    # A split pair as a script holding numpy arrays would write it: int64 ids, numpy.bool_ flags.
    ids = np.array([12101, 12102, 20000], dtype=np.int64)
    flags = np.array([True, False, True])
    split = ([(ids[0], flags[0]), (ids[1], flags[1])], [(ids[2], np.bool_(True))])
    assert type(split[0][0][0]) is np.int64 and type(split[0][0][1]) is np.bool_
    path = tmp_path / "split.pyb"
    path.write_bytes(pickle.dumps(split, protocol=protocol))
    loaded = load_plain_pickle(path)
    assert loaded == ([(12101, True), (12102, False)], [(20000, True)])
    assert exact_types(loaded) == ([("int", "bool"), ("int", "bool")], [("int", "bool")])


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize(
    "scalar, expected",
    [
        (np.int8(-3), -3), (np.int16(-300), -300), (np.int32(-70000), -70000), (np.int64(-(2**40)), -(2**40)),
        (np.uint8(255), 255), (np.uint16(65535), 65535), (np.uint32(2**32 - 1), 2**32 - 1),
        (np.uint64(2**64 - 1), 2**64 - 1), (np.bool_(False), False), (np.bool_(True), True),
        (np.float16(1.5), 1.5), (np.float32(0.1), 0.10000000149011612), (np.float64(-2.25), -2.25),
    ],
)
def test_every_bool_int_float_kind_converts_exactly(tmp_path, protocol, scalar, expected):
    path = tmp_path / "value.pckl"
    path.write_bytes(pickle.dumps([scalar], protocol=protocol))
    (value,) = load_plain_pickle(path)
    assert value == expected and type(value) is type(expected)


def test_python2_style_numpy_scalar_with_str_bytes(tmp_path):
    # Python 2 stores the scalar's bytes as a str (SHORT_BINSTRING 'U'), read back as latin-1.
    data = (12229).to_bytes(8, "little")  # b"\xc5/\0..." is not ASCII
    raw = (
        b"\x80\x02]q\x00(cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02i8\x89\x88\x87R"
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x08" + data + b"\x86R\x88\x86e."
    )
    path = tmp_path / "py2.pyb"
    path.write_bytes(raw)
    assert load_plain_pickle(path) == [(12229, True)]


def test_numpy_arrays_and_other_numpy_objects_are_refused(tmp_path):
    path = tmp_path / "split.pyb"
    for value in ([np.array([1, 2])], [np.dtype("int64")], [np.str_("ab")], [np.complex128(1j)],
                  [np.datetime64("2020-01-01")], [np.float64(1.0), np.array(3.0)]):
        for protocol in (2, 4):
            path.write_bytes(pickle.dumps(value, protocol=protocol))
            with pytest.raises(UserError, match="contains objects other than"):
                load_plain_pickle(path)


def int64_pickle(protocol: int) -> bytes:
    raw = pickle.dumps([np.int64(7)], protocol=protocol)
    assert raw.count(b"i8") == 1
    return raw


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("spec", [b"O8", b"V8", b"U2", b"S8", b"c8", b"M8"])
def test_allowed_global_with_a_non_scalar_dtype_is_refused(tmp_path, protocol, spec):
    # The allowed `scalar` and `dtype` globals, asked for an object (or void, string, ...) dtype.
    path = tmp_path / "forged.pyb"
    path.write_bytes(int64_pickle(protocol).replace(b"i8", spec))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)


def unicode_op(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return b"X" + len(encoded).to_bytes(4, "little") + encoded


DTYPE_STATE = b"(K\x03" + unicode_op("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"


def handmade_scalar(spec="i8", dtype_args=b"\x89\x88\x87", state=DTYPE_STATE, data="\x07" + "\x00" * 7,
                    codec="latin1", module=b"numpy._core.multiarray") -> bytes:
    """Protocol-2 pickle of scalar(dtype(spec, False, True) + BUILD state, _codecs.encode(data, codec))."""
    return (
        b"\x80\x02c" + module + b"\nscalar\n"
        + b"cnumpy\ndtype\n" + unicode_op(spec) + dtype_args + b"R" + state + b"b"
        + b"c_codecs\nencode\n" + unicode_op(data) + unicode_op(codec) + b"\x86R"
        + b"\x86R."
    )


def test_handmade_scalar_pickle_loads_with_both_module_names(tmp_path):
    path = tmp_path / "value.pckl"
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        path.write_bytes(handmade_scalar(module=module))
        assert load_plain_pickle(path) == 7
        assert pickle.loads(path.read_bytes()) == np.int64(7)  # real numpy reads the same bytes alike
    path.write_bytes(handmade_scalar(state=DTYPE_STATE.replace(unicode_op("<"), unicode_op(">"))))
    assert load_plain_pickle(path) == 7 << 56  # big-endian bytes


@pytest.mark.parametrize(
    "forgery",
    [
        {"dtype_args": b"\x85"},  # dtype called with one argument instead of three
        {"dtype_args": b"K\x01\x88\x87"},  # align given as an int
        {"state": DTYPE_STATE.replace(b"NNN", b"N]N")},  # a "names" entry in the dtype state
        {"state": b"(K\x04" + DTYPE_STATE[3:]},  # another state version
        {"state": DTYPE_STATE.replace(unicode_op("<"), unicode_op("?"))},  # unknown byte order
        {"codec": "utf-8"},  # _codecs.encode with another codec
        {"data": "\x07\x00\x00\x00"},  # 4 bytes for an 8-byte int
        {"module": b"numpy.core._multiarray_umath"},  # not an allowed module
        {"spec": "f16", "data": "\x00" * 16},  # long double: no exact plain value
        {"spec": "i3", "data": "\x00" * 3},  # not a numpy size
    ],
)
def test_forged_numpy_scalar_calls_are_refused(tmp_path, forgery):
    path = tmp_path / "forged.pyb"
    path.write_bytes(handmade_scalar(**forgery))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)


def test_dtype_without_its_state_cannot_make_a_scalar(tmp_path):
    # scalar(dtype(...)) before BUILD has given the byte order, and a second BUILD on a dtype
    raw = handmade_scalar().replace(DTYPE_STATE + b"b", b"")
    path = tmp_path / "forged.pyb"
    path.write_bytes(raw)
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)
    path.write_bytes(handmade_scalar(state=DTYPE_STATE + b"b" + DTYPE_STATE))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)


@pytest.mark.parametrize("payload", [WritesMarker, CallsSystem])
def test_malicious_pickle_among_numpy_scalars_is_refused(tmp_path, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "split_weakly_0.pyb"
    path.write_bytes(pickle.dumps([(np.int64(1), np.bool_(True)), payload(marker)], protocol=2))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)
    assert not marker.exists()


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


# ---------------------------------------------------------------- the allowlist itself


def test_the_allowlist_is_exactly_the_documented_stand_ins():
    """Every global a split file may name, and what answers it: our stand-ins, never numpy or codecs."""
    from datamodules import safe_pickle

    assert safe_pickle.ALLOWED_GLOBALS == {
        ("numpy.core.multiarray", "scalar"): safe_pickle._numpy_scalar,
        ("numpy._core.multiarray", "scalar"): safe_pickle._numpy_scalar,
        ("numpy", "dtype"): safe_pickle._numpy_dtype,
        ("_codecs", "encode"): safe_pickle._latin1_encode,
    }
    assert all(function.__module__ == "datamodules.safe_pickle" for function in safe_pickle.ALLOWED_GLOBALS.values())


def _global_call(module: str, name: str, *args) -> bytes:
    """A protocol-2 pickle that calls module.name(*args) while loading (written by hand: GLOBAL, args, REDUCE)."""
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + pickle.dumps(tuple(args), protocol=2)[2:-1] + b"R.")


@pytest.mark.parametrize("module, name, args", [
    ("builtins", "eval", ("__import__('pathlib').Path({marker!r}).write_text('pwned')",)),
    ("builtins", "exec", ("import pathlib; pathlib.Path({marker!r}).write_text('pwned')",)),
    ("builtins", "getattr", ("{marker}", "upper")),
    ("subprocess", "Popen", (["touch", "{marker}"],)),
    ("os", "system", ("touch {marker}",)),
    ("numpy", "load", ("{marker}",)),
])
def test_payloads_built_on_eval_exec_getattr_and_popen_are_refused(tmp_path, module, name, args):
    marker = tmp_path / "marker"
    filled = tuple(a.format(marker=str(marker)) if isinstance(a, str) else [x.format(marker=str(marker)) for x in a]
                   for a in args)
    path = tmp_path / "split.pyb"
    path.write_bytes(_global_call(module, name, *filled))
    with pytest.raises(UserError, match="contains objects other than"):
        load_plain_pickle(path)
    assert not marker.exists()
    if (module, name) in (("builtins", "eval"), ("builtins", "exec"), ("os", "system")):
        pickle.loads(path.read_bytes())  # control: the payload is real, plain pickle runs it
        assert marker.exists()
