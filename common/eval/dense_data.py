"""Evaluation batches with dense labels at the masks' own resolution (object discovery, seg probe).

`make_eval_iterator` (common.data.pipeline) centre-crops and resizes masks to the network's size;
object discovery and segmentation are scored at the resolution of the ground truth instead, so
this reader resizes only the *image* (the whole image, bicubic, to `S x S`, no crop) and keeps
every mask at its own size, top-left aligned on a fixed canvas padded with -1 (ignore), with
`mask_hw` telling each mask's size. The canvas is the dataset's static mask shape when it has one
(the embedded `synthetic_scenes`: its image size), else `max_mask_size` square; a mask whose
longer side exceeds `max_mask_size` is resized (nearest) to fit, keeping its aspect ratio (COCO's
images are at most 640 px, so the default keeps them exact).

Sources (by the features the dataset has):
* `instance_mask` / `class_mask` (the embedded `synthetic_scenes`, `coco_folder`, `folder_images`
  with `name_mask.png` / `name_class.png` files): 0 background, ids/classes+1 (a folder's class
  ids as its files give them).
* `mask` (a dataset with instance ids under that name only): instance ids, 0 background; no
  classes. (`folder_images` 1.0.0's `mask` arrives as `instance_mask`, `common.data.sources`.)
* `panoptic_image` + `panoptic_objects` (TFDS `coco/2017_panoptic`): see `panoptic_masks`.
  TFDS `coco/2017` carries boxes only (no masks), so COCO object discovery needs the panoptic
  config, whose masks are non-overlapping (the panoptic annotations resolve the overlaps of the
  instance annotations), and whose crowd regions become "ignore".
* `segments`: an id map to score instead of k-means: `fh` (channel `fh_index` of the stored
  `fh_masks`) or any dataset feature holding ids (e.g. `instance_mask`); compacted per image to
  `0..n-1` (n <= `max_segments`).

Void (`common.data.void`): in the annotated masks above (not in `segments`), pixels equal to
the data config's `void_label` (default `auto`: 255 in 8-bit masks) become -1, the same
"ignore" value as the padding, so they count in no area of ABO / OR, are no instance, and are
left out of the segmentation probe's loss and confusion matrix.

Like `make_eval_iterator`, every process yields `ceil(max_p N_p / b)` batches, the last ones
padded with `_valid = False` rows, so the batches can become global arrays on any number of hosts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from common.data import examples, geometry, stream
from common.data.config import resolve_config
from common.data.iterators import DataIterator
from common.data.sources import open_source

# TFDS `coco/2017_panoptic` lists the 80 "thing" categories first (COCO's panoptic category
# file orders them by id: things 1..90, stuff 92..200), so `label < 80` marks a thing.
COCO_NUM_THING_CLASSES = 80
_WANTED = (
    "image", "instance_mask", "class_mask", "mask", "panoptic_image", "panoptic_objects",
    "fh_masks", "label",
)  # fmt: skip


def panoptic_masks(
    panoptic_image: tf.Tensor, objects: Mapping[str, tf.Tensor], num_thing_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """COCO panoptic PNG + its segment list -> (instance ids, class ids), int32 `[H, W]` each.

    A pixel's segment id is `R + 256 G + 256^2 B` (COCO panoptic format; 0 = unlabelled). Thing
    segments (label < `num_thing_classes`) that are not crowd become instances `1..n` in the
    order of the segment list, with class `label + 1`; crowd thing segments become -1 (ignored,
    as COCO's evaluation ignores crowd regions); stuff and unlabelled pixels are background 0,
    as in COCO's instance annotations, where everything but the objects is background.

    Args:
      panoptic_image: uint8 `[H, W, 3]`.
      objects: `id` int64 `[n]`, `label` int64 `[n]`, `is_crowd` bool `[n]`.
      num_thing_classes: 80 for COCO.
    """
    rgb = tf.cast(panoptic_image, tf.int64)
    pid = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    labels = tf.cast(objects["label"], tf.int32)
    crowd = tf.cast(objects["is_crowd"], tf.bool)
    thing = labels < num_thing_classes
    kept = thing & ~crowd
    # A sentinel segment (id -1, never a pixel's id) keeps the lookups valid for empty lists.
    ids = tf.concat([tf.cast(objects["id"], tf.int64), [-1]], 0)
    instance_of = tf.concat([tf.where(kept, tf.cumsum(tf.cast(kept, tf.int32)), -1), [0]], 0)
    class_of = tf.concat([tf.where(kept, labels + 1, -1), [0]], 0)
    thing = tf.concat([thing, [False]], 0)
    order = tf.argsort(ids)
    sorted_ids = tf.gather(ids, order)
    flat = tf.reshape(pid, [-1])
    pos = tf.minimum(tf.searchsorted(sorted_ids, flat), tf.size(ids) - 1)
    found = tf.equal(tf.gather(sorted_ids, pos), flat)
    j = tf.gather(order, pos)
    is_thing = found & tf.gather(thing, j)
    shape = tf.shape(pid)
    instance = tf.reshape(tf.where(is_thing, tf.gather(instance_of, j), 0), shape)
    classes = tf.reshape(tf.where(is_thing, tf.gather(class_of, j), 0), shape)
    return instance, classes


def _compact(ids: tf.Tensor, max_segments: int, key: tf.Tensor) -> tf.Tensor:
    """Relabels an id map `[H, W]` to `0..n-1` (order of first appearance)."""
    _, idx = tf.unique(tf.reshape(ids, [-1]))
    check = tf.debugging.Assert(
        tf.reduce_max(idx) < max_segments,
        [f"segments: more than max_segments={max_segments} segments in record", key],
    )
    with tf.control_dependencies([check]):
        return tf.reshape(idx, tf.shape(ids))


def _fit(ids: tf.Tensor, canvas: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Nearest-resizes `[H, W]` ids to fit in `canvas` (only if larger), pads with -1.

    Returns the padded map `[Hc, Wc]` and the size `[2]` of the map inside it.
    """
    hw = tf.shape(ids)[:2]
    scale = tf.minimum(
        1.0,
        tf.minimum(canvas[0] / tf.cast(hw[0], tf.float32), canvas[1] / tf.cast(hw[1], tf.float32)),
    )
    new_hw = tf.maximum(tf.cast(tf.floor(tf.cast(hw, tf.float32) * scale), tf.int32), 1)
    new_hw = tf.minimum(new_hw, tf.constant(canvas, tf.int32))

    def shrink():
        return tf.cast(tf.image.resize(ids[..., None], new_hw, method="nearest")[..., 0], tf.int32)

    resized = tf.cond(tf.reduce_all(tf.equal(new_hw, hw)), lambda: ids, shrink)
    padded = (
        tf.pad(resized + 1, [[0, canvas[0] - new_hw[0]], [0, canvas[1] - new_hw[1]]]) - 1
    )  # pad value -1: shift by one, pad zeros, shift back
    padded = tf.ensure_shape(padded, canvas)
    return padded, new_hw


def _static_hw(source: Any, key: str) -> tuple[int, int] | None:
    """The static `(H, W)` of a mask feature, if the source declares one."""
    spec = source.dataset.element_spec.get(key)
    shape = getattr(spec, "shape", None)
    if shape is not None and shape.rank and shape.rank >= 2 and None not in shape[:2]:
        return int(shape[0]), int(shape[1])
    if spec is not None and spec.dtype == tf.string and source.decoders.get(key) is not None:
        fn = source.decoders[key]
        feature = getattr(fn, "__self__", None)
        fshape = getattr(feature, "shape", None)
        if fshape is not None and len(fshape) >= 2 and None not in fshape[:2]:
            return int(fshape[0]), int(fshape[1])
    return None


def dense_label_batches(
    data_config: Mapping[str, Any] | None,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    segments: str | None = None,
    fh_index: int = 0,
    max_mask_size: int = 640,
    max_segments: int = 256,
    num_thing_classes: int = COCO_NUM_THING_CLASSES,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over `split`: images for the network, masks at their own size.

    Args:
      data_config: data fields (`name`, `data_dir`, ...; see `default_data_config`).
      split: TFDS split (ignored when `dataset` is given).
      batch_size: global batch size; this process yields `batch_size // process_count` rows.
      image_size: S, the network's input size (the whole image is resized to `S x S`).
      segments: None, `fh`, or a feature name: also yield that id map as `segments`.
      fh_index: FH channel for `segments='fh'`.
      max_mask_size: canvas side for datasets without a static mask size.
      max_segments: upper bound on the ids of `segments` after compaction.
      num_thing_classes: COCO panoptic: labels below it are things.
      process_index: this process.
      process_count: number of processes.
      dataset: a `tf.data.Dataset` of example dicts to read instead of the TFDS split.

    Yields:
      dicts of numpy arrays (b rows): `image` float32 `[b, S, S, 3]` in [0, 1];
      `instance_mask` int32 `[b, Hc, Wc]` (0 background, -1 void/crowd/padding, 1.. objects);
      `class_mask` int32 `[b, Hc, Wc]` when the dataset has classes (0 background, c + 1);
      `segments` int32 `[b, Hc, Wc]` when asked; `mask_hw` int32 `[b, 2]` each mask's size;
      `label` int32 `[b]` (-1 if none); `_valid` bool `[b]`.
    """
    cfg = resolve_config(data_config)
    b = stream.local_batch(batch_size, process_count)
    wanted = list(_WANTED)
    if segments not in (None, "fh") and segments not in wanted:
        wanted.append(segments)
    source = open_source(cfg, split, wanted, process_index, process_count, dataset)
    feats = source.features
    if "instance_mask" in feats:
        kind, inst_key = "embedded", "instance_mask"
    elif "mask" in feats:
        kind, inst_key = "folder", "mask"
    elif "panoptic_image" in feats and "panoptic_objects" in feats:
        kind, inst_key = "panoptic", "panoptic_image"
    else:
        raise ValueError(
            f"dataset {cfg.name!r} has no instance masks (instance_mask, mask, or COCO "
            f"panoptic_image + panoptic_objects; TFDS coco/2017 has boxes only, use "
            f"coco/2017_panoptic); it has {sorted(feats)}"
        )
    seg_key = "fh_masks" if segments == "fh" else segments
    if seg_key is not None and seg_key not in feats:
        raise ValueError(f"segments={segments!r}: dataset {cfg.name!r} has no {seg_key!r}")
    static = _static_hw(source, inst_key)
    canvas = static if static and max(static) <= max_mask_size else (max_mask_size,) * 2
    has_classes = kind == "panoptic" or "class_mask" in feats

    def ids_of(ex, key):
        if key == "fh_masks":
            return examples.to_ids(source.decode(key, ex[key])[fh_index])
        return examples.to_ids(source.decode(key, ex[key], channels=1))

    def annotated_ids(ex, key):
        """An annotated mask with its void pixels -1 (the void id follows the stored dtype)."""
        return examples.annotated_ids(source.decode(key, ex[key], channels=1), cfg)

    def fn(pos, ex):
        image = source.decode("image", ex["image"])
        hw = tf.shape(image)[:2]
        window = geometry.full_window(hw[0], hw[1])
        out = {"image": geometry.crop_resize_image(image, window, tf.constant(False), image_size)}
        if kind == "panoptic":
            pan = source.decode("panoptic_image", ex["panoptic_image"], channels=3)
            inst, cls = panoptic_masks(pan, ex["panoptic_objects"], num_thing_classes)
            maps = {"instance_mask": inst, "class_mask": cls}
        else:
            maps = {"instance_mask": annotated_ids(ex, inst_key)}
            if has_classes:
                maps["class_mask"] = annotated_ids(ex, "class_mask")
        if seg_key is not None:
            maps["segments"] = _compact(ids_of(ex, seg_key), max_segments, ex["_key"])
        for name, ids in maps.items():
            ids = examples.check_same_size(ids, hw, ex["_key"], name)
            out[name], out["mask_hw"] = _fit(ids, canvas)
        out.update(label=examples.label_of(ex), _pos=pos, _valid=True)
        return out

    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(0), source.dataset)
    ds = ds.map(fn, num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
    pad = tf.nest.map_structure(
        lambda s: tf.fill(s.shape, stream.pad_value(s.dtype)), ds.element_spec
    )
    pad["_valid"] = tf.constant(False)
    pad["mask_hw"] = tf.constant(canvas, tf.int32)  # padded rows: an all-ignore full canvas
    num_batches = -(-max(source.slice_sizes) // b)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).batch(b).take(num_batches)
    return DataIterator(stream.with_options(ds, cfg), position=0)
