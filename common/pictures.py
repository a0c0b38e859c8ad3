"""On-demand pictures of any method: the latest checkpoint of a workdir, drawn by the method's
own `save_pictures` hook (DetCon's masks, Odin's discovered masks, VITO's attention maps).

    python -m common.pictures --config experiments/detcon_b.py:local --workdir DIR \\
        [--out PNG] [--config.x=y]

The command reads the batch that training used for the restored step and the rng the trainer's
hook uses, so its picture equals the one training wrote at that step (a fresh initialisation
when the workdir has no checkpoint). It writes `<workdir>/pictures/step_<step>_on_demand.png`
unless `--out` says otherwise.

`under_jit` is how the methods' picture code runs its networks: one compiled program per
picture function, networks and shapes (the trainer draws the same shapes every
`pictures_every_steps`), instead of op by op.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import jax


class _ByIdentity:
    """A static jit argument compared by identity: the networks' module definitions (a dict of
    flax modules, not hashable) are the same object for every picture of a run (`Setup.modules`),
    so the compiled program is reused."""

    def __init__(self, value):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other) -> bool:
        return isinstance(other, _ByIdentity) and other.value is self.value


def under_jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: runs `fn(owner, nets, *arrays) -> pytree of arrays` as one `jax.jit` program.

    `owner` is static (hashable: a method object, a tuple of names); `nets` is an inference-mode
    `common.method.Networks`, whose parameters and statistics become the program's arguments and
    whose modules are static (by identity); `arrays` are traced (static shapes). The first call
    per owner, networks and shapes compiles; later calls reuse it. Inside `op_by_op()` it runs
    `fn` eagerly instead: the same computation, the reference of the tests and of
    `benchmarks/picture_time.py`.
    """

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def compiled(owner, modules, params, batch_stats, arrays):
        from common.method import Networks

        return fn(owner, Networks(modules.value, params, batch_stats, train=False), *arrays)

    @functools.wraps(fn)
    def wrapper(owner, nets, *arrays):
        if nets.train:
            raise ValueError("pictures run the networks in inference mode: got train=True")
        if _op_by_op:
            return fn(owner, nets, *arrays)
        return compiled(owner, _ByIdentity(nets.modules), nets.params, nets.new_batch_stats, arrays)

    return wrapper


_op_by_op = False


@contextlib.contextmanager
def op_by_op():
    """Within this context, `under_jit` functions run op by op (as pictures ran before)."""
    global _op_by_op
    before, _op_by_op = _op_by_op, True
    try:
        yield
    finally:
        _op_by_op = before


def pictures_for_workdir(config, workdir: str, out: str | None = None) -> str:
    """Restores the latest checkpoint of `workdir` (fresh init if none) and writes its picture.

    Uses the batch that training consumed at the restored step (batch `step - 1` of the stream,
    batch 0 for a fresh init) and the trainer's picture rng, `fold_in(PRNGKey(seed + 1), step)`
    (`common.train.save_pictures`), so the result equals the trainer's picture of that step.

    Returns:
      The path of the PNG.
    """
    from common import checkpoint, train
    from common.data import loading
    from common.method import Networks

    num_examples = loading.ensure_dataset(config.data)
    setup = train.build(config, num_examples)
    state = jax.jit(lambda r: train.init_state(setup, r))(train.init_rng(config.seed))
    ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=False)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, state, checkpoint.model_signature(config, state))
    ckpt.close()
    step = int(state.step)
    host_batch = next(train.make_data_iterator(config, max(step - 1, 0)))
    nets = Networks(
        setup.modules, {**state.params, **state.ema_params}, state.batch_stats, train=False
    )
    if out is None:
        os.makedirs(os.path.join(workdir, "pictures"), exist_ok=True)
        out = os.path.join(workdir, "pictures", f"step_{step:07d}_on_demand.png")
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
    if not setup.method.save_pictures(nets, host_batch, rng, out):
        raise ValueError(f"method {config.method!r} draws no pictures")
    return out


def _cli(argv):
    del argv
    from absl import flags

    from common import console

    console.quiet()
    path = pictures_for_workdir(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.out)
    print(f"pictures: {path}", flush=True)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/<name>.py:<variant>")
    flags.DEFINE_string("workdir", None, "workdir of a run (latest checkpoint; fresh init if none)")
    flags.DEFINE_string(
        "out", None, "PNG path (default: <workdir>/pictures/step_<k>_on_demand.png)"
    )
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_cli)
