"""Felzenszwalb-Huttenlocher (FH) segment ids: settings, storage dtype and the one FH call.

DetCon computes `skimage.segmentation.felzenszwalb(image, scale=1000, min_size=1000)` once per
image, on the full-resolution uint8 RGB image (docs/METHODS.md §5.2). Those values were tuned on
ImageNet photographs of about 400x350 pixels. Both parameters are in units of pixels: `min_size` is
a segment area, and `scale` is divided by a component's area in FH's merge criterion
(`internal difference + scale / |C|`). On a 64x64 image (4,096 pixels, 34x fewer than 140,000)
the unscaled values give one segment per image, so `scaled_fh_setting` scales both by the ratio of
pixel counts, which keeps the expected number of segments per image roughly constant:

  ========  =======  ===============================
  image     pixels   default (scale, min_size)
  ========  =======  ===============================
  400x350   140,000  (1000, 1000)  (DetCon)
  224x224    50,176  (358, 358)
  128x128    16,384  (117, 117)
  64x64       4,096  (29, 29)
  ========  =======  ===============================

Storage dtype: ids are `0 .. n-1`. After FH's small-segment merge every segment has at least
`min_size` pixels (each edge of a too-small segment is visited once and merges it), so an image of
`P` pixels has at most `P // min_size` segments. For a dataset with a fixed image size that bound
decides the dtype up front (`fh_dtype_for_size`); for datasets with images of any size the dtype
is chosen from a first pass (`common.data.fh_masks`). In every case ids are checked against the
dtype and an overflow is an error naming the record, never a silent wrap-around (DeepMind's
released code casts to uint8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Pixel count of the ~400x350 ImageNet photo that skimage's defaults (1000, 1000) were tuned for.
REFERENCE_PIXELS = 400 * 350
DETCON_FH_SETTING = (1000.0, 1000)
FH_SIGMA = 0.8  # skimage's default Gaussian pre-smoothing, what DetCon used.

FhSetting = tuple[float, int]


class FhOverflowError(ValueError):
    """Raised when segment ids do not fit the storage dtype (instead of wrapping)."""


def scaled_fh_setting(
    num_pixels: int,
    setting: FhSetting = DETCON_FH_SETTING,
    reference_pixels: int = REFERENCE_PIXELS,
) -> FhSetting:
    """Scales an FH (scale, min_size) pair from an ImageNet-sized image to `num_pixels` pixels.

    Args:
      num_pixels: pixel count (H * W) of the images to segment.
      setting: the (scale, min_size) pair at the reference size.
      reference_pixels: the reference pixel count (400 * 350).

    Returns:
      `(scale, min_size)` with both scaled by `num_pixels / reference_pixels`, `scale` rounded to
      an integer value (kept as float) and `min_size` at least 1.
    """
    ratio = num_pixels / reference_pixels
    scale, min_size = setting
    return float(max(round(scale * ratio), 1)), int(max(round(min_size * ratio), 1))


def default_fh_settings(height: int, width: int) -> tuple[FhSetting, ...]:
    """DetCon's single FH setting scaled to an `height` x `width` image."""
    return (scaled_fh_setting(height * width),)


def max_segments(height: int, width: int, min_size: int) -> int:
    """Upper bound on the number of FH segments of an `height` x `width` image."""
    return (height * width) // max(int(min_size), 1)


def dtype_for_num_ids(num_ids: int) -> np.dtype:
    """Smallest of uint8 / uint16 that holds ids `0 .. num_ids - 1`.

    Raises:
      FhOverflowError: if more than 65,536 ids are needed.
    """
    if num_ids <= 256:
        return np.dtype(np.uint8)
    if num_ids <= 65536:
        return np.dtype(np.uint16)
    raise FhOverflowError(f"{num_ids} segment ids do not fit in uint16")


def fh_dtype_for_size(height: int, width: int, settings: Sequence[FhSetting]) -> np.dtype:
    """Storage dtype that can hold every id for images of a fixed size (from the bound)."""
    bound = max(max_segments(height, width, min_size) for _, min_size in settings)
    try:
        return dtype_for_num_ids(bound)
    except FhOverflowError as e:
        raise FhOverflowError(
            f"FH settings {tuple(settings)} can give up to {bound} segments on {height}x{width} "
            "images, more than uint16 holds; use a larger min_size"
        ) from e


def parse_fh_settings(text: str) -> tuple[FhSetting, ...]:
    """Parses `"1000:1000,500:500"` into `((1000.0, 1000), (500.0, 500))`."""
    settings = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            scale, min_size = item.split(":")
            settings.append((float(scale), int(min_size)))
        except ValueError as e:
            raise ValueError(f"bad FH setting {item!r}: expected SCALE:MIN_SIZE") from e
    if not settings:
        raise ValueError(f"no FH setting in {text!r}")
    return tuple(settings)


def felzenszwalb_ids(image: np.ndarray, settings: Sequence[FhSetting]) -> np.ndarray:
    """FH segment ids of one image for each setting, as int32 `[n_fh, H, W]`.

    Args:
      image: uint8 `[H, W, 3]` RGB (`[H, W]` or `[H, W, 1]` grey is expanded to RGB the way
        `tf.image.decode_image(..., channels=3)` does, by repetition).
      settings: `(scale, min_size)` pairs.

    Returns:
      int32 `[len(settings), H, W]` ids `0 .. n-1` per setting, exactly what
      `skimage.segmentation.felzenszwalb(image, scale=scale, sigma=0.8, min_size=min_size)` returns.
    """
    from skimage.segmentation import felzenszwalb  # import here: workers that never segment

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    out = np.empty((len(settings),) + image.shape[:2], dtype=np.int32)
    for i, (scale, min_size) in enumerate(settings):
        out[i] = felzenszwalb(image, scale=scale, sigma=FH_SIGMA, min_size=int(min_size))
    return out


def cast_ids(ids: np.ndarray, dtype, *, record: str = "") -> np.ndarray:
    """Casts segment ids to the storage dtype, raising instead of wrapping.

    Args:
      ids: integer array of segment ids.
      dtype: target unsigned dtype (uint8 or uint16).
      record: a name for the record, used in the error message.

    Raises:
      FhOverflowError: if an id does not fit `dtype`.
    """
    dtype = np.dtype(dtype)
    limit = np.iinfo(dtype).max
    top = int(ids.max()) if ids.size else 0
    if top > limit or (ids.size and int(ids.min()) < 0):
        where = f" in record {record}" if record else ""
        raise FhOverflowError(
            f"FH segment id {top}{where} does not fit {dtype.name} (max {limit}): "
            f"{top + 1} segments; store the masks as uint16 or use a larger min_size"
        )
    return ids.astype(dtype)


def fh_masks(image: np.ndarray, settings: Sequence[FhSetting], dtype, *, record: str = ""):
    """`felzenszwalb_ids` cast to `dtype` with the overflow check: `[n_fh, H, W]`."""
    return cast_ids(felzenszwalb_ids(image, settings), dtype, record=record)
