"""Evaluates a checkpoint: the standalone counterpart of the trainer's final evaluation.

    python -m common.evaluate --config experiments/byol.py:local --workdir DIR \\
        [--checkpoint STEP | --init] [--evals discovery,knn] \\
        [--config.evals.discovery.num_clusters=16]

Restores the latest (or `--checkpoint`) train state of `<workdir>/checkpoints` for the model the
config describes (the checkpoint's model signature must match: a config of another model fails
with a one-line error), runs the evaluators of `config.evals` (or those named by `--evals`, with
their configured options, or their defaults when the config does not list them), prints a table,
and writes `<workdir>/eval_<step>.json` (and pictures under `<workdir>/pictures/`). `--init`
evaluates the freshly initialised networks instead (the random-initialisation baseline of the
papers' tables) and writes `eval_init.json`. Nothing is
trained and nothing in the workdir but those files is written.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import checkpoint, console, train
from common.data import loading


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no checkpoint (or not the requested step)."""


def restore_state(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int | None = None,
    *,
    initial: bool = False,
) -> tuple[train.Setup, train.TrainState, object]:
    """Builds the run's networks and restores `step` (default: the latest) from `workdir`
    (`initial`: the fresh initialisation instead, no checkpoint read).

    Returns `(setup, state, mesh)`; the state is replicated on the mesh of all devices.
    """
    # The schedule needs a dataset size when the config counts epochs; it plays no part here.
    num_examples = int(config.data.get("num_examples") or 1_000_000)
    setup = train.build(config, num_examples)
    mesh = train.create_mesh()
    if initial:
        init = jax.jit(
            functools.partial(train.init_state, setup), out_shardings=NamedSharding(mesh, P())
        )
        return setup, init(train.init_rng(config.seed)), mesh
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise NoCheckpointError(f"no checkpoints in {workdir} (expected {ckpt_dir})")
    replicated = NamedSharding(mesh, P())
    init = jax.jit(functools.partial(train.init_state, setup), out_shardings=replicated)
    abstract = init(train.init_rng(config.seed))
    signature = checkpoint.model_signature(config, abstract)
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
        steps = ckpt.manager.all_steps()
        if not steps:
            raise NoCheckpointError(f"no checkpoint in {ckpt_dir}")
        if step is None:
            step = ckpt.latest_step()
        elif step not in steps:
            raise NoCheckpointError(f"no checkpoint of step {step} in {ckpt_dir}; it has {steps}")
        try:
            state = ckpt.restore(step, abstract, signature)
        except checkpoint.CheckpointMismatchError:
            raise
        except ValueError as e:  # same model, other train-state layout (e.g. the optimiser)
            raise checkpoint.CheckpointMismatchError(
                f"{ckpt_dir} step {step}: the checkpoint's train state differs from the one "
                f"this config builds ({str(e).splitlines()[0]}); evaluate with the config the "
                f"run was trained with (saved in {os.path.join(workdir, 'config.json')})"
            ) from e
    finally:
        ckpt.close()
    return setup, state, mesh


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    evals: list[str] | None = None,
    initial: bool = False,
) -> dict[str, float]:
    """Restores a checkpoint, runs the evaluators, prints and writes `eval_<step>.json`.

    `evals`: evaluator names (default: the enabled ones of `config.evals`).
    `initial`: evaluate the config's freshly initialised networks (seed `config.seed`) instead
    of a checkpoint, the random-initialisation baseline; writes `eval_init.json`.
    """
    from common.eval import get_evaluator, run_evaluators

    names = list(evals) if evals else None
    for name in names or []:
        get_evaluator(name)  # an unknown name fails before any work
    # As the trainer does: build an embedded dataset that is missing (a fresh data dir, or a new
    # builder version), or fail naming it, rather than a KeyError from TFDS's empty splits.
    loading.ensure_dataset(config.data)
    setup, state, mesh = restore_state(config, workdir, step, initial=initial)
    step = int(state.step)
    timings: dict[str, float] = {}
    results = run_evaluators(setup, state, mesh=mesh, workdir=workdir, names=names, timings=timings)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "eval_init.json" if initial else f"eval_{step}.json")
        with open(path, "w") as f:
            json.dump({"step": step, "results": results, "seconds": timings}, f, indent=2)
        print(format_table(results, step, timings))
        print(f"wrote {path}", flush=True)
    return results


def format_table(results: dict[str, float], step: int, timings: dict[str, float]) -> str:
    width = max([len(k) for k in results] + [10])
    lines = [f"evaluation of step {step}"]
    for key, value in results.items():
        lines.append(f"  {key:<{width}}  {value:.4f}")
    lines.append("  " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return "\n".join(lines)


def cli(argv):
    del argv
    from absl import flags

    console.quiet()
    f = flags.FLAGS
    evals = [e.strip() for e in f.evals.split(",") if e.strip()] if f.evals else None
    evaluate(f.config, f.workdir, step=f.checkpoint, evals=evals, initial=f.init)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/<name>.py:<variant>")
    flags.DEFINE_string("workdir", None, "the training run's workdir (holds checkpoints/)")
    flags.DEFINE_integer("checkpoint", None, "step to evaluate (default: the latest)")
    flags.DEFINE_string("evals", None, "comma-separated evaluators (default: config.evals)")
    flags.DEFINE_bool("init", False, "evaluate the fresh initialisation, not a checkpoint")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(cli)
