"""Host input pipelines (tf.data): pretraining views, video frame pairs, evaluation batches.

The host does what must treat an image and its masks together (decode, random resized crop,
flip, resize; docs/DESIGN.md §2, "data"); photometric augmentation happens on device
(`common.augment`).

Sources. Every `make_*` function reads either the TFDS dataset the config names (`name`,
`data_dir`, `split`; this process reads `tfds.even_splits(split, process_count)[process_index]`)
or, when `dataset=` is given, an already built `tf.data.Dataset` of example dicts (decoded
arrays, or encoded image bytes), of which this process reads the same contiguous even share.

Determinism and resume. The pretraining stream of a process is a pure function of
`(seed, position)`: epoch `e` is this process's slice in a fixed read order (no file shuffling),
shuffled with a buffer seeded by `f(seed, e)`; epochs are concatenated; position `q` of the stream
is example `q mod N` of epoch `q div N` (`N` = examples in the slice). All augmentation randomness
is stateless, seeded by `(seed, index)` with `index` the example's position in the global stream
(`batch * global_batch + process_index * local_batch + row`), so it does not depend on
parallelism. `start_step = k` starts at position `k * local_batch`: it computes the epoch and
offset, and skips the offset inside that epoch's shuffled records *before* the decode/augment map
(records are only read, not decoded). The batches of a run started at step `k` are bitwise
those that a run from step 0 yields at step `k`.

Bad records (a mask whose size differs from its image, an undecodable image, a clip shorter
than `min_offset + 1` frames). With `skip_bad_records=False` (default) iteration raises
`BadRecordError` naming the record (TFDS id such as `name-train.tfrecord-00003-of-00016__17`,
or `record <i>` for a `tf.data.Dataset` source) and its stream position. With
`skip_bad_records=True` they are dropped and counted: `iterator.num_skipped` is the number of
records dropped among the stream positions consumed so far (exact, derived from the positions
the yielded batches carry, so prefetching does not inflate it), and a warning is logged each
time it grows, for the trainer to log as a metric. Skipping keeps the stream deterministic, but
a run resumed by `start_step` then starts `num_skipped` positions early; pass
`start_position=iterator.position` (saved with the checkpoint) for an exact resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import geometry

MASK_SOURCES = ("none", "fh", "gt", "grid")
EVAL_CROPS = ("center_crop", "resize_full")
_INT64_MAX = np.iinfo(np.int64).max
# Domain tags folded into the user seed, so that shuffling and augmentation never share a key.
_SHUFFLE_TAG, _AUGMENT_TAG, _DISCOVERY_TAG = 1, 2, 3

log = logging.getLogger(__name__)


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
      min_offset, max_offset: temporal offset range, in frames, of video frame pairs [DEFAULT];
        `0, 0` cuts both views from the same frame (the single-frame baseline of VITO).
      video_key, video_mask_key: video features (`video` [T,H,W,3], `instance_masks` [T,H,W]).
      build_if_missing: let `common.data.loading.ensure_dataset` build an embedded dataset.
      num_shards: how many disjoint slices the training stream is made of (0: one per process).
        Global batch k is the concatenation of batch k of every slice, so fixing num_shards
        makes the stream independent of the number of processes reading it (a job resumed on a
        different slice of a pod, or one process emulating two). A multiple of process_count.
      discovery_view: also emit Odin's discovery view `view0` (docs/METHODS.md §6.3): a large crop
        of the image, never flipped, with its box `box0` (and `mask0` when there is a mask
        source); the representation views stay crops of the whole image.
      discovery_crop_scale: (min, max) area fraction of the discovery crop [DEFAULT (0.5, 1)].
      discovery_image_size: side of `view0` (0: image_size); a larger view gives k-means a finer
        feature grid.
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
            "eval_image_size": None,
            "eval_crop": "center_crop",
            "eval_crop_padding": 32,
            "kind": "images",
            "min_offset": 1,
            "max_offset": 8,
            "video_key": "video",
            "video_mask_key": "instance_masks",
            "build_if_missing": True,
            "num_shards": 0,
            "discovery_view": False,
            "discovery_crop_scale": (0.5, 1.0),
            "discovery_image_size": 0,
        }
    )


class BadRecordError(ValueError):
    """A record cannot be used (undecodable image, mask size differing from the image, ...)."""


# ---------------------------------------------------------------------------------------------
# Config and sources.


def _resolve_config(data_config: Mapping[str, Any] | None) -> types.SimpleNamespace:
    """Defaults overridden by the given fields; unknown fields are kept (other consumers')."""
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
    if not 0 <= c.min_offset <= c.max_offset:
        raise ValueError(
            f"need 0 <= data.min_offset <= data.max_offset, got {c.min_offset}, {c.max_offset}"
        )
    return c


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the process "
            f"count {process_count}"
        )
    return global_batch_size // process_count


