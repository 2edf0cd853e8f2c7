"""Read and write the published split files (pickles) without letting them run code.

A pickle can name any importable callable and have it called while loading; split
files only need lists, tuples, numbers, strings and booleans. The unpickler therefore
refuses every global except the few that numpy's scalars are pickled with, and even
those never reach numpy: they are answered by small stand-ins here that decode the
scalar's bytes and return a plain Python bool, int or float. The result is checked again.
Path -> plain Python value (nested lists/tuples of int, float, str, bool).

Allowed globals (as PyTorch's weights_only loader allows numpy scalars):
- `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` (numpy 1.x / 2.x),
  called with a dtype stand-in and the scalar's raw bytes;
- `numpy.dtype`, only for the bool, signed/unsigned integer and float16/32/64 kinds
  ('b1', 'i1'..'i8', 'u1'..'u8', 'f2', 'f4', 'f8') and a plain byte-order state;
- `_codecs.encode`, only as `encode(text, 'latin1')` (how protocols 0-2 store bytes).
Everything else (numpy.ndarray reconstruction, object or string dtypes, os.system, ...)
is refused before it could be called.
"""

import io
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.fileio import write_bytes_atomic

PLAIN_LEAF_TYPES = (bool, int, float, str)
PLAIN_CONTAINER_TYPES = (list, tuple)
PICKLE_PROTOCOL = 4


class _ForbiddenGlobal(pickle.UnpicklingError):
    """Raised when a pickle asks for a class or function outside the allowlist, or calls an
    allowed one with arguments other than a numpy bool/int/float scalar's."""


# numpy dtype strings (kind + item size, as numpy pickles them) of the scalars accepted.
_BOOL_DTYPES = {"b1"}
_INT_DTYPES = {"i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"}
_FLOAT_FORMATS = {"f2": "e", "f4": "f", "f8": "d"}  # struct formats
_BYTE_ORDERS = {"<": "little", ">": "big", "|": sys.byteorder, "=": sys.byteorder}
_DTYPE_STATE_VERSION = 3


class _ScalarDType:
    """Stands in for `numpy.dtype(spec, align, copy)` of an accepted scalar kind; its byte
    order comes from the pickle's BUILD state, set exactly once."""

    def __init__(self, spec: str):
        self.spec = spec
        self.byte_order: str | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byte order, subarray, names, fields, elsize, alignment, flags);
        # a plain scalar dtype has no subarray, names or fields.
        if (
            self.byte_order is not None
            or not isinstance(state, tuple)
            or len(state) != 8
            or state[0] != _DTYPE_STATE_VERSION
            or state[1] not in _BYTE_ORDERS
            or state[2:5] != (None, None, None)
        ):
            raise _ForbiddenGlobal(f"numpy.dtype state {state!r}")
        self.byte_order = _BYTE_ORDERS[state[1]]


def _numpy_dtype(*args: Any) -> _ScalarDType:
    """`numpy.dtype(spec, align, copy)` as numpy pickles it, for the accepted kinds only."""
    spec = args[0] if args else None
    if not (
        len(args) == 3
        and isinstance(spec, str)
        and spec in _BOOL_DTYPES | _INT_DTYPES | set(_FLOAT_FORMATS)
        and all(isinstance(flag, bool) for flag in args[1:])
    ):
        raise _ForbiddenGlobal(f"numpy.dtype{args!r}")
    return _ScalarDType(spec)


def _numpy_scalar(*args: Any) -> bool | int | float:
    """`numpy.core.multiarray.scalar(dtype, raw bytes)` -> the plain Python value."""
    if len(args) != 2:
        raise _ForbiddenGlobal(f"numpy scalar{args!r}")
    dtype, data = args
    if not (isinstance(dtype, _ScalarDType) and dtype.byte_order is not None):
        raise _ForbiddenGlobal(f"numpy scalar of {dtype!r}")
    if isinstance(data, str):  # written by Python 2: bytes stored as a str, read here as latin-1
        data = data.encode("latin1")
    size = int(dtype.spec[1:])
    if not isinstance(data, bytes) or len(data) != size:
        raise _ForbiddenGlobal(f"numpy scalar {dtype.spec} with data {data!r}")
    if dtype.spec in _BOOL_DTYPES:
        return data != b"\x00"
    if dtype.spec in _INT_DTYPES:
        return int.from_bytes(data, dtype.byte_order, signed=dtype.spec[0] == "i")
    prefix = "<" if dtype.byte_order == "little" else ">"
    return float(struct.unpack(prefix + _FLOAT_FORMATS[dtype.spec], data)[0])


def _latin1_encode(*args: Any) -> bytes:
    """`_codecs.encode(text, 'latin1')`: how protocols 0-2 store the bytes of a scalar."""
    if not (len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1"):
        raise _ForbiddenGlobal(f"_codecs.encode{args!r}")
    return args[0].encode("latin1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are the stand-ins of ALLOWED_GLOBALS (never the real ones)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def is_plain(value: Any) -> bool:
    """True when `value` is built only from lists/tuples of int, float, str and bool."""
    # An explicit stack instead of recursion: a deeply nested file must not crash the check.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, PLAIN_CONTAINER_TYPES):
            pending.extend(item)
        elif not isinstance(item, PLAIN_LEAF_TYPES):
            return False
    return True


def _refusal(path: Path) -> UserError:
    return UserError(
        f"split file {path} contains objects other than lists/tuples/numbers/strings/booleans; "
        "refusing to load it; replace it with the authors' published file"
    )


def load_plain_pickle(path: Path) -> Any:
    """Unpickle `path`, allowing only numpy bool/int/float scalars as globals (converted to
    Python values); returns nested lists/tuples of int/float/str/bool."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"split file {path} not found; check the dataset directory") from None
    except OSError as error:
        raise UserError(f"cannot read split file {path}: {error.strerror}") from None
    try:
        value = _NoGlobalsUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _ForbiddenGlobal:
        raise _refusal(path) from None
    except Exception as error:  # pickle signals corrupt data with many exception types
        raise UserError(
            f"split file {path} is corrupt or truncated ({type(error).__name__}); "
            "replace it with the authors' published file"
        ) from None
    if not is_plain(value):
        raise _refusal(path)
    return value


def dump_plain_pickle(path: Path, value: Any) -> None:
    """Write `value` (plain lists/tuples/numbers/strings/booleans only) to `path` atomically."""
    if not is_plain(value):
        raise TypeError("dump_plain_pickle accepts only nested lists/tuples of int, float, str and bool")
    write_bytes_atomic(Path(path), pickle.dumps(value, protocol=PICKLE_PROTOCOL))
