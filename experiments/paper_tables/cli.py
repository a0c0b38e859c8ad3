"""The command line every table shares: `--quick`, `--workdir`, `--seed` (and `--seeds` for a
table that reports a spread over seeds); timing and writing."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from common import console
from experiments.paper_tables import report, runs


def run_table(
    name: str,
    title: str,
    build: Callable[[bool, str, int], str],
    argv: Sequence[str] | None = None,
    *,
    seed_counts: tuple[int, int] | None = None,
) -> str:
    """Parses the table command's flags, builds the table's markdown body with
    `build(quick, workdir_root, seed)`, prepends the provenance header and writes
    `experiments/paper_tables/results/<name>[_quick].md`. Returns the written path.

    With `seed_counts=(full, quick)` the table is built over several pretraining seeds: `--seeds
    N` (default `full`, or `quick` with `--quick`) and `build` gets the tuple `(seed, ...,
    seed + N - 1)` in place of one seed."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m experiments.paper_tables.{name}")
    parser.add_argument(
        "--quick", action="store_true", help="the small budget (at most 10 min on 2 CPU cores)"
    )
    parser.add_argument(
        "--workdir",
        default="workdirs/paper_tables",
        help="root of the runs' workdirs; finished runs found there are reused",
    )
    parser.add_argument("--seed", type=int, default=0, help="the (first) pretraining seed")
    if seed_counts is not None:
        parser.add_argument(
            "--seeds",
            type=int,
            default=None,
            help=f"how many seeds (default {seed_counts[0]}, {seed_counts[1]} with --quick)",
        )
    args = console.parse_quietly(parser, argv[1:])
    seed = args.seed
    if seed_counts is not None:
        count = seed_counts[int(args.quick)] if args.seeds is None else args.seeds
        if count < 2:
            parser.error(f"--seeds must be at least 2 for a spread over seeds, got {count}")
        seed = tuple(range(args.seed, args.seed + count))
    code, start = report.commit(), time.perf_counter()
    body = build(args.quick, args.workdir, seed)
    text = report.header(title, argv, time.perf_counter() - start, code, reused=runs.REUSED)
    text += "\n" + body
    return report.write(name, text, args.quick)
