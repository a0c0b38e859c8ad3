"""Iterators of numpy batches over the pipelines, and the naming of bad records.

Bad records (a mask whose size differs from its image, an undecodable image, a clip shorter
than `min_offset + 1` frames). With `skip_bad_records=False` (default) iteration raises
`BadRecordError` naming the record (TFDS id such as `name-train.tfrecord-00003-of-00016__17`,
or `record <i>` for a `tf.data.Dataset` source) and its stream position. With
`skip_bad_records=True` they are dropped and counted: `iterator.num_skipped` is the number of
records dropped among the stream positions consumed so far (exact, derived from the positions
the yielded batches carry, so prefetching does not inflate it), and a warning is logged each
time it grows, for the trainer to log as a metric. Skipping keeps the stream deterministic, but
a run resumed by `start_step` then starts `num_skipped` positions early; pass
`start_position=iterator.position` for an exact resume (the trainer saves `positions`, one per
data shard, with every checkpoint and resumes each shard from its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


class BadRecordError(ValueError):
    """A record cannot be used (undecodable image, mask size differing from the image, ...)."""


def make_diagnose(
    raw: Callable[[int], tf.data.Dataset], fn: Callable, window: int
) -> Callable[[int, Exception], None]:
    """On a failed batch, re-runs the records of the next `window` positions one by one (eagerly)
    to name the one that fails; the error the batch raised does not say which it was.

    Args:
      raw: position -> `(position, record)` pairs from that position on, not yet mapped.
      fn: the pipeline's per-example map, `(position, record) -> example`.
      window: how many positions to try (two batches: a failed batch may hold prefetched rows).

    Returns:
      `diagnose(position, error)`, which raises `BadRecordError` naming the failing record, or
      returns when none of the window fails alone (the caller re-raises `error`).
    """

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

    @property
    def positions(self) -> list[int]:
        """`[position]`: the next stream position of the one data shard read."""
        return [self.position]

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

    @property
    def positions(self) -> list[int]:
        """The next stream position of each data shard read, in shard order."""
        return [it.position for it in self.iterators]
