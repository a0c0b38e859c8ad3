"""Pure metric functions on id maps: best overlaps (ABO / OR), resizing id maps and logits to a
mask's own resolution, and confusion matrices (mIoU). All jit-able, vectorised over the batch.

Id-map conventions (docs/METHODS.md §6.5, docs/ARCHITECTURE.md):
* ground truth `gt` int `[B, H, W]`: 0 = background, -1 = ignore (void, crowd regions,
  padding), `1..max_id` = objects (instance ids, or `class + 1` for class masks). The readers
  (`common.eval.dense_data`) turn an annotation's void label (255 in 8-bit masks, see
  `common.data.void`) into -1 before these functions see it, so a void outline is never an
  instance here;
* segments int `[B, H, W]`: `0..K-1` (k-means clusters, FH segments), -1 = no segment.

IoU is computed over the pixels whose ground truth is not ignored (`gt >= 0`): a segment's area
counts its background and object pixels there and none of its void pixels, so a cluster that
spills over the background overlaps an object less, and one that spills over a void outline
does not. A pixel with no segment (-1) counts in its object's area only.

Averaging (a choice, documented in `common.eval.discovery`): the dataset values are pooled over
all ground-truth masks of the dataset (`sum of best IoUs / number of masks`), not averaged per
image first; `discovery_sums` returns the three sums that make this reduction exact across
batches and hosts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BestOverlaps(NamedTuple):
    """Per ground-truth mask results of `best_overlaps` (`M = max_id`, mask m has id m + 1).

    Attributes:
      iou: float32 `[B, M]` best IoU of the mask with any segment (0 where absent).
      present: bool `[B, M]` whether the mask has at least one pixel in the image.
      segment: int32 `[B, M]` the segment achieving the best IoU (-1 where absent).
      area: int32 `[B, M]` pixels of the mask.
    """

    iou: jax.Array
    present: jax.Array
    segment: jax.Array
    area: jax.Array


def _bincount(idx: jax.Array, length: int) -> jax.Array:
    """`[B, P]` int in `[0, length]` -> `[B, length]` counts; the value `length` is dropped."""
    return jax.vmap(lambda i: jnp.bincount(i, length=length + 1))(idx)[:, :length]


def best_overlaps(
    segments: jax.Array, gt: jax.Array, *, num_segments: int, max_id: int = 255
) -> BestOverlaps:
    """Best IoU of every ground-truth mask with any segment, per image.

    Args:
      segments: int `[B, H, W]` segment ids in `[0, num_segments)`, -1 = none.
      gt: int `[B, H, W]`: 0 background, -1 ignore, `1..max_id` objects (larger ids ignored).
      num_segments: K, an upper bound on the segment ids (static).
      max_id: M, an upper bound on the object ids (static; 255 covers uint8 masks).

    Returns:
      `BestOverlaps` with `[B, M]` fields.
    """
    b = gt.shape[0]
    k, m = num_segments, max_id
    seg = segments.reshape(b, -1).astype(jnp.int32)
    g = gt.reshape(b, -1).astype(jnp.int32)
    counted = g >= 0
    obj = (g >= 1) & (g <= m)
    has_seg = counted & (seg >= 0) & (seg < k)
    inter = _bincount(jnp.where(obj & has_seg, (g - 1) * k + seg, m * k), m * k).reshape(b, m, k)
    gt_area = _bincount(jnp.where(obj, g - 1, m), m)
    seg_area = _bincount(jnp.where(has_seg, seg, k), k)
    union = gt_area[:, :, None] + seg_area[:, None, :] - inter
    iou = inter / jnp.maximum(union, 1).astype(jnp.float32)
    present = gt_area > 0
    return BestOverlaps(
        iou=jnp.where(present, iou.max(-1), 0.0),
        present=present,
        segment=jnp.where(present, jnp.argmax(iou, -1), -1).astype(jnp.int32),
        area=gt_area,
    )


def discovery_sums(overlaps: BestOverlaps, weights: jax.Array | None = None) -> jax.Array:
    """`[3]` float32: (sum of best IoUs, masks with best IoU > 0.5, masks) over the batch.

    `weights` bool/float `[B]` drops padded images. ABO = s[0] / s[2], OR = s[1] / s[2].
    """
    present = overlaps.present.astype(jnp.float32)
    if weights is not None:
        present = present * weights.astype(jnp.float32)[:, None]
    return jnp.stack(
        [
            jnp.sum(overlaps.iou * present),
            jnp.sum((overlaps.iou > 0.5) * present),
            jnp.sum(present),
        ]
    )


def _source_index(out_size: int, in_size: int, sizes: jax.Array) -> jax.Array:
    """Centre-aligned continuous source coordinates `[B, out_size]` of output pixels 0..out-1
    for images whose valid extent is `sizes` `[B]` pixels (pixels beyond it are junk)."""
    y = jnp.arange(out_size, dtype=jnp.float32)[None, :]
    return (y + 0.5) * in_size / sizes.astype(jnp.float32)[:, None] - 0.5


def _inside(out_hw: tuple[int, int], sizes: jax.Array) -> jax.Array:
    """bool `[B, H, W]`: pixel inside each image's `(height, width)` = `sizes[b]`."""
    rows = jnp.arange(out_hw[0])[None, :, None] < sizes[:, 0, None, None]
    cols = jnp.arange(out_hw[1])[None, None, :] < sizes[:, 1, None, None]
    return rows & cols


