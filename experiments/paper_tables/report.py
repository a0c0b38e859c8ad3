"""Markdown of the paper tables: provenance header, tables, number formatting, writing."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def commit() -> str:
    """The git commit of the code that produced a table (`+dirty` with uncommitted changes)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + ("+dirty" if dirty else "")


def machine() -> str:
    cores = os.cpu_count()
    memory = ""
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        pass
    return f"{platform.machine()} {platform.system()}, {cores} CPU cores{memory}, no accelerator"


def header(
    title: str, argv: Sequence[str], seconds: float, code: str, reused: Sequence[str] = ()
) -> str:
    """Title and provenance: the exact command, the commit `code` (`commit()` taken when the run
    started: the checkout may move on during an hour-long table), machine, date and wall time."""
    command = "python -m " + " ".join([_module_name(argv[0])] + [shlex.quote(a) for a in argv[1:]])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if reused:
        # One entry per label, with how many of its runs (seeds) were reused.
        counts = {label: reused.count(label) for label in dict.fromkeys(reused)}
        names = [label if n == 1 else f"{label} x{n}" for label, n in counts.items()]
        seconds_note = f" (not counting {', '.join(names)}: trained by an earlier run of a table)"
    else:
        seconds_note = ""
    return (
        f"# {title}\n\n"
        f"- command: `{command}`\n"
        f"- commit: `{code}`\n"
        f"- machine: {machine()}; Python {sys.version.split()[0]}\n"
        f"- date: {date}; wall time {seconds / 60:.1f} min{seconds_note}\n"
    )


def _module_name(path: str) -> str:
    """`.../experiments/paper_tables/detcon_efficiency.py` -> the module's dotted name."""
    name = os.path.splitext(os.path.basename(path))[0]
    return f"experiments.paper_tables.{name}"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def pct(value: float | None) -> str:
    """A score in [0, 1] as the papers print them (percent, one decimal)."""
    return "-" if value is None else f"{100 * value:.1f}"


def gain(value: float, kind: str) -> str:
    """An efficiency gain as the paper prints it: `3.2x`, `> 3.0x` or `<= 1.0x`."""
    prefix = {"exact": "", "more": "> ", "at_most": "<= "}[kind]
    return f"{prefix}{value:.1f}x"


def file_name(name: str, quick: bool) -> str:
    """`<name>.md`, or `<name>_quick.md` for the `--quick` budget: the table's file in
    `results/`."""
    return f"{name}{'_quick' if quick else ''}.md"


def write(name: str, text: str, quick: bool) -> str:
    """Writes `results/<name>[_quick].md`; returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, file_name(name, quick))
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {path}", flush=True)
    return path
