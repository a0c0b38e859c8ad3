"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2 devices each): they train
as one process with 4 devices does, continue a one-process run from its checkpoint, and, when
SIGTERM reaches one of them only, both checkpoint the same step, exit 0, and the rerun ends
bitwise equal to the uninterrupted two-process run.

One uninterrupted two-process run (`two_process_run`) is the reference of every test here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

from common import checkpoint
from tests import helpers

# Checkpoints every 2 steps, all kept; the final evaluation is not what is tested here. LARS
# base 0.4, the rate the 1e-5 rounding tolerance was measured at: the `local` configs' 6.4 takes
# 16x larger steps, which amplify the cross-process summation order's rounding.
# BatchNorm's variance in two passes: with Haiku's one-pass variance (the default), one and two
# processes on `synthetic_scenes/tiny` give the same loss at step 2 but gradient norms 9.2857 vs
# 9.2818 and parameters 2e-5 apart after 2 steps (1e-4 after 4): E[x^2] - E[x]^2 cancels in
# channels whose mean is large against their spread and amplifies the different summation order
# of the cross-process sums (one process on 1, 2 or 4 devices agrees to 8e-8). In two passes the
# runs agree to 7e-8 after 2 steps (measured 2026-11-30; docs/RELIABILITY.md).
STEPS = {"total_steps": 12, "checkpoint.every_steps": 2, "checkpoint.keep": 6,
         "evals.monitor.enabled": False, "optimizer.base_lr": 0.4,
         "model.backbone_kwargs.bn_two_pass_variance": True}  # fmt: skip


def _start_two(data_dir, workdir):
    return helpers.start_two_processes("byol", data_dir, workdir, **STEPS)


def _finish(procs, timeout=600) -> list[str]:
    """Waits for both processes; their outputs (each must exit 0)."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
    """The workdir of an uninterrupted two-process run of `STEPS`."""
    workdir = str(tmp_path_factory.mktemp("two_processes"))
    _finish(_start_two(data_dir, workdir))
    return workdir


def _stream(workdir, step):
    ckpt = checkpoint.Checkpointer(workdir)
    saved = ckpt.restore_stream(step)
    ckpt.close()
    return saved


def test_two_processes_match_one_process_and_resume_its_checkpoint(
    data_dir, two_process_run, tmp_path
):
    # One process reading both data shards sees the same global batches as two processes
    # reading one shard each (data.num_shards; tested in test_pipeline).
    single = str(tmp_path / "single")
    helpers.run_cli(
        helpers.cli_args("byol", data_dir, single, **STEPS, **{"data.num_shards": 2}),
        num_devices=4,
    )
    # Compared after 4 steps (checkpoints of both runs): gloo's cross-process sums add in another
    # order than one process does, BatchNorm biases differ by ~1e-4 of their own size after 4
    # steps, ~1e-7 of the parameters' scale (the difference then grows with the steps: 2e-5
    # after 8).
    ref = helpers.load_final_params(single, step=4)[0]
    got = helpers.load_final_params(two_process_run, step=4)[0]
    assert helpers.relative_difference(got, ref) <= 1e-5

    # The one-process run restarted as two processes from its step 10 (the job moved to two
    # hosts): each process restores the state onto the new mesh and resumes its data shard
    # where the one process left it, and ends as the one-process run does, up to the order of
    # the sums of its last 2 steps.
    end = STEPS["total_steps"]
    resumed = str(tmp_path / "resumed")
    shutil.copytree(single, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(end)))
    for out in _finish(_start_two(data_dir, resumed)):
        assert "at step 10" in out, out[-2000:]
    ref, ref_step = helpers.load_final_params(single)
    got, got_step = helpers.load_final_params(resumed)
    assert ref_step == got_step == end
    assert helpers.relative_difference(got, ref) <= 1e-5
    # The data stream is exact: every shard stands where the one-process run's did.
    assert _stream(resumed, end) == _stream(single, end) == _stream(two_process_run, end)
    assert _stream(single, end) == {"num_shards": 2, "positions": [8 * end, 8 * end]}


def _wait_for_logged_step(workdir: str, step: int, proc, timeout: float = 900) -> bool:
    """Waits until process 0 has logged `step` (False if it ended first)."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for _ in f) >= step:
                    return True
        time.sleep(0.05)
    return False


def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(
    data_dir, two_process_run, tmp_path
):
    workdir = str(tmp_path / "preempted")
    procs = _start_two(data_dir, workdir)
    # Process 0 writes metrics.jsonl; the signal goes to process 1 only.
    if not _wait_for_logged_step(workdir, 2, procs[0]):
        for p in procs:
            p.kill()
        raise AssertionError(f"no step 2 logged: {procs[0].communicate()[1][-3000:]}")
    procs[1].send_signal(signal.SIGTERM)
    saved = []
    for out in _finish(procs, timeout=180):
        found = re.findall(r"SIGTERM: checkpointed step (\d+)", out)
        assert found, out[-2000:]
        saved.append(int(found[0]))
    assert saved[0] == saved[1] < STEPS["total_steps"], saved
    _, step = helpers.load_final_params(workdir)
    assert step == saved[0]

    for out in _finish(_start_two(data_dir, workdir)):
        assert f"at step {saved[0]}" in out, out[-2000:]
    ref, ref_step = helpers.load_final_params(two_process_run)
    got, got_step = helpers.load_final_params(workdir)
    assert ref_step == got_step == STEPS["total_steps"]
    # The same two processes add in the same order: bitwise equal to the uninterrupted run.
    assert ref.keys() == got.keys()
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
