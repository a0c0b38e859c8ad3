"""Crop windows and their application to images and id maps (host side, TensorFlow).

Everything geometric about a view lives here so that an image and its mask id map go through the
same window and the same flip, and so that a view can be reproduced from the crop box it emits.

A *window* is an int32 `[4]` tensor `(y0, x0, h, w)` in pixels of the original image; a *box* is
the same window as float32 `(ymin, xmin, ymax, xmax)` normalised by the original height/width.
"""

from __future__ import annotations

import math

import tensorflow as tf


def sample_crop_window(
    uniforms: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """DeepMind's random resized crop window (docs/METHODS.md §1.7), without a retry loop.

    Area fraction `s ~ U(scale)`, log aspect `log r ~ U(log ratio)`, `w = round(sqrt(s A r))`,
    `h = round(sqrt(s A / r))`, each clipped to the image (so the effective aspect may change),
    then uniform integer offsets.

    Args:
      uniforms: float32 `[4]` independent U(0, 1) draws (area, log aspect, y offset, x offset);
        taking them as input keeps the randomness (stateless, seeded by the caller) outside.
      height: int32 scalar, image height H.
      width: int32 scalar, image width W.
      scale: (min, max) area fraction.
      ratio: (min, max) aspect ratio w / h.

    Returns:
      int32 `[4]` window `(y0, x0, h, w)` with `1 <= h <= H`, `1 <= w <= W`.
    """
    hf = tf.cast(height, tf.float32)
    wf = tf.cast(width, tf.float32)
    area = hf * wf
    s = scale[0] + (scale[1] - scale[0]) * uniforms[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = tf.exp(log_lo + (log_hi - log_lo) * uniforms[1])
    w = tf.clip_by_value(tf.round(tf.sqrt(s * area * r)), 1.0, wf)
    h = tf.clip_by_value(tf.round(tf.sqrt(s * area / r)), 1.0, hf)
    # floor(u * (n + 1)) is uniform on {0..n}; the min guards u == 1 - eps rounding up.
    y0 = tf.minimum(tf.floor(uniforms[2] * (hf - h + 1.0)), hf - h)
    x0 = tf.minimum(tf.floor(uniforms[3] * (wf - w + 1.0)), wf - w)
    return tf.cast(tf.stack([y0, x0, h, w]), tf.int32)


def center_crop_window(
    height: tf.Tensor, width: tf.Tensor, image_size: int, padding: int = 32
) -> tf.Tensor:
    """DeepMind's evaluation crop: a centred square of side `S / (S + padding) * min(H, W)`.

    Args:
      height: int32 scalar H.
      width: int32 scalar W.
      image_size: output size S.
      padding: the crop covers `S / (S + padding)` of the shorter side (0: the whole side).

    Returns:
      int32 `[4]` window `(y0, x0, h, w)`.
    """
    side = tf.cast(
        image_size / (image_size + padding) * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32,
    )
    side = tf.maximum(side, 1)
    y0 = (height - side + 1) // 2
    x0 = (width - side + 1) // 2
    return tf.stack([y0, x0, side, side])


def full_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The window covering the whole image: int32 `[4]` `(0, 0, H, W)`."""
    return tf.stack([0, 0, tf.cast(height, tf.int32), tf.cast(width, tf.int32)])


def window_to_box(window: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """int32 window `(y0, x0, h, w)` -> float32 box `(ymin, xmin, ymax, xmax)` in [0, 1]."""
    w = tf.cast(window, tf.float32)
    hf = tf.cast(height, tf.float32)
    wf = tf.cast(width, tf.float32)
    return tf.stack([w[0] / hf, w[1] / wf, (w[0] + w[2]) / hf, (w[1] + w[3]) / wf])


def box_to_window(box, height: int, width: int):
    """Inverse of `window_to_box` (numpy or TF): float box -> integer window `(y0, x0, h, w)`.

    Exact for boxes produced by `window_to_box` (rounding absorbs the float error).
    """
    y0 = round(float(box[0]) * height)
    x0 = round(float(box[1]) * width)
    y1 = round(float(box[2]) * height)
    x1 = round(float(box[3]) * width)
    return y0, x0, y1 - y0, x1 - x0


def _maybe_flip(x: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    return tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(x, axis=[1]), lambda: x)


def crop_resize_image(
    image: tf.Tensor, window: tf.Tensor, flip: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Crops a window, resizes it bicubically to `S x S`, flips, scales to [0, 1].

    The flip is applied after the resize; with half-pixel centres the bicubic resize is mirror
    symmetric, so this equals flipping the crop first, and it touches fewer pixels.

    Args:
      image: uint8 (or float in [0, 255]) `[H, W, C]`.
      window: int32 `[4]` `(y0, x0, h, w)`.
      flip: bool/int scalar, 1 = flip left-right.
      image_size: S.

    Returns:
      float32 `[S, S, C]` in [0, 1].
    """
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    crop.set_shape([None, None, image.shape[-1]])  # tf.slice forgets the channel count
    out = tf.image.resize(crop, [image_size, image_size], method="bicubic", antialias=False)
    out = tf.clip_by_value(out / 255.0, 0.0, 1.0)
    return _maybe_flip(out, flip)


def crop_resize_ids(
    ids: tf.Tensor, window: tf.Tensor, flip: tf.Tensor, image_size: int
) -> tf.Tensor:
    """The id-map counterpart of `crop_resize_image`: same window and flip, nearest resize.

    Args:
      ids: int32 `[H, W]` segment ids (-1 = no id).
      window: int32 `[4]` `(y0, x0, h, w)`.
      flip: bool/int scalar.
      image_size: S.

    Returns:
      int32 `[S, S]`.
    """
    crop = tf.slice(ids, [window[0], window[1]], [window[2], window[3]])
    out = tf.image.resize(crop[..., None], [image_size, image_size], method="nearest")[..., 0]
    return _maybe_flip(tf.cast(out, tf.int32), flip)


def grid_ids(height: tf.Tensor, width: tf.Tensor, grid_size: int) -> tf.Tensor:
    """The spatial-heuristic mask of DetCon: an `n x n` grid of ids over the original image.

    Args:
      height: int32 scalar H.
      width: int32 scalar W.
      grid_size: n; ids are `row * n + col`, row/col = `floor(y * n / H)`, `floor(x * n / W)`.

    Returns:
      int32 `[H, W]` with ids in `[0, n * n)`.
    """
    rows = tf.range(height, dtype=tf.int32) * grid_size // tf.cast(height, tf.int32)
    cols = tf.range(width, dtype=tf.int32) * grid_size // tf.cast(width, tf.int32)
    return rows[:, None] * grid_size + cols[None, :]
