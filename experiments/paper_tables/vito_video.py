"""VITO vs frame-level pretraining on video and image pretraining (VITO paper's main table).

    python -m experiments.paper_tables.vito_video [--quick]

Rows: random initialisation; MoCLR on the embedded images (the paper's "MoCLR, ImageNet");
MoCLR on single video frames (video treated as a set of independent frames: both views from one
frame); VITO on the embedded videos (temporally displaced frames, multi-scale attention
pooling). Same backbone, view size, batch, steps and optimiser (the `local` recipe). Columns:
the paper's transfer tasks (PASCAL / ADE20K mIoU, COCO / LVIS AP) beside our frozen-feature
stand-ins on the embedded scenes and videos (`budgets.py`).
"""

from __future__ import annotations

from experiments.paper_tables import budgets, cli, report, runs

# (pretraining, data, paper PASCAL, ADE20K, COCO, LVIS)
PAPER_ROWS = {
    "Random init": ("-", "53.0", "27.9", "39.0", "21.1"),
    "MoCLR, images": ("ImageNet, 300 ep", "76.4", "39.2", "43.9", "25.8"),
    "MoCLR, video frames": ("-", "-", "-", "-", "-"),
    "VITO": ("VideoNet, 300 ep", "76.3", "39.4", "44.0", "25.7"),
}
MOCLR_IMAGES = runs.Run("MoCLR, images", "experiments/moclr.py:local")
MOCLR_FRAMES = runs.Run("MoCLR, video frames", "experiments/vito.py:local,method=moclr")
VITO = runs.Run("VITO", "experiments/vito.py:local")
METRICS = (
    ("seg_probe/miou", "seg. probe mIoU"),
    ("discovery/abo_i", "ABO^i"),
    ("label_propagation/JF_mean", "video label prop. J&F"),
    ("linear_probe/top1", "linear top-1"),
)


def budget(quick: bool, seed: int) -> runs.Budget:
    evals = {**budgets.image_evals(quick), **budgets.video_evals(quick)}
    del evals["knn"]
    return runs.Budget(
        steps=40 if quick else 400,
        batch_size=32 if quick else 64,
        eval_every_steps=0,
        evals=evals,
        seed=seed,
    )


def build(quick: bool, root: str, seed: int) -> str:
    b = budget(quick, seed)
    ours = {"Random init": runs.evaluate_init(VITO, b, root)}
    for run in (MOCLR_IMAGES, MOCLR_FRAMES, VITO):
        ours[run.label] = runs.train(run, b, root)[b.steps]
    columns = ["pretraining", "paper data", "PASCAL", "ADE20K", "COCO", "LVIS"]
    columns += [f"ours: {name}" for _, name in METRICS]
    rows = [
        [label, *PAPER_ROWS[label], *(report.pct(ours[label].get(k)) for k, _ in METRICS)]
        for label in PAPER_ROWS
    ]
    lines = [
        f"Ours: `local` backbone, 48 px views, batch {b.batch_size}, {b.steps} steps, "
        f"{runs.optimiser_text(runs.configure(VITO, b))} (`local_recipe.md`); in percent.\n",
        report.table(columns, rows),
        "Agreement with the paper (VITO on video matches MoCLR on images and beats frame-level "
        "pretraining on video):\n",
    ]
    for key, name in METRICS:
        v, img, frames = (ours[k][key] for k in ("VITO", "MoCLR, images", "MoCLR, video frames"))
        lines.append(
            f"- {name}: VITO {report.pct(v)} vs MoCLR video frames {report.pct(frames)} "
            f"({'above' if v > frames else 'not above'}) and MoCLR images {report.pct(img)} "
            f"({'above' if v > img else 'below'})."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    return cli.run_table("vito_video", "VITO vs frame-level pretraining", build, argv)


if __name__ == "__main__":
    main()
