"""DetCon_B vs BYOL by pretraining budget, and the efficiency gain (DetCon paper, Table 1).

    python -m experiments.paper_tables.detcon_efficiency [--quick]

BYOL and DetCon_B train with the same backbone, views, batch, steps and optimiser. The paper
compares 300 and 1000 epochs; here the short budget is a third of the long one. Efficiency gain,
as in the paper: how many times more steps BYOL needs to reach DetCon_B's short-budget score
(BYOL is evaluated along its whole run and the crossing interpolated); "> x" when BYOL does not
reach it within the long budget.
"""

from __future__ import annotations

from experiments.paper_tables import budgets, cli, report, runs

PAPER = """Paper (ResNet-50, ImageNet pretraining, then fine-tuned; O. Hénaff, "The virtuous cycle of object discovery and representation learning", ECCV 2022 SSL workshop talk; docs/METHODS.md §9):

| | COCO det 300 | COCO det 1000 | COCO inst-seg 300 | 1000 | PASCAL 300 | 1000 | Cityscapes 300 | 1000 | NYU depth 100 | 1000 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| BYOL | 41.2 | 41.6 | 37.1 | 37.2 | 74.7 | 75.7 | 73.4 | 74.6 | 83.7 | 84.2 |
| DetCon_B | 42.0 | 42.7 | 37.8 | 38.2 | 75.6 | 77.3 | 75.1 | 77.0 | 85.1 | 86.3 |
| Efficiency gain | > 3x | | > 3x | | ~3x | | > 3x | | > 10x | |
"""  # noqa: E501

METRICS = (
    ("seg_probe/miou", "segmentation probe mIoU"),
    ("discovery/abo_i", "object discovery ABO^i"),
    ("linear_probe/top1", "linear probe top-1"),
    ("knn/top1", "kNN top-1"),
)
BYOL = runs.Run("BYOL", "experiments/byol.py:local")
DETCON_B = runs.Run("DetCon_B", "experiments/detcon_b.py:local")


def budget(quick: bool, seed: int) -> tuple[runs.Budget, int]:
    """The table's budget and its short-budget step."""
    steps, every = (120, 40) if quick else (600, 100)
    short = steps // 3
    return (
        runs.Budget(
            steps=steps,
            batch_size=32 if quick else 64,
            eval_every_steps=every,
            evals=budgets.image_evals(quick),
            seed=seed,
        ),
        short,
    )


def build(quick: bool, root: str, seed: int) -> str:
    b, short = budget(quick, seed)
    byol = runs.train(BYOL, b, root)
    detcon = runs.train(DETCON_B, b, root)
    if short not in detcon:
        raise RuntimeError(f"DetCon_B has no evaluation at step {short}; evaluations: {detcon}")
    columns = [""]
    for _, name in METRICS:
        columns += [f"{name} {short} steps", f"{b.steps} steps"]
    rows, gains, agree = [], ["Efficiency gain"], []
    for label, evals in (("BYOL", byol), ("DetCon_B", detcon)):
        row = [label]
        for key, _ in METRICS:
            row += [report.pct(evals[short].get(key)), report.pct(evals[b.steps].get(key))]
        rows.append(row)
    for key, name in METRICS:
        target = detcon[short][key]
        value, kind = runs.efficiency_gain(runs.curve(byol, key), short, target)
        gains += [report.gain(value, kind), ""]
        agree.append((name, value, kind, detcon[b.steps][key] > byol[b.steps][key]))
    rows.append(gains)
    curves = [f"BYOL along its run ({', '.join(str(s) for s in byol)} steps):"]
    for key, name in METRICS:
        points = ", ".join(report.pct(v) for _, v in runs.curve(byol, key))
        curves.append(f"- {name}: {points}")
    lines = [
        PAPER,
        f"Ours: `local` backbone and 48 px views, batch {b.batch_size}, "
        f"{runs.optimiser_text(runs.configure(BYOL, b))} (`local_recipe.md`), {b.steps} steps "
        f"(short budget: {short}); frozen-feature evaluations "
        "on the embedded test scenes (see `budgets.py`), in percent:\n",
        report.table(columns, rows),
        "\n".join(curves) + "\n",
        "Agreement with the paper (DetCon_B more efficient than BYOL, better at both budgets):\n",
    ]
    for name, value, kind, better_long in agree:
        more_efficient = kind == "more" or (kind == "exact" and value > 1)
        verdict = "agrees" if more_efficient and better_long else "does not agree"
        lines.append(
            f"- {name}: gain {report.gain(value, kind)}, DetCon_B "
            f"{'above' if better_long else 'not above'} BYOL at {b.steps} steps: {verdict}."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table("detcon_efficiency", "DetCon_B vs BYOL: efficiency gain", build, argv)


if __name__ == "__main__":
    main()