def _even_sizes(n: int, count: int) -> list[int]:
    """Sizes of `count` contiguous even shares of `n` (the first `n % count` get one more)."""
    return [n // count + (1 if i < n % count else 0) for i in range(count)]


@dataclasses.dataclass
class _Source:
    """This process's slice of a dataset, in a fixed order, features not yet decoded."""

    dataset: tf.data.Dataset  # dicts of the wanted features + `_key` (tf.string record name)
    num_examples: int  # in this process's slice
    slice_sizes: list[int]  # of every process's slice
    offset: int  # global index of this slice's first example
    features: frozenset[str]  # features present in the dataset
    decoders: dict[str, Callable[[tf.Tensor], tf.Tensor]]  # encoded feature -> decode function

    def decode(self, key: str, value: tf.Tensor, channels: int = 3) -> tf.Tensor:
        """Decodes an encoded feature (image bytes: uint8 `[H, W, C]`; TFDS features: their own
        decoder); already decoded values pass through."""
        if value.dtype != tf.string:
            return value
        fn = self.decoders.get(key)
        if fn is not None:
            return fn(value)
        return tf.io.decode_image(value, channels=channels, expand_animations=False)


def _get_builder(cfg: types.SimpleNamespace) -> tfds.core.DatasetBuilder:
    # The repository's resolver registers the embedded and repository builders first.
    from common.data import loading

    return loading.get_builder(
        ml_collections.ConfigDict({"name": cfg.name, "data_dir": cfg.data_dir})
    )


def _open_source(
    cfg: types.SimpleNamespace,
    split: str,
    wanted: Sequence[str],
    process_index: int,
    process_count: int,
    dataset: tf.data.Dataset | None,
) -> _Source:
    """Opens this process's slice, reading only the `wanted` features that exist."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if dataset is not None:
        return _open_tf_dataset(dataset, wanted, process_index, process_count)
    builder = _get_builder(cfg)
    features = builder.info.features
    present = [k for k in wanted if k in features]
    splits = tfds.even_splits(split, n=process_count)
    sizes = [builder.info.splits[s].num_examples for s in splits]
    # Encoded features (images, video frames, zlib/bytes tensors such as FH masks) stay encoded
    # until after the skip of a resumed run and the shuffle buffer; `decode` decodes them with the
    # feature's own decoder (right dtype, static shape checks).
    skip, decoders = {}, {}
    for k in present:
        f = features[k]
        if isinstance(f, tfds.features.Video):
            skip[k], decoders[k] = tfds.decode.SkipDecoding(), f.feature.decode_example
        elif _is_encoded(f):
            skip[k], decoders[k] = tfds.decode.SkipDecoding(), f.decode_example
    ds = builder.as_dataset(
        split=splits[process_index],
        shuffle_files=False,  # the order is fixed; shuffling is ours, seeded by the epoch
        decoders=tfds.decode.PartialDecoding({k: True for k in present}, decoders=skip),
        read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False),
    )
    ds = ds.map(lambda ex: {**{k: ex[k] for k in present}, "_key": ex["tfds_id"]})
    return _Source(
        dataset=ds,
        num_examples=sizes[process_index],
        slice_sizes=sizes,
        offset=sum(sizes[:process_index]),
        features=frozenset(present),
        decoders=decoders,
    )


def _is_encoded(feature: tfds.features.FeatureConnector) -> bool:
    """True if the feature is stored as bytes but decodes to something else."""
    info = feature.get_serialized_info()
    if not isinstance(info, tfds.features.TensorInfo):
        return False
    return info.dtype == tf.string and tf.as_dtype(feature.dtype) != tf.string


def _open_tf_dataset(
    dataset: tf.data.Dataset, wanted: Sequence[str], process_index: int, process_count: int
) -> _Source:
    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the dataset must be finite (one pass = one epoch)")
    if n == tf.data.UNKNOWN_CARDINALITY:  # e.g. after a filter: count once
        n = int(dataset.reduce(np.int64(0), lambda c, _: c + 1))
    sizes = _even_sizes(n, process_count)
    offset = sum(sizes[:process_index])
    present = [k for k in wanted if k in dataset.element_spec]

    def select(i, ex):
        return {**{k: ex[k] for k in present}, "_key": tf.strings.format("record {}", i)}

    ds = dataset.enumerate().skip(offset).take(sizes[process_index]).map(select)
    return _Source(ds, sizes[process_index], sizes, offset, frozenset(present), {})


# ---------------------------------------------------------------------------------------------
# Per-example pieces.


def _check_same_size(ids: tf.Tensor, hw: tf.Tensor, key: tf.Tensor, what: str) -> tf.Tensor:
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


def _to_ids(mask: tf.Tensor) -> tf.Tensor:
    """uint8/uint16 `[H, W]` or `[H, W, 1]` -> int32 `[H, W]`."""
    if mask.shape.rank == 3:
        mask = mask[..., 0]
    return tf.cast(mask, tf.int32)


def _label(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return tf.cast(ex["label"], tf.int32) if "label" in ex else tf.constant(-1, tf.int32)


def _views(
    cfg: types.SimpleNamespace,
    seeds: tf.Tensor,
    images: Sequence[tf.Tensor],
    ids: Sequence[tf.Tensor | None],
    image_size: int,
) -> dict[str, tf.Tensor]:
    """Two random resized crops (+ flips) of `images[v]`, with the same geometry for `ids[v]`.

    Args:
      cfg: resolved data config.
      seeds: int `[2, 2]` one stateless seed per view.
      images: two uint8 `[H, W, 3]` images (the same image twice, or two frames).
      ids: two int32 `[H, W]` id maps, or Nones.
      image_size: S.

    Returns:
      `view{v}` float32 `[S, S, 3]`, `box{v}` float32 `[4]`, `flip{v}` int32 `[]`, and
      `mask{v}` int32 `[S, S]` when ids are given, for v = 1, 2.
    """
    out = {}
    for v in range(2):
        image = images[v]
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        u = tf.random.stateless_uniform([5], seeds[v])
        window = geometry.sample_crop_window(u[:4], h, w, cfg.crop_scale, cfg.crop_ratio)
        flip = u[4] < 0.5 if cfg.flip else tf.constant(False)
        name = str(v + 1)
        out["view" + name] = geometry.crop_resize_image(image, window, flip, image_size)
        out["box" + name] = geometry.window_to_box(window, h, w)
        out["flip" + name] = tf.cast(flip, tf.int32)
        if ids[v] is not None:
            out["mask" + name] = geometry.crop_resize_ids(ids[v], window, flip, image_size)
    return out


def _discovery_view(
    cfg: types.SimpleNamespace, seed: tf.Tensor, image: tf.Tensor, ids: tf.Tensor | None
) -> dict[str, tf.Tensor]:
    """Odin's discovery view: a large crop, no flip, no photometric change (docs/METHODS.md §6.3).

    Returns:
      `view0` float32 `[S0, S0, 3]`, `box0` float32 `[4]`, `flip0` int32 `[]` (always 0), and
      `mask0` int32 `[S0, S0]` when ids are given; S0 = `discovery_image_size` or `image_size`.
    """
    size = int(cfg.discovery_image_size) or int(cfg.image_size)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    u = tf.random.stateless_uniform([4], seed)
    window = geometry.sample_crop_window(u, h, w, cfg.discovery_crop_scale, cfg.crop_ratio)
    no_flip = tf.constant(False)
    out = {
        "view0": geometry.crop_resize_image(image, window, no_flip, size),
        "box0": geometry.window_to_box(window, h, w),
        "flip0": tf.constant(0, tf.int32),
    }
    if ids is not None:
        out["mask0"] = geometry.crop_resize_ids(ids, window, no_flip, size)
    return out


def _image_ids(
    cfg: types.SimpleNamespace, source: _Source, ex: Mapping[str, tf.Tensor], hw: tf.Tensor
) -> tf.Tensor | None:
    """The configured mask source of an image example, int32 `[H, W]` (None for `none`)."""
    if cfg.mask_source == "none":
        return None
    if cfg.mask_source == "grid":
        return geometry.grid_ids(hw[0], hw[1], cfg.grid_size)
    if cfg.mask_source == "fh":
        ids = _to_ids(source.decode("fh_masks", ex["fh_masks"])[cfg.fh_index])
    else:
        ids = _to_ids(source.decode("instance_mask", ex["instance_mask"], channels=1))
    return _check_same_size(ids, hw, ex["_key"], f"{cfg.mask_source} mask")


def _required_mask_feature(cfg: types.SimpleNamespace, video: bool) -> str | None:
    if cfg.mask_source == "fh":
        if video:
            raise ValueError("data.mask_source 'fh' is not available for videos (use gt or grid)")
        return "fh_masks"
    if cfg.mask_source == "gt":
        return cfg.video_mask_key if video else "instance_mask"
    return None


def _require(source: _Source, keys: Sequence[str | None], cfg: types.SimpleNamespace) -> None:
    missing = [k for k in keys if k is not None and k not in source.features]
    if missing:
        raise ValueError(
            f"dataset {cfg.name!r} has no feature(s) {missing} needed by this pipeline "
            f"(mask_source={cfg.mask_source!r}); it has {sorted(source.features)}"
        )


# ---------------------------------------------------------------------------------------------
# Stream assembly.


def _seed_pair(seed: int, tag: int) -> tf.Tensor:
    return tf.constant([int(seed) % (1 << 63), tag], tf.int64)


def _epoch_stream(
    source: _Source, cfg: types.SimpleNamespace, seed: int, start_position: int
) -> tf.data.Dataset:
    """`(position, record)` from `start_position` on, forever: epoch after epoch of shuffles."""
    n = source.num_examples
    if n == 0:
        raise ValueError("this process's slice of the dataset is empty")
    first_epoch, first_offset = divmod(start_position, n)
    records = source.dataset.cache() if cfg.cache else source.dataset
    buffer = min(int(cfg.shuffle_buffer), n)
    shuffle_seed = _seed_pair(seed, _SHUFFLE_TAG)

    def epoch(e):
        ds = records
        if buffer > 1:
            # fold_in gives the key (hash(seed), e); a draw from it mixes e into one int64.
            s = tf.random.stateless_uniform(
                [],
                tf.random.experimental.stateless_fold_in(shuffle_seed, e),
                minval=0,
                maxval=np.int64(2**31 - 1),
                dtype=tf.int64,
            )
            # reshuffle_each_iteration=False: the order is the seed's alone (a True here would
            # depend on how many times this dataset was iterated, i.e. on where the run started).
            ds = ds.shuffle(buffer, seed=s, reshuffle_each_iteration=False)
        return ds.skip(tf.where(e == first_epoch, np.int64(first_offset), np.int64(0)))

    records = tf.data.Dataset.range(first_epoch, _INT64_MAX).flat_map(epoch)
    return tf.data.Dataset.zip(tf.data.Dataset.counter(start_position), records)


def _finish(
    ds: tf.data.Dataset, cfg: types.SimpleNamespace, fn: Callable, batch_size: int
) -> tf.data.Dataset:
    """Parallel map, optional dropping of failing records, batching."""
    ds = ds.map(fn, num_parallel_calls=cfg.num_parallel_calls, deterministic=cfg.deterministic)
    if cfg.skip_bad_records:
        # Dropped records leave gaps in `_pos`; DataIterator counts them.
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds


def _with_options(ds: tf.data.Dataset, cfg: types.SimpleNamespace) -> tf.data.Dataset:
    ds = ds.prefetch(cfg.prefetch)
    options = tf.data.Options()
    options.deterministic = bool(cfg.deterministic)
    options.experimental_optimization.map_parallelization = True
    # One thread per op: the parallelism is across examples; intra-op threads would only contend.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


class DataIterator:
    """Iterator of numpy batches, with the bookkeeping a trainer needs.

    Attributes:
      dataset: the underlying batched `tf.data.Dataset` (internal `_pos` field included).
      position: the next stream position of this process (pass it back as `start_position`).
      num_skipped: bad records dropped so far among the consumed positions
        (`skip_bad_records=True`; always 0 otherwise).
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        *,
        position: int,
        diagnose: Callable[[int, Exception], None] | None = None,
    ):
        self.dataset = dataset
        self.position = position
        self.num_skipped = 0
        self._diagnose = diagnose
        self._it = None

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self.dataset.as_numpy_iterator()
        try:
            batch = next(self._it)
        except tf.errors.OpError as e:
            if self._diagnose is not None:
                self._diagnose(self.position, e)  # raises BadRecordError when it finds the record
            raise
        pos = batch.pop("_pos")
        pos = pos[pos >= 0]  # eval padding rows carry -1
        if pos.size:
            end = int(pos[-1]) + 1
            skipped = end - self.position - pos.size
            if skipped:
                self.num_skipped += skipped
                log.warning(
                    "skipped %d bad record(s) before stream position %d (total %d)",
                    skipped,
                    end,
                    self.num_skipped,
                )
            self.position = end
        return batch


