"""The training stream: epochs of seeded shuffles, resumable at any position, and its batching.

The pretraining stream of a reader (a process, or one data shard) is a pure function of
`(seed, position)`: epoch `e` is the reader's slice in a fixed read order (no file shuffling),
shuffled with a buffer seeded by `f(seed, e)`; epochs are concatenated; position `q` of the stream
is example `q mod N` of epoch `q div N` (`N` = examples in the slice). All augmentation randomness
is stateless, seeded by `(seed, index)` with `index` the example's position in the global stream
(`StreamSpec.global_index`), so it does not depend on parallelism. A stream started at position
`p` computes the epoch and offset and skips the offset inside that epoch's shuffled records
*before* the decode/augment map (records are only read, not decoded): the batches of a run
started at step `k` are bitwise those that a run from step 0 yields at step `k`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from common.data.sources import Source

_INT64_MAX = np.iinfo(np.int64).max
# Domain tags folded into the user seed, so that shuffling and augmentation never share a key.
SHUFFLE_TAG, AUGMENT_TAG, DISCOVERY_TAG = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Which batches of a training stream one reader yields (the arguments every training
    pipeline takes, `make_pretrain_iterator(data_config, **fields)`).

    Attributes:
      global_batch_size: examples per global step; must be a multiple of `process_count`.
      seed: data seed (shuffling and augmentation).
      start_step: first global step yielded (resume).
      process_index: this reader (`jax.process_index()`, or a data shard).
      process_count: number of readers (`jax.process_count()`, or of data shards).
      dataset: read this `tf.data.Dataset` of example dicts instead of the TFDS dataset.
      start_position: overrides `start_step` with an exact stream position (`iterator.position`).
    """

    global_batch_size: int
    seed: int
    start_step: int = 0
    process_index: int = 0
    process_count: int = 1
    dataset: tf.data.Dataset | None = None
    start_position: int | None = None

    def __post_init__(self):
        local_batch(self.global_batch_size, self.process_count)  # raises on a bad batch size

    @property
    def local_batch(self) -> int:
        """This reader's rows of a global batch."""
        return self.global_batch_size // self.process_count

    @property
    def start(self) -> int:
        """The first stream position this reader yields."""
        if self.start_position is not None:
            return int(self.start_position)
        return self.start_step * self.local_batch

    def global_index(self, pos: tf.Tensor) -> tf.Tensor:
        """Position `pos` of this reader's stream -> position in the global stream
        (`batch * global_batch + process_index * local_batch + row`)."""
        b = self.local_batch
        return (pos // b) * self.global_batch_size + self.process_index * b + pos % b


def local_batch(global_batch_size: int, process_count: int) -> int:
    """`global_batch_size // process_count`; ValueError unless a positive multiple."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the process "
            f"count {process_count}"
        )
    return global_batch_size // process_count


def data_shards(num_shards: int, process_index: int, process_count: int) -> tuple[int, list[int]]:
    """(total shards, the contiguous shards this process reads); 0 means one per process."""
    n = int(num_shards) or process_count
    if n % process_count:
        raise ValueError(
            f"data.num_shards={n} must be a multiple of the number of processes ({process_count})"
        )
    per = n // process_count
    return n, list(range(process_index * per, (process_index + 1) * per))


def seed_pair(seed: int, tag: int) -> tf.Tensor:
    """The stateless key `[seed, tag]` int64 `[2]` of one use (`*_TAG`) of the user seed."""
    return tf.constant([int(seed) % (1 << 63), tag], tf.int64)


def epoch_stream(
    source: Source, cfg: types.SimpleNamespace, seed: int, start_position: int
) -> tf.data.Dataset:
    """`(position, record)` from `start_position` on, forever: epoch after epoch of shuffles."""
    n = source.num_examples
    if n == 0:
        raise ValueError("this process's slice of the dataset is empty")
    first_epoch, first_offset = divmod(start_position, n)
    records = source.dataset.cache() if cfg.cache else source.dataset
    buffer = min(int(cfg.shuffle_buffer), n)
    shuffle_seed = seed_pair(seed, SHUFFLE_TAG)

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


def map_examples(ds: tf.data.Dataset, cfg: types.SimpleNamespace, fn: Callable) -> tf.data.Dataset:
    """`fn` over `(position, record)` pairs in parallel; failing records dropped (and logged)
    when `cfg.skip_bad_records`, which leaves gaps in `_pos` that `DataIterator` counts."""
    ds = ds.map(fn, num_parallel_calls=cfg.num_parallel_calls, deterministic=cfg.deterministic)
    if cfg.skip_bad_records:
        ds = ds.ignore_errors(log_warning=True)
    return ds


def with_options(ds: tf.data.Dataset, cfg: types.SimpleNamespace) -> tf.data.Dataset:
    """Prefetching and the options every pipeline runs with (determinism, parallelism)."""
    ds = ds.prefetch(cfg.prefetch)
    options = tf.data.Options()
    options.deterministic = bool(cfg.deterministic)
    options.experimental_optimization.map_parallelization = True
    # One thread per op: the parallelism is across examples; intra-op threads would only contend.
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def pad_value(dtype: tf.DType):
    """What fills a padding row of a one-pass (evaluation) batch: False, 0.0, or -1 (ids,
    labels, index, `_pos`: none)."""
    if dtype == tf.bool:
        return False
    if dtype.is_floating:
        return tf.constant(0, dtype)
    return tf.constant(-1, dtype)
