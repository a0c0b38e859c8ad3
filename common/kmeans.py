"""Batched k-means in jnp: one independent clustering per image, vectorised over the batch.

Odin (docs/METHODS.md §6.3) clusters each image's dense features inside the training step, and the
object-discovery evaluation (`common.eval.discovery`) does the same with frozen features, so the
whole thing is a pure, jit-able function of `(rng, features)`: no Python loop over the batch, a
fixed number of Lloyd iterations (`lax.fori_loop`), and randomness only from the given key.

Distances. Features are l2-normalised first (`normalize=True`, the default), then
* `cosine` (spherical k-means): assign to the centroid of highest cosine similarity; a centroid
  is the l2-normalised mean of its points;
* `euclidean`: assign to the nearest centroid in squared distance; a centroid is the plain mean.

Initialisation (per image, from its own key):
* `kmeans++` (Arthur & Vassilvitskii 2007), greedy as in scikit-learn: the first centre uniform
  among the valid points, each next one the best of `2 + floor(log K)` candidates drawn with
  probability proportional to the squared distance to the nearest chosen centre, so a point
  already chosen (distance 0) is never drawn again while other points remain;
* `random`: K distinct valid points drawn uniformly.
With fewer distinct valid points than K some centres coincide; the duplicates end up empty.

Empty clusters keep their previous centroid (deterministic, and they cost nothing in the
assignment). Points marked invalid (`valid=False`: padding, pixels outside a crop) neither seed
nor move centroids, but still receive the assignment of their nearest centroid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

INITS = ("kmeans++", "random")
DISTANCES = ("cosine", "euclidean")
_HIGHEST = jax.lax.Precision.HIGHEST  # bf16 matmuls on TPU would flip near-tie assignments


class KMeansResult(NamedTuple):
    """Output of `kmeans`.

    Attributes:
      assignments: int32 `[B, N]` cluster of each point in `[0, K)`.
      centroids: float32 `[B, K, C]` final centroids (unit norm for `cosine`).
      counts: int32 `[B, K]` valid points per cluster (0 for an empty cluster).
      inertia: float32 `[B]` sum over valid points of the distance to their centroid
        (`1 - cos` for `cosine`, squared euclidean otherwise).
    """

    assignments: jax.Array
    centroids: jax.Array
    counts: jax.Array
    inertia: jax.Array


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def kmeans(
    rng: jax.Array,
    features: jax.Array,
    num_clusters: int,
    *,
    num_iters: int = 10,
    init: str = "kmeans++",
    distance: str = "cosine",
    normalize: bool = True,
    valid: jax.Array | None = None,
) -> KMeansResult:
    """Clusters the N points of each of B images into `num_clusters` clusters.

    Args:
      rng: a PRNG key; one draw of `[B, K, L]` (k-means++) or `[B, N]` (random) uniforms seeds the
        whole batch, so the result is a function of the key and the global batch (not of how
        the batch is sharded). An `rbg` key (`jax.random.key(s, impl="rbg")`) compiles faster
        on XLA:CPU than the default threefry.
      features: `[B, N, C]` points (e.g. a dense map `[B, h, w, C]` reshaped to `[B, h*w, C]`).
      num_clusters: K (static).
      num_iters: Lloyd iterations after the initialisation (static).
      init: `kmeans++` or `random` (distinct points).
      distance: `cosine` or `euclidean`.
      normalize: l2-normalise the features first.
      valid: optional bool `[B, N]`; False points do not take part (see the module docstring).
        Every image needs at least one valid point.

    Returns:
      A `KMeansResult`.
    """
    if init not in INITS:
        raise ValueError(f"kmeans init must be one of {INITS}, got {init!r}")
    if distance not in DISTANCES:
        raise ValueError(f"kmeans distance must be one of {DISTANCES}, got {distance!r}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    x = features.astype(jnp.float32)
    if normalize:
        x = l2_normalize(x)
    b, n, _ = x.shape
    if valid is None:
        valid = jnp.ones((b, n), bool)
    if init == "kmeans++":
        trials = 2 + int(math.log(num_clusters))
        u = jax.random.uniform(rng, (b, num_clusters, trials))
        centroids = jax.vmap(lambda p, v, u: _kmeans_pp(p, v, u, num_clusters))(x, valid, u)
    else:
        u = jax.random.uniform(rng, (b, n))
        centroids = jax.vmap(lambda p, v, u: _random_points(p, v, u, num_clusters))(x, valid, u)
    cosine = distance == "cosine"
    if cosine:
        centroids = l2_normalize(centroids)

    def step(_, c):
        assign = _assign(x, c, cosine)
        onehot = jax.nn.one_hot(assign, num_clusters, dtype=x.dtype) * valid[..., None]
        sums = jnp.einsum("bnk,bnc->bkc", onehot, x, precision=_HIGHEST)
        counts = onehot.sum(axis=1)[..., None]
        new = sums / jnp.maximum(counts, 1.0)
        if cosine:
            new = l2_normalize(new)
        return jnp.where(counts > 0, new, c)

    centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
    assign = _assign(x, centroids, cosine)
    onehot = jax.nn.one_hot(assign, num_clusters, dtype=jnp.int32) * valid[..., None]
    dist = _distances(x, centroids, cosine)
    chosen = jnp.take_along_axis(dist, assign[..., None], axis=-1)[..., 0]
    return KMeansResult(
        assignments=assign,
        centroids=centroids,
        counts=onehot.sum(axis=1),
        inertia=jnp.sum(jnp.where(valid, chosen, 0.0), axis=-1),
    )


def _distances(x: jax.Array, centroids: jax.Array, cosine: bool) -> jax.Array:
    """`[B, N, C]`, `[B, K, C]` -> `[B, N, K]` (1 - cos, or squared euclidean)."""
    dots = jnp.einsum("bnc,bkc->bnk", x, centroids, precision=_HIGHEST)
    if cosine:
        return 1.0 - dots
    sq_x = jnp.sum(x * x, axis=-1)[..., None]
    sq_c = jnp.sum(centroids * centroids, axis=-1)[:, None, :]
    return jnp.maximum(sq_x - 2.0 * dots + sq_c, 0.0)


def _assign(x: jax.Array, centroids: jax.Array, cosine: bool) -> jax.Array:
    return jnp.argmin(_distances(x, centroids, cosine), axis=-1).astype(jnp.int32)


def _sample(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to `weights` `[N]` (>= 0, not all 0), by
    inverting the CDF at `u` in [0, 1): never an index of weight 0."""
    cdf = jnp.cumsum(weights)
    idx = jnp.sum(cdf <= u * cdf[-1])
    return jnp.minimum(idx, weights.shape[0] - 1)


