"""Host input pipelines (tf.data): the entry points for pretraining views, video frame pairs and
evaluation batches.

The host does what must treat an image and its masks together (decode, random resized crop,
flip, resize; docs/ARCHITECTURE.md "common/data"); photometric augmentation happens on device
(`common.augment`). The pieces live in their own modules:

* `common.data.config`: the data fields (`default_data_config`, `resolve_config`), TF-free;
* `common.data.sources`: this process's slice of a TFDS dataset or of a `tf.data.Dataset`;
* `common.data.examples`: per-example code (views, transported ids, checks);
* `common.data.stream`: the seeded, resumable epoch stream, and `StreamSpec`, the arguments
  of every training pipeline;
* `common.data.iterators`: `DataIterator` / `ConcatIterator` and the naming of bad records
  (`BadRecordError`; `data.skip_bad_records` drops and counts them instead).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from common.data import examples, geometry, stream
from common.data.config import FPS_FEATURE, resolve_config
from common.data.iterators import ConcatIterator, DataIterator, make_diagnose
from common.data.sources import Source, open_source
from common.data.stream import StreamSpec

# ---------------------------------------------------------------------------------------------
# Pretraining.


def make_pretrain_iterator(
    data_config: Mapping[str, Any] | None, **spec: Any
) -> DataIterator | ConcatIterator:
    """Two augmented views (with transported masks) per example, for global steps `start_step`+.

    This process's rows of each global batch: the batches of its data shards (`num_shards`),
    concatenated in shard order.

    Args:
      data_config: data fields (`common.data.config.default_data_config`); missing fields take
        their defaults.
      **spec: the fields of `StreamSpec`: `global_batch_size`, `seed` (required), `start_step`,
        `process_index`, `process_count`, `dataset`, `start_position`.

    Returns:
      An iterator (`DataIterator`, or `ConcatIterator` over several data shards) of dicts
      (b = global_batch_size // process_count):
        `view1`, `view2` float32 `[b, S, S, 3]` in [0, 1]; `mask1`, `mask2` int32 `[b, S, S]`
        (unless mask_source is `none`); `box1`, `box2` float32 `[b, 4]` (ymin, xmin, ymax, xmax)
        in the original image; `flip1`, `flip2` int32 `[b]`; `label` int32 `[b]` (-1 if the
        dataset has none); `index` int64 `[b]` position in the global stream. With
        `discovery_view`: `view0` `[b, S0, S0, 3]`, `box0`, `flip0` (and `mask0`), see
        `common.data.examples.discovery_view`.
    """
    return _over_shards(pretrain_dataset, data_config, StreamSpec(**spec))


def pretrain_dataset(
    data_config: Mapping[str, Any] | None, spec: StreamSpec
) -> tuple[tf.data.Dataset, int, Callable]:
    """The batched pretraining `tf.data.Dataset` of one reader (see `make_pretrain_iterator`).

    Returns:
      `(dataset, start_position, diagnose)`; elements also carry `_pos` int64 `[b]`, the
      positions in this reader's stream.
    """
    cfg = resolve_config(data_config)
    mask_key = examples.required_mask_feature(cfg, video=False)
    wanted = ["image", "label"] + ([mask_key] if mask_key else [])
    source = _open(cfg, spec, wanted)
    source.require(["image", mask_key], cfg)
    aug_seed = stream.seed_pair(spec.seed, stream.AUGMENT_TAG)
    size = int(cfg.image_size)

    def fn(pos, ex):
        index = spec.global_index(pos)
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(aug_seed, index), 2
        )
        image = source.decode("image", ex["image"])
        hw = tf.shape(image)[:2]
        ids = examples.image_ids(cfg, source, ex, hw)
        if cfg.discovery_view:
            # Its own key (a fold_in, not a third split), so views 1 and 2 draw the same
            # numbers with or without it.
            discovery_seed = tf.random.experimental.stateless_fold_in(
                seeds[0], stream.DISCOVERY_TAG
            )
            window0 = examples.discovery_window(cfg, discovery_seed, image)
            region = window0 if cfg.views_in_discovery_crop else None
            out = examples.two_views(cfg, seeds, [image, image], [ids, ids], size, region)
            out.update(examples.discovery_view(cfg, window0, image, ids))
        else:
            out = examples.two_views(cfg, seeds, [image, image], [ids, ids], size)
        out.update(label=examples.label_of(ex), index=index, _pos=pos)
        return out

    return _training_batches(source, cfg, spec, fn)


# ---------------------------------------------------------------------------------------------
# Video frame pairs.


def make_video_pair_iterator(
    data_config: Mapping[str, Any] | None, **spec: Any
) -> DataIterator | ConcatIterator:
    """Two frames of one clip per example; this process's data shards concatenated (see
    `video_pair_dataset` for the keys; the arguments are those of `make_pretrain_iterator`)."""
    return _over_shards(video_pair_dataset, data_config, StreamSpec(**spec))


def video_pair_dataset(
    data_config: Mapping[str, Any] | None, spec: StreamSpec
) -> tuple[tf.data.Dataset, int, Callable]:
    """Two frames of one clip, each with its own random resized crop and flip (VITO,
    docs/METHODS.md §7.3).

    The temporal offset `d = frame2 - frame1` is uniform on `[lo, min(hi, T - 1)]` and
    `frame1` uniform on `[0, T - 1 - d]`, so both frames lie in the clip; `lo, hi` are
    `min_offset, max_offset` frames, or, with offsets in seconds (`offset_unit`, see
    `offset_in_seconds`), `ceil(min_offset_seconds * fps), floor(max_offset_seconds * fps)`
    with the clip's own `fps`. A clip with fewer than `lo + 1` frames, or whose frame rate puts
    no whole frame in the seconds range, is a bad record. Only the two frames are decoded.

    The dataset has `video` uint8 `[T, H, W, 3]` (or `[T]` encoded frames), optionally
    `instance_masks` `[T, H, W]` and `label`.

    Returns:
      `(dataset, start_position, diagnose)` as `pretrain_dataset`; the batches hold the
      pretraining keys (views of frame 1 and frame 2) plus `frame1`, `frame2` int32 `[b]`.
    """
    cfg = resolve_config(data_config)
    mask_key = examples.required_mask_feature(cfg, video=True)
    vkey = cfg.video_key
    wanted = [vkey, "label", FPS_FEATURE] + ([mask_key] if mask_key else [])
    source = _open(cfg, spec, wanted)
    source.require([vkey, mask_key], cfg)
    aug_seed = stream.seed_pair(spec.seed, stream.AUGMENT_TAG)
    size = int(cfg.image_size)
    seconds = offset_in_seconds(cfg, source)
    lo_s, hi_s = float(cfg.min_offset_seconds), float(cfg.max_offset_seconds)

    def offset_range(ex):
        """int32 `(lo, hi)` frame offsets of this clip, and the assertion that they exist."""
        if not seconds:
            lo, hi = tf.constant(int(cfg.min_offset)), tf.constant(int(cfg.max_offset))
            return lo, hi, tf.no_op()
        fps = tf.cast(ex[FPS_FEATURE], tf.float32)
        # A tolerance of 1e-3 frame absorbs float32 rates (25 fps x 0.04 s = 1.0000001).
        lo = tf.cast(tf.math.ceil(lo_s * fps - 1e-3), tf.int32)
        hi = tf.cast(tf.math.floor(hi_s * fps + 1e-3), tf.int32)
        ok = tf.debugging.Assert(
            (fps > 0) & (hi >= lo),
            [
                f"bad record: no whole frame offset in [{lo_s:g}, {hi_s:g}] s at the clip's "
                "frame rate (set data.offset_unit=frames, or widen the range); record",
                ex["_key"],
                "fps",
                fps,
            ],
        )
        return lo, hi, ok

    def fn(pos, ex):
        index = spec.global_index(pos)
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(aug_seed, index), 3
        )
        video = ex[vkey]
        t = tf.shape(video)[0]
        lo, hi, rate_ok = offset_range(ex)
        check = tf.debugging.Assert(
            t - 1 >= lo,
            [
                "bad record: clip shorter than the smallest offset + 1 frames; record",
                ex["_key"],
                "frames",
                t,
                "smallest offset",
                lo,
            ],
        )
        with tf.control_dependencies([rate_ok, check]):
            u = tf.random.stateless_uniform([2], seeds[2])
        top = tf.minimum(hi, t - 1)
        d = tf.minimum(lo + tf.cast(u[0] * tf.cast(top - lo + 1, tf.float32), tf.int32), top)
        t1 = tf.minimum(tf.cast(u[1] * tf.cast(t - d, tf.float32), tf.int32), t - d - 1)
        t2 = t1 + d
        frames = [source.decode(vkey, video[t1]), source.decode(vkey, video[t2])]
        hw = tf.shape(frames[0])[:2]
        if cfg.mask_source == "gt":
            masks = source.decode(mask_key, ex[mask_key])
            ids = [examples.annotated_ids(masks[t], cfg) for t in (t1, t2)]  # void: -1
            ids = [
                examples.check_same_size(ids[0], hw, ex["_key"], "frame mask"),
                examples.check_same_size(ids[1], tf.shape(frames[1])[:2], ex["_key"], "frame mask"),
            ]
        elif cfg.mask_source == "grid":
            ids = [geometry.grid_ids(hw[0], hw[1], cfg.grid_size)] * 2
        else:
            ids = [None, None]
        out = examples.two_views(cfg, seeds[:2], frames, ids, size)
        out.update(label=examples.label_of(ex), index=index, _pos=pos, frame1=t1, frame2=t2)
        return out

    return _training_batches(source, cfg, spec, fn)


# ---------------------------------------------------------------------------------------------
# Evaluation.


def offset_in_seconds(cfg: types.SimpleNamespace, source: Source) -> bool:
    """Whether video-pair offsets are counted in seconds (`data.offset_unit`, see
    `common.data.config`): `seconds`, or `auto` on a dataset with a per-clip `fps` feature.

    Raises:
      ValueError: `offset_unit=seconds` on a dataset that records no frame rate.
    """
    has_rate = FPS_FEATURE in source.features
    if cfg.offset_unit == "seconds" and not has_rate:
        raise ValueError(
            f"data.offset_unit='seconds': dataset {cfg.name!r} records no frame rate (no "
            f"{FPS_FEATURE!r} feature; it has {sorted(source.features)}); use offset_unit='frames' "
            "(data.min_offset / max_offset) or a dataset with the rate"
        )
    return cfg.offset_unit == "seconds" or (cfg.offset_unit == "auto" and has_rate)


def make_eval_iterator(
    data_config: Mapping[str, Any] | None,
    split: str | None = None,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
) -> DataIterator:
    """One deterministic pass over `split`, centre-cropped, padded so that nothing is dropped.

    Every process yields the same number of batches, `ceil(max_p N_p / b)` (N_p the size of
    process p's slice), the last ones padded with rows whose `_valid` is False (big_vision), so
    that every example of the split is seen exactly once over all processes.

    Args:
      data_config: data fields; `eval_image_size` (or `image_size`), `eval_crop`,
        `eval_crop_padding` apply.
      split: TFDS split (ignored when `dataset` is given).
      batch_size: global batch size (each process yields `batch_size // process_count` rows).
      process_index: this process.
      process_count: number of processes.
      dataset: read this `tf.data.Dataset` of example dicts instead of the TFDS split.

    Returns:
      A `DataIterator` of dicts: `image` float32 `[b, S, S, 3]` in [0, 1]; `instance_mask`,
      `class_mask` int32 `[b, S, S]` (when the dataset has them; -1 in padding and void);
      `labels` bool `[b, C]` (when present); `label` int32 `[b]` (-1 if absent or padding);
      `index` int64 `[b]` (position in the split, -1 in padding); `_valid` bool `[b]`.
    """
    cfg = resolve_config(data_config)
    b = stream.local_batch(batch_size, process_count)
    split = split if split is not None else cfg.split
    wanted = ["image", "instance_mask", "class_mask", "label", "labels"]
    source = open_source(cfg, split, wanted, process_index, process_count, dataset)
    source.require(["image"], cfg)
    size = int(cfg.eval_image_size or cfg.image_size)
    masks = [k for k in ("instance_mask", "class_mask") if k in source.features]

    def fn(pos, ex):
        image = source.decode("image", ex["image"])
        hw = tf.shape(image)[:2]
        if cfg.eval_crop == "center_crop":
            window = geometry.center_crop_window(hw[0], hw[1], size, cfg.eval_crop_padding)
        else:
            window = geometry.full_window(hw[0], hw[1])
        no_flip = tf.constant(False)
        out = {"image": geometry.crop_resize_image(image, window, no_flip, size)}
        for k in masks:
            ids = examples.annotated_ids(source.decode(k, ex[k], channels=1), cfg)
            ids = examples.check_same_size(ids, hw, ex["_key"], k)
            out[k] = geometry.crop_resize_ids(ids, window, no_flip, size)
        if "labels" in ex:
            out["labels"] = tf.cast(ex["labels"], tf.bool)
        out.update(label=examples.label_of(ex), index=source.offset + pos, _pos=pos, _valid=True)
        return out

    def raw(p):
        return tf.data.Dataset.zip(tf.data.Dataset.counter(0), source.dataset).skip(p)

    records = source.dataset.cache() if cfg.cache else source.dataset
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(0), records)
    ds = stream.map_examples(ds, cfg, fn)
    pad = tf.nest.map_structure(
        lambda s: tf.fill(s.shape, stream.pad_value(s.dtype)), ds.element_spec
    )
    pad["_valid"] = tf.constant(False)
    num_batches = math.ceil(max(source.slice_sizes) / b)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).batch(b).take(num_batches)
    diagnose = make_diagnose(raw, fn, 2 * b)
    return DataIterator(stream.with_options(ds, cfg), position=0, diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Shared by the training pipelines.


def _open(cfg: types.SimpleNamespace, spec: StreamSpec, wanted: list[str]) -> Source:
    return open_source(cfg, cfg.split, wanted, spec.process_index, spec.process_count, spec.dataset)


def _training_batches(
    source: Source, cfg: types.SimpleNamespace, spec: StreamSpec, fn: Callable
) -> tuple[tf.data.Dataset, int, Callable]:
    """`fn` over the reader's epoch stream from `spec.start`, batched, with its diagnosis."""
    b = spec.local_batch
    start = spec.start
    ds = stream.map_examples(stream.epoch_stream(source, cfg, spec.seed, start), cfg, fn)
    ds = ds.batch(b, drop_remainder=True)
    diagnose = make_diagnose(lambda p: stream.epoch_stream(source, cfg, spec.seed, p), fn, 2 * b)
    return stream.with_options(ds, cfg), start, diagnose


def _over_shards(
    make_dataset: Callable, data_config: Mapping[str, Any] | None, spec: StreamSpec
) -> DataIterator | ConcatIterator:
    """This process's data shards (`data.num_shards`), one `DataIterator` each, concatenated."""
    n, shards = stream.data_shards(
        resolve_config(data_config).num_shards, spec.process_index, spec.process_count
    )
    if len(shards) > 1 and spec.start_position is not None:
        raise ValueError("start_position resumes one data shard; this process reads several")
    iterators = []
    for shard in shards:
        shard_spec = dataclasses.replace(spec, process_index=shard, process_count=n)
        ds, start, diagnose = make_dataset(data_config, shard_spec)
        iterators.append(DataIterator(ds, position=start, diagnose=diagnose))
    return iterators[0] if len(iterators) == 1 else ConcatIterator(iterators)
