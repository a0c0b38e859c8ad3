"""Checkpoint faults: damaged checkpoints fall back, failed saves fail loudly, steps logged once.

The damage is done to the files Orbax wrote (truncated, bytes flipped inside a compressed chunk,
a file deleted or emptied), the save failure by a write that fails in Orbax's background thread
(the way Orbax's own tests inject it; a read-only directory does not stop root, which CI runs as).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from common import checkpoint, metrics
from tests import helpers


@struct.dataclass
class _State:
    params: dict
    step: jax.Array


def _state(step: int) -> _State:
    w = jnp.arange(1000, dtype=jnp.float32).reshape(10, 100) * (step + 1)
    return _State(params={"w": w, "b": jnp.full(7, step, jnp.bfloat16)}, step=jnp.asarray(step))


SIGNATURE = {
    "method": "test", "backbone": "none", "backbone_kwargs": {}, "num_params": 1007,
    "param_shapes_sha1": "-",
}  # fmt: skip


def _stream(step: int) -> dict:
    """A data stream position as the trainer saves it (two shards of 5 rows a step)."""
    return {"num_shards": 2, "positions": [5 * step, 5 * step + 1]}


def _workdir_with_steps(workdir: str, steps=(1, 2)) -> None:
    ckpt = checkpoint.Checkpointer(workdir)
    for step in steps:
        ckpt.save(step, _state(step), SIGNATURE, _stream(step))
    ckpt.wait()
    ckpt.close()


def _largest_data_file(step_dir: str) -> str:
    return max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _flip_byte(path: str) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


# (damage to the latest step directory, what the warning says was wrong)
DAMAGE = {
    "truncated chunk": (lambda d: _truncate(_largest_data_file(d)), "its state is unreadable"),
    # Orbax decodes this into wrong numbers without an error: only the fingerprint sees it.
    "flipped byte": (
        lambda d: _flip_byte(_largest_data_file(d)),
        r"1 arrays differ.*params\['w'\]",
    ),
    "deleted metadata": (lambda d: os.remove(f"{d}/state/_METADATA"), "its state is unreadable"),
    "truncated manifest": (
        lambda d: _truncate(f"{d}/state/manifest.ocdbt"),
        "its state is unreadable: ValueError: DATA_LOSS",
    ),
    "emptied signature": (
        lambda d: open(f"{d}/signature/metadata", "w").close(),
        "its signature is unreadable: JSONDecodeError",
    ),
    "emptied stream position": (
        lambda d: open(f"{d}/data_stream/metadata", "w").close(),
        "its data stream position is unreadable: JSONDecodeError",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(damage, tmp_path):
    workdir = str(tmp_path)
    _workdir_with_steps(workdir)
    apply, what = DAMAGE[damage]
    apply(f"{workdir}/checkpoints/2")
    ckpt = checkpoint.Checkpointer(workdir)
    with pytest.warns(UserWarning, match=f"checkpoint step 2 in {workdir}/checkpoints is damaged: "
                      f"{what}.*; falling back to step 1"):  # fmt: skip
        step, state = ckpt.restore_latest(_state(0), SIGNATURE)
    assert step == 1 and ckpt.restore_stream(1) == _stream(1)
    jax.tree.map(np.testing.assert_array_equal, state, _state(1))
    # The damaged step is set aside, so training on saves step 2 again.
    assert ckpt.latest_step() == 1 and len(os.listdir(f"{workdir}/checkpoints_damaged")) == 1
    ckpt.save(2, _state(2), SIGNATURE)
    ckpt.wait()
    step, state = ckpt.restore_latest(_state(0), SIGNATURE)
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, state, _state(2))
    ckpt.close()


def test_a_checkpoint_without_a_stream_position_restores(tmp_path):
    """Checkpoints written before stream positions were saved restore as before; the trainer
    then resumes the stream from the step (`train.resume_positions`)."""
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, _state(1), SIGNATURE)
    ckpt.wait()
    step, state = ckpt.restore_latest(_state(0), SIGNATURE)
    assert step == 1 and ckpt.restore_stream(1) is None
    jax.tree.map(np.testing.assert_array_equal, state, _state(1))
    ckpt.close()


def test_no_intact_checkpoint_is_an_error_naming_the_directory(tmp_path):
    workdir = str(tmp_path)
    _workdir_with_steps(workdir)
    for step in (1, 2):
        _flip_byte(_largest_data_file(f"{workdir}/checkpoints/{step}"))
    ckpt = checkpoint.Checkpointer(workdir)
    with pytest.raises(
        checkpoint.CheckpointCorruptError,
        match=f"no intact checkpoint in {workdir}/checkpoints: checkpoint step 2 .* step 1 ",
    ):
        ckpt.restore_latest(_state(0), SIGNATURE)
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["1", "2"]  # nothing moved
    ckpt.close()
    # An empty workdir is a fresh start, not an error.
    fresh = checkpoint.Checkpointer(str(tmp_path / "new"))
    assert fresh.restore_latest(_state(0), SIGNATURE) is None


def test_another_model_is_not_taken_for_damage(tmp_path):
    _workdir_with_steps(str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"step 2\) of a different model"):
        ckpt.restore_latest(_state(0), {**SIGNATURE, "method": "other"})
    ckpt.close()


@pytest.mark.parametrize("surfaces_at", ["next save", "wait"])
def test_failed_async_save_is_an_error_naming_workdir_and_step(surfaces_at, tmp_path, monkeypatch):
    from orbax.checkpoint._src.serialization import serialization

    workdir = str(tmp_path)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(1, _state(1), SIGNATURE)
    ckpt.wait()

    async def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "async_serialize_from_host", disk_full)
    ckpt.save(2, _state(2), SIGNATURE)  # returns: the write runs in the background
    match = (
        f"saving checkpoint step 2 of {workdir} to {workdir}/checkpoints failed: "
        r"OSError: \[Errno 28\] No space left on device; .*latest: step 1"
    )
    with pytest.raises(checkpoint.CheckpointSaveError, match=match):
        if surfaces_at == "next save":
            ckpt.save(3, _state(3), SIGNATURE)
        else:
            ckpt.wait()
    ckpt.close()
    monkeypatch.undo()
    # The previous checkpoint is intact and what a restart restores.
    ckpt = checkpoint.Checkpointer(workdir)
    assert ckpt.manager.all_steps() == [1]
    step, state = ckpt.restore_latest(_state(0), SIGNATURE)
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, state, _state(1))
    ckpt.close()


def test_fingerprint_sees_any_single_changed_element():
    state = _state(3)
    base = checkpoint.fingerprint(state)
    assert base == checkpoint.fingerprint(jax.tree.map(jnp.copy, state))
    w = np.asarray(state.params["w"])
    for index in [(0, 0), (9, 99), (4, 50)]:
        for bit in (0, 17, 31):  # low mantissa, high mantissa, sign
            changed = w.copy().view(np.uint32)
            changed[index] ^= np.uint32(1 << bit)
            params = {**state.params, "w": jnp.asarray(changed.view(np.float32))}
            got = checkpoint.fingerprint(state.replace(params=params))
            # Leaves: params b, params w, step; both sums of w change.
            assert got[0] == base[0] and got[2] == base[2]
            assert got[1][0] != base[1][0] and got[1][1] != base[1][1]
    # Two elements swapped: the plain sum agrees, the weighted one does not.
    swapped = w.copy()
    swapped[0, 0], swapped[0, 1] = w[0, 1], w[0, 0]
    got = checkpoint.fingerprint(state.replace(params={**state.params, "w": jnp.asarray(swapped)}))
    assert got[1][0] == base[1][0] and got[1][1] != base[1][1]


def _tensorboard_scalars(workdir: str, tag: str) -> dict[int, float]:
    """What TensorBoard's Python loader shows for `tag`: {step: value}, one value per step."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    acc = pea.EventAccumulator(workdir, size_guidance={pea.TENSORS: 0})
    acc.Reload()
    events = acc.Tensors(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"TensorBoard shows steps twice: {steps}"
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events}


