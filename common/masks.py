"""DetCon mask handling on device: down-sampling, id sampling, binary masks (docs/METHODS.md
§5.4-5.5).

Pipeline for one view: pixel id map `[B, S, S]` (from the data pipeline, -1 = no id)
-> `ids_to_grid` -> per-cell majority id `[B, h, w]`
-> `sample_ids` -> R ids per image `[B, R]` (the same rng for online and target networks)
-> `masks_from_ids` -> binary masks `[B, R, h*w]` for `common.heads.MaskPool`,
with the sampled ids going to `common.losses.contrastive_detection_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ids_to_grid(id_map: jax.Array, stride: int, num_ids: int) -> jax.Array:
    """Majority id of every `stride x stride` cell (DeepMind `create_binary_mask`, §5.4).

    DeepMind one-hots the ids over `num_ids` (256) values, average-pools with a `VALID`
    `stride x stride` window and takes the argmax over ids. This computes the same result
    without the `[B, S, S, num_ids]` one-hot: the `stride**2` ids of each cell are sorted and
    the longest run wins; among equally long runs the first, i.e. the lowest id, wins, which is
    argmax's tie rule. Cost is independent of `num_ids`.

    Differences from the one-hot code, both by design: ids outside `[0, num_ids)` (e.g. -1) count
    for no id (DeepMind's one-hot silently drops them too), and a cell without any valid pixel
    gets -1 instead of argmax's 0.

    Args:
      id_map: int `[B, H, W]` segment ids, -1 = no id.
      stride: cell side in pixels (the backbone's output stride); trailing rows/columns that do
        not fill a whole cell are dropped (`VALID` pooling), `h = H // stride`, `w = W // stride`.
      num_ids: number of possible ids (DeepMind: 256).

    Returns:
      int32 `[B, h, w]`, -1 for cells without a valid pixel.
    """
    b, hh, ww = id_map.shape
    h, w = hh // stride, ww // stride
    x = id_map[:, : h * stride, : w * stride].astype(jnp.int32)
    x = x.reshape(b, h, stride, w, stride).transpose(0, 1, 3, 2, 4).reshape(b, h, w, -1)
    valid = (x >= 0) & (x < num_ids)
    # Invalid pixels get a sentinel that sorts after every valid id and scores zero below.
    x = jnp.sort(jnp.where(valid, x, jnp.iinfo(jnp.int32).max), axis=-1)
    k = x.shape[-1]
    pos = jnp.arange(k, dtype=jnp.int32)
    starts = jnp.concatenate(
        [jnp.ones_like(x[..., :1], dtype=bool), x[..., 1:] != x[..., :-1]], axis=-1
    )
    # Length of the run ending at each position = position - start of its run + 1.
    run_start = jax.lax.cummax(jnp.where(starts, pos, 0), axis=x.ndim - 1)
    run_len = pos - run_start + 1
    run_len = jnp.where(x == jnp.iinfo(jnp.int32).max, 0, run_len)
    best = jnp.argmax(run_len, axis=-1)  # first maximal run = lowest id among ties
    majority = jnp.take_along_axis(x, best[..., None], axis=-1)[..., 0]
    has_valid = jnp.max(run_len, axis=-1) > 0
    return jnp.where(has_valid, majority, -1)


def sample_ids(rng: jax.Array, grid_ids: jax.Array, num_samples: int = 16) -> jax.Array:
    """Samples ids with replacement, uniformly among the ids present in each image (§5.5).

    An id is present if it owns at least one cell; its area does not affect the probability
    (DeepMind: categorical over a uniform distribution on existing ids). Each distinct present
    id is represented by exactly one cell (its first in sorted order), and cells are sampled
    with a categorical over those representatives.

    Args:
      rng: PRNG key (use the same key for the online and target network of a view, a
        different key per view).
      grid_ids: int `[B, h, w]` from `ids_to_grid`, -1 = no id.
      num_samples: R, ids per image.

    Returns:
      int32 `[B, R]`; all -1 for an image without any valid id.
    """
    b = grid_ids.shape[0]
    x = jnp.sort(grid_ids.reshape(b, -1).astype(jnp.int32), axis=-1)  # [B, n]
    first = jnp.concatenate([jnp.ones_like(x[:, :1], dtype=bool), x[:, 1:] != x[:, :-1]], axis=1)
    representative = first & (x >= 0)
    logits = jnp.where(representative, 0.0, -jnp.inf)
    cells = jax.random.categorical(rng, logits, axis=-1, shape=(num_samples, b)).T  # [B, R]
    ids = jnp.take_along_axis(x, cells, axis=1)
    has_valid = jnp.any(representative, axis=1, keepdims=True)
    return jnp.where(has_valid, ids, -1)


def masks_from_ids(grid_ids: jax.Array, sampled_ids: jax.Array) -> jax.Array:
    """Binary masks of the sampled ids over the grid cells.

    Args:
      grid_ids: int `[B, h, w]`, -1 = no id.
      sampled_ids: int `[B, R]`; a negative id gives an all-zero mask.

    Returns:
      float32 `[B, R, h*w]` (row-major over h, w, matching a reshaped `[B, h, w, C]` map).
    """
    b = grid_ids.shape[0]
    cells = grid_ids.reshape(b, 1, -1)
    hit = (cells == sampled_ids[:, :, None]) & (sampled_ids[:, :, None] >= 0)
    return hit.astype(jnp.float32)
