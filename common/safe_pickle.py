"""Reading pickles a user hands us (downloaded checkpoints) without running code from them.

A pickle is a program: each global it names (`module.name`) is imported and may be called with
arguments of the file's choosing, so `pickle.load` of a crafted file runs `os.system(...)` before
any layout check. Like `torch.load(weights_only=True)`, `load` resolves only an allow-list:

* numpy's array and scalar reconstruction (`_reconstruct`, `_frombuffer`, `scalar`, `ndarray`,
  `dtype`), under numpy 1's and numpy 2's module names;
* plain containers and values (`set`, `frozenset`, `complex`, `OrderedDict`, and the
  `_codecs.encode(text, 'latin1')` / `bytes()` that protocol 2 writes bytes as, restricted to
  exactly that use);
* inert stand-ins (`StandIn`) for the classes of DeepMind's trainers and the libraries their
  experiment states hold (`byol.*`, `detcon.*`, `optax.*`, `haiku.*`), such as BYOL's
  `_ByolExperimentState` NamedTuple and its optimiser states. Those modules are never imported:
  a stand-in only records the values the pickle passes to it.

Any other global is refused with `UnsafePickleError` naming it, before anything is called (the
unpickler resolves a global before it can call it, so nothing of the file's choosing has run).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

# Packages whose classes become inert stand-ins: DeepMind's trainers and the libraries their
# experiment states hold objects of (NamedTuples, optimiser states: byol's LarsState, optax's
# states), so that a checkpoint whose optimiser state we do not need still loads.
STAND_IN_MODULES = ("byol", "detcon", "optax", "haiku")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing of it was executed."""


class StandIn:
    """Stands in for a class a pickle names in `STAND_IN_MODULES`, without importing it.

    Unpickling builds it with whatever the pickle passes (`args` of the constructor or
    `__new__`, and `state` from `__setstate__`), so the arrays inside stay readable.
    """

    pickled_module = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<stand-in for {self.pickled_module}.{type(self).__name__}>"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for bytes: `encode(str, 'latin1')` and no other."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only "
            "encode(str, 'latin1') (how protocol 2 writes bytes) is allowed"
        )
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """`bytes` as protocol 2 writes `b''`: called without arguments."""
    if args:
        raise UnsafePickleError("refused builtins.bytes with arguments: only bytes() is allowed")
    return b""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = np._core.multiarray, np._core.numeric
    allowed = {}
    for core in ("numpy.core", "numpy._core"):  # numpy 1's and numpy 2's pickles
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _empty_bytes,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS` and stand-ins (module doc)."""

    def __init__(self, file: BinaryIO, *, source: str = "pickle"):
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays of Python 2 pickles
        self.source = source
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocols < 3 name Python 2 modules (`__builtin__`, `copy_reg`); map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module.split(".")[0] in STAND_IN_MODULES and name.isidentifier():
            key = (module, name)
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (StandIn,), {"pickled_module": module})
            return self._stand_ins[key]
        raise UnsafePickleError(
            f"{self.source}: refused to load global {module}.{name}: a checkpoint may hold only "
            "numpy arrays, plain containers and DeepMind experiment states "
            "(common/safe_pickle.py); nothing from the file was executed"
        )


def load(file: BinaryIO, *, source: str = "pickle") -> Any:
    """Unpickles `file` through `RestrictedUnpickler`; `source` names it in errors."""
    return RestrictedUnpickler(file, source=source).load()


def loads(data: bytes, *, source: str = "pickle") -> Any:
    return load(io.BytesIO(data), source=source)


def load_npy(path: str) -> np.ndarray:
    """`np.load(path, allow_pickle=True)` of a `.npy`, with object arrays read by `load`.

    Plain (non-object) arrays are read by numpy as usual; an object array (what `np.save` of a
    dict writes: a header, then one pickle of the array) is unpickled with the allow-list.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = load(f, source=path)
    if not isinstance(array, np.ndarray):
        raise pickle.UnpicklingError(
            f"{path}: the pickle after the .npy header holds a {type(array).__name__}, not an array"
        )
    return array
