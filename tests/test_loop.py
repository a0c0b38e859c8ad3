"""The training loop on the host: it runs ahead of the devices, stops on a NaN before saving it,
and compiles its step once.

In-process runs of the tiny BYOL config on one device (`common.train.main`); the CLI runs
(SIGKILL/SIGTERM resume, equality with sharded and multi-process runs) are in test_train.py,
test_resume_kill.py and test_multiprocess.py.
"""

from __future__ import annotations

import os
import signal
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh

from common import metrics, train
from common.method import get_method
from tests import helpers


@pytest.fixture
def one_device(monkeypatch):
    """One device: the 8 simulated devices would only slow the 2 CPU cores down here."""
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    monkeypatch.setattr(train, "create_mesh", lambda: mesh)


class _Recorder:
    """Wraps the loop's data iterator and its jitted step: each time the loop asks for a host
    batch, records (number of steps dispatched so far, whether the last one's outputs are ready).
    """

    def __init__(self, monkeypatch, on_request=None):
        """Patches `train` through `monkeypatch` (a context: one recorder at a time)."""
        self.dispatched: list[jax.Array] = []
        self.requests: list[tuple[int, bool]] = []
        self.on_request = on_request
        self.pipelines: list[weakref.ref] = []  # the data iterators the loop was given
        make_step_fn, make_data_iterator = train.make_step_fn, train.make_data_iterator

        def step_fn(setup, mesh):
            fn = make_step_fn(setup, mesh)

            def step(state, batch, health):
                out = fn(state, batch, health)
                self.dispatched.append(out[1]["loss"])
                return out

            return step

        def data(config, start_step, start_positions=None):
            pipeline = make_data_iterator(config, start_step, start_positions)
            self.pipelines.append(weakref.ref(pipeline))
            return _RecordingIterator(pipeline, self)

        monkeypatch.setattr(train, "make_step_fn", step_fn)
        monkeypatch.setattr(train, "make_data_iterator", data)


class _RecordingIterator:
    def __init__(self, data, recorder: _Recorder):
        self.data, self.recorder = data, recorder

    def __iter__(self):
        return self

    def __next__(self):
        r = self.recorder
        if r.dispatched:
            r.requests.append((len(r.dispatched), r.dispatched[-1].is_ready()))
        if r.on_request is not None:
            r.on_request(len(r.dispatched))
        return next(self.data)

    @property
    def num_skipped(self):
        return self.data.num_skipped

    @property
    def positions(self):
        return self.data.positions


# Heavy enough that a step takes far longer than the host's bookkeeping between two dispatches.
RUN_AHEAD = {"batch_size": 32, "total_steps": 8, "log_every_steps": 3,
             "checkpoint.every_steps": 1000}  # fmt: skip


def test_host_runs_ahead_of_the_device(data_dir, tmp_path, monkeypatch, one_device):
    """Between logging steps the host asks for the next batch while the last dispatched step is
    still running; with `loop.sync_every_step` (the loop before) it never does."""
    with monkeypatch.context() as patch:
        overlapped = _Recorder(patch)
        train.main(helpers.tiny_config("byol", data_dir, **RUN_AHEAD), str(tmp_path / "overlap"))
    with monkeypatch.context() as patch:
        blocking = _Recorder(patch)
        config = helpers.tiny_config(
            "byol", data_dir, **RUN_AHEAD, **{"loop.sync_every_step": True, "loop.prefetch": 0}
        )
        train.main(config, str(tmp_path / "blocking"))

    # Batch n + 2 is asked for once step n is dispatched (two batches staged ahead); logging steps
    # are read one step late, and only the last step (a checkpoint) at once.
    ahead = [ready for _, ready in overlapped.requests]
    assert [n for n, _ in overlapped.requests] == list(range(1, RUN_AHEAD["total_steps"] - 1))
    # A busy machine can deschedule the host thread for a whole step now and then; a loop that
    # waits for every step would show `ready` every time.
    assert sum(not r for r in ahead) >= 0.75 * len(ahead), overlapped.requests
    assert blocking.requests and all(r for _, r in blocking.requests), blocking.requests


def _saved_states(workdir: str) -> dict[int, dict[str, np.ndarray]]:
    """{step: {path: array}} of every checkpoint in `workdir`, the whole train state."""
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = {}
    for step in manager.all_steps():
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step)["state"],
        )
        state = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )["state"]
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        out[step] = {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}
    manager.close()
    return out


