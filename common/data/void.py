"""The void label of annotated masks: pixels that are neither an object nor background.

PASCAL VOC (`SegmentationObject` / `SegmentationClass` PNGs), DAVIS and Cityscapes-style 8-bit
masks mark object outlines, difficult regions and unlabelled areas with 255 ("void"); COCO's
`iscrowd` regions play the same part (`common.data.folder_builders` writes them as 255). Void
is not an object and not background; wherever this framework reads an *annotated* mask
(`instance_mask`, `class_mask`, a folder's `mask`, a video's `instance_masks`) it becomes -1,
the framework's "no id / ignore" value, so that:

* object discovery (ABO / OR, `common.eval.overlap`) leaves void pixels out of every area and
  never counts void as an instance;
* the segmentation probe ignores them in its loss and its confusion matrix (mIoU);
* label propagation excludes them from J and F (DAVIS's `void_pixels`);
* the training pipelines give them id -1, which DetCon's mask sampling (`common.masks`) never
  picks and which belongs to no binary mask.

Generated id maps (Felzenszwalb segments, grids, k-means clusters) have no void: an FH segment
numbered 255 is a segment.

Setting (per dataset: the data config's `void_label`, and the `void_label` option of evaluators
that read a dataset of their own):
* `auto` [DEFAULT]: 255 for 8-bit masks (the PASCAL VOC / DAVIS convention), no void for wider
  masks (a 16-bit mask may use every id);
* an int `v >= 1`: pixels equal to `v` are void, whatever the mask's dtype;
* `none` (or None): no void, every value is an id (255 is then an object like any other).
"""

from __future__ import annotations

from typing import Any

import numpy as np

AUTO = "auto"
DEFAULT = AUTO
VOID_8BIT = 255


def check_setting(void_label: Any) -> Any:
    """Validates a `void_label` setting; returns it normalised (`auto`, None or an int).

    Raises:
      ValueError: naming the setting, for anything but `auto`, `none`/None or an int >= 1.
    """
    if void_label is None:
        return None
    if isinstance(void_label, str):
        word = void_label.strip().lower()
        if word == AUTO:
            return AUTO
        if word == "none":
            return None
        try:
            void_label = int(word)
        except ValueError:
            raise ValueError(
                f"void_label must be 'auto', 'none' or an id >= 1, got {void_label!r}"
            ) from None
    if isinstance(void_label, bool) or not isinstance(void_label, int | np.integer):
        raise ValueError(f"void_label must be 'auto', 'none' or an id >= 1, got {void_label!r}")
    if void_label < 1:
        raise ValueError(f"void_label must be >= 1 (0 is background), got {void_label}")
    return int(void_label)


def resolve(void_label: Any, dtype) -> int | None:
    """The void id of a mask stored with `dtype` (numpy or TensorFlow), or None for no void."""
    setting = check_setting(void_label)
    if setting != AUTO:
        return setting
    # A TensorFlow dtype carries its numpy twin; a numpy dtype or scalar type is one.
    numpy_dtype = np.dtype(getattr(dtype, "as_numpy_dtype", dtype))
    return VOID_8BIT if numpy_dtype == np.uint8 else None


def to_ignore(ids: np.ndarray, void_id: int | None) -> np.ndarray:
    """int `[...]` ids with the void id replaced by -1 (numpy; a copy when anything changes)."""
    ids = np.asarray(ids).astype(np.int32)
    if void_id is None:
        return ids
    return np.where(ids == void_id, -1, ids).astype(np.int32)


def to_ignore_tf(mask, void_label: Any):
    """A decoded mask (uint8/uint16 `[H, W]` or `[H, W, 1]`, or int) -> int32 `[H, W]` with void
    pixels -1. `void_label` is resolved against the mask's *stored* dtype (see the module doc)."""
    import tensorflow as tf

    void_id = resolve(void_label, mask.dtype)
    if mask.shape.rank == 3:
        mask = mask[..., 0]
    ids = tf.cast(mask, tf.int32)
    if void_id is None:
        return ids
    return tf.where(tf.equal(ids, void_id), tf.constant(-1, tf.int32), ids)
