"""SIGKILL at chosen points, for DetCon_B (whose state holds BYOL's) and Odin: the resumed run
recomputes the lost steps and ends bitwise equal, every array of the train state, to the
uninterrupted run.

A real external kill of the trainer's process (`python -m common.train`), at two points the test
watches for from outside:

1. right after step k is logged (its row appears in `metrics.jsonl`);
2. in the middle of an asynchronous Orbax save: Orbax writes a step into
   `<step>.orbax-checkpoint-tmp*` and commits it by a rename; the kill lands while that
   temporary directory exists (polled every millisecond; a save of the tiny state kept it for
   0.6-1.1 s, measured on a loaded 2-core machine: the device-to-host copy, the TensorStore
   writes and the metadata all happen inside it), and the test checks that the step was indeed
   left uncommitted.

One killed run chains both: killed at (1), resumed and killed at (2), resumed to the end. The
runs read a copy of the tiny dataset in which one training image in 16 is corrupt (truncated
PNG), with `data.skip_bad_records`: records are skipped both before and after each kill, so
the resumed run reads exactly the records of the uninterrupted one only by resuming every data
shard from the stream position saved with the checkpoint (a resume from the step alone is
shifted by the skipped records).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from common import checkpoint
from tests import helpers

# Checkpoints every 2 steps, all kept (the reference's show the records skipped up to each); the
# final evaluation is not what is tested here.
STEPS = {"total_steps": 8, "checkpoint.every_steps": 2, "checkpoint.keep": 10,
         "data.skip_bad_records": True, "evals.monitor.enabled": False}  # fmt: skip
KILL_AFTER_LOGGED = 5  # checkpoints 2 and 4 are started before; 2 is committed by then
CORRUPT_EVERY = 16  # one training image in 16: about one per batch of 16


@pytest.fixture(scope="module")
def bad_data_dir(data_dir, tmp_path_factory):
    """The session's tiny dataset with the encoded PNG of every 16th training record cut to a
    third (the TFRecord itself intact: the damage shows when the image is decoded)."""
    import tensorflow as tf

    out = str(tmp_path_factory.mktemp("bad_tfds"))
    shutil.copytree(data_dir, out, dirs_exist_ok=True)
    files = glob.glob(f"{out}/synthetic_scenes/tiny/*/synthetic_scenes-train.tfrecord-*")
    assert files
    index = 0
    for path in sorted(files):
        records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                if index % CORRUPT_EVERY == 3:
                    example = tf.train.Example.FromString(record)
                    image = example.features.feature["image"].bytes_list.value
                    image[0] = image[0][: len(image[0]) // 3]
                    record = example.SerializeToString()
                writer.write(record)
                index += 1
    return out


def _start(method, data_dir, workdir, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen(
            helpers.cli_args(method, data_dir, workdir, **STEPS),
            env=helpers.subprocess_env(), cwd=helpers.REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _kill_when(proc, seen, log_path, timeout=600):
    """SIGKILLs `proc` the moment `seen()` returns something true (polled every ms); returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = seen()
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    with open(log_path) as f:
        raise AssertionError(f"the run ended before the kill point:\n{f.read()[-3000:]}")


def _logged(workdir, step):
    """Whether `metrics.jsonl` holds the training row of `step` (a complete line)."""
    path = os.path.join(workdir, "metrics.jsonl")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return False
    return f'{{"step": {step}, "train/' in text.rsplit("\n", 1)[0]


def _saving(workdir, log_path):
    """The step of an uncommitted Orbax save (its temporary directory) of the run logging to
    `log_path`, once it has resumed (a save the previous run left is removed by then)."""
    with open(log_path) as f:
        resumed = re.findall(r"resumed from \S+ at step (\d+)", f.read())
    if not resumed:
        return None
    for name in os.listdir(os.path.join(workdir, "checkpoints")):
        m = re.match(r"(\d+)\.orbax-checkpoint-tmp", name)
        if m and int(m.group(1)) > int(resumed[0]):
            return int(m.group(1))
    return None


def _resumed_at(output):
    """The step a run resumed from, from its output (text, or the path of its log)."""
    if os.path.exists(output):
        with open(output) as f:
            output = f.read()
    found = re.findall(r"resumed from \S+ at step (\d+)", output)
    assert len(found) == 1, found
    return int(found[0])


def _skipped(workdir, step):
    """Bad records skipped up to `step`: the saved stream position beyond `step` full batches."""
    ckpt = checkpoint.Checkpointer(workdir)
    stream = ckpt.restore_stream(step)
    ckpt.close()
    return stream["positions"][0] - step * 16


# DetCon_B's train state holds BYOL's (online, EMA target, predictor) and its input adds the
# masks; Odin adds the discovery network. BYOL alone would repeat DetCon_B's case (66 s of CI).
@pytest.mark.parametrize("method", ["detcon_b", "odin"])
def test_sigkill_after_a_logged_step_and_inside_a_save_resumes_bitwise(
    method, bad_data_dir, tmp_path
):
    # The uninterrupted run, beside the killed ones (the test's time is mostly single-threaded
    # start-up and compilation, so two processes at once use both cores of a small machine).
    reference, reference_log = str(tmp_path / "reference"), str(tmp_path / "reference.log")
    uninterrupted = _start(method, bad_data_dir, reference, reference_log)

    workdir, logs = str(tmp_path / "killed"), [str(tmp_path / f"run{i}.log") for i in range(3)]
    # 1. Killed right after step 5 is logged.
    proc = _start(method, bad_data_dir, workdir, logs[0])
    _kill_when(proc, lambda: _logged(workdir, KILL_AFTER_LOGGED), logs[0])
    # 2. Resumed from a checkpoint before step 5, then killed inside its next save.
    proc = _start(method, bad_data_dir, workdir, logs[1])
    saving = _kill_when(proc, lambda: _saving(workdir, logs[1]), logs[1])
    first_resume = _resumed_at(logs[1])
    assert 2 <= first_resume < KILL_AFTER_LOGGED
    assert saving > first_resume
    assert glob.glob(f"{workdir}/checkpoints/{saving}.orbax-checkpoint-tmp*"), "not mid-save"
    assert not os.path.exists(f"{workdir}/checkpoints/{saving}"), "the save was committed"
    # 3. Resumed from the step before the interrupted save, to the end.
    done = helpers.run_cli(helpers.cli_args(method, bad_data_dir, workdir, **STEPS))
    assert first_resume <= _resumed_at(done.stdout) < saving
    assert not glob.glob(f"{workdir}/checkpoints/*tmp*"), "the interrupted save was left behind"

    if uninterrupted.wait(timeout=600):
        with open(reference_log) as f:
            raise AssertionError(f"the uninterrupted run failed:\n{f.read()[-3000:]}")
    # Bad records were skipped before the first kill point and after it.
    assert 0 < _skipped(reference, first_resume) < _skipped(reference, STEPS["total_steps"])
    ref, ref_step = helpers.load_state(reference)
    got, got_step = helpers.load_state(workdir)
    assert ref_step == got_step == STEPS["total_steps"]
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not np.array_equal(ref[k], got[k])]
    assert not differ, differ[:5]
