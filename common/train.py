"""The one trainer of every method.

    python -m common.train --config experiments/byol.py:local --workdir /tmp/byol

Phases of `main`, top to bottom: distributed init -> method and networks -> mesh -> state (init,
or restore from the workdir) -> data from the restored step -> jitted step -> loop (metrics,
checkpoints, SIGTERM) -> final evaluation.

Guarantees a long pod job relies on:
* the step is a pure function `train_step(setup, state, batch) -> (state, metrics)`, jitted once
  over a `Mesh` with the batch on the `data` axis and the state donated; BatchNorm statistics and
  contrastive negatives are global because the batch is one global array;
* the step's randomness is `fold_in(seed, step)` and the data stream is a function of
  (seed, stream position); every checkpoint saves the next position of each data shard (bad
  records skipped by `data.skip_bad_records` move it), so a run resumed from a checkpoint reads
  the same records and computes exactly what the uninterrupted run would have;
* SIGTERM (preemption) writes a checkpoint of the last completed step and exits cleanly; with
  several processes they agree on that step (JAX's preemption sync point), so a signal that
  reaches one host only still checkpoints every host at the same step;
* NaN/inf stops the run before anything non-finite is saved;
* the host never waits for the devices between two steps except where it must: the step's
  finite flag and metrics are device values read on logging steps only, one step late (while the
  next step runs), and before anything that reads the state (checkpoint, evaluation, pictures);
  the next `loop.prefetch` global batches are already on the devices when a step is dispatched.
  A NaN between two logging steps is recorded on device (`Health`), so it still stops the run,
  naming its step, before any checkpoint of a non-finite state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import augment, checkpoint, console, metrics, optim
from common.method import Method, Networks, get_method

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a plain pytree (Orbax saves it as it is).

    Attributes:
      step: number of completed optimiser steps (int32 scalar).
      params: trainable parameters: one entry per trainable network plus `classifier` (the
        stop-gradient online linear monitor).
      ema_params: parameters of the EMA networks (e.g. `target`), never differentiated.
      batch_stats: BatchNorm statistics of every network, by network name.
      opt_state: optimiser state of `params`.
    """

    step: jax.Array
    params: PyTree
    ema_params: PyTree
    batch_stats: PyTree
    opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of a run: closed over by the jitted step, never traced."""

    config: ml_collections.ConfigDict
    method: Method
    modules: Mapping[str, nn.Module]
    classifier: nn.Module
    optimizer: optax.GradientTransformation
    learning_rate: Callable[[jax.Array], jax.Array]
    total_steps: int
    num_examples: int | None = None


# ---------------------------------------------------------------------------------------------
# Building blocks (module level so tests can call them).


def total_steps_of(config: ml_collections.ConfigDict, num_examples: int | None = None) -> int:
    """`config.total_steps`, or `num_epochs` of the training split at `batch_size`."""
    if config.get("total_steps"):
        return int(config.total_steps)
    if num_examples is None:
        num_examples = int(config.data.num_examples)
    return int(config.num_epochs * num_examples // config.batch_size)


def warmup_steps_of(config: ml_collections.ConfigDict, num_examples: int | None) -> int:
    o = config.optimizer
    if o.get("warmup_steps") is not None and o.get("warmup_steps") >= 0:
        return int(o.warmup_steps)
    n = num_examples if num_examples is not None else int(config.data.num_examples)
    if o.get("warmup_rule", "epochs") == "detcon":  # the released code: (epochs // 100) epochs
        return optim.detcon_warmup_steps(config.num_epochs, n, config.batch_size)
    return int(o.warmup_epochs * n // config.batch_size)


def build(config: ml_collections.ConfigDict, num_examples: int | None = None) -> Setup:
    """Resolves the method, its networks, the monitor and the optimiser from the config."""
    method = get_method(config.method)(config)
    total = total_steps_of(config, num_examples)
    lr = optim.warmup_cosine_schedule(
        base_lr=config.optimizer.base_lr,
        batch_size=config.batch_size,
        total_steps=total,
        warmup_steps=warmup_steps_of(config, num_examples),
    )
    o = config.optimizer
    if o.name == "lars":
        tx = optim.lars(lr, weight_decay=o.weight_decay, eta=o.eta, momentum=o.momentum)
    elif o.name == "adamw":
        tx = optax.adamw(lr, weight_decay=o.weight_decay)
    else:
        raise ValueError(f"config.optimizer.name: unknown optimiser {o.name!r} (lars, adamw)")
    multipliers = optim.parse_lr_multipliers(o.get("lr_multipliers", ""))
    if multipliers:
        tx = optax.chain(tx, optim.scale_by_module(multipliers))
    return Setup(
        config=config,
        method=method,
        modules=method.build_networks(),
        classifier=nn.Dense(config.num_classes, name="classifier"),
        optimizer=tx,
        learning_rate=lr,
        total_steps=total,
        num_examples=num_examples,
    )


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int = 2) -> dict[str, jax.Array]:
    s = config.data.image_size
    return {"view1": jnp.zeros((batch_size, s, s, 3), jnp.float32)}


def init_rng(seed: int) -> jax.Array:
    """The key that initialises the networks. The 'rbg' generator compiles a ResNet's init about
    10x faster than threefry on XLA:CPU (45 s -> 5 s for a small ResNet-18) and is deterministic."""
    return jax.random.key(seed, impl="rbg")


def init_state(setup: Setup, rng: jax.Array) -> TrainState:
    """Initialises every network (EMA networks from their own rng unless `ema.init == 'copy'`)."""
    batch = dummy_batch(setup.config)
    names = list(setup.modules)
    rngs = dict(zip(names, jax.random.split(rng, len(names) + 1)[1:]))
    variables = {}
    for name in names:
        args, kwargs = setup.method.init_args(name, batch)
        variables[name] = setup.modules[name].init(rngs[name], *args, train=True, **kwargs)
    if setup.config.ema.get("init", "independent") == "copy":
        for ema, source in setup.method.ema_networks.items():
            variables[ema] = _pick_like(variables[source], variables[ema])
    params = {n: variables[n]["params"] for n in setup.method.trainable_networks}
    emb_dim = _embedding_dim(setup, variables)
    params["classifier"] = setup.classifier.init(
        jax.random.fold_in(rng, 1), jnp.zeros((1, emb_dim))
    )["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params={n: variables[n]["params"] for n in setup.method.ema_networks},
        batch_stats={n: variables[n].get("batch_stats", {}) for n in names},
        opt_state=setup.optimizer.init(params),
    )


def _embedding_dim(setup: Setup, variables) -> int:
    source = setup.method.trainable_networks[0]
    args, kwargs = setup.method.init_args(source, dummy_batch(setup.config))
    out = jax.eval_shape(
        lambda v: setup.modules[source].apply(v, *args, train=False, **kwargs, mutable=False),
        variables[source],
    )
    return int(out["embedding"].shape[-1])


def _pick_like(source: PyTree, like: PyTree) -> PyTree:
    """The sub-tree of `source` with the structure of `like` (a target has no predictor)."""
    if isinstance(like, Mapping):
        return {k: _pick_like(source[k], v) for k, v in like.items()}
    return source


def augment_views(setup: Setup, batch: Mapping[str, jax.Array], rng: jax.Array) -> dict:
    """Photometric augmentation and normalisation of the method's views, on device."""
    out = dict(batch)
    for i, (key, preset_field) in enumerate(sorted(setup.method.augmented_views.items())):
        preset = setup.config.augment[preset_field]
        images = augment.augment_batch(jax.random.fold_in(rng, i), batch[key], preset)
        out[key] = augment.normalize(images)
    return out


