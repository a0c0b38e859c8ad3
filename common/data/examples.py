"""Per-example pieces of the pipelines (tf.data, inside `Dataset.map`): ids, views, checks.

Everything here works on one example: an image `[H, W, 3]` and its id maps `[H, W]`, with the
geometry of `common.data.geometry`. The randomness comes in as stateless seeds, so a piece gives
the same output for the same seed whatever the parallelism.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

import tensorflow as tf

from common.data import geometry, void
from common.data.sources import Source


def check_same_size(ids: tf.Tensor, hw: tf.Tensor, key: tf.Tensor, what: str) -> tf.Tensor:
    """Raises (inside tf.data) when an id map's size differs from its image's, naming the record."""
    ok = tf.reduce_all(tf.equal(tf.shape(ids)[:2], hw))
    check = tf.debugging.Assert(
        ok,
        [
            f"bad record: {what} size differs from the image size; record",
            key,
            "mask",
            tf.shape(ids),
            "image",
            hw,
        ],
        summarize=8,
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


def to_ids(mask: tf.Tensor) -> tf.Tensor:
    """uint8/uint16 `[H, W]` or `[H, W, 1]` -> int32 `[H, W]`."""
    if mask.shape.rank == 3:
        mask = mask[..., 0]
    return tf.cast(mask, tf.int32)


def annotated_ids(mask: tf.Tensor, cfg: types.SimpleNamespace) -> tf.Tensor:
    """An annotated mask (uint8/uint16 `[H, W]` or `[H, W, 1]`, as stored) -> int32 `[H, W]`
    with its void pixels (`cfg.void_label`, see `common.data.void`) -1, the no-id value DetCon's
    sampling never picks."""
    return void.to_ignore_tf(mask, cfg.void_label)


def label_of(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The example's int32 `label`, -1 when the dataset has none."""
    return tf.cast(ex["label"], tf.int32) if "label" in ex else tf.constant(-1, tf.int32)


def two_views(
    cfg: types.SimpleNamespace,
    seeds: tf.Tensor,
    images: Sequence[tf.Tensor],
    ids: Sequence[tf.Tensor | None],
    image_size: int,
    region: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Two random resized crops (+ flips) of `images[v]`, with the same geometry for `ids[v]`.

    Args:
      cfg: resolved data config.
      seeds: int `[2, 2]` one stateless seed per view.
      images: two uint8 `[H, W, 3]` images (the same image twice, or two frames).
      ids: two int32 `[H, W]` id maps, or Nones.
      image_size: S.
      region: int32 window `(y0, x0, h, w)` of the images the crops are drawn inside (crop
        areas are fractions of its area); None: the whole image.

    Returns:
      `view{v}` float32 `[S, S, 3]`, `box{v}` float32 `[4]` (in the whole image), `flip{v}`
      int32 `[]`, and `mask{v}` int32 `[S, S]` when ids are given, for v = 1, 2.
    """
    out = {}
    for v in range(2):
        image = images[v]
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        u = tf.random.stateless_uniform([5], seeds[v])
        if region is None:
            window = geometry.sample_crop_window(u[:4], h, w, cfg.crop_scale, cfg.crop_ratio)
        else:  # a window of the region, moved to image coordinates
            window = geometry.sample_crop_window(
                u[:4], region[2], region[3], cfg.crop_scale, cfg.crop_ratio
            ) + tf.stack([region[0], region[1], 0, 0])
        flip = u[4] < 0.5 if cfg.flip else tf.constant(False)
        name = str(v + 1)
        out["view" + name] = geometry.crop_resize_image(image, window, flip, image_size)
        out["box" + name] = geometry.window_to_box(window, h, w)
        out["flip" + name] = tf.cast(flip, tf.int32)
        if ids[v] is not None:
            out["mask" + name] = geometry.crop_resize_ids(ids[v], window, flip, image_size)
    return out


def discovery_window(cfg: types.SimpleNamespace, seed: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """int32 `(y0, x0, h, w)` of Odin's discovery crop (`discovery_crop_scale` of the area)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    u = tf.random.stateless_uniform([4], seed)
    return geometry.sample_crop_window(u, h, w, cfg.discovery_crop_scale, cfg.crop_ratio)


def discovery_view(
    cfg: types.SimpleNamespace, window: tf.Tensor, image: tf.Tensor, ids: tf.Tensor | None
) -> dict[str, tf.Tensor]:
    """Odin's discovery view of `window` (`discovery_window`): no flip, no photometric change
    (docs/METHODS.md §6.3).

    Returns:
      `view0` float32 `[S0, S0, 3]`, `box0` float32 `[4]`, `flip0` int32 `[]` (always 0), and
      `mask0` int32 `[S0, S0]` when ids are given; S0 = `discovery_image_size` or `image_size`.
    """
    size = int(cfg.discovery_image_size) or int(cfg.image_size)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    no_flip = tf.constant(False)
    out = {
        "view0": geometry.crop_resize_image(image, window, no_flip, size),
        "box0": geometry.window_to_box(window, h, w),
        "flip0": tf.constant(0, tf.int32),
    }
    if ids is not None:
        out["mask0"] = geometry.crop_resize_ids(ids, window, no_flip, size)
    return out


def image_ids(
    cfg: types.SimpleNamespace, source: Source, ex: Mapping[str, tf.Tensor], hw: tf.Tensor
) -> tf.Tensor | None:
    """The configured mask source of an image example, int32 `[H, W]` (None for `none`)."""
    if cfg.mask_source == "none":
        return None
    if cfg.mask_source == "grid":
        return geometry.grid_ids(hw[0], hw[1], cfg.grid_size)
    if cfg.mask_source == "fh":
        ids = to_ids(source.decode("fh_masks", ex["fh_masks"])[cfg.fh_index])
    else:
        ids = annotated_ids(source.decode("instance_mask", ex["instance_mask"], channels=1), cfg)
    return check_same_size(ids, hw, ex["_key"], f"{cfg.mask_source} mask")


def required_mask_feature(cfg: types.SimpleNamespace, video: bool) -> str | None:
    """The dataset feature the configured `mask_source` reads (None: `none`, `grid`)."""
    if cfg.mask_source == "fh":
        if video:
            raise ValueError("data.mask_source 'fh' is not available for videos (use gt or grid)")
        return "fh_masks"
    if cfg.mask_source == "gt":
        return cfg.video_mask_key if video else "instance_mask"
    return None
