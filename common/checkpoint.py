"""Orbax checkpoints of the train state, with a model signature that guards resumption.

A run resumes from its workdir by default. The signature (method, backbone, parameter shapes)
saved beside the state turns "this workdir holds a different model" into a one-line error instead
of an Orbax shape mismatch deep inside a restore.

Faults (docs/RELIABILITY.md):

* A damaged checkpoint (a file truncated, emptied, deleted or with flipped bytes, as a disk fault
  or an interrupted copy leaves it). Orbax reports a truncated or missing file, but decodes
  flipped bytes inside a compressed chunk into wrong numbers without complaint, so every save
  also stores a fingerprint of the state (`fingerprint`: two wrap-around integer sums per array
  over its bits, computed on device) and a restore recomputes and compares it. `restore_latest`
  falls back to the newest intact step with a warning naming the bad step and what was wrong,
  moving the bad one to `<workdir>/checkpoints_damaged/` (so the step can be saved again);
  where none is intact it raises `CheckpointCorruptError` naming the directory.
* A failed save (disk full, read-only or vanished directory, a failing asynchronous write):
  Orbax raises the background error at the next save or wait; `save` and `wait` turn it into
  `CheckpointSaveError` naming the directory and the step whose write failed. Orbax commits a step
  by renaming its temporary directory, so the failed step never appears and the previous ones
  stay restorable.
* A save interrupted by a kill (SIGKILL, a host lost) leaves Orbax's temporary step directory
  (`<step>.orbax-checkpoint-tmp*`) uncommitted: the restart never reads it, restores the newest
  committed step, and removes it (`cleanup_tmp_directories`).

Besides the state, a checkpoint holds where the training stream stands (`data_stream`: the next
position of every data shard), so that a resumed run reads the records the uninterrupted run
would have even where bad records were skipped (`data.skip_bad_records`); see `restore_stream`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model than the config describes."""


class CheckpointCorruptError(ValueError):
    """A checkpoint cannot be read back as it was written (or none in the directory can)."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (disk full, read-only directory, a failing write)."""


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """`[2]` uint32 of one array: the sum of its bit patterns and of them times odd weights.

    Integer sums wrap around exactly, so the result does not depend on the reduction order
    (devices, sharding); a change of any single element changes the weighted sum (an odd weight
    is invertible modulo 2**32).
    """
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    bits = bits.reshape(-1)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


@jax.jit
def _fingerprints(state: Any) -> list[jax.Array]:
    return [_leaf_fingerprint(x) for x in jax.tree_util.tree_leaves(state)]


def fingerprint(state: Any) -> list[list[int]]:
    """Per-array fingerprints `[[sum, weighted_sum], ...]` of `state`, in leaf order (as JSON)."""
    return [[int(v) for v in np.asarray(f)] for f in _fingerprints(state)]


# Backbone options that change how a layer is computed, not which parameters it has (the 1x1
# convolutions as einsums, the stem as a patches matmul, BatchNorm's variance in two passes): a
# checkpoint written with either setting restores under the other.
LOWERING_ONLY_KWARGS = ("einsum_1x1", "cpu_stem", "bn_two_pass_variance")


def model_signature(config, state: Any) -> dict[str, Any]:
    """What must agree between a checkpoint and the config that resumes it."""
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    shapes = [(jax.tree_util.keystr(p), list(np.shape(x))) for p, x in leaves]
    text = json.dumps(shapes)
    signature = {
        "method": config.method,
        "backbone": config.model.backbone,
        "backbone_kwargs": {
            k: v
            for k, v in dict(config.model.get("backbone_kwargs", {})).items()
            if k not in LOWERING_ONLY_KWARGS
        },
        "num_params": int(sum(np.prod(s) for _, s in shapes)),
        "param_shapes_sha1": hashlib.sha1(text.encode()).hexdigest(),
    }
    # As it reads back from JSON (tuples become lists), so saved and fresh ones compare equal.
    return json.loads(json.dumps(signature))


def describe(sig: dict[str, Any]) -> str:
    return (
        f"method={sig['method']} backbone={sig['backbone']}{sig.get('backbone_kwargs') or ''} "
        f"params={sig['num_params']:,}"
    )