def _kmeans_pp(x: jax.Array, valid: jax.Array, u: jax.Array, k: int) -> jax.Array:
    """Greedy k-means++ seeding of one image: `[N, C]`, `[N]`, uniforms `[K, L]` -> `[K, C]`.

    Each new centre is the best (lowest resulting potential, sum of D²) of L candidates drawn
    with probability proportional to D² (squared euclidean), as scikit-learn does with
    `L = 2 + floor(log K)`: plain k-means++ (L = 1) still seeds two centres in one of several
    well-separated clusters a few percent of the time.
    """
    uniform = valid.astype(x.dtype)
    first = _sample(uniform, u[0, 0])
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.where(valid, jnp.sum((x - x[first]) ** 2, axis=-1), 0.0)

    def body(i, carry):
        centres, d2 = carry
        # Proportional to D² among valid points; if every valid point coincides with a chosen
        # centre (fewer distinct points than K), fall back to uniform among the valid points.
        weights = jnp.where(jnp.any(d2 > 0), d2, uniform)
        idx = jax.vmap(lambda v: _sample(weights, v))(u[i])  # [L]
        cand = x[idx]  # [L, C]
        cand_d2 = jnp.sum((x[None] - cand[:, None]) ** 2, axis=-1)  # [L, N]
        new_d2 = jnp.where(valid[None], jnp.minimum(d2[None], cand_d2), 0.0)
        best = jnp.argmin(new_d2.sum(-1))
        return centres.at[i].set(cand[best]), new_d2[best]

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
    return centres


def _random_points(x: jax.Array, valid: jax.Array, u: jax.Array, k: int) -> jax.Array:
    """K distinct valid points of one image, uniformly (cycling if fewer than K are valid)."""
    scores = jnp.where(valid, u, -1.0)
    order = jnp.argsort(-scores)  # valid points first, in random order
    num_valid = jnp.maximum(jnp.sum(valid), 1)
    idx = order[jnp.arange(k) % num_valid]
    return x[idx]


def kmeans_dense(
    rng: jax.Array, dense: jax.Array, num_clusters: int, **kwargs
) -> tuple[jax.Array, KMeansResult]:
    """k-means of each image's dense map: `[B, h, w, C]` -> (cluster map int32 `[B, h, w]`,
    `KMeansResult` over the `h*w` locations). `kwargs` as in `kmeans` (`valid` as `[B, h, w]`)."""
    b, h, w, c = dense.shape
    valid = kwargs.pop("valid", None)
    if valid is not None:
        valid = valid.reshape(b, h * w)
    result = kmeans(rng, dense.reshape(b, h * w, c), num_clusters, valid=valid, **kwargs)
    return result.assignments.reshape(b, h, w), result
