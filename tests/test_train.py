"""The trainer: sharded == unsharded, compile once, clear errors (SIGTERM: test_loop.py and
test_multiprocess.py; SIGKILL at chosen points: test_resume_kill.py)."""

from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import train
from tests import helpers


def _random_batch(config, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    s = config.data.image_size
    return {
        "view1": rng.uniform(size=(batch_size, s, s, 3)).astype(np.float32),
        "view2": rng.uniform(size=(batch_size, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, config.num_classes, size=(batch_size,)).astype(np.int32),
    }


# MoCLR's loss is DetCon_B's function with one whole-image mask, and its towers are BYOL's: its
# cross-device negatives are covered by
# test_detcon.py::test_detcon_b_step_on_8_devices_equals_1_device.
@pytest.mark.parametrize("experiment", ["byol", "simclr"])
def test_step_on_8_devices_equals_1_device(experiment, tmp_path):
    """Global BatchNorm and global negatives: sharding the batch must not change the math."""
    config = helpers.tiny_config(experiment, str(tmp_path))
    setup = train.build(config, num_examples=256)
    batch = _random_batch(config, config.batch_size)
    state8, m8 = helpers.step_on(jax.devices()[:8], setup, batch)
    state1, m1 = helpers.step_on(jax.devices()[:1], setup, batch)
    for part in ("params", "ema_params", "batch_stats"):
        a, b = (
            {jax.tree_util.keystr(p): np.asarray(x) for p, x in
             jax.tree_util.tree_flatten_with_path(getattr(s, part))[0]}
            for s in (state8, state1)
        )  # fmt: skip
        if b:
            assert helpers.relative_difference(a, b) <= 1e-5, part
    assert np.isclose(m8["loss"], m1["loss"], rtol=1e-5)


def test_step_updates_only_online_by_gradient_and_target_by_ema(tmp_path):
    config = helpers.tiny_config("byol", str(tmp_path))
    setup = train.build(config, num_examples=256)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    batch = {k: jnp.asarray(v) for k, v in _random_batch(config, 8).items()}
    new, metrics = jax.jit(functools.partial(train.train_step, setup))(state, batch)
    tau = float(metrics["tau_target"])
    # EMA: target' = target + (1 - tau) (online' - target), leaf by leaf (predictor excluded).
    online = new.params["online"]
    for path, t_old in jax.tree_util.tree_flatten_with_path(state.ema_params["target"])[0]:
        o_new = functools.reduce(lambda d, k: d[k.key], path, online)
        t_new = functools.reduce(lambda d, k: d[k.key], path, new.ema_params["target"])
        np.testing.assert_allclose(t_new, t_old + (1 - tau) * (o_new - t_old), rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1
    assert metrics["finite"]


def test_compiles_once_and_logs(data_dir, tmp_path, monkeypatch):
    counted = chex.assert_max_traces(train.train_step, n=1)
    monkeypatch.setattr(train, "train_step", counted)
    config = helpers.tiny_config("byol", data_dir)
    results = train.main(config, str(tmp_path))
    from common.metrics import read_jsonl

    rows = [r for r in read_jsonl(str(tmp_path)) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("train/learning_rate", "train/tau_target", "train/grad_norm",
                "train/normalized_proj_std", "train/monitor_top1"):  # fmt: skip
        assert key in rows[-1]
    assert 0.0 <= results["monitor/top1"] <= 1.0
    assert os.path.exists(tmp_path / "final_eval.json")


def test_mistyped_config_key_fails_clearly(data_dir, tmp_path):
    args = helpers.cli_args("byol", data_dir, str(tmp_path), **{"optimizer.base_lrr": 0.1})
    proc = helpers.run_cli(args, check=False)
    assert proc.returncode != 0
    assert "base_lrr" in proc.stderr


def test_missing_dataset_fails_clearly(tmp_path):
    args = helpers.cli_args(
        "byol", str(tmp_path / "empty"), str(tmp_path / "w"), **{"data.name": "imagenet2012"}
    )
    proc = helpers.run_cli(args, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "DatasetNotFoundError" in last and "imagenet2012" in last, last


def test_checkpoint_of_another_model_fails_clearly(data_dir, tmp_path):
    workdir = str(tmp_path)
    helpers.run_cli(helpers.cli_args("byol", data_dir, workdir, total_steps=2))
    proc = helpers.run_cli(
        helpers.cli_args("simclr", data_dir, workdir, total_steps=4), check=False
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "CheckpointMismatchError" in last and "different model" in last, last