def train_step(
    setup: Setup, state: TrainState, batch: Mapping[str, jax.Array]
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a global batch: augment, loss, LARS, EMA, metrics."""
    config, method = setup.config, setup.method
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    rng_aug, rng_loss = jax.random.split(rng)
    batch = augment_views(setup, batch, rng_aug)

    def loss_fn(params):
        nets = Networks(
            setup.modules,
            {**params, **jax.lax.stop_gradient(state.ema_params)},
            state.batch_stats,
        )
        loss, aux = method.loss(nets, batch, rng_loss, state.step)
        # The online linear monitor (BYOL/DetCon): trained on stop-gradient features, so it
        # measures the representation without shaping it.
        logits = setup.classifier.apply(
            {"params": params["classifier"]}, jax.lax.stop_gradient(aux["embedding"])
        )
        labels = batch["label"]
        monitor_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss + monitor_loss, (nets.new_batch_stats, aux, loss, monitor_loss, top1)

    grads, (batch_stats, aux, loss, monitor_loss, top1) = jax.grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    ema_params, taus = {}, {}
    for ema, source in method.ema_networks.items():
        tau = method.tau(ema, state.step, setup.total_steps)
        ema_params[ema] = optim.ema_update(
            state.ema_params[ema], _pick_like(params[source], state.ema_params[ema]), tau
        )
        taus[f"tau_{ema}"] = tau

    grad_norm = metrics.global_norm(grads)
    param_norm = metrics.global_norm(params)
    step_metrics = {
        "loss": loss,
        "monitor_loss": monitor_loss,
        "monitor_top1": top1,
        "learning_rate": setup.learning_rate(state.step),
        "grad_norm": grad_norm,
        "param_norm": param_norm,
        "update_norm": metrics.global_norm(updates),
        # The new parameters too: an update can overflow where the loss and gradients did not.
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm),
        **taus,
        **metrics.collapse_metrics(aux["projection"]),
        **aux.get("metrics", {}),
    }
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        ema_params=ema_params,
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, step_metrics


@flax.struct.dataclass
class Health:
    """The finiteness of every step since the run (or its resumption) started, kept on device so
    that the host reads it only when it must (a logging step, before a checkpoint).

    Attributes:
      finite: bool scalar, True while every step's loss, gradients and parameters were finite.
      first_nonfinite_step: int32 scalar, the first step that was not (-1 while `finite`).
    """

    finite: jax.Array
    first_nonfinite_step: jax.Array


def healthy(sharding: NamedSharding) -> Health:
    """A `Health` of no steps yet, placed like the step's outputs (so the first call compiles the
    same program as the later ones)."""
    return jax.device_put(Health(jnp.array(True), jnp.array(-1, jnp.int32)), sharding)


def train_step_with_health(
    setup: Setup, state: TrainState, batch: Mapping[str, jax.Array], health: Health
) -> tuple[TrainState, dict[str, jax.Array], Health]:
    """`train_step`, and `health` updated with its finite flag (the loop's jitted function)."""
    step = state.step + 1
    state, step_metrics = train_step(setup, state, batch)
    ok = step_metrics["finite"]
    first = jnp.where(health.finite & ~ok, step, health.first_nonfinite_step)
    return state, step_metrics, Health(health.finite & ok, first.astype(jnp.int32))


# Jitted steps of this process by what determines their program, newest last: a run resumed in
# the same process (the paper tables, a notebook) reuses the compiled step instead of compiling
# it again. The step function and the method class are part of the key, so a patched one (tests)
# never reuses another's program.
_STEP_FNS: collections.OrderedDict = collections.OrderedDict()
_STEP_FNS_KEPT = 2


def make_step_fn(setup: Setup, mesh: Mesh) -> Callable:
    """The jitted `train_step_with_health` over `mesh`: state donated, outputs replicated."""
    program = setup.config.to_dict()
    program.pop("loop", None)  # how the loop feeds the step, not what the step computes
    key = (
        json.dumps(program, sort_keys=True, default=repr),
        setup.num_examples,
        setup.total_steps,
        mesh,
        type(setup.method),
        train_step,
    )
    if key not in _STEP_FNS:
        replicated = NamedSharding(mesh, P())
        _STEP_FNS[key] = jax.jit(
            functools.partial(train_step_with_health, setup),
            donate_argnums=0,
            out_shardings=(replicated, replicated, replicated),
        )
        while len(_STEP_FNS) > _STEP_FNS_KEPT:
            _STEP_FNS.popitem(last=False)
    _STEP_FNS.move_to_end(key)
    return _STEP_FNS[key]


# ---------------------------------------------------------------------------------------------
# The run.


def create_mesh() -> Mesh:
    """All devices of all processes on one `data` axis (pure data parallelism)."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    d = config.get("distributed")
    if not d or not d.get("initialize"):
        return
    if d.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    kwargs = {}
    if d.get("coordinator_address"):
        kwargs = dict(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
        )
    jax.distributed.initialize(**kwargs)


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """This process's slice of the batch -> global arrays sharded on `data`."""
    out = {}
    for k, v in batch.items():
        if k.startswith("_"):
            continue
        v = np.asarray(v)
        if v.dtype == np.int64:
            v = v.astype(np.int32)
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


@dataclasses.dataclass(frozen=True)
class StagedBatch:
    """One step's batch: as the host read it, and as global arrays on the devices.

    Attributes:
      host: this process's numpy batch (pictures are drawn from it).
      batch: the global arrays of `to_global`.
      skipped_records: bad records the pipeline had dropped once this batch was read.
      positions: the next stream position of each data shard this process reads, once this
        batch was read (what a checkpoint of its step saves; empty for a stream without).
    """

    host: Mapping[str, np.ndarray]
    batch: dict[str, jax.Array]
    skipped_records: int
    positions: tuple[int, ...] = ()


def staged_batches(
    data: Iterator[Mapping[str, np.ndarray]],
    sharding: NamedSharding,
    *,
    count: int,
    prefetch: int,
) -> Iterator[StagedBatch]:
    """The next `count` batches of `data` as global arrays, up to `prefetch` of them on the
    devices before the step that reads the first is dispatched.

    The batches come in the order `data` yields them (the stream is unchanged), and no more than
    `count` are read. When the loop asks for batch N + 1, step N has been dispatched and runs:
    reading, converting and transferring batch N + prefetch then overlap it. `prefetch` 0 or 1
    transfers each batch right before its step.
    """
    staged: collections.deque[StagedBatch] = collections.deque()
    read = 0
    for _ in range(count):
        while read < count and (not staged or len(staged) < prefetch):
            host = next(data)
            staged.append(
                StagedBatch(
                    host,
                    to_global(host, sharding),
                    getattr(data, "num_skipped", 0),
                    tuple(getattr(data, "positions", ())),
                )
            )
            read += 1
        yield staged.popleft()


class _Preemption:
    """Decides after which step the run checkpoints and exits on SIGTERM (preemption).

    One process: a SIGTERM handler remembers the signal and the loop stops after its current
    step. Several processes (`jax.distributed`): the signal reaches hosts at different steps, and
    a host that saved or exited alone would leave the others blocked in a collective. JAX's
    preemption sync point decides instead: the notice of any host goes through the coordination
    service to all, which agree on one step (the largest any of them has reached, plus one), and
    every process saves that step and exits. JAX's own SIGTERM notifier (installed by
    `jax.distributed.initialize`) receives the signal then, so no Python handler replaces it.
    """

    def __init__(self):
        from jax._src import distributed

        self.collective = distributed.global_state.client is not None
        self.requested = False
        self._previous = None
        if not self.collective:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to checkpoint `step` and exit; called once per step, on every process."""
        if self.collective:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def make_data_iterator(
    config: ml_collections.ConfigDict,
    start_step: int,
    start_positions: list[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches of the training stream from global step `start_step`, or, given
    `start_positions` (one per data shard this process reads, see `stream_positions`), from
    those exact positions: the same batches unless bad records were skipped before them."""
    from common.data import pipeline  # tf.data is only imported by runs that read data

    makers = {
        "images": pipeline.make_pretrain_iterator,
        "video_pairs": pipeline.make_video_pair_iterator,
    }
    kind = config.data.get("kind", "images")
    if kind not in makers:
        raise ValueError(f"config.data.kind: unknown kind {kind!r} (images, video_pairs)")
    if start_positions is None:
        return makers[kind](
            config.data,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    from common.data import iterators, stream

    num_shards, shards = stream.data_shards(
        config.data.get("num_shards", 0), jax.process_index(), jax.process_count()
    )
    if len(start_positions) != len(shards):
        raise ValueError(f"{len(start_positions)} stream positions for the data shards {shards}")
    # One reader per shard, each from its own position: the readers the pipeline makes for this
    # process's shards (a shard is reader `shard` of `num_shards`), concatenated in shard order.
    readers = [
        makers[kind](
            config.data,
            global_batch_size=config.batch_size,
            seed=config.seed,
            process_index=shard,
            process_count=num_shards,
            start_position=position,
        )
        for shard, position in zip(shards, start_positions)
    ]
    return readers[0] if len(readers) == 1 else iterators.ConcatIterator(readers)


def stream_positions(positions: tuple[int, ...], num_shards: int) -> dict[str, Any]:
    """The `data_stream` a checkpoint saves: the next position of every data shard, in shard
    order (gathered from every process: each reads a contiguous block of shards)."""
    local = np.asarray(positions, np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # As two int32 halves: without jax_enable_x64 an int64 would be cut to 32 bits.
        halves = np.stack([local >> 31, local & (2**31 - 1)], -1).astype(np.int32)
        gathered = np.asarray(multihost_utils.process_allgather(halves)).reshape(-1, 2)
        local = (gathered[:, 0].astype(np.int64) << 31) + gathered[:, 1]
    if local.size != num_shards:
        raise ValueError(f"{local.size} stream positions for {num_shards} data shards")
    return {"num_shards": int(num_shards), "positions": [int(p) for p in local]}


def resume_positions(
    config: ml_collections.ConfigDict, saved: Mapping[str, Any] | None, step: int
) -> list[int] | None:
    """This process's shards' start positions from a checkpoint's `data_stream`, or None to
    resume from the step alone (`step * batch` per shard).

    The rule: a checkpoint that holds the positions of as many shards as the run reads resumes
    each shard exactly where it stood, whatever the number of processes; one without (written
    before positions were saved) or of another number of shards resumes from the step, which
    is the same stream unless bad records were skipped, and says so where they may have been.
    """
    from common.data import stream

    num_shards, shards = stream.data_shards(
        config.data.get("num_shards", 0), jax.process_index(), jax.process_count()
    )
    if saved is not None and int(saved["num_shards"]) == num_shards:
        return [int(saved["positions"][s]) for s in shards]
    if config.data.get("skip_bad_records") and step > 0:
        why = (
            "holds no stream position"
            if saved is None
            else f"holds the positions of {saved['num_shards']} data shards, not {num_shards}"
        )
        warnings.warn(
            f"the checkpoint of step {step} {why}: the stream resumes from the step, shifted by "
            "the bad records skipped before it (set data.num_shards to the saved number for an "
            "exact resume)",
            stacklevel=2,
        )
    return None


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds a checkpoint); returns the final metrics."""
    console.quiet()
    maybe_initialize_distributed(config)
    from common.data import loading, stream  # tf.data / TFDS only in runs that read data

    num_examples = loading.ensure_dataset(config.data)
    setup = build(config, num_examples)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    mesh = create_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    init = jax.jit(functools.partial(init_state, setup), out_shardings=replicated)
    state = init(init_rng(config.seed))
    signature = checkpoint.model_signature(config, state)

    ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep)
    restored = ckpt.restore_latest(state, signature)  # the newest intact checkpoint
    start_positions = None
    if restored is not None:
        latest, state = restored
        print(f"resumed from {ckpt.directory} at step {latest}", flush=True)
        start_positions = resume_positions(config, ckpt.restore_stream(latest), latest)
    start_step = int(state.step)

    step_fn = make_step_fn(setup, mesh)
    health = healthy(replicated)
    logger = metrics.MetricLogger(
        workdir, total_steps=setup.total_steps, global_batch_size=config.batch_size
    )
    loop = config.get("loop") or {}
    sync_every_step = bool(loop.get("sync_every_step", False))
    batches = staged_batches(
        make_data_iterator(config, start_step, start_positions),
        batch_sharding,
        count=setup.total_steps - start_step,
        prefetch=int(loop.get("prefetch", 2)),
    )
    preemption = _Preemption()
    num_shards = stream.data_shards(
        config.data.get("num_shards", 0), jax.process_index(), jax.process_count()
    )[0]
    pictures_on = bool(config.get("pictures_every_steps", 0))

    def ensure_finite(step: int, health: Health) -> None:
        """Reads `health` (waits for `step`); raises if any step up to `step` was not finite."""
        h = jax.device_get(health)
        if not h.finite:
            raise metrics.NonFiniteError(
                f"non-finite loss, gradients or parameters at step {int(h.first_nonfinite_step)}"
                f" (found when the host read step {step}); last good checkpoint: "
                f"step {ckpt.latest_step()} in {ckpt.directory}"
            )

    def log(step: int, step_metrics, health: Health, skipped_records: int) -> None:
        ensure_finite(step, health)
        # Bad records dropped by the pipeline (data.skip_bad_records) are counted here.
        logger.log(step, {**metrics.to_host(step_metrics), "skipped_records": skipped_records})

    logger.start(start_step)
    step_metrics: dict[str, Any] = {}
    unread = None  # a logging step's arguments of `log`, read once the next step is dispatched
    try:
        for step in range(start_step + 1, setup.total_steps + 1):
            staged = next(batches)
            state, step_metrics, health = step_fn(state, staged.batch, health)
            if unread is not None:  # the previous step: its values are ready or nearly so
                log(*unread)
                unread = None
            last = step == setup.total_steps
            stop = preemption.reached(step)  # read once: a signal may arrive at any line
            if step % config.log_every_steps == 0 or last:
                unread = (step, step_metrics, health, staged.skipped_records)
            evaluate = not last and _every(config.get("eval_every_steps", 0), step)
            pictures = _every(config.get("pictures_every_steps", 0), step) or (last and pictures_on)
            save = step % config.checkpoint.every_steps == 0 or last or stop
            if evaluate or pictures or save or sync_every_step:
                # These read the state, so the host waits for this step anyway; and only a state
                # known to be finite may be evaluated or saved.
                if unread is not None:
                    log(*unread)
                    unread = None
                else:
                    ensure_finite(step, health)
            if evaluate:
                run_evaluators_logged(setup, state, logger, workdir)
            if pictures:
                save_pictures(setup, state, staged.host, workdir, step)
            if save:
                position = (
                    stream_positions(staged.positions, num_shards) if staged.positions else None
                )
                ckpt.save(step, state, signature, position)
            if stop:
                ckpt.wait()
                print(f"SIGTERM: checkpointed step {step} in {ckpt.directory}; exiting", flush=True)
                sys.exit(0)
    finally:
        # Free the input pipeline now, not at interpreter exit: there, the tf.data iterator's
        # destructor waits out its autotuning thread's current sleep (up to about a minute, TF
        # 2.21), so a preempted or failed run would linger idle after its last line.
        batches.close()
        preemption.restore()
        ckpt.wait()
        logger.flush()

    results = {k: float(v) for k, v in metrics.to_host(step_metrics).items()}
    results.update(run_final_evaluation(setup, state, workdir, logger))
    return results


def _every(period: int, step: int) -> bool:
    return bool(period) and step % period == 0


def run_evaluators_logged(setup: Setup, state: TrainState, logger, workdir: str) -> dict:
    """Runs the config's evaluators on the current state and logs them under `eval/`."""
    from common.eval import run_evaluators

    results = run_evaluators(setup, state, mesh=create_mesh(), workdir=workdir)
    if results:
        logger.log(int(state.step), results, prefix="eval")
    return results


def save_pictures(setup: Setup, state: TrainState, host_batch, workdir: str, step: int) -> None:
    """`<workdir>/pictures/step_<step>.png` from the method's `save_pictures` (process 0)."""
    if jax.process_index() != 0:
        return
    nets = Networks(
        setup.modules, {**state.params, **state.ema_params}, state.batch_stats, train=False
    )
    os.makedirs(os.path.join(workdir, "pictures"), exist_ok=True)
    path = os.path.join(workdir, "pictures", f"step_{step:07d}.png")
    rng = jax.random.fold_in(jax.random.PRNGKey(setup.config.seed + 1), step)
    if setup.method.save_pictures(nets, host_batch, rng, path):
        print(f"pictures: {path}", flush=True)


def run_final_evaluation(setup: Setup, state: TrainState, workdir: str, logger) -> dict:
    """Evaluates the trained representation; prints a table and writes `final_eval.json`."""
    results = run_evaluators_logged(setup, state, logger, workdir)
    if results:
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "final_eval.json"), "w") as f:
                json.dump(results, f, indent=2)
        width = max(len(k) for k in results)
        print("evaluation at step", int(state.step))
        for k, v in results.items():
            print(f"  {k:<{width}}  {v:.4f}")
        from common.eval import random_init

        random_init.compare(setup, state, results, workdir)
    return results


def cli(argv):
    del argv
    from absl import flags

    main(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/<name>.py:<variant>")
    flags.DEFINE_string("workdir", None, "checkpoints, metrics and pictures go here")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(cli)
