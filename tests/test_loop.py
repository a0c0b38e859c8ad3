"""The training loop on the host: it runs ahead of the devices, stops on a NaN before saving it,
and compiles its step once.

In-process runs of the tiny BYOL config on one device (`common.train.main`); the CLI runs
(SIGKILL/SIGTERM resume, equality with sharded and multi-process runs) are in test_train.py and
test_multiprocess.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from common import train
from tests import helpers
from tests.test_train import data_dir  # noqa: F401  (session fixture)


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
        make_step_fn, make_data_iterator = train.make_step_fn, train.make_data_iterator

        def step_fn(setup, mesh):
            fn = make_step_fn(setup, mesh)

            def step(state, batch, health):
                out = fn(state, batch, health)
                self.dispatched.append(out[1]["loss"])
                return out

            return step

        def data(config, start_step):
            return _RecordingIterator(make_data_iterator(config, start_step), self)

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


# Heavy enough that a step takes far longer than the host's bookkeeping between two dispatches.
RUN_AHEAD = {"batch_size": 32, "total_steps": 8, "log_every_steps": 3,
             "checkpoint.every_steps": 1000}  # fmt: skip


def test_host_runs_ahead_of_the_device(data_dir, tmp_path, monkeypatch, one_device):  # noqa: F811
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