class Checkpointer:
    """Atomic, retained, verified checkpoints of the train state in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                # A save killed midway leaves its temporary directory: removed at the restart.
                cleanup_tmp_directories=True,
            ),
        )
        self._pending_step: int | None = None  # saved asynchronously, not yet known written

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        self._pending_step = None
        return CheckpointSaveError(
            f"saving checkpoint step {step} of {self.workdir} to {self.directory} failed: "
            f"{type(error).__name__}: {error}; the checkpoints before it are intact "
            f"(latest: step {self.manager.latest_step()})"
        )

    def save(
        self,
        step: int,
        state: Any,
        signature: dict[str, Any],
        data_stream: dict[str, Any] | None = None,
    ) -> None:
        """Saves `state` as `step` (asynchronously; Orbax commits atomically when done).

        `data_stream` (JSON: `num_shards`, `positions`) is where the training stream stands
        after `step`: the next stream position of every data shard, in shard order.

        Raises:
          CheckpointSaveError: this save, or the previous asynchronous one, failed.
        """
        # Orbax lets one save run at a time, so waiting here costs nothing, and it tells the
        # previous step's failure apart from this one's.
        self.wait()
        items = {
            "state": ocp.args.StandardSave(state),
            "signature": ocp.args.JsonSave(signature),
            "fingerprint": ocp.args.JsonSave({"leaves": fingerprint(state)}),
        }
        if data_stream is not None:
            items["data_stream"] = ocp.args.JsonSave(data_stream)
        self._pending_step = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:
            raise self._save_failed(step, e) from e
        if jax.process_index() == 0:
            print(f"checkpoint: step {step} -> {self.directory}/{step}", flush=True)

    def _restore_item(self, step: int, name: str, args: Any) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

    def restore(self, step: int, abstract_state: Any, signature: dict[str, Any]) -> Any:
        """Restores `step` onto the shardings of `abstract_state`, after checking the signature.

        Raises:
          CheckpointMismatchError: the step holds another model.
          CheckpointCorruptError: the step cannot be read back as it was written.
        """
        try:
            saved = self._restore_item(step, "signature", ocp.args.JsonRestore())
        except Exception as e:
            raise self._corrupt(step, "its signature is unreadable", e) from e
        if saved != signature:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: "
                f"saved {describe(saved)}, config {describe(signature)}; "
                "use another --workdir or the matching config"
            )
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            state = self._restore_item(step, "state", ocp.args.StandardRestore(target))
        except Exception as e:
            raise self._corrupt(step, "its state is unreadable", e) from e
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(os.path.join(step_dir, "fingerprint")):
            return state  # written before fingerprints existed: nothing to compare
        try:
            expected = self._restore_item(step, "fingerprint", ocp.args.JsonRestore())["leaves"]
        except Exception as e:
            raise self._corrupt(step, "its fingerprint is unreadable", e) from e
        got = fingerprint(state)
        if got != expected:
            paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
            bad = [p for p, g, w in zip(paths, got, expected) if g != w]
            raise self._corrupt(
                step, f"{len(bad)} arrays differ from what was saved (first: {bad[:3]})", None
            )
        self.restore_stream(step)  # readable too, or the step is damaged (and skipped)
        return state

    def restore_stream(self, step: int) -> dict[str, Any] | None:
        """The `data_stream` saved with `step`, or None where it has none (a checkpoint written
        before streams were saved, or without a data stream).

        Raises:
          CheckpointCorruptError: it is there but unreadable.
        """
        if not os.path.isdir(os.path.join(self.directory, str(step), "data_stream")):
            return None
        try:
            return self._restore_item(step, "data_stream", ocp.args.JsonRestore())
        except Exception as e:
            raise self._corrupt(step, "its data stream position is unreadable", e) from e

    def _corrupt(self, step: int, what: str, error: BaseException | None) -> CheckpointCorruptError:
        text = str(error).split(" See full TensorStore details")[0].splitlines() if error else []
        detail = f": {type(error).__name__}: {text[0][:300] if text else ''}" if error else ""
        return CheckpointCorruptError(
            f"checkpoint step {step} in {self.directory} is damaged: {what}{detail}"
        )

    def restore_latest(
        self, abstract_state: Any, signature: dict[str, Any]
    ) -> tuple[int, Any] | None:
        """`(step, state)` of the newest intact checkpoint, or None where there is none at all.

        Damaged steps (`CheckpointCorruptError`) are skipped with a warning and moved to
        `<workdir>/checkpoints_damaged/<step>` (by process 0), so that training past them saves
        those steps again.

        Raises:
          CheckpointMismatchError: the newest readable step holds another model.
          CheckpointCorruptError: checkpoints exist and none is intact.
        """
        self.manager.reload()  # steps on disk now, not as this manager last saw them
        steps = sorted(self.manager.all_steps(), reverse=True)
        problems = []
        for step in steps:
            try:
                state = self.restore(step, abstract_state, signature)
            except CheckpointCorruptError as e:
                problems.append((step, str(e)))
                continue
            for _, message in problems:
                warnings.warn(f"{message}; falling back to step {step}", stacklevel=2)
            self._set_aside([bad for bad, _ in problems])
            return step, state
        if problems:
            raise CheckpointCorruptError(
                f"no intact checkpoint in {self.directory}: "
                + " | ".join(message for _, message in problems)
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if steps and jax.process_index() == 0:
            aside = os.path.join(self.workdir, "checkpoints_damaged")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                shutil.move(os.path.join(self.directory, str(step)), f"{aside}/{step}-{stamp}")
        if steps:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("checkpoints_damaged")
            self.manager.reload()

    def wait(self) -> None:
        """Blocks until the pending save is written.

        Raises:
          CheckpointSaveError: it failed.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_failed(self._pending_step, e) from e
        self._pending_step = None

    def close(self) -> None:
        self.manager.close()
