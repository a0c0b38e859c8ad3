"""Object discovery: k-means of frozen features against ground-truth objects (Odin paper).

    python -m experiments.paper_tables.odin_discovery [--quick]

Rows as in the paper: random initialisation, DetCon_B (FH masks), supervised, Odin (its
discovery network's own k-means, the masks it trains on), plus a reference row the paper does
not have: the FH masks themselves (DetCon's input, which Odin aims to replace). ABO^i / ABO^c:
average best overlap of each ground-truth instance / class mask with a segment; OR: fraction of
instances with best overlap > 0.5. K = 8 clusters per image, 128 px input (16 x 16 grid).
"""

from __future__ import annotations

from experiments.paper_tables import budgets, cli, report, runs

# (pretraining, paper R50 ABO^i, ABO^c, OR) on COCO
PAPER_ROWS = {
    "Random init": ("28.1", "33.6", "17.0"),
    "DetCon_B": ("34.1", "40.0", "20.4"),
    "Supervised": ("35.8", "41.1", "23.8"),
    "Odin": ("41.5", "48.6", "36.5"),
}
DETCON_B = runs.Run("DetCon_B", "experiments/detcon_b.py:local")
SUPERVISED = runs.Run("Supervised", "experiments/supervised.py:local")
ODIN = runs.Run("Odin", "experiments/odin.py:local")
KEYS = ("discovery/abo_i", "discovery/abo_c", "discovery/or")


def budget(quick: bool, seed: int, *, network: str = "online", segments: str = "kmeans"):
    evals = {"discovery": budgets.image_evals(quick, discovery_network=network)["discovery"]}
    evals["discovery"]["segments"] = segments
    return runs.Budget(
        steps=60 if quick else 600,
        batch_size=32 if quick else 64,
        eval_every_steps=20 if quick else 150,
        evals=evals,
        seed=seed,
    )


def build(quick: bool, root: str, seed: int) -> str:
    online = budget(quick, seed)
    ours = {
        "Random init": runs.evaluate_init(DETCON_B, online, root),
        "DetCon_B": runs.train(DETCON_B, online, root)[online.steps],
        "Supervised": runs.train(SUPERVISED, online, root)[online.steps],
    }
    odin_budget = budget(quick, seed, network="discovery")
    odin_evals = runs.train(ODIN, odin_budget, root)
    ours["Odin"] = odin_evals[online.steps]
    # Step 0 of Odin's curve: its own discovery network before training.
    odin_evals = {0: runs.evaluate_init(ODIN, odin_budget, root), **odin_evals}
    fh = runs.evaluate_init(DETCON_B, budget(quick, seed, segments="fh"), root)
    columns = ["pretraining", "paper ABO^i", "ABO^c", "OR", "ours ABO^i", "ABO^c", "OR"]
    rows = [
        [label, *PAPER_ROWS[label], *(report.pct(ours[label].get(k)) for k in KEYS)]
        for label in PAPER_ROWS
    ]
    rows.append(["FH masks (reference)", "-", "-", "-", *(report.pct(fh.get(k)) for k in KEYS)])
    odin_curve = ", ".join(
        f"{step}: {report.pct(v)}" for step, v in runs.curve(odin_evals, "discovery/abo_i")
    )
    abo = {label: ours[label]["discovery/abo_i"] for label in ours}
    order = sorted(abo, key=abo.get)
    lines = [
        f"Paper: ResNet-50 pretrained on ImageNet, evaluated on COCO. Ours: `local` backbone, "
        f"48 px views, batch {online.batch_size}, {online.steps} steps, "
        f"{runs.optimiser_text(runs.configure(DETCON_B, online))} (`local_recipe.md`; "
        f"Supervised: {runs.optimiser_text(runs.configure(SUPERVISED, online))}), evaluated on "
        f"{online.evals['discovery']['examples']} embedded test scenes, in percent.\n",
        report.table(columns, rows),
        f"Odin's discovery network along training (step: ABO^i): {odin_curve}.\n",
        "Agreement with the paper (Random < DetCon_B < Supervised < Odin):\n",
        f"- ours ascending by ABO^i: {' < '.join(order)}.",
        f"- Odin above random init: {'yes' if abo['Odin'] > abo['Random init'] else 'no'}; "
        f"above DetCon_B: {'yes' if abo['Odin'] > abo['DetCon_B'] else 'no'}; above the FH "
        f"masks: {'yes' if abo['Odin'] > fh['discovery/abo_i'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table("odin_discovery", "Object discovery (Odin's table)", build, argv)


if __name__ == "__main__":
    main()
