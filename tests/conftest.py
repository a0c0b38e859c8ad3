"""Test session setup: 8 simulated CPU devices, quiet TensorFlow; fixtures shared by test files.

XLA_FLAGS must be set before JAX initialises its backend, so it happens here, at import time of
the first conftest, for the whole test session. Single-device tests use `jax.devices()[:1]`.
"""

import os

import pytest

from tests import helpers
from tests.helpers import TEST_XLA_FLAGS

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One persistent XLA compilation cache for the session, shared with the trainer subprocesses
# (they inherit this environment): the CLI tests run the same tiny configs several times (a
# reference run, a killed run and its resumption, ...), and on XLA:CPU compiling is most of a
# tiny run's time. Executables are keyed by the HLO, the devices and the flags, so a cached one
# is the one that would have been compiled.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="jax_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The tiny embedded dataset (`synthetic_scenes/tiny`), built once for the whole session."""
    from common.data import loading

    path = str(tmp_path_factory.mktemp("tfds"))
    config = helpers.tiny_config("byol", path)
    loading.ensure_dataset(config.data)
    return path
