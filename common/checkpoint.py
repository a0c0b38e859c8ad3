"""Orbax checkpoints of the train state, with a model signature that guards resumption.

A run resumes from its workdir by default. The signature (method, backbone, parameter shapes)
saved beside the state turns "this workdir holds a different model" into a one-line error instead
of an Orbax shape mismatch deep inside a restore.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model than the config describes."""


def model_signature(config, state: Any) -> dict[str, Any]:
    """What must agree between a checkpoint and the config that resumes it."""
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    shapes = [(jax.tree_util.keystr(p), list(np.shape(x))) for p, x in leaves]
    text = json.dumps(shapes)
    signature = {
        "method": config.method,
        "backbone": config.model.backbone,
        "backbone_kwargs": dict(config.model.get("backbone_kwargs", {})),
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
    """Atomic, retained checkpoints of the train state in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, signature: dict[str, Any]) -> None:
        """Saves `state` as `step` (asynchronously; Orbax commits atomically when done)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), signature=ocp.args.JsonSave(signature)
            ),
            force=True,
        )
        if jax.process_index() == 0:
            print(f"checkpoint: step {step} -> {self.directory}/{step}", flush=True)

    def restore(self, step: int, abstract_state: Any, signature: dict[str, Any]) -> Any:
        """Restores `step` onto the shardings of `abstract_state`, after checking the signature."""
        saved = self.manager.restore(
            step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())
        )["signature"]
        if saved != signature:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: "
                f"saved {describe(saved)}, config {describe(signature)}; "
                "use another --workdir or the matching config"
            )
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        return self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
