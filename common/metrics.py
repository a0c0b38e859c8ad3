"""Metric writing: TensorBoard (clu), a JSONL file in the workdir, and a progress line.

Only process 0 writes files; every process may print. The JSONL file (`metrics.jsonl`) is what
tests, notebooks and the paper-table scripts read: one JSON object per logged step and prefix.

After a resume it holds each (step, prefix) once: `start(step)` drops the rows past the restored
step (logged after the last checkpoint by the run that died, and about to be recomputed), and a
row logged again for a step it already holds (the final evaluation of a finished run that is
started again) replaces the old one.

TensorBoard event files cannot be edited. Its own restart protocol is used instead: `start(step)`
writes a `SessionLog.START` event at `step + 1` in a file of its own, named to sort after the
dead run's event files and before the new one, and TensorBoard's loader, on every START after a
run's first, drops the events it has read at that step and later (`_CheckForRestartAndMaybePurge`
of its `EventAccumulator`). The Rust data server drops a tag's events from a step on when that
step is written again (its reservoir's preemption), which the resumed run does, as it logs the
same tags at the same steps. tests/test_checkpoint_faults.py checks the Python loader against
`metrics.jsonl`. One case stays: the final evaluation of a finished run started again is logged
twice at the last step in the event files (the JSONL replaces it).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN or inf."""


def collapse_metrics(projection: jax.Array) -> dict[str, jax.Array]:
    """Feature-wise std of projections `[N, D]`, raw and l2-normalised (DetCon's featurewise_std).

    A collapsed representation maps every input to the same vector: both stds go to 0. For healthy
    l2-normalised vectors spread over the sphere the per-dimension std is about `1/sqrt(D)`.
    """
    p = projection.astype(jnp.float32)
    normed = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
    return {
        "proj_std": jnp.mean(jnp.std(p, axis=0)),
        "normalized_proj_std": jnp.mean(jnp.std(normed, axis=0)),
    }


def global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


class MetricLogger:
    """Writes scalars every `log_every` steps and prints a progress line with images/s and ETA."""

    def __init__(self, workdir: str, *, total_steps: int, global_batch_size: int):
        self.is_primary = jax.process_index() == 0
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self.writer = None  # created by `start`, after the restart marker
        self._last_time: float | None = None
        self._last_step: int | None = None
        self._logged: set[tuple[int, str]] = set()  # (step, prefix) of the JSONL rows

    def start(self, step: int) -> None:
        """Starts timing at `step` and drops the JSONL rows after it (logged before a crash)."""
        if self.is_primary and step < self.total_steps:
            print(
                f"training steps {step + 1}..{self.total_steps} (the first one compiles); "
                f"metrics: {self.jsonl_path}, TensorBoard: {self.workdir}",
                flush=True,
            )
        self._last_time, self._last_step = time.perf_counter(), step
        if self.is_primary:
            rows = read_jsonl(self.workdir)
            kept = [row for row in rows if row["step"] <= step]
            if len(kept) < len(rows):
                _rewrite_jsonl(self.jsonl_path, kept)
            self._logged = {_row_key(row) for row in kept}
            _write_restart_marker(self.workdir, step + 1)
        # Imported here: clu's writers import TensorFlow, which the step, the benchmarks and an
        # accelerator host that only trains from staged arrays do not otherwise need.
        from clu import metric_writers

        self.writer = metric_writers.create_default_writer(
            self.workdir, just_logging=not self.is_primary, asynchronous=True
        )

    def log(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train") -> dict:
        """Writes `scalars` for `step` (the number of completed steps) and prints progress."""
        if self.writer is None:
            raise RuntimeError("MetricLogger.log before MetricLogger.start(step)")
        now = time.perf_counter()
        row = {f"{prefix}/{k}": float(v) for k, v in scalars.items()}
        if prefix == "train" and self._last_step is not None and step > self._last_step:
            rate = (step - self._last_step) * self.global_batch_size / (now - self._last_time)
            row["train/images_per_s"] = rate
            eta = (self.total_steps - step) * self.global_batch_size / max(rate, 1e-9)
            print(
                f"step {step}/{self.total_steps} loss {row.get('train/loss', math.nan):.4f} "
                f"{rate:.1f} img/s ETA {_hms(eta)}",
                flush=True,
            )
            self._last_time, self._last_step = now, step
        if self.is_primary:
            self.writer.write_scalars(step, row)
            line = {"step": step, **row}
            if _row_key(line) in self._logged:  # logged again (a finished run started again)
                rows = read_jsonl(self.workdir)
                _rewrite_jsonl(self.jsonl_path, [r for r in rows if _row_key(r) != _row_key(line)])
            self._logged.add(_row_key(line))
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return row

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def _row_key(row: dict) -> tuple[int, str]:
    """(step, prefix) of a JSONL row: its keys are `<prefix>/<name>` besides `step`."""
    prefixes = sorted({k.split("/")[0] for k in row if k != "step"})
    return row["step"], ",".join(prefixes)


def _rewrite_jsonl(path: str, rows: list[dict]) -> None:
    """Replaces the file with `rows` atomically (a crash leaves the old or the new file)."""
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def _write_restart_marker(logdir: str, step: int) -> None:
    """An event file holding one `SessionLog.START` at `step` (see the module docstring).

    Its name, `events.out.tfevents.<seconds>.!restart`, sorts after the event files of earlier
    runs (earlier seconds: it waits for the next second if one is from this second) and before
    the one the new writer creates (the same or a later second, then the host name, whose
    characters all sort after '!').
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    names = [name.split(".") for name in os.listdir(logdir) if ".tfevents." in name]
    seconds = [int(parts[3]) for parts in names if len(parts) > 3 and parts[3].isdigit()]
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)
    now = time.time()
    path = os.path.join(logdir, f"events.out.tfevents.{int(now):010d}.!restart")
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        version = event_pb2.Event(wall_time=now, file_version="brain.Event:2")
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        restart = event_pb2.Event(wall_time=now, step=step, session_log=start)
        for event in (version, restart):
            writer.write(event.SerializeToString())


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_jsonl(workdir: str) -> list[dict]:
    """All rows of `<workdir>/metrics.jsonl` (empty if none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def to_host(tree) -> dict:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).item() if np.ndim(x) == 0 else x, tree)
