"""The sweep that chose the `local` recipe (optimiser, learning rate, crop scale).

    python -m experiments.paper_tables.local_recipe [--quick]

On the embedded scenes every `local` run trains the same small ResNet for 200 steps at batch 64
on 48 px views; what that budget learns depends on the optimiser and its rate far more than on
the method (LARS moves each layer by `lr * 1e-3 * |w|` per step, so the papers' base rate of 0.2
at batch 64 barely moves the weights in 200 steps). The sweep, in two stages:

1. BYOL (the README's main job) with LARS at base rates 0.4 / 3.2 / 6.4 and AdamW at peak rates
   1e-3 / 3e-3, views cropped at (0.08, 1) of the image (BYOL's crops);
2. the best setting of stage 1 for DetCon_B (BYOL's family with masks) and SimCLR (the
   contrastive family: SimCLR, DetCon_S, MoCLR), each against its own random initialisation.

The crop scale is not swept: a 2-core CPU under load ran 20 minutes per run, and the optimiser
and its rate decide first whether 200 steps learn at all.

Every run is scored on the **validation** split (the tables report the test split) by the
evaluators of the tables (`budgets.image_evals`), and ranked by its mean gain over the random
network on the four figures (linear top-1, kNN top-1, segmentation-probe mIoU, ABO^i), so that
no figure is bought with another.
"""

from __future__ import annotations

from collections.abc import Mapping

from experiments.paper_tables import budgets, cli, report, runs

STEPS = 200
METRICS = (
    ("linear_probe/top1", "linear top-1"),
    ("knn/top1", "kNN top-1"),
    ("seg_probe/miou", "seg. probe mIoU"),
    ("discovery/abo_i", "ABO^i"),
)
# Shown beside them, not part of the gain: the effective rank of the pooled features (RankMe of
# the standardised features, `common.eval.rank`), which falls when a run collapses them onto a
# few directions, the failure measured on the 4.0.0 scenes (docs/results.md).
DIAGNOSTICS = (("rank/rankme_standardized", "RankMe (std.)"),)
# Stage 1: (label, optimiser overrides), in the order they run (the likeliest first). AdamW's
# rates are peaks at batch 64 (base rate per 256 = peak * 4); weight decay 1e-4 as the
# supervised `local` reference.
OPTIMISERS = (
    ("LARS 0.4", (("optimizer.name", "lars"), ("optimizer.base_lr", 0.4))),
    ("LARS 3.2", (("optimizer.name", "lars"), ("optimizer.base_lr", 3.2))),
    ("AdamW 1e-3", (("optimizer.name", "adamw"), ("optimizer.base_lr", 4e-3),
                    ("optimizer.weight_decay", 1e-4))),
    ("LARS 6.4", (("optimizer.name", "lars"), ("optimizer.base_lr", 6.4))),
    ("AdamW 3e-3", (("optimizer.name", "adamw"), ("optimizer.base_lr", 1.2e-2),
                    ("optimizer.weight_decay", 1e-4))),
)  # fmt: skip
CROP = (0.08, 1.0)
FAMILIES = (
    ("DetCon_B", "experiments/detcon_b.py:local"),
    ("SimCLR", "experiments/simclr.py:local"),
)


def budget(quick: bool, seed: int) -> runs.Budget:
    return runs.Budget(
        steps=40 if quick else STEPS,
        batch_size=32 if quick else 64,
        eval_every_steps=0,
        evals=budgets.image_evals(quick, split="validation"),
        seed=seed,
    )


def gain(result: Mapping[str, float], random: Mapping[str, float]) -> float:
    """Mean over METRICS of (trained - random), in points of the figures' [0, 1] scale."""
    return sum(result[k] - random[k] for k, _ in METRICS) / len(METRICS)


def _run(method: str, experiment: str, optimiser: str, crop: tuple[float, float]) -> runs.Run:
    overrides = dict(OPTIMISERS)[optimiser] + (("data.crop_scale", crop),)
    return runs.Run(f"{method} {optimiser} crop {crop[0]}", experiment, overrides)


def build(quick: bool, root: str, seed: int) -> str:
    b = budget(quick, seed)
    rows: list[tuple[str, str, str, tuple[float, float], dict[str, float]]] = []

    def train(method, experiment, optimiser, crop):
        result = runs.train(_run(method, experiment, optimiser, crop), b, root)[b.steps]
        rows.append((method, experiment, optimiser, crop, result))
        return result

    random = runs.evaluate_init(runs.Run("BYOL init", "experiments/byol.py:local"), b, root)
    stage1 = {o: train("BYOL", "experiments/byol.py:local", o, CROP) for o, _ in OPTIMISERS}
    ranked = sorted(stage1, key=lambda o: gain(stage1[o], random), reverse=True)
    randoms = {"BYOL": random}
    for method, experiment in FAMILIES:
        randoms[method] = runs.evaluate_init(runs.Run(f"{method} init", experiment), b, root)
        train(method, experiment, ranked[0], CROP)

    columns = ["method", "optimiser", "crop", *(name for _, name in METRICS), "mean gain"]
    columns += [name for _, name in DIAGNOSTICS]

    def diagnostics(result):
        return [f"{result[k]:.1f}" if k in result else "-" for k, _ in DIAGNOSTICS]

    table = []
    for method, init in randoms.items():
        cells = [report.pct(init[k]) for k, _ in METRICS]
        table.append([f"{method} random init", "-", "-", *cells, "0.0", *diagnostics(init)])
    for method, _, optimiser, crop, result in rows:
        cells = [report.pct(result[k]) for k, _ in METRICS]
        g = report.pct(gain(result, randoms[method]))
        table.append([method, optimiser, str(crop), *cells, g, *diagnostics(result)])
    lines = [
        f"{b.steps} steps, batch {b.batch_size}, 48 px views, the `local` backbone; validation "
        "split, in percent; mean gain = mean over the four figures of (run - random init); "
        "RankMe (std.): effective rank of the standardised pooled features (not in the gain).\n",
        report.table(columns, table),
        f"Stage 1 ranking (BYOL, crop {CROP}): "
        + " > ".join(f"{o} ({report.pct(gain(stage1[o], random))})" for o in ranked)
        + ".",
    ]
    for method, _ in FAMILIES:
        (result,) = [r for m, _, _, _, r in rows if m == method]
        worse = [name for k, name in METRICS if result[k] <= randoms[method][k]]
        lines.append(
            f"- {method} with {ranked[0]}: mean gain {report.pct(gain(result, randoms[method]))}; "
            f"not above its random initialisation on: {', '.join(worse) or 'none'}."
        )
    configured = configured_optimiser()
    status = (
        "the `local` configs (experiments/base.py) use it"
        if configured == ranked[0]
        else f"the `local` configs (experiments/base.py) still use {configured}: to be switched"
    )
    lines.append(f"\nChoice: {ranked[0]}, the largest mean gain; {status}.")
    return "\n".join(lines) + "\n"


def configured_optimiser() -> str:
    """The label in `OPTIMISERS` of the optimiser the `local` configs use (or a description)."""
    from experiments import byol

    opt = byol.get_config("local").optimizer
    for label, overrides in OPTIMISERS:
        settings = dict(overrides)
        if settings["optimizer.name"] == opt.name and settings["optimizer.base_lr"] == opt.base_lr:
            return label
    return f"{opt.name} at base rate {opt.base_lr} (not in the grid)"


def main(argv=None) -> str:
    return cli.run_table(
        "local_recipe", "The `local` recipe: optimiser and learning rate", build, argv
    )


if __name__ == "__main__":
    main()
