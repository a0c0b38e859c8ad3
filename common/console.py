"""What a run prints: our own progress lines and real warnings, not the libraries' INFO logs.

TensorFlow, TFDS, JAX, Orbax and clu log hundreds of INFO lines per run through absl and
TensorFlow's C++ logging (Orbax alone dumps every CheckpointManager option and several lines
per save), and TensorFlow/TFDS log deprecation notices addressed to their own developers. By
default an entry point prints what it is doing (dataset build with its progress bar, training
progress with images/s and ETA, checkpoints, the evaluation table, output paths) and each real
warning once. absl's `--verbosity` brings the rest back: `--verbosity=0` for INFO (TensorFlow's
C++ INFO too, unless TF_CPP_MIN_LOG_LEVEL is set), `--verbosity=1` and up for debug logging.

Two steps, because TensorFlow reads its C++ log level from the environment once, when it is
first imported (often indirectly, by clu or TFDS):
* `quiet_native_logs()` sets TF_CPP_MIN_LOG_LEVEL=2 (errors only) and TF_ENABLE_ONEDNN_OPTS=0
  unless the environment already sets them. `common/__init__.py` calls it, so it runs before
  any module of this project can import TensorFlow.
* `quiet()` is called at the start of every entry point (`common.train.main`,
  `common.evaluate`, `common.pictures`, `common.export`, the paper-table commands, the
  notebooks), after absl has parsed the command line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

TF_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "2"  # TensorFlow/XLA C++ logs: 0 all, 1 no INFO, 2 errors only, 3 none
TF_ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# Set when `quiet_native_logs` chose the C++ log level (the user's environment did not), so
# that `--verbosity` may lift it again.
_native_level_is_ours = False
# The verbosity an entry point asked for explicitly (`quiet(verbosity)`), kept for the later
# `quiet()` calls of the functions it runs in-process (a paper table calls `common.train.main`).
_explicit_verbosity: int | None = None


def quiet_native_logs() -> None:
    """TF_CPP_MIN_LOG_LEVEL=2 for this process and its workers, unless the user set it; and
    TensorFlow's oneDNN kernels off (TF_ENABLE_ONEDNN_OPTS=0), unless the user set that.

    Why oneDNN: TensorFlow turns it on by itself on CPUs with AVX-512 VNNI, BF16 or AMX, and
    then prints "oneDNN custom operations are on ..." at import through absl before any log
    level applies (TF 2.21 ignores TF_CPP_MIN_LOG_LEVEL for it). TensorFlow only feeds data
    here (tf.data, the augmentations' image ops; the networks run in JAX), and with oneDNN off
    its host-side arithmetic is the same on every CPU instead of depending on the chip's
    instruction set, as TensorFlow's own message warns.
    """
    global _native_level_is_ours
    if TF_LOG_LEVEL_VARIABLE not in os.environ:
        os.environ[TF_LOG_LEVEL_VARIABLE] = QUIET_TF_LOG_LEVEL
        _native_level_is_ours = True
    os.environ.setdefault(TF_ONEDNN_VARIABLE, "0")


def requested_verbosity() -> int | None:
    """The `--verbosity` given on the command line (absl's flag), or None if none was given."""
    from absl import flags

    flag = flags.FLAGS["verbosity"]
    return int(flag.value) if flag.present else None


class QuietFilter(logging.Filter):
    """Drops library deprecation notices and repeats of a warning already shown.

    Deprecation notices (TFDS's "`TensorInfo.dtype` is deprecated", TensorFlow's "... is
    deprecated ... Instructions for updating") are addressed to those libraries' developers and
    repeat on every dataset read. Errors always pass.
    """

    def __init__(self):
        super().__init__("common.console")
        self._seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        if "deprecat" in message.lower():
            return False
        key = (record.pathname, record.lineno, message)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


_FILTER = QuietFilter()


def _install_filter(handler: logging.Handler) -> None:
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)


def quiet(verbosity: int | None = None) -> None:
    """Quiet library logging unless a verbosity of 0 (INFO) or more is asked for.

    Args:
      verbosity: absl verbosity (-1 warnings, 0 info, 1+ debug); None takes the command line's
        `--verbosity` when one was given, else an earlier call's explicit value, else quiet.
    """
    from absl import logging as absl_logging

    global _explicit_verbosity
    quiet_native_logs()
    if verbosity is not None:
        _explicit_verbosity = verbosity
    else:
        verbosity = requested_verbosity()
        if verbosity is None:
            verbosity = _explicit_verbosity
    if verbosity is not None and verbosity >= 0:
        absl_logging.set_verbosity(verbosity)
        if _native_level_is_ours:
            # Read by TensorFlow at its first C++ log line, so this still lifts later lines.
            os.environ[TF_LOG_LEVEL_VARIABLE] = "0"
        return

    absl_logging.set_verbosity(absl_logging.WARNING if verbosity is None else verbosity)
    # absl's handler formats every absl and Python log record (Orbax, TFDS, TensorFlow, clu);
    # in a notebook Python's own handlers may be the ones on the root logger.
    _install_filter(absl_logging.get_absl_handler())
    for handler in logging.getLogger().handlers:
        _install_filter(handler)
    # Without absl's app.run nothing may be on the root logger yet, and Python's last-resort
    # handler (which prints `WARNING:absl:...`) takes no filters: filter at the absl logger.
    if _FILTER not in logging.getLogger("absl").filters:
        logging.getLogger("absl").addFilter(_FILTER)
    if not sys.warnoptions:  # -W on the command line wins
        for category in (DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        # Worker processes (dataset builders, Beam) start with fresh warning filters.
        os.environ.setdefault(
            "PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::PendingDeprecationWarning"
        )


def parse_quietly(parser, argv=None):
    """`parser.parse_args(argv)` for an argparse command, with a `--verbosity` option (as absl's:
    0 shows the libraries' INFO logs), then `quiet` at that verbosity. Returns the arguments."""
    parser.add_argument(
        "--verbosity", type=int, default=None, help="as absl's: 0 shows the libraries' INFO logs"
    )
    args = parser.parse_args(argv)
    quiet(args.verbosity)
    return args