def resize_ids_nearest(
    ids: jax.Array, out_hw: tuple[int, int], sizes: jax.Array | None = None, fill: int = -1
) -> jax.Array:
    """Nearest-neighbour resize of id maps to each image's own size on a padded canvas.

    Args:
      ids: int `[B, h, w]` (e.g. a k-means cluster map on the feature grid).
      out_hw: canvas `(H, W)` (static).
      sizes: int `[B, 2]` `(height, width)` of each image's mask inside the canvas (top-left
        aligned); None: the whole canvas.
      fill: value of the canvas outside each image.

    Returns:
      int32 `[B, H, W]`: pixel `(y, x)` of image b takes the cell whose centre is nearest in
      the image's own coordinates, i.e. `floor((y + 0.5) h / H_b)`.
    """
    b, h, w = ids.shape
    if sizes is None:
        sizes = jnp.broadcast_to(jnp.asarray(out_hw, jnp.int32), (b, 2))
    rows = jnp.clip(jnp.floor(_source_index(out_hw[0], h, sizes[:, 0]) + 0.5), 0, h - 1)
    cols = jnp.clip(jnp.floor(_source_index(out_hw[1], w, sizes[:, 1]) + 0.5), 0, w - 1)
    rows, cols = rows.astype(jnp.int32), cols.astype(jnp.int32)
    out = jax.vmap(lambda m, r, c: m[r[:, None], c[None, :]])(ids, rows, cols)
    return jnp.where(_inside(out_hw, sizes), out, fill).astype(jnp.int32)


def _linear_weights(out_size: int, in_size: int, sizes: jax.Array) -> jax.Array:
    """`[B, out_size, in_size]` bilinear (half-pixel centres, edge-clamped) interpolation rows."""
    src = jnp.clip(_source_index(out_size, in_size, sizes), 0.0, in_size - 1.0)
    lo = jnp.floor(src)
    frac = src - lo
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, in_size - 1)
    return (
        jax.nn.one_hot(lo, in_size) * (1.0 - frac)[..., None]
        + jax.nn.one_hot(hi, in_size) * frac[..., None]
    )


def resize_bilinear(
    x: jax.Array, out_hw: tuple[int, int], sizes: jax.Array | None = None
) -> jax.Array:
    """Bilinear resize of dense maps to each image's own size on a padded canvas.

    Args:
      x: float `[B, h, w, C]` (e.g. per-location class logits).
      out_hw: canvas `(H, W)` (static).
      sizes: int `[B, 2]` valid `(height, width)` per image; None: the whole canvas.

    Returns:
      float32 `[B, H, W, C]`; values outside an image's extent are meaningless (mask them).
    """
    b, h, w, _ = x.shape
    if sizes is None:
        sizes = jnp.broadcast_to(jnp.asarray(out_hw, jnp.int32), (b, 2))
    ry = _linear_weights(out_hw[0], h, sizes[:, 0])
    rx = _linear_weights(out_hw[1], w, sizes[:, 1])
    # Separable: two small matmuls instead of a gather per output pixel.
    return jnp.einsum("byh,bhwc,bxw->byxc", ry, x.astype(jnp.float32), rx)


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> jax.Array:
    """int32 `[C, C]` counts `[true, predicted]` over pixels with `0 <= label < C`.

    Args:
      labels: int `[...]` true classes, -1 (or any value outside `[0, C)`) = ignore.
      predictions: int `[...]` predicted classes, same shape.
      num_classes: C (static).
      weights: optional bool `[...]` (broadcastable) further restricting the pixels counted.
    """
    valid = (labels >= 0) & (labels < num_classes)
    if weights is not None:
        valid = valid & jnp.broadcast_to(weights, labels.shape).astype(bool)
    idx = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
    counts = jnp.bincount(idx.reshape(-1), length=num_classes * num_classes + 1)
    return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def mean_iou(confusion) -> tuple[float, float, int]:
    """(mIoU over the classes present in labels or predictions, pixel accuracy, classes counted)
    of a host `[C, C]` confusion matrix."""
    import numpy as np

    c = np.asarray(confusion, np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    seen = union > 0
    miou = float(np.mean(inter[seen] / union[seen])) if seen.any() else 0.0
    acc = float(inter.sum() / max(c.sum(), 1.0))
    return miou, acc, int(seen.sum())
