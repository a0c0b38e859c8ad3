"""Object discovery (Odin, docs/METHODS.md §6.5 and §9): k-means of frozen dense features vs
objects.

Protocol. Each image is resized whole to `S x S` and passed through the frozen network
(inference-mode BatchNorm); its dense map `[h, w, C]` (`layer`, default the final one) is
clustered by k-means into `num_clusters` segments (`common.kmeans`: l2-normalised features,
cosine, k-means++, `num_iters` Lloyd steps, seeded per batch by `seed`); the cluster map is
upsampled (nearest) to the ground-truth mask's own resolution (`common.eval.dense_data`). For
every ground-truth mask g, `BO(g) = max_s IoU(g, s)` over the segments s
(`common.eval.overlap.best_overlaps`: pixels marked ignore (-1: crowd, padding) are left out, and
background pixels count in a segment's area). Then

* `abo_i`: mean BO over instance masks;
* `abo_c`: mean BO over class masks (per image, the union of a class's instances);
* `or`: object recovery, the fraction of instance masks with BO > 0.5 (`or_c` for classes).

Averaging: pooled over every mask of the split (a dataset with many objects per image weighs
those images more), which is how segment-proposal benchmarks define ABO; the exact order Odin
used is not known (docs/METHODS.md §6.5, "TO VERIFY").

`segments` other than `kmeans` scores a stored id map instead of the network, e.g. `fh` (the
Felzenszwalb masks of the dataset, channel `fh_index`) for the hand-crafted baseline of Odin's
table, or `instance_mask` (a sanity check: 1.0 everywhere).

Datasets: the embedded `synthetic_scenes` (instance and class masks), `folder_images` with
`name_mask.png` instance masks (and `name_class.png` class masks; without them `abo_c` is
absent), `coco_folder`, TFDS `coco/2017_panoptic`
(`coco/2017` has no masks); see `common.eval.dense_data`. Select one with `dataset` (default the
pretraining dataset) and `split`.

Pictures (when the caller gives a workdir): `<workdir>/pictures/discovery_<step>.png`
(`discovery_<segments>_<step>.png` when stored ids are scored, e.g. `discovery_fh_0.png`) with, for
the first `num_pictures` images, the image, the instances, the segments, and each instance's
best-matching segment painted in the instance's colour with its IoU.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import kmeans
from common.eval import Evaluator, overlap, register_evaluator
from common.eval.features import extract_dense, network_variables, to_global


def eval_data_config(config, options):
    """The data config of an evaluation: the pretraining one, with `dataset`/`data_dir` options
    (when set) naming another dataset."""
    data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    if options.get("dataset"):
        data["name"] = options.dataset
    if options.get("data_dir"):
        data["data_dir"] = options.data_dir
    return data


def limit_split(data_config, split: str, max_examples: int) -> str:
    """`split` cut to its first `max_examples` examples (`train` -> `train[:5000]`), or all of it
    when it is smaller, so one config serves datasets of any size; 0 or a split that already
    has a slice: unchanged."""
    if not max_examples or "[" in split:
        return split
    import ml_collections

    from common.data import loading

    builder = loading.get_builder(ml_collections.ConfigDict(dict(data_config)))
    size = builder.info.splits[split].num_examples
    return split if size <= max_examples else f"{split}[:{int(max_examples)}]"


def eval_image_size(config, options) -> int:
    return int(
        options.get("image_size") or config.data.get("eval_image_size") or config.data.image_size
    )


class _Settings(NamedTuple):
    """The static part of `_score` (hashable: one compilation per setting and batch shape)."""

    num_segments: int
    max_id: int
    kmeans: bool
    num_iters: int
    init: str
    distance: str


@functools.cache
def _scorer(mesh) -> Callable:
    """`_score` jitted with replicated outputs on `mesh`: every host reads the same sums (no host
    copy of a sharded array). Cached, so evaluation rounds reuse the compiled function."""
    return jax.jit(_score, static_argnums=(0, 1), out_shardings=NamedSharding(mesh, P()))


def _score(settings: _Settings, num_pictures: int, dense, batch, rng) -> dict:
    """Sums of best overlaps of one batch, and the first `num_pictures` rows of the segments and
    best matches for the picture.

    Args:
      settings: static options.
      num_pictures: rows returned for the picture (static; 0 = none).
      dense: `[B, h, w, C]` frozen features (k-means), or None (scores `batch['segments']`).
      batch: global batch: `instance_mask` (and `class_mask`, `segments`) `[B, H, W]`,
        `mask_hw` `[B, 2]`, `_valid` `[B]`.
      rng: k-means key.
    """
    if settings.kmeans:
        clusters, _ = kmeans.kmeans_dense(
            rng, dense, settings.num_segments, num_iters=settings.num_iters,
            init=settings.init, distance=settings.distance,
        )  # fmt: skip
        canvas = batch["instance_mask"].shape[1:3]
        segments = overlap.resize_ids_nearest(clusters, canvas, batch["mask_hw"])
    else:
        segments = batch["segments"]
    out = {}
    for kind in ("instance_mask", "class_mask"):
        if kind in batch:
            best = overlap.best_overlaps(
                segments, batch[kind], num_segments=settings.num_segments, max_id=settings.max_id
            )
            out[kind] = overlap.discovery_sums(best, batch["_valid"])
            if kind == "instance_mask" and num_pictures:
                out["pictures"] = {
                    "segments": segments[:num_pictures],
                    "segment": best.segment[:num_pictures],
                    "iou": best.iou[:num_pictures],
                }
    return out


@register_evaluator("discovery")
class DiscoveryEvaluator(Evaluator):
    """ABO^i, ABO^c and OR of k-means segments (or a stored id map) of each image.

    Options (`config.evals.discovery`): see `defaults`; the main ones are `num_clusters` (K,
    default 8), `layer` (`out` or a backbone stage), `segments` (`kmeans`, `fh`, or a feature
    name), `split`, `dataset`.
    """

    defaults = {
        "dataset": "",  # TFDS name; empty: config.data.name
        "data_dir": "",  # empty: config.data.data_dir
        "split": "validation",
        "examples": 0,  # > 0: only the first ones of split (all if it is smaller)
        "batch_size": 64,  # global
        "image_size": 0,  # network input; 0: data.eval_image_size or data.image_size
        "network": "online",
        "layer": "out",
        "segments": "kmeans",  # kmeans | fh | a dataset feature holding ids
        "fh_index": 0,
        "num_clusters": 8,
        "num_iters": 10,
        "init": "kmeans++",
        "distance": "cosine",
        "seed": 0,
        "max_id": 255,  # largest ground-truth id counted (uint8 masks: 255)
        "max_segments": 256,  # stored id maps: most segments per image
        "max_mask_size": 640,  # canvas for datasets of variable size (COCO: <= 640)
        "num_thing_classes": 80,  # COCO panoptic
        "pictures": True,
        "num_pictures": 8,
    }

    # A `tf.data.Dataset` of examples to read instead of the TFDS split (benchmarks, tests).
    source_dataset = None

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        o = self.options
        use_kmeans = o.segments == "kmeans"
        module = setup.modules[o.network]
        variables = network_variables(state, o.network)
        data = eval_data_config(self.config, o)
        split = (
            o.split
            if self.source_dataset is not None
            else limit_split(data, o.split, int(o.examples))
        )
        from common.eval import dense_data

        batches = dense_data.dense_label_batches(
            data, split, batch_size=int(o.batch_size), image_size=eval_image_size(self.config, o),
            segments=None if use_kmeans else o.segments, fh_index=int(o.fh_index),
            max_mask_size=int(o.max_mask_size), max_segments=int(o.max_segments),
            num_thing_classes=int(o.num_thing_classes),
            process_index=jax.process_index(), process_count=jax.process_count(),
            dataset=self.source_dataset,
        )  # fmt: skip
        draw = bool(o.pictures) and self.workdir is not None and int(o.num_pictures) > 0
        settings = _Settings(
            num_segments=int(o.num_clusters) if use_kmeans else int(o.max_segments),
            max_id=int(o.max_id),
            kmeans=use_kmeans,
            num_iters=int(o.num_iters),
            init=o.init,
            distance=o.distance,
        )
        score = _scorer(mesh)
        totals, first = {}, None
        for i, host in enumerate(batches):
            keys = ("instance_mask", "class_mask", "segments", "mask_hw", "_valid")
            keys += ("image",) if use_kmeans else ()
            batch = to_global({k: host[k] for k in keys if k in host}, mesh)
            dense = None
            if use_kmeans:
                dense = extract_dense(module, o.layer, variables, batch.pop("image"))
            n = min(int(o.num_pictures), len(host["_valid"])) if draw and i == 0 else 0
            rng = jax.random.fold_in(jax.random.key(int(o.seed), impl="rbg"), i)
            out = score(settings, n, dense, batch, rng)
            if n:
                first = (host, jax.device_get(out.pop("pictures")))
            for kind in ("instance_mask", "class_mask"):
                if kind in out:
                    totals[kind] = totals.get(kind, 0.0) + out[kind]
        results = {}
        for kind, suffix in (("instance_mask", "i"), ("class_mask", "c")):
            if kind in totals:
                s = np.asarray(jax.device_get(totals[kind]), np.float64)
                results[f"abo_{suffix}"] = s[0] / max(s[2], 1.0)
                results["or" if suffix == "i" else "or_c"] = s[1] / max(s[2], 1.0)
                results["num_instances" if suffix == "i" else "num_class_masks"] = s[2]
        if first is not None and jax.process_index() == 0:
            host, pics = first
            path = picture_path(self.workdir, int(state.step), o.segments)
            write_picture(path, host, pics, title=self._title())
        return results

    def _title(self) -> str:
        o = self.options
        if o.segments == "kmeans":
            return f"k-means K={o.num_clusters} ({o.network}/{o.layer})"
        return f"segments: {o.segments}"


# ---------------------------------------------------------------------------------------------
# Pictures (PIL + numpy).


def picture_path(workdir: str, step: int, segments: str = "kmeans") -> str:
    """Where an evaluation of the state at `step` writes its picture: `discovery_<step>.png` for
    the network's k-means segments, `discovery_<segments>_<step>.png` for stored ids (e.g. `fh`),
    so that scoring the FH masks does not overwrite the network's picture of the same step."""
    name = f"discovery_{int(step)}.png"
    if segments != "kmeans":
        name = f"discovery_{segments}_{int(step)}.png"
    return os.path.join(workdir, "pictures", name)