def test_nan_stops_the_run_before_it_reaches_a_checkpoint(
    data_dir, tmp_path, monkeypatch, one_device
):
    """The loss turns NaN at step 5, between two logging steps (3, 6) and just after a
    checkpoint (4): the run stops with NonFiniteError naming step 5 when the host next reads a
    step (6, which would have been logged and saved), and nothing non-finite is saved."""
    nan_at = 5
    byol = get_method("byol")

    class NanAtStep(byol):
        def loss(self, nets, batch, rng, step):
            loss, aux = byol.loss(self, nets, batch, rng, step)
            # A factor, not a replacement, so the gradients and the parameters turn NaN too.
            return loss * jnp.where(step + 1 == nan_at, jnp.nan, 1.0), aux

    monkeypatch.setattr(train, "get_method", lambda name: NanAtStep)
    workdir = str(tmp_path)
    config = helpers.tiny_config(
        "byol", data_dir, total_steps=8, log_every_steps=3, **{"checkpoint.every_steps": 2}
    )
    with pytest.raises(metrics.NonFiniteError) as error:
        train.main(config, workdir)
    message = str(error.value)
    assert "at step 5 (found when the host read step 6)" in message, message
    assert f"last good checkpoint: step 4 in {os.path.join(workdir, 'checkpoints')}" in message

    saved = _saved_states(workdir)
    assert sorted(saved) == [2, 4]
    for step, arrays in saved.items():
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
        assert not bad, (step, bad)
    logged = [r["step"] for r in metrics.read_jsonl(workdir) if "train/loss" in r]
    assert logged == [3]


def test_step_compiles_once_over_evaluation_and_an_in_process_resume(
    data_dir, tmp_path, monkeypatch, one_device
):
    """XLA compilations of the step, counted by JAX's compile events (each executable built,
    from the persistent cache or not), over a run that evaluates every 2 steps, is preempted
    (SIGTERM) after step 4 and resumed by a second `main` in the same process: one."""
    compiled: list[str] = []

    def listener(event, duration, **kwargs):
        del duration
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name", ""))

    def preempt(dispatched):  # the host asks for batch 5 once step 3 is dispatched
        if dispatched == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path)
    config = helpers.tiny_config("byol", data_dir, total_steps=6, eval_every_steps=2)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with monkeypatch.context() as patch:
            recorder = _Recorder(patch, on_request=preempt)
            with pytest.raises(SystemExit) as exit_:
                train.main(config, workdir)
        assert exit_.value.code == 0
        # The preempted run freed its input pipeline before exiting, though the exception's
        # traceback still holds `main`'s frame: left to interpreter exit, the tf.data
        # iterator's destructor waits out its autotuning thread's sleep (tens of seconds).
        assert [ref() for ref in recorder.pipelines] == [None]
        assert sorted(_saved_states(workdir)) == [2, 4]
        train.main(config, workdir)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)

    rows = metrics.read_jsonl(workdir)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval/monitor/top1" in r] == [2, 4, 6]
    steps = [name for name in compiled if "train_step_with_health" in name]
    assert len(steps) == 1, compiled


def test_resume_on_fewer_devices_continues_the_same_run(data_dir, tmp_path, monkeypatch):
    """A run checkpointed on 8 devices resumes on 4: the state restores onto the new mesh and
    the run ends as the uninterrupted 8-device run does, up to the order of the cross-device
    sums (the data stream, a function of seed and step, is the same)."""
    # The final evaluation (compiled for each mesh) is not what is tested here.
    config = helpers.tiny_config(
        "byol", data_dir, total_steps=6, **{"evals.monitor.enabled": False}
    )
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    meshes = {n: Mesh(np.asarray(jax.devices()[:n]), ("data",)) for n in (8, 4)}
    with monkeypatch.context() as patch:
        patch.setattr(train, "create_mesh", lambda: meshes[8])
        train.main(config, reference)

        def preempt(dispatched):
            if dispatched == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        _Recorder(patch, on_request=preempt)
        with pytest.raises(SystemExit):
            train.main(config, resumed)
    assert sorted(_saved_states(resumed)) == [2, 4]
    with monkeypatch.context() as patch:
        patch.setattr(train, "create_mesh", lambda: meshes[4])
        train.main(config, resumed)

    ref, ref_step = helpers.load_final_params(reference)
    got, got_step = helpers.load_final_params(resumed)
    assert ref_step == got_step == 6
    assert helpers.relative_difference(got, ref) <= 1e-5