class ConcatIterator:
    """One process reading several data shards: their batches concatenated in shard order."""

    def __init__(self, iterators: Sequence[DataIterator]):
        self.iterators = list(iterators)

    def __iter__(self) -> ConcatIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self.iterators]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    @property
    def num_skipped(self) -> int:
        return sum(it.num_skipped for it in self.iterators)


def data_shards(num_shards: int, process_index: int, process_count: int) -> tuple[int, list[int]]:
    """(total shards, the contiguous shards this process reads); 0 means one per process."""
    n = int(num_shards) or process_count
    if n % process_count:
        raise ValueError(
            f"data.num_shards={n} must be a multiple of the number of processes ({process_count})"
        )
    per = n // process_count
    return n, list(range(process_index * per, (process_index + 1) * per))


def _over_shards(make_one, data_config, *, process_index, process_count, start_position, **kw):
    n, shards = data_shards(_resolve_config(data_config).num_shards, process_index, process_count)
    if len(shards) == 1:
        return make_one(
            data_config, process_index=shards[0], process_count=n,
            start_position=start_position, **kw,
        )  # fmt: skip
    if start_position is not None:
        raise ValueError("start_position resumes one data shard; this process reads several")
    return ConcatIterator(
        [make_one(data_config, process_index=s, process_count=n, **kw) for s in shards]
    )


