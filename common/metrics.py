"""Metric writing: TensorBoard (clu), a JSONL file in the workdir, and a progress line.

Only process 0 writes files; every process may print. The JSONL file (`metrics.jsonl`) is what
tests, notebooks and the paper-table scripts read: one JSON object per logged step.
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
from clu import metric_writers


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
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=not self.is_primary, asynchronous=True
        )
        self._last_time: float | None = None
        self._last_step: int | None = None

    def start(self, step: int) -> None:
        if self.is_primary and step < self.total_steps:
            print(
                f"training steps {step + 1}..{self.total_steps} (the first one compiles); "
                f"metrics: {self.jsonl_path}, TensorBoard: {self.workdir}",
                flush=True,
            )
        self._last_time, self._last_step = time.perf_counter(), step

    def log(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train") -> dict:
        """Writes `scalars` for `step` (the number of completed steps) and prints progress."""
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
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
        return row

    def flush(self) -> None:
        self.writer.flush()


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
