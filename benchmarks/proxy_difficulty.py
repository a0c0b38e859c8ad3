"""How hard the embedded data is, in the terms that matter for the papers' claims.

    python -m benchmarks.proxy_difficulty [--style natural|legacy] [--num_train 4000] ...

On natural images colour is a weak cue for the class and Felzenszwalb (FH) segments are far from
the objects; a proxy on which either fails says nothing about the papers' claims. Measured on
the examples the `synthetic_scenes` / `synthetic_videos` builders make (the same
`(seed, split, index)` renders, without building the datasets) in the `natural` style (their
`default` and `tiny` configs since 3.0.0), or with `--style legacy` in that of their `legacy`
configs:

* `colour_probe_over_chance`: top-1 of a linear (softmax) probe on per-image colour histograms
  (8 x 8 x 8 RGB bins), trained on `num_train` train images, tested on `num_eval` validation
  images, divided by chance (the test frequency of the most frequent class: the best constant
  guess). 1.0 = colour says nothing about the class.
* `fh_abo_i`: ABO^i of the dataset's FH masks (channel 0, the default setting), scored by
  `common.eval.overlap` (as `discovery` with `segments=fh`).
* `grid_ceiling_abo_i`: ABO^i of the best segmentation of the feature grid that Odin's
  discovery evaluation clusters (16 x 16 cells at 64 px: 128 px input, stride 8): every cell
  takes the ground-truth id that covers most of it.
* `fh_gap_to_ceiling`: `grid_ceiling_abo_i - fh_abo_i` (the room discovered masks have to beat
  FH; the target is >= 0.15).
* `random_abo_i`: the `discovery` evaluator (K = 8, 128 px input, as the paper tables) on the
  randomly initialised `local` network (`experiments/byol.py:local`, seed 0).
* `video_colour_probe_over_chance`: the colour probe on clips (the histogram of all frames) for
  the clip's label.
* `record_cpu_ms` / `record_cpu_over_legacy`: CPU milliseconds to make one dataset record
  (render, FH, PNG: `procedural.scene_record`) in this style, and over the legacy style's,
  measured side by side (CPU time, so that a loaded machine changes the ratio little); the build
  time of a config scales with it (the legacy `default` build: 1 min 36 s on 2 idle cores).

The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

HIST_BINS = 8
GRID = 16  # feature-grid side of Odin's discovery evaluation (128 px input, stride 8)


def colour_histogram(pixels: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised joint RGB histogram float32 `[bins**3]` of uint8 pixels `[..., 3]`."""
    q = (pixels.reshape(-1, 3).astype(np.int64) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float32)
    return h / h.sum()