def _log_run(workdir, start, steps, value, *, final_eval=False):
    """A MetricLogger as a (re)started run uses it: start at the restored step, log `steps`."""
    logger = metrics.MetricLogger(workdir, total_steps=8, global_batch_size=4)
    logger.start(start)
    for step in steps:
        logger.log(step, {"loss": value + step})
    if final_eval:
        logger.log(steps[-1] if steps else start, {"acc": value}, prefix="eval")
    logger.flush()
    logger.writer.close()


def test_metrics_after_a_resume_hold_each_step_once_in_jsonl_and_tensorboard(tmp_path):
    workdir = str(tmp_path)
    _log_run(workdir, 0, range(1, 8), 100.0)  # logged up to 7, died; last checkpoint: 4
    _log_run(workdir, 4, range(5, 9), 200.0, final_eval=True)  # resumed at 4, finished at 8
    _log_run(workdir, 8, [], 300.0, final_eval=True)  # the finished run started again
    rows = metrics.read_jsonl(workdir)
    train = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 9))
    assert train == {s: (100.0 if s <= 4 else 200.0) + s for s in range(1, 9)}
    assert [(r["step"], r["eval/acc"]) for r in rows if "eval/acc" in r] == [(8, 300.0)]
    assert _tensorboard_scalars(workdir, "train/loss") == train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from common.data import loading

    path = str(tmp_path_factory.mktemp("tfds"))
    loading.ensure_dataset(helpers.tiny_config("byol", path).data)
    return path


