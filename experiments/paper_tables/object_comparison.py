"""SimCLR / BYOL / DetCon_S / DetCon_B / Odin at equal compute (the COCO transfer table of the
DetCon and Odin papers).

    python -m experiments.paper_tables.object_comparison [--quick]

Every method trains the same backbone on the same views with the same batch, steps and LARS
rate; all are evaluated by the same frozen-feature probes. The papers fine-tune Mask R-CNN on
COCO; here the object-level stand-ins are a segmentation probe and k-means object discovery on
the embedded scenes, next to image-level classification probes (`budgets.py`).
"""

from __future__ import annotations

from experiments.paper_tables import budgets, cli, report, runs

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
    return runs.Budget(
        steps=40 if quick else 300,
        batch_size=32 if quick else 64,
        eval_every_steps=0,
        lars_base_lr=budgets.LARS_BASE_LR,
        evals=budgets.image_evals(quick),
        seed=seed,
    )


def build(quick: bool, root: str, seed: int) -> str:
    b = budget(quick, seed)
    ours = {run.label: runs.train(run, b, root)[b.steps] for run in RUNS}
    columns = ["method", "knows obj?", "paper 1x AP^bb", "1x AP^mk", "2x AP^bb", "2x AP^mk"]
    columns += [f"ours: {name}" for _, name in METRICS]
    rows = []
    for label, knows, *paper in PAPER_ROWS:
        rows.append([label, knows, *paper] + [report.pct(ours[label].get(k)) for k, _ in METRICS])
    paper_order = [row[0] for row in PAPER_ROWS]  # ascending COCO AP in the paper
    lines = [
        f"Paper: ResNet-50 pretrained on ImageNet, Mask R-CNN fine-tuned on COCO (1x / 2x "
        f"schedules). Ours: `local` backbone, 48 px views, batch {b.batch_size}, {b.steps} steps, "
        f"LARS base LR {b.lars_base_lr} for every method; frozen-feature probes on the embedded "
        "test scenes, in percent.\n",
        report.table(columns, rows),
        "Agreement with the paper's order (SimCLR < BYOL < DetCon_S < DetCon_B < Odin on COCO):\n",
    ]
    for key, name in METRICS:
        ranked = sorted(paper_order, key=lambda label: ours[label][key])
        pairs = [
            (a, b)
            for i, a in enumerate(paper_order)
            for b in paper_order[i + 1 :]
            if ours[a][key] < ours[b][key]
        ]
        total = len(paper_order) * (len(paper_order) - 1) // 2
        lines.append(
            f"- {name}: ours ascending {' < '.join(ranked)}; {len(pairs)} of {total} pairs in "
            "the paper's order."
        )
    objects = ("DetCon_S", "DetCon_B", "Odin")
    for key, name in METRICS[:2]:
        best_plain = max(ours[label][key] for label in ("SimCLR", "BYOL"))
        above = [label for label in objects if ours[label][key] > best_plain]
        lines.append(
            f"- {name}: object-level methods above the best image-level one: "
            f"{', '.join(above) or 'none'} (paper: all three)."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table(
        "object_comparison", "Object-level vs image-level pretraining at equal compute", build, argv
    )


if __name__ == "__main__":
    main()
