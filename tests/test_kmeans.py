"""Batched k-means: recovers separated clusters, deterministic per key, jit-able, masks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import kmeans as km


def _blobs(seed: int, batch: int, per_cluster: int, k: int, dim: int = 16, spread: float = 0.05):
    """`[B, k * per_cluster, dim]` points around k random unit directions per image, with labels;
    the points of each image are shuffled."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for _ in range(batch):
        centres = rng.normal(size=(k, dim))
        centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
        lab = np.repeat(np.arange(k), per_cluster)
        x = centres[lab] + spread * rng.normal(size=(len(lab), dim))
        perm = rng.permutation(len(lab))
        points.append(x[perm])
        labels.append(lab[perm])
    return np.asarray(points, np.float32), np.asarray(labels)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings of the same points define the same partition."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("distance", km.DISTANCES)
def test_recovers_well_separated_clusters(distance):
    x, labels = _blobs(0, batch=6, per_cluster=20, k=4)
    fn = jax.jit(lambda r, x: km.kmeans(r, x, 4, num_iters=10, distance=distance))
    result = fn(jax.random.PRNGKey(0), jnp.asarray(x))
    assign = np.asarray(result.assignments)
    assert assign.shape == labels.shape and assign.dtype == np.int32
    for i in range(len(labels)):
        assert _same_partition(assign[i], labels[i]), i
    np.testing.assert_array_equal(np.asarray(result.counts).sum(-1), 80)
    if distance == "cosine":
        np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=-1), 1.0, rtol=1e-5)


def test_random_init_seeds_distinct_points():
    # K = N: distinct seeds make every point its own cluster (random init can put two seeds in
    # one blob of well-separated data, so it is not expected to recover blobs every time).
    x = np.random.default_rng(0).normal(size=(3, 12, 8)).astype(np.float32)
    result = jax.jit(lambda x: km.kmeans(jax.random.PRNGKey(1), x, 12, init="random"))(x)
    np.testing.assert_array_equal(np.asarray(result.counts), 1)


def test_deterministic_for_a_key_and_varies_with_it():
    x, _ = _blobs(1, batch=4, per_cluster=10, k=6, spread=0.5)  # overlapping: init matters
    fn = jax.jit(lambda r: km.kmeans(r, jnp.asarray(x), 6, num_iters=3).assignments)
    a, b = fn(jax.random.PRNGKey(3)), fn(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    others = [np.asarray(fn(jax.random.PRNGKey(s))) for s in range(4, 8)]
    assert any((o != np.asarray(a)).any() for o in others)


def test_kmeans_pp_seeds_distinct_points_and_handles_few_points():
    # 3 distinct points, K = 5: seeding must not crash; three clusters get all the points.
    x = np.zeros((2, 9, 4), np.float32)
    x[:, 3:6, 1] = 1.0
    x[:, 6:, 2] = 1.0
    x[:, :3, 0] = 1.0
    for init in km.INITS:
        result = jax.jit(lambda x, i=init: km.kmeans(jax.random.PRNGKey(0), x, 5, init=i))(x)
        counts = np.sort(np.asarray(result.counts), axis=-1)
        np.testing.assert_array_equal(counts, [[0, 0, 3, 3, 3]] * 2)


def test_invalid_points_do_not_move_centroids():
    x, labels = _blobs(2, batch=3, per_cluster=15, k=3)
    far = np.full((3, 5, 16), 50.0, np.float32)  # outliers, marked invalid
    xs = np.concatenate([x, far], axis=1)
    valid = np.concatenate([np.ones((3, 45), bool), np.zeros((3, 5), bool)], axis=1)
    fn = functools.partial(km.kmeans, num_clusters=3, distance="euclidean", normalize=False)
    result = jax.jit(fn)(jax.random.PRNGKey(0), jnp.asarray(xs), valid=jnp.asarray(valid))
    assign = np.asarray(result.assignments)
    for i in range(3):
        assert _same_partition(assign[i, :45], labels[i])
    np.testing.assert_array_equal(np.asarray(result.counts).sum(-1), 45)


def test_dense_wrapper_shapes():
    dense = np.random.default_rng(0).normal(size=(2, 4, 5, 8)).astype(np.float32)
    ids, result = jax.jit(lambda d: km.kmeans_dense(jax.random.PRNGKey(1), d, 3))(dense)
    assert ids.shape == (2, 4, 5) and result.centroids.shape == (2, 3, 8)
    assert int(ids.min()) >= 0 and int(ids.max()) < 3
