"""Every pretraining method against the random network it starts from, over several seeds.

    python -m experiments.paper_tables.beats_random [--quick] [--seeds N]

The question a newcomer asks first: at the default `local` budget (each method's own `local`
config, unchanged: the README's main job is the BYOL row), does pretraining beat the random
initialisation? Single runs cannot say: seeds move a figure by several points (DetCon_B kNN
top-1 25.6 vs 33.0 for seeds 0 and 1 of an earlier table), more than the sampling of the
evaluation images (about 1 point). So every row is trained and evaluated for N seeds (default
3), and every cell is the mean and the standard error over seeds (sample standard deviation /
sqrt(N)). The random row is the initialisation of the BYOL config at each seed. A method beats
it on a metric when the difference of the means is at least twice the standard error of that
difference, sqrt(SE_method^2 + SE_random^2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from experiments.paper_tables import budgets, cli, report, runs

RUNS = (
    runs.Run("SimCLR", "experiments/simclr.py:local"),
    runs.Run("BYOL", "experiments/byol.py:local"),
    runs.Run("MoCLR", "experiments/moclr.py:local"),
    runs.Run("DetCon_S", "experiments/detcon_s.py:local"),
    runs.Run("DetCon_B", "experiments/detcon_b.py:local"),
    runs.Run("Odin", "experiments/odin.py:local"),
    runs.Run("VITO (videos)", "experiments/vito.py:local"),
)
RANDOM = "Random init"
METRICS = (
    ("linear_probe/top1", "linear top-1"),
    ("knn/top1", "kNN top-1"),
    ("seg_probe/miou", "seg. probe mIoU"),
    ("discovery/abo_i", "ABO^i"),
)
# How many standard errors of the difference count as beating the random network.
MARGIN_SE = 2.0


def budget(quick: bool, seed: int) -> runs.Budget:
    """The default `local` budget (200 steps, batch 64, each config's own optimiser); `--quick`
    cuts it to 40 steps at batch 32."""
    return runs.Budget(
        steps=40 if quick else 200,
        batch_size=32 if quick else 64,
        eval_every_steps=0,
        evals=budgets.image_evals(quick),
        seed=seed,
    )


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); n >= 2."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 values, got {n}")
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def margin(method: Sequence[float], random: Sequence[float]) -> tuple[float, float]:
    """`(difference of means, its standard error)` of two independent sets of seeds."""
    (m, se_m), (r, se_r) = mean_and_se(method), mean_and_se(random)
    return m - r, math.hypot(se_m, se_r)


def cell(values: Sequence[float]) -> str:
    """`mean ± SE` in percent."""
    mean, se = mean_and_se(values)
    return f"{report.pct(mean)} ± {report.pct(se)}"


def per_seed(scores: Mapping[str, Sequence[Mapping[str, float]]], key: str) -> dict[str, list]:
    """`{row: [metric value at each seed]}`."""
    return {label: [s[key] for s in by_seed] for label, by_seed in scores.items()}


def build(quick: bool, root: str, seeds: tuple[int, ...]) -> str:
    first = budget(quick, seeds[0])
    optimiser = runs.optimiser_text(runs.configure(RUNS[1], first))
    scores: dict[str, list[dict[str, float]]] = {RANDOM: []}
    for seed in seeds:
        b = budget(quick, seed)
        scores[RANDOM].append(runs.evaluate_init(RUNS[1], b, root))
        for run in RUNS:
            scores.setdefault(run.label, []).append(runs.train(run, b, root)[b.steps])
    columns = ["pretraining", *(name for _, name in METRICS)]
    values = {key: per_seed(scores, key) for key, _ in METRICS}  # {key: {row: [per seed]}}
    rows = [[label, *(cell(values[key][label]) for key, _ in METRICS)] for label in scores]
    lines = [
        f"Each method's own `local` config: `resnet18` at 48 px views, batch {first.batch_size}, "
        f"{first.steps} steps, {optimiser} (`local_recipe.md`); frozen-feature evaluations "
        f"on the embedded test scenes (`budgets.py`), in percent: mean ± standard error over "
        f"{len(seeds)} pretraining seeds ({', '.join(map(str, seeds))}). The random row is the "
        "BYOL config's initialisation at the same seeds.\n",
        report.table(columns, rows),
        f"Beats the random network by at least {MARGIN_SE:g} standard errors of the difference "
        "(difference of means ± its standard error, in points):\n",
    ]
    verdict_rows = []
    for run in RUNS:
        cells, wins = [run.label], 0
        for key, _ in METRICS:
            values = per_seed(scores, key)
            diff, se = margin(values[run.label], values[RANDOM])
            beats = diff >= MARGIN_SE * se and diff > 0
            wins += beats
            cells.append(f"{100 * diff:+.1f} ± {100 * se:.1f} {'yes' if beats else 'no'}")
        cells.append(f"{wins} of {len(METRICS)}")
        verdict_rows.append(cells)
    verdict_columns = ["method", *(name for _, name in METRICS), "beats random on"]
    lines.append(report.table(verdict_columns, verdict_rows))
    per_seed_lines = ["Per seed (seed: value), for the record:\n"]
    for key, name in METRICS:
        values = per_seed(scores, key)
        cells = "; ".join(
            f"{label} " + ", ".join(report.pct(v) for v in vals) for label, vals in values.items()
        )
        per_seed_lines.append(f"- {name}: {cells}")
    lines.append("\n".join(per_seed_lines))
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table(
        "beats_random",
        "Every method against the random network, over seeds",
        build,
        argv,
        seed_counts=(3, 2),
    )


if __name__ == "__main__":
    main()
