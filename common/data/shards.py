"""Consecutive record ranges of a TFDS dataset's splits: the unit of work of the Beam pipelines
(FH masks, video curation), each read with TFDS's `split[start:end]` slicing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Shard:
    """Records `[start, end)` of one split of a dataset."""

    split: str
    start: int
    end: int

    @property
    def tfds_split(self) -> str:
        """The TFDS split string that reads exactly these records."""
        return f"{self.split}[{self.start}:{self.end}]"

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.start:010d}-{self.end:010d}.npz"


def plan_shards(split_sizes: dict[str, int], records_per_shard: int) -> list[Shard]:
    """Cuts every split into consecutive ranges of `records_per_shard` records."""
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
    return [
        Shard(split, start, min(start + records_per_shard, size))
        for split, size in split_sizes.items()
        for start in range(0, size, records_per_shard)
    ]


def plan_source_shards(
    source, splits: Sequence[str] | None, records_per_shard: int
) -> tuple[list[str], list[Shard]]:
    """`(splits, shards)`: the named splits (all when None or empty) of a prepared TFDS builder
    `source`, and their shards.

    Raises:
      ValueError: a split the source does not have (naming it and the ones it has).
    """
    available = dict(source.info.splits.items())
    splits = list(splits) if splits else list(available)
    missing = [s for s in splits if s not in available]
    if missing:
        raise ValueError(
            f"{source.info.full_name} has no split {missing}; it has {list(available)}"
        )
    return splits, plan_shards({s: available[s].num_examples for s in splits}, records_per_shard)
