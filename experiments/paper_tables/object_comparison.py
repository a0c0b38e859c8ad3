"""SimCLR / BYOL / DetCon_S / DetCon_B / Odin at equal compute (the COCO transfer table of the
DetCon and Odin papers).

    python -m experiments.paper_tables.object_comparison [--quick] [--seeds N]

Every method trains the same backbone on the same views with the same batch, steps and
optimiser: the default `local` budget, the same runs as `beats_random.py` (a workdir root holding
that table's runs makes this one free). All are evaluated by the same frozen-feature probes;
every cell is the mean and standard error over N pretraining seeds (default 3). The papers
fine-tune Mask R-CNN on COCO; here the object-level stand-ins are a segmentation probe and
k-means object discovery on the embedded scenes, next to image-level classification probes
(`budgets.py`).
"""

from __future__ import annotations

from experiments.paper_tables import beats_random, cli, report, runs

# (method, knows objects?, paper 1x AP^bb, 1x AP^mk, 2x AP^bb, 2x AP^mk)
PAPER_ROWS = (
    ("SimCLR", "no", "39.7", "35.8", "41.6", "37.4"),
    ("BYOL", "no", "41.6", "37.2", "42.4", "38.0"),
    ("DetCon_S", "yes", "41.8", "37.4", "42.9", "38.1"),
    ("DetCon_B", "yes", "42.7", "38.2", "43.4", "38.7"),
    ("Odin", "no", "42.9", "38.4", "43.8", "39.1"),
)
RUNS = (
    runs.Run("SimCLR", "experiments/simclr.py:local"),
    runs.Run("BYOL", "experiments/byol.py:local"),
    runs.Run("DetCon_S", "experiments/detcon_s.py:local"),
    runs.Run("DetCon_B", "experiments/detcon_b.py:local"),
    runs.Run("Odin", "experiments/odin.py:local"),
)
METRICS = (
    ("seg_probe/miou", "seg. probe mIoU"),
    ("discovery/abo_i", "ABO^i"),
    ("linear_probe/top1", "linear top-1"),
    ("knn/top1", "kNN top-1"),
)


def budget(quick: bool, seed: int) -> runs.Budget:
    """The default `local` budget, as `beats_random.py`'s (so the two share their runs)."""
    return beats_random.budget(quick, seed)


def build(quick: bool, root: str, seeds: tuple[int, ...]) -> str:
    b = budget(quick, seeds[0])
    optimiser = runs.optimiser_text(runs.configure(RUNS[1], b))
    # {label: [results of each seed]}
    by_seed = {run.label: [runs.train(run, budget(quick, s), root)[b.steps] for s in seeds]
               for run in RUNS}  # fmt: skip
    values = {k: beats_random.per_seed(by_seed, k) for k, _ in METRICS}  # {key: {row: [...]}}
    mean = {
        label: {k: beats_random.mean_and_se(values[k][label])[0] for k, _ in METRICS}
        for label in by_seed
    }
    columns = ["method", "knows obj?", "paper 1x AP^bb", "1x AP^mk", "2x AP^bb", "2x AP^mk"]
    columns += [f"ours: {name}" for _, name in METRICS]
    rows = []
    for label, knows, *paper in PAPER_ROWS:
        cells = [beats_random.cell(values[k][label]) for k, _ in METRICS]
        rows.append([label, knows, *paper, *cells])
    paper_order = [row[0] for row in PAPER_ROWS]  # ascending COCO AP in the paper
    lines = [
        f"Paper: ResNet-50 pretrained on ImageNet, Mask R-CNN fine-tuned on COCO (1x / 2x "
        f"schedules). Ours: `local` backbone, 48 px views, batch {b.batch_size}, {b.steps} steps, "
        f"{optimiser} for every method; frozen-feature probes on the embedded test "
        f"scenes, in percent: mean ± standard error over {len(seeds)} pretraining seeds "
        f"({', '.join(map(str, seeds))}). The random network's figures are in "
        f"`{report.file_name('beats_random', quick)}`.\n",
        report.table(columns, rows),
        "Agreement with the paper's order (SimCLR < BYOL < DetCon_S < DetCon_B < Odin on COCO), "
        "on the means:\n",
    ]
    for key, name in METRICS:
        ranked = sorted(paper_order, key=lambda label: mean[label][key])
        pairs = [
            (x, y)
            for i, x in enumerate(paper_order)
            for y in paper_order[i + 1 :]
            if mean[x][key] < mean[y][key]
        ]
        total = len(paper_order) * (len(paper_order) - 1) // 2
        lines.append(
            f"- {name}: ours ascending {' < '.join(ranked)}; {len(pairs)} of {total} pairs in "
            "the paper's order."
        )
    objects = ("DetCon_S", "DetCon_B", "Odin")
    for key, name in METRICS[:2]:
        best_plain = max(mean[label][key] for label in ("SimCLR", "BYOL"))
        above = [label for label in objects if mean[label][key] > best_plain]
        lines.append(
            f"- {name}: object-level methods above the best image-level one: "
            f"{', '.join(above) or 'none'} (paper: all three)."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table(
        "object_comparison",
        "Object-level vs image-level pretraining at equal compute",
        build,
        argv,
        seed_counts=(3, 2),
    )


if __name__ == "__main__":
    main()