def softmax_probe_top1(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    l2: float = 1e-3,
) -> float:
    """Top-1 of an L2-regularised multinomial logistic regression (L-BFGS, standardised inputs)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.concatenate([(x_train - mean) / std, np.ones((len(x_train), 1))], 1).astype(np.float64)
    b = np.concatenate([(x_test - mean) / std, np.ones((len(x_test), 1))], 1).astype(np.float64)
    onehot = np.eye(num_classes)[y_train]
    d = a.shape[1]

    def loss(w):
        w = w.reshape(d, num_classes)
        z = a @ w
        lse = logsumexp(z, axis=1, keepdims=True)
        p = np.exp(z - lse)
        value = -np.mean(np.sum(onehot * (z - lse), 1)) + 0.5 * l2 * np.sum(w[:-1] ** 2)
        grad = a.T @ (p - onehot) / len(a)
        grad[:-1] += l2 * w[:-1]
        return value, grad.ravel()

    w0 = np.zeros(d * num_classes)
    w = minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    pred = np.argmax(b @ w.reshape(d, num_classes), 1)
    return float(np.mean(pred == y_test))


def probe_over_chance(hist_train, y_train, hist_test, y_test, num_classes) -> tuple[float, float]:
    """(probe top-1 / chance, chance): chance is the test frequency of the commonest class."""
    top1 = softmax_probe_top1(hist_train, y_train, hist_test, y_test, num_classes)
    chance = np.bincount(y_test, minlength=num_classes).max() / len(y_test)
    return top1 / chance, float(chance)


def grid_majority(instance_mask: np.ndarray, grid: int) -> np.ndarray:
    """int32 `[H, W]`: every `H/grid` cell painted with the id covering most of it (ties: the
    smaller id), the best a segmentation constant on the cells can match the ids."""
    h, w = instance_mask.shape
    ch, cw = h // grid, w // grid
    cells = instance_mask[: ch * grid, : cw * grid].reshape(grid, ch, grid, cw)
    cells = cells.transpose(0, 2, 1, 3).reshape(grid, grid, ch * cw).astype(np.int64)
    n = int(instance_mask.max()) + 1
    counts = np.stack([(cells == k).sum(-1) for k in range(n)], -1)
    major = np.argmax(counts, -1).astype(np.int32)
    out = np.repeat(np.repeat(major, ch, 0), cw, 1)
    full = np.zeros((h, w), np.int32)
    full[: ch * grid, : cw * grid] = out
    return full


def pooled_abo(segments: np.ndarray, instance_masks: np.ndarray, num_segments: int) -> float:
    """ABO^i pooled over every instance, by `common.eval.overlap.best_overlaps`."""
    import jax.numpy as jnp

    from common.eval import overlap

    sums = np.zeros(3)
    for i in range(0, len(segments), 250):
        best = overlap.best_overlaps(
            jnp.asarray(segments[i : i + 250]),
            jnp.asarray(instance_masks[i : i + 250].astype(np.int32)),
            num_segments=num_segments,
        )
        sums += np.asarray(overlap.discovery_sums(best), np.float64)
    return float(sums[0] / max(sums[2], 1.0))


def render_scenes(split_id: int, count: int, *, seed: int, style: str, with_fh: bool):
    """The builder's examples `0..count-1` of a split: images, masks, labels (and FH ids)."""
    from common.data import procedural, segmentation

    settings = segmentation.default_fh_settings(64, 64)
    images, inst, cls, labels, fh = [], [], [], [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_id, index])
        scene = procedural.render_scene(rng, 64, style=style)
        images.append(scene.image)
        inst.append(scene.instance_mask)
        cls.append(scene.class_mask)
        labels.append(scene.label)
        if with_fh:
            fh.append(segmentation.fh_masks(scene.image, settings, np.uint16)[0])
    out = {
        "image": np.stack(images),
        "instance_mask": np.stack(inst),
        "class_mask": np.stack(cls),
        "label": np.asarray(labels, np.int64),
    }
    if with_fh:
        out["fh"] = np.stack(fh).astype(np.int32)
    return out


def random_network_abo(scenes: dict) -> float:
    """`discovery` (K = 8, 128 px input) of the random `local` network on `scenes`."""
    import functools

    import jax
    import tensorflow as tf
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from common import train
    from common.eval import get_evaluator
    from experiments import byol

    config = byol.get_config("local")
    setup = train.build(config, num_examples=20_000)
    mesh = train.create_mesh()
    init = functools.partial(train.init_state, setup)
    state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))(train.init_rng(config.seed))
    source = tf.data.Dataset.from_tensor_slices(
        {
            "image": scenes["image"],
            "instance_mask": scenes["instance_mask"][..., None],
            "class_mask": scenes["class_mask"][..., None],
            "label": scenes["label"],
        }
    )
    options = {
        **config.evals.discovery,
        "split": "validation",
        "examples": 0,
        "image_size": 128,
        "pictures": False,
    }
    evaluator = get_evaluator("discovery")(config, options)
    evaluator.source_dataset = source
    return float(evaluator.run(setup, state, mesh=mesh)["abo_i"])


