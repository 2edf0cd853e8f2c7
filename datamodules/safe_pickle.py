"""Read and write the published split files (pickles) without letting them run code.

A pickle can name any importable callable and have it called while loading; split
files only ever need lists, tuples, numbers, strings and booleans, none of which need
a global. So the unpickler refuses every global, and the result is checked again.
Path -> plain Python value (nested lists/tuples of int, float, str, bool).

Split files written with numpy scalars (`numpy.int64` ids) need a global and are
refused with the same message; every published split file we know of holds plain
Python ints/strings and booleans.
"""

import io
import pickle
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.fileio import atomic_path

PLAIN_LEAF_TYPES = (bool, int, float, str)
PLAIN_CONTAINER_TYPES = (list, tuple)
PICKLE_PROTOCOL = 4


class _ForbiddenGlobal(pickle.UnpicklingError):
    """Raised when a pickle asks for any class or function."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise _ForbiddenGlobal(f"{module}.{name}")


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
    """Unpickle `path`, allowing no globals; returns nested lists/tuples of int/float/str/bool."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"split file {path} not found; check the dataset directory") from None
    except OSError as error:
        raise UserError(f"cannot read split file {path}: {error.strerror}") from None
    try:
        value = _NoGlobalsUnpickler(io.BytesIO(data)).load()
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
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(pickle.dumps(value, protocol=PICKLE_PROTOCOL))