def test_training_resumes_from_the_newest_intact_checkpoint(data_dir, tmp_path):
    """A finished run whose last checkpoint is damaged: the rerun warns, restores step 4,
    recomputes 5..6 to the same parameters, and logs each step once."""
    workdir = str(tmp_path / "run")
    args = helpers.cli_args("byol", data_dir, workdir)  # 6 steps, checkpoints at 2, 4, 6
    helpers.run_cli(args)
    reference, _ = helpers.load_final_params(workdir)
    logged = metrics.read_jsonl(workdir)
    _flip_byte(_largest_data_file(f"{workdir}/checkpoints/6"))

    rerun = helpers.run_cli(args)
    assert "checkpoint step 6 in" in rerun.stderr and "falling back to step 4" in rerun.stderr
    assert f"resumed from {workdir}/checkpoints at step 4" in rerun.stdout
    got, step = helpers.load_final_params(workdir)
    assert step == 6 and got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in reference)
    rows = metrics.read_jsonl(workdir)
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    # The recomputed steps log what the first run logged (bar the timing).
    strip = lambda r: {k: v for k, v in r.items() if k != "train/images_per_s"}  # noqa: E731
    assert [strip(r) for r in train] == [strip(r) for r in logged if "train/loss" in r]
    tb = _tensorboard_scalars(workdir, "train/loss")
    assert tb == pytest.approx({r["step"]: r["train/loss"] for r in train}, rel=1e-6)
    shutil.rmtree(workdir)


def test_stream_resume_rule(tmp_path):
    """Saved positions of as many shards as the run reads resume each shard exactly; none (an
    old checkpoint), or another shard count, resume from the step, with a warning where
    skipped records may shift the stream."""
    from common import train

    config = helpers.tiny_config("byol", str(tmp_path), **{"data.num_shards": 2})
    assert train.resume_positions(config, _stream(4), 4) == [20, 21]
    skipping = helpers.tiny_config(
        "byol", str(tmp_path), **{"data.num_shards": 2, "data.skip_bad_records": True}
    )
    with pytest.warns(UserWarning, match="step 4 holds no stream position: the stream resumes"):
        assert train.resume_positions(skipping, None, 4) is None
    with pytest.warns(UserWarning, match="positions of 3 data shards, not 2"):
        assert train.resume_positions(skipping, {"num_shards": 3, "positions": [0] * 3}, 4) is None
    assert train.resume_positions(config, None, 4) is None  # nothing skipped: the same stream
