"""common.console: what it lets through and what --verbosity brings back (in process; the main
job's whole output is checked in tests/test_readme.py)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
from absl import logging as absl_logging

from common import console


@pytest.fixture
def restore_logging():
    level = absl_logging.get_verbosity()
    handler = absl_logging.get_absl_handler()
    filters = list(handler.filters)
    explicit = console._explicit_verbosity
    environ = dict(os.environ)
    yield handler
    os.environ.clear()
    os.environ.update(environ)
    absl_logging.set_verbosity(level)
    handler.filters[:] = filters
    console._explicit_verbosity = explicit


def _record(message, level=logging.WARNING, lineno=10):
    return logging.LogRecord("lib", level, "/site-packages/lib/x.py", lineno, message, (), None)


def test_filter_drops_deprecation_notices_and_repeats_but_never_errors():
    f = console.QuietFilter()
    assert not f.filter(_record("`TensorInfo.dtype` is deprecated. Please change your code"))
    assert not f.filter(_record("CounterV2 (from tf.data) is Deprecated and will be removed"))
    assert f.filter(_record("dataset has 3 corrupt files"))
    assert not f.filter(_record("dataset has 3 corrupt files"))  # shown once
    assert f.filter(_record("dataset has 4 corrupt files"))  # another warning
    assert f.filter(_record("x is deprecated", level=logging.ERROR))
    assert f.filter(_record("x is deprecated", level=logging.ERROR))


def test_quiet_by_default_and_verbosity_brings_info_back(restore_logging):
    handler = restore_logging
    with warnings.catch_warnings():
        console.quiet()
        assert absl_logging.get_verbosity() == absl_logging.WARNING
        assert console._FILTER in handler.filters
        with pytest.warns(UserWarning):  # real warnings still show
            warnings.warn("real", UserWarning, stacklevel=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("old api", DeprecationWarning, stacklevel=1)
        assert not caught
    assert os.environ[console.TF_LOG_LEVEL_VARIABLE]  # set before TensorFlow was imported

    handler.filters[:] = []
    console.quiet(0)
    assert absl_logging.get_verbosity() == absl_logging.INFO
    assert console._FILTER not in handler.filters
    # A later plain call (common.train.main run by a paper table) keeps the explicit choice.
    console.quiet()
    assert absl_logging.get_verbosity() == absl_logging.INFO


def test_dataset_build_command_prints_no_library_logs(tmp_path):
    """A dataset builder's command as a user runs it (neither TF_CPP_MIN_LOG_LEVEL nor
    TF_ENABLE_ONEDNN_OPTS set): its own progress and nothing from TensorFlow's C++ logging
    (on a CPU with AVX-512 VNNI, TensorFlow 2.21 announces its oneDNN kernels at import, past
    any log level), absl INFO or deprecation notices."""
    import re
    import subprocess

    from tests import helpers

    env = helpers.subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    proc = subprocess.run(
        [helpers.sys.executable, "-m", "common.data.synthetic_videos", "--data_dir",
         str(tmp_path), "--config", "tiny", "--num_workers", "1"],
        env=env, capture_output=True, text=True, timeout=600, cwd=helpers.REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.strip(), "the command printed nothing"
    assert not re.search(r"^I\d{4} \d\d:\d\d:\d\d", output, re.M), output[:2000]
    assert not re.search(r"\.cc:\d+\]", output), output[:2000]
    assert "deprecated" not in output and "DeprecationWarning" not in output, output[:2000]