def _make_diagnose(
    raw: Callable[[int], tf.data.Dataset], fn: Callable, window: int
) -> Callable[[int, Exception], None]:
    """On a failed batch, re-runs the records of the next `window` positions one by one (eagerly)
    to name the one that fails; the error the batch raised does not say which it was."""

    def diagnose(position: int, error: Exception) -> None:
        try:
            records = list(raw(position).take(window))
        except tf.errors.OpError:
            return  # reading itself fails (corrupt file): the original error says more
        for pos, ex in records:
            try:
                fn(pos, ex)
            except (tf.errors.OpError, ValueError) as e:
                key = ex["_key"].numpy().decode()
                msg = getattr(e, "message", str(e)).strip().splitlines()[0]
                raise BadRecordError(
                    f"bad record {key} at stream position {int(pos)}: {msg} "
                    "(set data.skip_bad_records=True to skip and count such records)"
                ) from error

    return diagnose


# ---------------------------------------------------------------------------------------------
# Pretraining.


def make_pretrain_dataset(
    data_config: Mapping[str, Any] | None,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
    start_position: int | None = None,
) -> tuple[tf.data.Dataset, int, Callable]:
    """The batched pretraining `tf.data.Dataset` (see `make_pretrain_iterator`).

    Returns:
      `(dataset, start_position, diagnose)`; elements also carry `_pos` int64 `[b]`, the
      positions in this process's stream.
    """
    cfg = _resolve_config(data_config)
    b = _local_batch(global_batch_size, process_count)
    mask_key = _required_mask_feature(cfg, video=False)
    wanted = ["image", "label"] + ([mask_key] if mask_key else [])
    source = _open_source(cfg, cfg.split, wanted, process_index, process_count, dataset)
    _require(source, ["image", mask_key], cfg)
    aug_seed = _seed_pair(seed, _AUGMENT_TAG)
    size = int(cfg.image_size)

    def fn(pos, ex):
        index = (pos // b) * global_batch_size + process_index * b + pos % b
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(aug_seed, index), 2
        )
        image = source.decode("image", ex["image"])
        hw = tf.shape(image)[:2]
        ids = _image_ids(cfg, source, ex, hw)
        out = _views(cfg, seeds, [image, image], [ids, ids], size)
        if cfg.discovery_view:
            # Its own key (a fold_in, not a third split), so views 1 and 2 are the same with
            # or without it.
            discovery_seed = tf.random.experimental.stateless_fold_in(seeds[0], _DISCOVERY_TAG)
            out.update(_discovery_view(cfg, discovery_seed, image, ids))
        out.update(label=_label(ex), index=index, _pos=pos)
        return out

    start = start_step * b if start_position is None else int(start_position)
    ds = _finish(_epoch_stream(source, cfg, seed, start), cfg, fn, b)
    diagnose = _make_diagnose(lambda p: _epoch_stream(source, cfg, seed, p), fn, 2 * b)
    return _with_options(ds, cfg), start, diagnose


