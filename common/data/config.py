"""The data fields of a config (`config.data`): their defaults and their validation.

Imports no TensorFlow: experiment configs (`experiments/*.py`) take their data defaults from here,
and loading a config must stay cheap (a command line that only prints a config, a test that
checks every experiment).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from common.data import void

MASK_SOURCES = ("none", "fh", "gt", "grid")
EVAL_CROPS = ("center_crop", "resize_full")
OFFSET_UNITS = ("auto", "seconds", "frames")
FPS_FEATURE = "fps"  # a video's frame rate, float32 per clip (folder_builders videos)


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults of every data field (an unlocked ConfigDict; experiments update it).

    Fields:
      name: TFDS dataset name (with config/version if needed), e.g. `synthetic_scenes`.
      data_dir: TFDS data directory (empty: TFDS default).
      split: pretraining split (any TFDS split expression, e.g. `train[:90%]`).
      image_size: view size S (224 in the papers).
      mask_source: `none` | `fh` (channel `fh_index` of `fh_masks`) | `gt` (`instance_mask`) |
        `grid` (a `grid_size x grid_size` grid over the original image).
      fh_index: which stored Felzenszwalb segmentation to use.
      grid_size: n of the n x n grid.
      crop_scale: (min, max) area fraction of the random resized crop; VITO uses a larger min.
      crop_ratio: (min, max) aspect ratio of the crop (sampled log-uniformly).
      flip: random horizontal flip with p = 0.5.
      shuffle_buffer: examples in the per-epoch shuffle buffer (<= 1: no shuffling).
      cache: keep the records (as read, before decoding) in memory after the first epoch;
        for small datasets.
      skip_bad_records: drop and count bad records instead of raising.
      num_parallel_calls: parallelism of the decode/augment map (-1: AUTOTUNE).
      prefetch: batches prefetched (-1: AUTOTUNE).
      deterministic: keep element order under parallelism (required for exact resume).
      eval_image_size: evaluation size (None: image_size).
      eval_crop: `center_crop` (side S/(S+eval_crop_padding) of the short side) | `resize_full`.
      eval_crop_padding: 32 as in DeepMind's evaluation.
      kind: what the trainer reads: `images` (two views of one image,
        `make_pretrain_iterator`) or `video_pairs` (two frames of one clip,
        `make_video_pair_iterator`; VITO).
      offset_unit: unit of the temporal offset between the two frames of a video pair:
        `seconds` (`min/max_offset_seconds`, converted per clip with its `fps` feature),
        `frames` (`min/max_offset`), or `auto` (default): seconds when the dataset records a
        frame rate (a per-clip `fps` feature, as `folder_builders videos` writes), else frames.
        In frames the meaning of an offset changes with each dataset's frame rate.
      min_offset, max_offset: temporal offset range in frames [DEFAULT]; `0, 0` cuts both views
        from the same frame (the single-frame baseline of VITO).
      min_offset_seconds, max_offset_seconds: temporal offset range in seconds [DEFAULT 0.04,
        2.0: 1..50 frames at 25 fps; docs/METHODS.md §7.3 suggests sweeping the maximum over
        {0, 0.5, 1, 2.5} s]; per clip the offset is a whole number of frames in
        `[ceil(min * fps), floor(max * fps)]`.
      video_key, video_mask_key: video features (`video` [T,H,W,3], `instance_masks` [T,H,W]).
      build_if_missing: let `common.data.loading.ensure_dataset` build an embedded dataset.
      num_shards: how many disjoint slices the training stream is made of (0: one per process).
        Global batch k is the concatenation of batch k of every slice, so fixing num_shards
        makes the stream independent of the number of processes reading it (a job resumed on a
        different slice of a pod, or one process emulating two). A multiple of process_count.
      discovery_view: also emit Odin's discovery view `view0` (docs/METHODS.md §6.3): a large crop
        of the image, never flipped, with its box `box0` (and `mask0` when there is a mask
        source).
      views_in_discovery_crop: with `discovery_view`, cut both views (random resized crops of
        `crop_scale` of the discovery crop's area) from inside the discovery crop, so that every
        view pixel has a discovery id; False: crops of the whole image, as without Odin.
      discovery_crop_scale: (min, max) area fraction of the discovery crop [DEFAULT (0.5, 1)].
      discovery_image_size: side of `view0` (0: image_size); a larger view gives k-means a finer
        feature grid.
      void_label: the void id of the dataset's annotated masks (`common.data.void`): `auto`
        [DEFAULT] (255 in 8-bit masks, PASCAL VOC / DAVIS), an id, or `none`. Void pixels get
        id -1 in every pipeline (no DetCon sample, no area in the evaluations).
    """
    return ml_collections.ConfigDict(
        {
            "name": "synthetic_scenes",
            "data_dir": "",  # empty: the TFDS default; a string so --config can override it
            "split": "train",
            "image_size": 224,
            "mask_source": "none",
            "fh_index": 0,
            "grid_size": 4,
            "crop_scale": (0.08, 1.0),
            "crop_ratio": (3 / 4, 4 / 3),
            "flip": True,
            "shuffle_buffer": 10_000,
            "cache": False,
            "skip_bad_records": False,
            "num_parallel_calls": -1,
            "prefetch": -1,
            "deterministic": True,
            # A typed placeholder: None, yet overridable (--config.data.eval_image_size=96).
            "eval_image_size": ml_collections.config_dict.placeholder(int),
            "eval_crop": "center_crop",
            "eval_crop_padding": 32,
            "kind": "images",
            "offset_unit": "auto",
            "min_offset": 1,
            "max_offset": 8,
            "min_offset_seconds": 0.04,
            "max_offset_seconds": 2.0,
            "video_key": "video",
            "video_mask_key": "instance_masks",
            "build_if_missing": True,
            "num_shards": 0,
            "discovery_view": False,
            "views_in_discovery_crop": True,
            "discovery_crop_scale": (0.5, 1.0),
            "discovery_image_size": 0,
            "void_label": void.DEFAULT,
        }
    )


