"""Tests for common/masks.py (and the pooling/MLP heads of common/heads.py that consume them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import heads, masks, optim

# One compilation per shape instead of eager op-by-op dispatch (keeps the tests fast).
_ids_to_grid = jax.jit(masks.ids_to_grid, static_argnums=(1, 2))
_sample_ids = jax.jit(masks.sample_ids, static_argnames=("num_samples",))


def ref_ids_to_grid(id_map, stride, num_ids):
    """Plain loops: count the valid ids of every cell, argmax (lowest id wins ties), -1 if none."""
    b, hh, ww = id_map.shape
    h, w = hh // stride, ww // stride
    out = np.full((b, h, w), -1, np.int64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                cell = id_map[n, i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
                counts = np.zeros(num_ids, np.int64)
                for v in cell.ravel():
                    if 0 <= v < num_ids:
                        counts[v] += 1
                if counts.max() > 0:
                    out[n, i, j] = int(np.argmax(counts))
    return out


def _id_map(seed, shape, num_ids, invalid_frac):
    rng = np.random.default_rng(seed)
    # Blocky low-entropy maps (clear majorities) mixed with pixel noise (many ties).
    coarse = rng.integers(0, num_ids, size=(shape[0], shape[1] // 4 + 1, shape[2] // 4 + 1))
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, : shape[1], : shape[2]]
    noise = rng.random(shape) < 0.4
    x = np.where(noise, rng.integers(0, num_ids, size=shape), x)
    x = np.where(rng.random(shape) < invalid_frac, -1, x)
    x[0, :8, :8] = -1  # at least one all-invalid cell for strides <= 8
    return x.astype(np.int32)


@pytest.mark.parametrize(
    "stride,num_ids,size", [(1, 3, 8), (4, 3, 24), (8, 300, 24), (5, 3, 23), (8, 300, 32)]
)
def test_ids_to_grid_matches_loop(stride, num_ids, size):
    id_map = _id_map(stride + num_ids, (2, size, size), num_ids, 0.1)
    if num_ids == 300:
        id_map[1, 0, :4] = 299  # ids above 255 are handled
        id_map[1, 1, 0] = 400  # outside [0, num_ids): ignored, like DeepMind's one-hot
    got = _ids_to_grid(jnp.asarray(id_map), stride, num_ids)
    assert got.shape == (2, size // stride, size // stride) and got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), ref_ids_to_grid(id_map, stride, num_ids))


def test_ids_to_grid_matches_deepmind_one_hot_formula():
    """DeepMind: one-hot, average-pool, argmax (valid ids only, so no -1 difference)."""
    rng = np.random.default_rng(0)
    id_map = rng.integers(0, 6, size=(2, 32, 32)).astype(np.int32)
    one_hot = jax.nn.one_hot(id_map, 6)  # [B, S, S, 6]
    pooled = one_hot.reshape(2, 4, 8, 4, 8, 6).mean(axis=(2, 4))
    want = jnp.argmax(pooled, axis=-1)
    np.testing.assert_array_equal(_ids_to_grid(jnp.asarray(id_map), 8, 6), want)


def test_sample_ids_present_uniform_and_deterministic():
    # Image 0: ids {2, 5, 7, 40} with very unequal areas; image 1: nothing valid.
    grid = np.full((2, 4, 4), -1, np.int32)
    grid[0] = 2
    grid[0, 0, :2] = 5
    grid[0, 3, 3] = 7
    grid[0, 1, 1] = 40
    n = 4000
    rng = jax.random.PRNGKey(0)
    ids = np.asarray(_sample_ids(rng, jnp.asarray(grid), num_samples=n))
    assert ids.shape == (2, n) and ids.dtype == np.int32
    assert set(np.unique(ids[0])) == {2, 5, 7, 40}  # never an absent id
    assert np.all(ids[1] == -1)
    counts = np.array([np.sum(ids[0] == v) for v in (2, 5, 7, 40)])
    expected = n / 4
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 16.27, (counts, chi2)  # chi-square 99.9% quantile, 3 degrees of freedom
    again = _sample_ids(rng, jnp.asarray(grid), num_samples=n)
    np.testing.assert_array_equal(ids, again)
    other = _sample_ids(jax.random.PRNGKey(1), jnp.asarray(grid), num_samples=n)
    assert not np.array_equal(ids, np.asarray(other))


def test_sample_ids_random_grids_only_present():
    rng = np.random.default_rng(3)
    grid = rng.integers(-1, 300, size=(4, 7, 7)).astype(np.int32)
    ids = np.asarray(_sample_ids(jax.random.PRNGKey(2), jnp.asarray(grid), num_samples=64))
    for b in range(4):
        present = set(grid[b][grid[b] >= 0].tolist())
        assert set(ids[b].tolist()) <= present


def test_masks_from_ids_and_mask_pool():
    grid = jnp.array([[[0, 1], [1, -1]], [[3, 3], [3, 3]]], jnp.int32)  # [2, 2, 2]
    sampled = jnp.array([[1, 0, -1], [3, 4, 3]], jnp.int32)
    m = masks.masks_from_ids(grid, sampled)
    want = np.array(
        [[[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]],
        np.float32,
    )
    np.testing.assert_array_equal(m, want)

    feats = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 2, 5)), jnp.float32)
    pooled = heads.MaskPool().apply({}, {"out": feats}, m)
    flat = np.asarray(feats).reshape(2, 4, 5)
    for b in range(2):
        for r in range(3):
            cells = np.nonzero(want[b, r])[0]
            ref = flat[b, cells].mean(0) if len(cells) else np.zeros(5)
            np.testing.assert_allclose(pooled[b, r], ref, rtol=1e-5, atol=1e-6)
    mean = heads.MeanPool().apply({}, {"out": feats})
    np.testing.assert_allclose(mean, flat.mean(1, keepdims=True), rtol=1e-5)


def test_mlp_shapes_bn_axes_and_lars_exclusion():
    mlp = heads.MLP(hidden_dim=512, output_dim=8)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 256)), jnp.float32)
    variables = jax.jit(lambda k, x: mlp.init(k, x, train=True))(jax.random.PRNGKey(0), x)
    y, upd = jax.jit(lambda v, x: mlp.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert y.shape == (3, 4, 8)
    params = variables["params"]
    assert "bias" not in params["Dense_1"]
    # BatchNorm statistics over batch x masks (every axis but the last), as Haiku.
    h = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    np.testing.assert_allclose(
        upd["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * h.mean(axis=(0, 1)), rtol=1e-4, atol=1e-6
    )
    # Haiku Linear init: std = 0.8796 / sqrt(fan_in).
    std = float(jnp.std(params["Dense_0"]["kernel"]))
    np.testing.assert_allclose(std, 0.8796 / 16.0, rtol=0.05)
    excluded = {
        optim.path_names(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
        if optim.default_exclude(optim.path_names(p))
    }
    assert excluded == {
        ("Dense_0", "bias"),
        ("BatchNorm_0", "scale"),
        ("BatchNorm_0", "bias"),
    }
    y_eval = jax.jit(lambda v, x: mlp.apply(v, x, train=False))({**variables, **upd}, x)
    assert y_eval.shape == (3, 4, 8)
