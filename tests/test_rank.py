"""RankMe (`common.eval.rank`): the formula on constructed matrices, and the evaluator against
the singular values of the features computed independently."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from common import augment, evaluate
from common.data import pipeline
from common.eval import rank, run_evaluators
from tests import helpers


def _rankme_by_hand(z: np.ndarray) -> float:
    """The paper's formula written out on numpy's SVD of `z`."""
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-np.sum(p * np.log(p))))


def _with_singular_values(values, n=200, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, len(values))))
    v, _ = np.linalg.qr(rng.normal(size=(len(values), len(values))))
    return u @ np.diag(values) @ v.T


@pytest.mark.parametrize("r", [1, 5, 32])
def test_r_equal_singular_values_give_rank_r(r):
    z = _with_singular_values([3.0] * r + [0.0] * (32 - r))
    assert rank.rankme(rank.gram_singular_values(z.T @ z)) == pytest.approx(r, rel=1e-4)


def test_rankme_matches_the_written_out_formula_and_falls_with_collapse():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 48)) * np.geomspace(1.0, 0.01, 48)  # decaying spectrum
    got = rank.rankme(rank.gram_singular_values(z.T @ z))
    assert got == pytest.approx(_rankme_by_hand(z), rel=1e-6)
    # Dimensional collapse: mixing every channel towards one direction lowers the rank.
    collapsed = z + 20.0 * z[:, :1]
    assert rank.rankme(rank.gram_singular_values(collapsed.T @ collapsed)) < got / 2


def test_correlation_from_sums_matches_numpy_and_drops_dead_channels():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(100, 6)) * [1.0, 10.0, 0.1, 3.0, 1.0, 1.0] + 5.0
    z[:, 4] = 7.0  # a dead unit: constant output
    corr = rank.correlation(z.T @ z, z.sum(0), len(z))
    live = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(corr[np.ix_(live, live)], np.corrcoef(z[:, live].T), atol=1e-9)
    assert not corr[4].any() and not corr[:, 4].any()
    # Standardised RankMe ignores the channels' scales and means; the dead channel is a zero
    # column (a zero singular value, which still takes its epsilon in the formula).
    standardized = np.zeros_like(z)
    standardized[:, live] = (z[:, live] - z[:, live].mean(0)) / z[:, live].std(0)
    assert rank.rankme(rank.gram_singular_values(corr)) == pytest.approx(
        _rankme_by_hand(standardized), rel=1e-6
    )


def test_evaluator_equals_the_svd_of_independently_computed_features(data_dir):
    config = helpers.tiny_config("byol", data_dir)
    config.evals.rank.enabled = True
    config.evals.rank.batch_size = 16
    setup, state, mesh = evaluate.restore_state(config, "", initial=True)  # the random network
    got = run_evaluators(setup, state, mesh=mesh, names=["rank"])

    module = setup.modules["online"]
    variables = {"params": state.params["online"], "batch_stats": state.batch_stats["online"]}
    apply = jax.jit(lambda v, x: module.apply(v, augment.normalize(x), train=False)["embedding"])
    rows = []
    for batch in pipeline.make_eval_iterator(config.data, "validation", batch_size=16):
        feats = np.asarray(apply(variables, np.asarray(batch["image"], np.float32)))
        rows.append(feats[np.asarray(batch["_valid"], bool)])
    z = np.concatenate(rows).astype(np.float64)
    assert got["rank/num_examples"] == len(z) == 64
    # The evaluator sums float32 Gram matrices on the devices: measured 1e-6 / 6e-6 relative.
    assert got["rank/rankme"] == pytest.approx(_rankme_by_hand(z), rel=1e-4)
    std = z.std(0)
    live = std > 1e-6 * std.max()  # the random tiny network has dead units: zero columns
    standardized = np.where(live, (z - z.mean(0)) / np.where(live, std, 1.0), 0.0)
    assert got["rank/rankme_standardized"] == pytest.approx(_rankme_by_hand(standardized), rel=1e-4)