def resolve_config(data_config: Mapping[str, Any] | None) -> types.SimpleNamespace:
    """The validated data fields: defaults overridden by the given ones.

    Unknown fields are kept (they belong to other consumers of `config.data`). The result is a
    plain namespace (`cfg.image_size`, ...), the form every pipeline module reads.

    Raises:
      ValueError: a field out of its range, naming the field, what it must be and its value.
    """
    cfg = default_data_config().to_dict()
    if data_config is not None:
        given = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
        cfg.update(given)
    c = types.SimpleNamespace(**cfg)
    if c.mask_source not in MASK_SOURCES:
        raise ValueError(f"data.mask_source must be one of {MASK_SOURCES}, got {c.mask_source!r}")
    lo, hi = c.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {c.crop_scale}")
    if not 0 < c.crop_ratio[0] <= c.crop_ratio[1]:
        raise ValueError(f"data.crop_ratio must satisfy 0 < min <= max, got {c.crop_ratio}")
    if c.eval_crop not in EVAL_CROPS:
        raise ValueError(f"data.eval_crop must be one of {EVAL_CROPS}, got {c.eval_crop!r}")
    try:
        c.void_label = void.check_setting(c.void_label)
    except ValueError as e:
        raise ValueError(f"data.{e}") from None
    if not 0 <= c.min_offset <= c.max_offset:
        raise ValueError(
            f"need 0 <= data.min_offset <= data.max_offset, got {c.min_offset}, {c.max_offset}"
        )
    if c.offset_unit not in OFFSET_UNITS:
        raise ValueError(f"data.offset_unit must be one of {OFFSET_UNITS}, got {c.offset_unit!r}")
    if not 0 <= c.min_offset_seconds <= c.max_offset_seconds:
        raise ValueError(
            "need 0 <= data.min_offset_seconds <= data.max_offset_seconds, got "
            f"{c.min_offset_seconds}, {c.max_offset_seconds}"
        )
    return c
