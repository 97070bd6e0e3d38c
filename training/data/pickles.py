"""Reading the authors' pickled split files without running code from them.

KSDD2 `split_weakly_<N>.pyb` holds `(train, test)`, each a list of `(image_name, is_segmented)`; SensumSODF
`sensum_splits/<cat>/<fold>/<split>/{neg,pos,pos_<R>}.pckl` hold lists of `(sample_id, is_segmented)`. Only plain
containers, numbers, strings and numpy scalars/arrays may appear; anything else (a class, a function, `os.system`)
is refused before it is built.
"""

from __future__ import annotations

import pickle
from pathlib import Path

_BUILTINS = {"list", "tuple", "dict", "set", "frozenset", "str", "bytes", "int", "float", "bool", "complex"}
_NUMPY = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class UnsafePickleError(ValueError):
    pass


class _SplitUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module == "builtins" and name in _BUILTINS) or (module, name) in _NUMPY:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"split file {str(self._path)!r} refers to {module}.{name}; only lists, tuples, dicts, numbers, strings "
            "and numpy arrays are accepted in split files (nothing in it was run)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"split file {str(self._path)!r} uses persistent ids; refused")


def load_split_pickle(path: str | Path):
    """Unpickle a split file that may contain only plain data."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _SplitUnpickler(file, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UnsafePickleError(f"split file {str(path)!r} is not a readable pickle: {err}") from err


def sample_pairs(value, path: Path) -> list[tuple[object, bool]]:
    """A split list -> [(sample id, is_segmented)]; anything else is an error naming the file."""
    pairs = []
    if not isinstance(value, (list, tuple)):
        kind = type(value).__name__
        raise UnsafePickleError(f"split file {str(path)!r}: expected a list of (sample, is_segmented), got {kind}")
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise UnsafePickleError(f"split file {str(path)!r}: expected (sample, is_segmented) pairs, got {item!r}")
        sample, segmented = item
        pairs.append((sample, bool(segmented)))
    return pairs