def make_pretrain_iterator(
    data_config: Mapping[str, Any] | None,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
    start_position: int | None = None,
) -> DataIterator | ConcatIterator:
    """Two augmented views (with transported masks) per example, for global steps `start_step`+.

    This process's rows of each global batch: the batches of its data shards (`num_shards`),
    concatenated in shard order. See `make_shard_pretrain_iterator` for the arguments and keys.
    """
    return _over_shards(
        make_shard_pretrain_iterator,
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        dataset=dataset,
        start_position=start_position,
    )


def make_shard_pretrain_iterator(
    data_config: Mapping[str, Any] | None,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
    start_position: int | None = None,
) -> DataIterator:
    """Two augmented views (with transported masks) per example, for global steps `start_step`+.

    Args:
      data_config: data fields (`default_data_config`); missing fields take their defaults.
      global_batch_size: examples per global step; must be a multiple of `process_count`.
      seed: data seed (shuffling and augmentation).
      start_step: first global step yielded (resume).
      process_index: this process (`jax.process_index()`).
      process_count: number of processes (`jax.process_count()`).
      dataset: read this `tf.data.Dataset` of example dicts instead of the TFDS dataset.
      start_position: overrides `start_step` with an exact stream position (`iterator.position`).

    Returns:
      A `DataIterator` of dicts (b = global_batch_size // process_count):
        `view1`, `view2` float32 `[b, S, S, 3]` in [0, 1]; `mask1`, `mask2` int32 `[b, S, S]`
        (unless mask_source is `none`); `box1`, `box2` float32 `[b, 4]` (ymin, xmin, ymax, xmax)
        in the original image; `flip1`, `flip2` int32 `[b]`; `label` int32 `[b]` (-1 if the
        dataset has none); `index` int64 `[b]` position in the global stream. With
        `discovery_view`: `view0` `[b, S0, S0, 3]`, `box0`, `flip0` (and `mask0`), see
        `_discovery_view`.
    """
    ds, start, diagnose = make_pretrain_dataset(
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        dataset=dataset,
        start_position=start_position,
    )
    return DataIterator(ds, position=start, diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Video frame pairs.


def make_video_pair_iterator(
    data_config: Mapping[str, Any] | None,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
    start_position: int | None = None,
) -> DataIterator | ConcatIterator:
    """Two frames of one clip per example; this process's data shards concatenated (see
    `make_shard_video_pair_iterator` for the arguments and keys)."""
    return _over_shards(
        make_shard_video_pair_iterator,
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        dataset=dataset,
        start_position=start_position,
    )


def make_shard_video_pair_iterator(
    data_config: Mapping[str, Any] | None,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    dataset: tf.data.Dataset | None = None,
    start_position: int | None = None,
) -> DataIterator:
    """Two frames of one clip, each with its own random resized crop and flip (VITO, §7.3).

    The temporal offset `d = frame2 - frame1` is uniform on `[min_offset, min(max_offset,
    T - 1)]` and `frame1` uniform on `[0, T - 1 - d]`, so both frames lie in the clip; a clip
    with fewer than `min_offset + 1` frames is a bad record. Only the two frames are decoded.

    Args: as `make_pretrain_iterator`; the dataset has `video` uint8 `[T, H, W, 3]` (or `[T]`
      encoded frames), optionally `instance_masks` `[T, H, W]` and `label`.

    Returns:
      A `DataIterator` of the pretraining keys (views of frame 1 and frame 2) plus `frame1`,
      `frame2` int32 `[b]`.
    """
    cfg = _resolve_config(data_config)
    b = _local_batch(global_batch_size, process_count)
    mask_key = _required_mask_feature(cfg, video=True)
    vkey = cfg.video_key
    wanted = [vkey, "label"] + ([mask_key] if mask_key else [])
    source = _open_source(cfg, cfg.split, wanted, process_index, process_count, dataset)
    _require(source, [vkey, mask_key], cfg)
    aug_seed = _seed_pair(seed, _AUGMENT_TAG)
    size = int(cfg.image_size)
    lo, hi = int(cfg.min_offset), int(cfg.max_offset)
    if lo < 0 or hi < lo:
        raise ValueError(f"data.min_offset, max_offset: need 0 <= min <= max, got {lo}, {hi}")

    def fn(pos, ex):
        index = (pos // b) * global_batch_size + process_index * b + pos % b
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(aug_seed, index), 3
        )
        video = ex[vkey]
        t = tf.shape(video)[0]
        check = tf.debugging.Assert(
            t - 1 >= lo,
            [
                f"bad record: clip shorter than min_offset + 1 = {lo + 1} frames; record",
                ex["_key"],
                "frames",
                t,
            ],
        )
        with tf.control_dependencies([check]):
            u = tf.random.stateless_uniform([2], seeds[2])
        top = tf.minimum(hi, t - 1)
        d = tf.minimum(lo + tf.cast(u[0] * tf.cast(top - lo + 1, tf.float32), tf.int32), top)
        t1 = tf.minimum(tf.cast(u[1] * tf.cast(t - d, tf.float32), tf.int32), t - d - 1)
        t2 = t1 + d
        frames = [source.decode(vkey, video[t1]), source.decode(vkey, video[t2])]
        hw = tf.shape(frames[0])[:2]
        if cfg.mask_source == "gt":
            masks = source.decode(mask_key, ex[mask_key])
            ids = [
                _check_same_size(_to_ids(masks[t1]), hw, ex["_key"], "frame mask"),
                _check_same_size(
                    _to_ids(masks[t2]), tf.shape(frames[1])[:2], ex["_key"], "frame mask"
                ),
            ]
        elif cfg.mask_source == "grid":
            ids = [geometry.grid_ids(hw[0], hw[1], cfg.grid_size)] * 2
        else:
            ids = [None, None]
        out = _views(cfg, seeds[:2], frames, ids, size)
        out.update(label=_label(ex), index=index, _pos=pos, frame1=t1, frame2=t2)
        return out

    start = start_step * b if start_position is None else int(start_position)
    ds = _finish(_epoch_stream(source, cfg, seed, start), cfg, fn, b)
    diagnose = _make_diagnose(lambda p: _epoch_stream(source, cfg, seed, p), fn, 2 * b)
    return DataIterator(_with_options(ds, cfg), position=start, diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Evaluation.


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
      `class_mask` int32 `[b, S, S]` (when the dataset has them; -1 in padding); `labels` bool
      `[b, C]` (when present); `label` int32 `[b]` (-1 if absent or padding); `index` int64
      `[b]` (position in the split, -1 in padding); `_valid` bool `[b]`.
    """
    cfg = _resolve_config(data_config)
    b = _local_batch(batch_size, process_count)
    split = split if split is not None else cfg.split
    wanted = ["image", "instance_mask", "class_mask", "label", "labels"]
    source = _open_source(cfg, split, wanted, process_index, process_count, dataset)
    _require(source, ["image"], cfg)
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
            ids = _check_same_size(_to_ids(source.decode(k, ex[k], channels=1)), hw, ex["_key"], k)
            out[k] = geometry.crop_resize_ids(ids, window, no_flip, size)
        if "labels" in ex:
            out["labels"] = tf.cast(ex["labels"], tf.bool)
        out.update(label=_label(ex), index=source.offset + pos, _pos=pos, _valid=True)
        return out

    def raw(p):
        return tf.data.Dataset.zip(tf.data.Dataset.counter(0), source.dataset).skip(p)

    records = source.dataset.cache() if cfg.cache else source.dataset
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(0), records)
    ds = ds.map(fn, num_parallel_calls=cfg.num_parallel_calls, deterministic=cfg.deterministic)
    if cfg.skip_bad_records:
        ds = ds.ignore_errors(log_warning=True)
    pad = tf.nest.map_structure(lambda s: tf.fill(s.shape, _pad_value(s.dtype)), ds.element_spec)
    pad["_valid"] = tf.constant(False)
    num_batches = math.ceil(max(source.slice_sizes) / b)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).batch(b).take(num_batches)
    diagnose = _make_diagnose(raw, fn, 2 * b)
    return DataIterator(_with_options(ds, cfg), position=0, diagnose=diagnose)


def _pad_value(dtype: tf.DType):
    if dtype == tf.bool:
        return False
    if dtype.is_floating:
        return tf.constant(0, dtype)
    return tf.constant(-1, dtype)  # ids, labels, index, _pos: -1 = none
