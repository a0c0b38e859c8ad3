"""Compatibility fix for tensorflow-datasets 4.9 on Python >= 3.9 without `importlib_resources`.

`DatasetBuilder.code_path` (reached by every `download_and_prepare`, through the checksums
lookup) refers to `importlib_resources.abc.Traversable`, but TFDS declares the
`importlib_resources` backport as a dependency only for Python < 3.9, so on 3.11 building any
dataset fails with `ModuleNotFoundError: No module named 'importlib_resources'`. The standard
library's `importlib.resources` has the same `abc.Traversable` since Python 3.11, so when the
backport is absent it stands in for it. Installing the backport (`pip install
importlib_resources`) makes this a no-op.
"""

import importlib
import importlib.resources.abc  # noqa: F401  (registers the `abc` submodule)
import sys


def ensure_importlib_resources() -> None:
    """Makes `import importlib_resources` work, with the stdlib module if the backport is absent."""
    if "importlib_resources" in sys.modules:
        return
    try:
        importlib.import_module("importlib_resources")
    except ModuleNotFoundError:
        sys.modules["importlib_resources"] = importlib.resources


ensure_importlib_resources()
