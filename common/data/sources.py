"""Where pipeline examples come from: this process's slice of a dataset, in a fixed order.

A source is either the TFDS dataset the config names (`name`, `data_dir`; this process reads
`tfds.even_splits(split, process_count)[process_index]`) or an already built `tf.data.Dataset`
of example dicts (decoded arrays, or encoded image bytes), of which this process reads the same
contiguous even share. Features stay encoded (image and video bytes, zlib tensors) until a
pipeline decodes them with `Source.decode`: after the skip of a resumed run and after the shuffle
buffer, so that skipping and shuffling only move bytes.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


@dataclasses.dataclass
class Source:
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

    def require(self, keys: Sequence[str | None], cfg: types.SimpleNamespace) -> None:
        """Raises ValueError naming the dataset and the `keys` (None entries ignored) it lacks."""
        missing = [k for k in keys if k is not None and k not in self.features]
        if missing:
            raise ValueError(
                f"dataset {cfg.name!r} has no feature(s) {missing} needed by this pipeline "
                f"(mask_source={cfg.mask_source!r}); it has {sorted(self.features)}"
            )


def open_source(
    cfg: types.SimpleNamespace,
    split: str,
    wanted: Sequence[str],
    process_index: int,
    process_count: int,
    dataset: tf.data.Dataset | None,
) -> Source:
    """Opens this process's slice, reading only the `wanted` features that exist.

    Args:
      cfg: resolved data fields (`common.data.config.resolve_config`); `name` and `data_dir`
        name the TFDS dataset.
      split: TFDS split expression (ignored when `dataset` is given).
      wanted: feature names to read; the absent ones are left out (see `Source.features`).
      process_index: this process's slice.
      process_count: number of slices.
      dataset: read this finite `tf.data.Dataset` of example dicts instead of TFDS.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if dataset is not None:
        return _open_tf_dataset(dataset, wanted, process_index, process_count)
    builder = _get_builder(cfg)
    features = builder.info.features
    stored = _stored_names(builder)  # wanted name -> the name the dataset stores it under
    present = [k for k in wanted if stored.get(k, k) in features]
    on_disk = {k: stored.get(k, k) for k in present}
    splits = tfds.even_splits(split, n=process_count)
    sizes = [builder.info.splits[s].num_examples for s in splits]
    # Encoded features (images, video frames, zlib/bytes tensors such as FH masks) stay encoded
    # until after the skip of a resumed run and the shuffle buffer; `decode` decodes them with the
    # feature's own decoder (right dtype, static shape checks).
    skip, decoders = {}, {}
    for k, name in on_disk.items():
        f = features[name]
        if isinstance(f, tfds.features.Video):
            skip[name], decoders[k] = tfds.decode.SkipDecoding(), f.feature.decode_example
        elif _is_encoded(f):
            skip[name], decoders[k] = tfds.decode.SkipDecoding(), f.decode_example
    ds = builder.as_dataset(
        split=splits[process_index],
        shuffle_files=False,  # the order is fixed; shuffling is ours, seeded by the epoch
        decoders=tfds.decode.PartialDecoding(dict.fromkeys(on_disk.values(), True), decoders=skip),
        read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False),
    )
    ds = ds.map(lambda ex: {**{k: ex[n] for k, n in on_disk.items()}, "_key": ex["tfds_id"]})
    return Source(
        dataset=ds,
        num_examples=sizes[process_index],
        slice_sizes=sizes,
        offset=sum(sizes[:process_index]),
        features=frozenset(present),
        decoders=decoders,
    )


def _stored_names(builder: tfds.core.DatasetBuilder) -> dict[str, str]:
    """Features an older version of a repository builder stored under another name: `folder_images`
    1.0.0 wrote its instance masks as `mask` (2.0.0: `instance_mask`, the name every pipeline
    reads), so datasets prepared then still train with `mask_source=gt` and feed the evaluators.
    Limited to that builder: another dataset's `mask` may hold something else (a class map)."""
    if builder.name == "folder_images" and builder.version.major == 1:
        return {"instance_mask": "mask"}
    return {}


def _get_builder(cfg: types.SimpleNamespace) -> tfds.core.DatasetBuilder:
    # The repository's resolver registers the embedded and repository builders first.
    from common.data import loading

    return loading.get_builder(
        ml_collections.ConfigDict({"name": cfg.name, "data_dir": cfg.data_dir})
    )


def _is_encoded(feature: tfds.features.FeatureConnector) -> bool:
    """True if the feature is stored as bytes but decodes to something else."""
    info = feature.get_serialized_info()
    if not isinstance(info, tfds.features.TensorInfo):
        return False
    return info.dtype == tf.string and tf.as_dtype(feature.dtype) != tf.string


def _even_sizes(n: int, count: int) -> list[int]:
    """Sizes of `count` contiguous even shares of `n` (the first `n % count` get one more)."""
    return [n // count + (1 if i < n % count else 0) for i in range(count)]


def _open_tf_dataset(
    dataset: tf.data.Dataset, wanted: Sequence[str], process_index: int, process_count: int
) -> Source:
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
    return Source(ds, sizes[process_index], sizes, offset, frozenset(present), {})