def record_cpu_ms(style: str, count: int = 300, *, seed: int = 0) -> tuple[float, float]:
    """(CPU ms per record in `style`, the same over the legacy style), interleaved in rounds."""
    from common.data import procedural, segmentation

    settings = segmentation.default_fh_settings(64, 64)

    def record(index, kind):
        procedural.scene_record(
            index, seed=seed, split_id=0, image_size=64,
            max_objects=procedural.SCENE_MAX_OBJECTS[kind],
            fh_settings=settings, fh_dtype="uint8", style=kind,
        )  # fmt: skip

    cpu = {style: 0.0, "legacy": 0.0}
    for kind in cpu:
        record(0, kind)  # first use: imports, texture sources
    for start in range(0, count, count // 3):
        for kind in cpu:
            t = time.process_time()
            for index in range(start, start + count // 3):
                record(index, kind)
            cpu[kind] += time.process_time() - t
    n = 3 * (count // 3)
    return 1e3 * cpu[style] / n, cpu[style] / cpu["legacy"]


def video_histograms(split_id: int, count: int, *, seed: int, style: str, num_frames: int):
    from common.data import procedural

    hists, labels = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_id, index])
        clip = procedural.render_clip(rng, 64, num_frames, style=style)
        hists.append(colour_histogram(clip.video))
        labels.append(clip.label)
    return np.stack(hists), np.asarray(labels, np.int64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="natural", help="natural | legacy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=4000, help="probe training images")
    parser.add_argument("--num_eval", type=int, default=1000, help="validation images")
    parser.add_argument("--num_train_clips", type=int, default=800)
    parser.add_argument("--num_eval_clips", type=int, default=400)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--skip_network", action="store_true", help="no random_abo_i")
    args = parser.parse_args(argv)

    from common.data import procedural

    k = procedural.NUM_CLASSES
    start = time.perf_counter()
    train = render_scenes(0, args.num_train, seed=args.seed, style=args.style, with_fh=False)
    val = render_scenes(1, args.num_eval, seed=args.seed, style=args.style, with_fh=True)
    hist = lambda images: np.stack([colour_histogram(im) for im in images])  # noqa: E731
    colour, chance = probe_over_chance(
        hist(train["image"]), train["label"], hist(val["image"]), val["label"], k
    )
    fh_abo = pooled_abo(val["fh"], val["instance_mask"], num_segments=int(val["fh"].max()) + 1)
    grid = np.stack([grid_majority(m, GRID) for m in val["instance_mask"]])
    ceiling = pooled_abo(grid, val["instance_mask"], num_segments=256)
    random_abo = None if args.skip_network else random_network_abo(val)
    vtrain = video_histograms(
        0, args.num_train_clips, seed=args.seed, style=args.style, num_frames=args.num_frames
    )
    vval = video_histograms(
        1, args.num_eval_clips, seed=args.seed, style=args.style, num_frames=args.num_frames
    )
    video_colour, video_chance = probe_over_chance(*vtrain, *vval, k)
    cpu_ms, cpu_ratio = record_cpu_ms(args.style, seed=args.seed)
    result = {
        "colour_probe_over_chance": round(colour, 3),
        "fh_abo_i": round(fh_abo, 4),
        "grid_ceiling_abo_i": round(ceiling, 4),
        "fh_gap_to_ceiling": round(ceiling - fh_abo, 4),
        "random_abo_i": None if random_abo is None else round(random_abo, 4),
        "video_colour_probe_over_chance": round(video_colour, 3),
        "record_cpu_ms": round(cpu_ms, 2),
        "record_cpu_over_legacy": round(cpu_ratio, 3),
        "chance": round(chance, 4),
        "video_chance": round(video_chance, 4),
        "style": args.style,
        "images": f"{args.num_train} train / {args.num_eval} validation, seed {args.seed}",
        "clips": f"{args.num_train_clips} train / {args.num_eval_clips} validation, "
        f"{args.num_frames} frames",
        "seconds": round(time.perf_counter() - start, 1),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
