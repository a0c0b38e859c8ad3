"""Mask transport: cluster ids on the discovery view's feature grid -> pixel ids of a view.

Odin (docs/METHODS.md §6.3 step 4-5) clusters the discovery view and hands the clusters to the
representation views, which are crops (and flips) of the discovery crop by default
(`data.views_in_discovery_crop`), or of the whole image. The data pipeline
emits every view's crop box in the original image's normalised coordinates
(`common.data.geometry.window_to_box`), so the transport is pure geometry, done on device:

    view pixel (i, j) -> its centre in the view, ((i + 0.5) / S, (j + 0.5) / S), mirrored in x
    when the view is flipped -> original-image coordinates through the view's box -> the
    discovery crop's coordinates through its box -> the grid cell (floor(y * h0), floor(x * w0))
    of the discovery feature map.

A view pixel whose centre falls outside the discovery crop (only possible when the views are
cut from the whole image) gets -1 (no id). This is the same
sampling convention as the pipeline's nearest-neighbour `crop_resize_ids` (half-pixel centres),
so a discovery map given at pixel resolution lands exactly where the pipeline would have put it
(tested in tests/test_odin.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def view_coordinates(box: jax.Array, flip: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Original-image coordinates of the pixel centres of `size x size` views.

    Args:
      box: float `[B, 4]` `(ymin, xmin, ymax, xmax)` in [0, 1] of the original image.
      flip: int/bool `[B]`, 1 = the view was flipped left-right after the crop.
      size: S, the view's side in pixels.

    Returns:
      `(y, x)`, float32 `[B, S]` each: row centres and column centres (separable: pixel (i, j)
      sits at `(y[:, i], x[:, j])`).
    """
    box = box.astype(jnp.float32)
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    u = jnp.where(flip.astype(bool)[:, None], 1.0 - centres[None], centres[None])
    y = box[:, 0:1] + centres[None] * (box[:, 2:3] - box[:, 0:1])
    x = box[:, 1:2] + u * (box[:, 3:4] - box[:, 1:2])
    return y, x


def transport_ids(
    grid_ids: jax.Array, grid_box: jax.Array, view_box: jax.Array, view_flip: jax.Array, size: int
) -> jax.Array:
    """Pastes a discovery id map into a view's pixels.

    Args:
      grid_ids: int `[B, h0, w0]` ids on the discovery crop (any resolution: the feature grid,
        or pixels), -1 = no id; the crop is not flipped.
      grid_box: float `[B, 4]` the discovery crop's box in the original image.
      view_box: float `[B, 4]` the view's box.
      view_flip: int `[B]` the view's flip.
      size: S, the view's side.

    Returns:
      int32 `[B, S, S]`: the id under each view pixel, -1 outside the discovery crop.
    """
    b, h0, w0 = grid_ids.shape
    y, x = view_coordinates(view_box, view_flip, size)
    g = grid_box.astype(jnp.float32)
    ry = (y - g[:, 0:1]) / jnp.maximum(g[:, 2:3] - g[:, 0:1], 1e-6)
    rx = (x - g[:, 1:2]) / jnp.maximum(g[:, 3:4] - g[:, 1:2], 1e-6)
    rows = jnp.floor(ry * h0).astype(jnp.int32)  # [B, S]
    cols = jnp.floor(rx * w0).astype(jnp.int32)
    inside = ((rows >= 0) & (rows < h0))[:, :, None] & ((cols >= 0) & (cols < w0))[:, None, :]
    flat = jnp.clip(rows, 0, h0 - 1)[:, :, None] * w0 + jnp.clip(cols, 0, w0 - 1)[:, None, :]
    ids = jnp.take_along_axis(grid_ids.reshape(b, -1), flat.reshape(b, -1), axis=1)
    return jnp.where(inside, ids.reshape(b, size, size), -1).astype(jnp.int32)