def _palette(n: int, seed: int = 7) -> np.ndarray:
    """`[n, 3]` uint8 distinct-ish colours (random hues, bright)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.uniform()) % 1.0
    h6 = hues * 6
    c = np.stack([np.clip(np.abs(h6 - 3) - 1, 0, 1), np.clip(2 - np.abs(h6 - 2), 0, 1),
                  np.clip(2 - np.abs(h6 - 4), 0, 1)], -1)  # fmt: skip
    return (55 + 200 * c).astype(np.uint8)


def _colour_ids(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """int `[H, W]` (0 background black, -1 ignore grey, k >= 1 palette) -> uint8 `[H, W, 3]`."""
    out = palette[np.clip(ids, 0, None) % len(palette)]
    out[ids == 0] = 0
    out[ids < 0] = 96
    return out


def _boundaries(ids: np.ndarray) -> np.ndarray:
    """bool `[H, W]`: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def write_picture(path: str, host: dict, pics: dict, *, title: str, panel: int = 144) -> str:
    """Writes the discovery picture: one row per image, four panels.

    Args:
      path: PNG path (directories are created).
      host: the host batch (`image` `[b,S,S,3]`, `instance_mask` `[b,H,W]`, `mask_hw`).
      pics: `segments` `[n,H,W]`, best `segment` and `iou` `[n,M]` per instance.
      title: caption of the segments column.
      panel: panel side in pixels.
    """
    from PIL import Image, ImageDraw

    n = len(pics["segments"])
    palette = _palette(64)
    header = 16
    canvas = Image.new("RGB", (4 * panel, header + n * panel), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for col, name in enumerate(("image", "ground truth", title, "best match (IoU)")):
        draw.text((col * panel + 3, 2), name[: panel // 6], fill=(0, 0, 0))
    for r in range(n):
        h, w = (int(v) for v in host["mask_hw"][r])
        gt = host["instance_mask"][r, :h, :w]
        seg = pics["segments"][r, :h, :w]
        image = Image.fromarray((np.clip(host["image"][r], 0, 1) * 255).astype(np.uint8))
        image = np.asarray(image.resize((w, h), Image.BICUBIC))
        match = (image * 0.35).astype(np.uint8)
        labels = []
        for m in np.flatnonzero(pics["iou"][r] > 0):
            colour = palette[(m + 1) % len(palette)]
            region = seg == pics["segment"][r, m]
            match[region] = (0.4 * match[region] + 0.6 * colour).astype(np.uint8)
            ys, xs = np.nonzero(gt == m + 1)
            labels.append((ys.mean(), xs.mean(), f"{pics['iou'][r, m]:.2f}", colour))
        match[_boundaries(gt) & (gt != 0)] = 255
        panels = [image, _colour_ids(gt, palette), _colour_ids(seg + 1, palette[::-1]), match]
        scale = panel / max(h, w)
        for col, p in enumerate(panels):
            tile = Image.fromarray(np.ascontiguousarray(p)).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST
            )
            canvas.paste(tile, (col * panel, header + r * panel))
        for y, x, text, _ in labels:
            xy = (3 * panel + x * scale - 10, header + r * panel + y * scale - 5)
            draw.text(xy, text, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return path
