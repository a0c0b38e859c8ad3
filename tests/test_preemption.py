"""Preemption of a two-process run (jax.distributed, gloo): SIGTERM to one process only makes
both checkpoint the same step and exit 0, and the rerun resumes there and ends bitwise equal to
the uninterrupted two-process run."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np

from tests import helpers

STEPS = {"total_steps": 16, "checkpoint.every_steps": 1000, "evals.monitor.batch_size": 16}


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


def _start_two(data_dir, workdir):
    return helpers.start_two_processes("byol", data_dir, workdir, **STEPS)


def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(data_dir, tmp_path):
    reference = str(tmp_path / "reference")
    for p in _start_two(data_dir, reference):
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]

    workdir = str(tmp_path / "multi")
    procs = _start_two(data_dir, workdir)
    # Process 0 writes metrics.jsonl; the signal goes to process 1 only.
    if not _wait_for_logged_step(workdir, 2, procs[0]):
        for p in procs:
            p.kill()
        raise AssertionError(f"no step 2 logged: {procs[0].communicate()[1][-3000:]}")
    procs[1].send_signal(signal.SIGTERM)
    saved = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        found = re.findall(r"SIGTERM: checkpointed step (\d+)", out)
        assert found, out[-2000:]
        saved.append(int(found[0]))
    assert saved[0] == saved[1] < STEPS["total_steps"], saved
    _, step = helpers.load_final_params(workdir)
    assert step == saved[0]

    procs = _start_two(data_dir, workdir)
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert f"at step {saved[0]}" in out, out[-2000:]
    ref, ref_step = helpers.load_final_params(reference)
    got, got_step = helpers.load_final_params(workdir)
    assert ref_step == got_step == STEPS["total_steps"]
    # The same two processes add in the same order: bitwise equal to the uninterrupted run.
    assert ref.keys() == got.keys()
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
