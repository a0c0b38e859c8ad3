"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2 devices each) train
exactly as one process with 4 devices, and continue a one-process run from its checkpoint."""

from __future__ import annotations

import os
import shutil

from common import checkpoint
from tests import helpers

STEPS = {"total_steps": 4, "checkpoint.every_steps": 2, "evals.monitor.batch_size": 16}


def _run_two(data_dir, workdir):
    outs = []
    for p in helpers.start_two_processes("byol", data_dir, workdir, **STEPS):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _stream(workdir, step):
    ckpt = checkpoint.Checkpointer(workdir)
    saved = ckpt.restore_stream(step)
    ckpt.close()
    return saved


def test_two_processes_match_one_process_and_resume_its_checkpoint(data_dir, tmp_path):
    # One process reading both data shards sees the same global batches as two processes
    # reading one shard each (data.num_shards; tested in test_pipeline).
    single = str(tmp_path / "single")
    helpers.run_cli(
        helpers.cli_args("byol", data_dir, single, **STEPS, **{"data.num_shards": 2}),
        num_devices=4,
    )

    multi = str(tmp_path / "multi")
    _run_two(data_dir, multi)
    ref, ref_step = helpers.load_final_params(single)
    got, got_step = helpers.load_final_params(multi)
    assert ref_step == got_step == 4
    # Gloo's cross-process sums add in another order than one process does: BatchNorm biases
    # differ by ~1e-4 of their own size after 4 steps, ~1e-6 of the parameters' scale.
    assert helpers.relative_difference(got, ref) <= 1e-5

    # The one-process run restarted as two processes from its step 2 (the job moved to two
    # hosts): each process restores the state onto the new mesh and resumes its data shard
    # where the one process left it.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(single, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    for out in _run_two(data_dir, resumed):
        assert "at step 2" in out, out[-2000:]
    got, got_step = helpers.load_final_params(resumed)
    assert got_step == 4
    assert helpers.relative_difference(got, ref) <= 1e-5
    # The data stream is exact: every shard stands where the one-process run's did.
    assert _stream(resumed, 4) == _stream(single, 4) == {"num_shards": 2, "positions": [32, 32]}
