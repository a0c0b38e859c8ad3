"""Consecutive record ranges of a TFDS dataset's splits: the unit of work of the Beam pipelines
(FH masks, video curation), each read with TFDS's `split[start:end]` slicing."""

from __future__ import annotations

import dataclasses


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
