"""Video label propagation with frozen features: the DAVIS semi-supervised protocol (J & F).

Protocol (as DINO's `eval_video_segmentation.py` and CRW / VFS use it; VITO reports DAVIS-2017
J&F, docs/METHODS.md §7.6, its exact settings unverified):
* every frame goes through the frozen network (inference mode); its dense map `layer` is
  l2-normalised per cell, `[h*w, C]`;
* the first frame's instance masks become soft labels on the feature grid (one-hot ids,
  area-averaged to the grid), `[h*w, K]`;
* each later frame t takes its labels from a context of the first frame and the `context`
  previous frames (with their *predicted* soft labels): for each query cell, the cosine
  similarities to every context cell within `radius` cells (a square neighbourhood, 0: no limit)
  are kept for the `k` largest, turned into weights by `softmax(sim / temperature)`, and the
  cell's labels are the weighted mean of those neighbours' labels;
* the labels are upsampled (bilinear) to the masks' resolution and the arg-max is the predicted
  segmentation.
Scores: J and F exactly as the DAVIS 2017 benchmark code (`davis2017-evaluation`,
`davis2017/metrics.py`: `db_eval_iou`, `f_measure` with `seg2bmap`) defines them, written anew
here: for each object of the first frame, J = region IoU and F = boundary F-measure (one-pixel
boundaries of `seg2bmap`, matched within a disk of radius `ceil(0.008 x image diagonal)`),
void pixels excluded from both; each a mean over frames 1..T-2 (`frames='davis'`: the
semi-supervised evaluation leaves out the given first frame *and* the last one); `J_mean`,
`F_mean` are means over all objects of all clips, `JF_mean` their mean. Empty prediction and
empty ground truth score 1 (DAVIS convention).

Void (`common.data.void`, option `void_label`, default `auto`: 255 in 8-bit masks, DAVIS's
void): void pixels of the first frame carry no label, and in every scored frame they are left
out of J's intersection and union and erased from both masks before F's boundaries, as
`metrics.py`'s `void_pixels` does. (The benchmark's driver, `evaluation.py`, builds its void
mask from the per-object boolean masks after its reader has already set 255 to background, so
in the released code the mask it passes is empty and void counts as background; the option
`void_in_scores=background` reproduces that reading.)

Datasets: the embedded `synthetic_videos` (default; `video` + `instance_masks`, ids constant over
a clip), or TFDS `davis` (`dataset=davis/480p`, `video_key=video/frames`,
`mask_key=video/segmentations`) when it is prepared. Objects absent from the first frame cannot
be propagated and are not scored (every DAVIS object is in its first frame; in synthetic_videos
an object may enter later).

Multi-host: each process propagates every clip redundantly (clips are small and the scores are
host numpy), so the evaluator gives the same numbers on one host or many.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from common.data import void
from common.eval import Evaluator, register_evaluator
from common.eval.features import extract_dense, network_variables

# ---------------------------------------------------------------------------------------------
# Propagation.


def first_frame_labels(mask: np.ndarray, grid_hw: tuple[int, int], num_labels: int) -> jax.Array:
    """One-hot ids of `mask [H, W]` (ids >= num_labels count as background; negative ids are
    void and carry no label) averaged over each feature cell's labelled pixels (pixel (y, x)
    belongs to cell (y * h // H, x * w // W), the area average when the grid divides the mask):
    `[h*w, num_labels]` float32, rows summing to 1. A cell of void pixels only is background,
    as DAVIS's reader turns void into background."""
    mask = np.asarray(mask)
    labelled = mask >= 0
    ids = np.where(mask < num_labels, np.maximum(mask, 0), 0).astype(np.int64)
    big_h, big_w = ids.shape
    h, w = grid_hw
    cell = (np.arange(big_h)[:, None] * h // big_h) * w + np.arange(big_w)[None] * w // big_w
    counts = np.zeros((h * w, num_labels), np.float64)
    np.add.at(counts, (cell[labelled], ids[labelled]), 1.0)
    counts[counts.sum(-1) == 0, 0] = 1.0
    counts /= counts.sum(-1, keepdims=True)
    return jnp.asarray(counts, jnp.float32)


def neighbourhood(grid_hw: tuple[int, int], radius: int) -> np.ndarray:
    """bool `[h*w, h*w]`: cell j is within `radius` cells of cell i in both axes (all True when
    `radius <= 0`)."""
    h, w = grid_hw
    yy, xx = np.divmod(np.arange(h * w), w)
    if radius <= 0:
        return np.ones((h * w, h * w), bool)
    return (np.abs(yy[:, None] - yy[None]) <= radius) & (np.abs(xx[:, None] - xx[None]) <= radius)


@functools.partial(jax.jit, static_argnames=("k",))
def propagate_frame(
    query: jax.Array,
    context: jax.Array,
    context_labels: jax.Array,
    context_valid: jax.Array,
    near: jax.Array,
    *,
    k: int,
    temperature: float,
) -> jax.Array:
    """Labels of one frame from its context.

    Args:
      query: l2-normalised features of the frame, `[N, C]` (N = h*w cells).
      context: l2-normalised features of the context frames, `[M, N, C]`.
      context_labels: their soft labels, `[M, N, K]`.
      context_valid: bool `[M]` (unused slots of the context buffer are False).
      near: bool `[N, N]`, which context cells each query cell may look at.
      k: neighbours kept per query cell (clipped to M*N).
      temperature: softmax temperature on the cosine similarities.

    Returns:
      `[N, K]` soft labels (rows sum to 1).
    """
    m, n, _ = context.shape
    aff = jnp.einsum("nc,mpc->nmp", query, context, precision=jax.lax.Precision.HIGHEST)
    allowed = near[:, None, :] & context_valid[None, :, None]
    aff = jnp.where(allowed, aff, -jnp.inf).reshape(n, m * n)
    top, idx = jax.lax.top_k(aff, min(k, m * n))
    weights = jax.nn.softmax(top / temperature, axis=-1)
    weights = jnp.where(jnp.isfinite(top), weights, 0.0)
    labels = context_labels.reshape(m * n, -1)[idx]  # [N, k, K]
    out = jnp.einsum("nk,nkl->nl", weights, labels)
    return out / jnp.maximum(out.sum(-1, keepdims=True), 1e-12)


def propagate_clip(
    features: jax.Array,
    first_labels: jax.Array,
    grid_hw: tuple[int, int],
    *,
    context: int = 7,
    k: int = 5,
    temperature: float = 0.1,
    radius: int = 12,
) -> jax.Array:
    """Soft labels of every frame of a clip, `[T, h*w, K]` (frame 0: `first_labels`).

    Args:
      features: `[T, h*w, C]` dense features (normalised here).
      first_labels: `[h*w, K]` soft labels of frame 0 (`first_frame_labels`).
      grid_hw: the feature grid (h, w).
      context: previous frames used besides the first one.
      k, temperature, radius: see `propagate_frame` / the module doc.
    """
    t, n, _ = features.shape
    feats = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    slots = 1 + max(int(context), 0)
    ctx = jnp.zeros((slots,) + feats.shape[1:], feats.dtype).at[0].set(feats[0])
    ctx_labels = jnp.zeros((slots,) + first_labels.shape, jnp.float32).at[0].set(first_labels)
    valid = np.zeros(slots, bool)
    valid[0] = True
    near = jnp.asarray(neighbourhood(grid_hw, radius))
    out = [first_labels]
    for i in range(1, t):
        labels = propagate_frame(
            feats[i], ctx, ctx_labels, jnp.asarray(valid), near, k=int(k),
            temperature=float(temperature),
        )  # fmt: skip
        out.append(labels)
        if slots > 1:  # ring buffer of the last `context` frames in slots 1..context
            s = 1 + (i - 1) % (slots - 1)
            ctx = ctx.at[s].set(feats[i])
            ctx_labels = ctx_labels.at[s].set(labels)
            valid[s] = True
    return jnp.stack(out)


def labels_to_segmentation(
    labels: jax.Array, grid_hw, out_hw, method: str = "bilinear"
) -> np.ndarray:
    """`[T, h*w, K]` soft labels -> int32 `[T, H, W]` ids: upsampled (`bilinear` as DINO, which
    rounds the corners of objects; or `nearest`), then arg-max."""
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"label_propagation: upsample must be bilinear or nearest, got {method!r}")
    t, _, k = labels.shape
    grid = labels.reshape(t, grid_hw[0], grid_hw[1], k)
    up = jax.image.resize(
        grid, (t, out_hw[0], out_hw[1], k), "linear" if method == "bilinear" else "nearest"
    )
    return np.asarray(jnp.argmax(up, -1)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# DAVIS measures (davis2017-evaluation's `davis2017/metrics.py`, re-implemented).

FRAME_RANGES = ("davis", "all_but_first")


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J (DAVIS `db_eval_iou`): IoU of two bool masks `[H, W]` over the pixels that are not
    `void` (bool `[H, W]`, None: none); 1 when that union is empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    union = np.count_nonzero((pred | gt) & keep)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt & keep) / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS `seg2bmap` (D. Martin's, 1-pixel wide, offset half a pixel towards the origin):
    bool `[H, W]`, pixel `(y, x)` is a boundary when the mask differs between it and its right,
    lower or lower-right neighbour. Neighbours outside the image do not count (the image border
    is no boundary), so the last row compares right only, the last column down only, and the
    bottom-right pixel is never a boundary. A boundary pixel may be a background pixel (the one
    above or left of the object's edge)."""
    seg = mask.astype(bool)
    b = np.zeros_like(seg)
    b[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    b[:-1, :] |= seg[:-1, :] != seg[1:, :]
    b[:-1, :-1] |= seg[:-1, :-1] != seg[1:, 1:]
    return b


def boundary_tolerance(hw: tuple[int, int], bound_th: float = 0.008) -> int:
    """DAVIS's match radius in pixels: `ceil(bound_th * diagonal)`, or `bound_th` itself when it
    is >= 1 (a pixel count)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(hw[0], hw[1])))


def _disk(radius: int) -> np.ndarray:
    """bool `[2r+1, 2r+1]`: `x^2 + y^2 <= r^2` (`skimage.morphology.disk`, DAVIS's element)."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None
) -> float:
    """F (DAVIS `f_measure`): boundary F-measure of two bool masks `[H, W]`.

    Void pixels (bool `[H, W]`) are removed from both masks first (set to background), then
    each mask's `boundary_map` is taken; a boundary pixel matches when a boundary pixel of the
    other map lies within the disk of radius `boundary_tolerance`. Precision = matched predicted
    boundary / predicted boundary, recall = matched true boundary / true boundary,
    F = 2PR / (P + R). Both boundaries empty: 1; exactly one empty: 0 (P or R is 0).
    """
    keep = np.ones(gt.shape, bool) if void is None else ~void.astype(bool)
    pb = boundary_map(pred.astype(bool) & keep)
    gb = boundary_map(gt.astype(bool) & keep)
    n_p, n_g = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    disk = _disk(boundary_tolerance(gt.shape, bound_th))
    # Zero outside the image, as OpenCV's dilate (DAVIS's) with its default border.
    g_dil = ndimage.binary_dilation(gb, structure=disk)
    p_dil = ndimage.binary_dilation(pb, structure=disk)
    precision = np.count_nonzero(pb & g_dil) / n_p
    recall = np.count_nonzero(gb & p_dil) / n_g
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def scored_frames(num_frames: int, frames: str = "davis") -> range:
    """The frames J and F average over. `davis`: 1..T-2, DAVIS 2017's semi-supervised
    evaluation, which leaves out the given first frame and the last one (`[1:-1]`);
    `all_but_first`: 1..T-1.

    Raises:
      ValueError: for another `frames`, or a clip with no frame to score.
    """
    if frames not in FRAME_RANGES:
        raise ValueError(f"label_propagation: frames must be one of {FRAME_RANGES}, got {frames!r}")
    stop = num_frames - 1 if frames == "davis" else num_frames
    if stop <= 1:
        raise ValueError(
            f"label_propagation: a clip of {num_frames} frames has no frame to score with "
            f"frames={frames!r} (DAVIS's range 1..T-2 needs T >= 3)"
        )
    return range(1, stop)


def clip_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    objects,
    bound_th: float = 0.008,
    *,
    frames: str = "davis",
) -> list[tuple[float, float]]:
    """Per object `(J, F)`, each the mean over `scored_frames` of `pred` int `[T, H, W]` against
    `gt` int `[T, H, W]`, whose negative pixels are void (`common.data.void`: excluded from J
    and F as DAVIS's `void_pixels`)."""
    scores = []
    rng = scored_frames(len(gt), frames)
    for obj in objects:
        js, fs = [], []
        for t in rng:
            void = gt[t] < 0
            js.append(region_similarity(pred[t] == obj, gt[t] == obj, void))
            fs.append(boundary_f_measure(pred[t] == obj, gt[t] == obj, bound_th, void))
        scores.append((float(np.mean(js)), float(np.mean(fs))))
    return scores


# ---------------------------------------------------------------------------------------------
# The evaluator.


def _get(example: dict, path: str):
    """`example['a']['b']` for `path='a/b'` (DAVIS nests frames under `video`)."""
    node = example
    for part in path.split("/"):
        if part not in node:
            raise ValueError(f"label_propagation: the dataset has no feature {path!r}")
        node = node[part]
    return node


def _resize_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 `[T, H, W, 3]` -> float32 in [0, 1], short side `short_side` (0: as they are)."""
    x = frames.astype(np.float32) / 255.0
    if not short_side:
        return x
    t, h, w, _ = x.shape
    scale = short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return x
    return np.asarray(jax.image.resize(x, (t, size[0], size[1], 3), "linear", antialias=True))


@register_evaluator("label_propagation")
class LabelPropagationEvaluator(Evaluator):
    """DAVIS-style J & F of first-frame mask propagation with frozen dense features.

    Options (`config.evals.label_propagation`): see `defaults`.
    """

    defaults = {
        "dataset": "synthetic_videos",  # TFDS name, e.g. davis/480p
        "data_dir": "",  # empty: config.data.data_dir
        "split": "validation",
        "examples": 0,  # > 0: only the first clips
        "max_frames": 0,  # > 0: only the first frames of each clip
        "video_key": "video",
        "mask_key": "instance_masks",
        "image_size": 0,  # short side of the network input; 0: the frames' own size
        "network": "online",
        "layer": "out",  # dense map: out, or a backbone stage (stage3, ...)
        "batch_size": 16,  # frames per forward pass
        "context": 7,  # previous frames besides the first (DINO: 7)
        "k": 5,  # neighbours (DINO: 5)
        "temperature": 0.1,  # DINO: 0.1
        "radius": 12,  # neighbourhood in feature cells (DINO: 12); 0: no limit
        "upsample": "bilinear",  # labels to the mask resolution: bilinear (DINO) or nearest
        "bound_th": 0.008,  # F's boundary tolerance, fraction of the diagonal (DAVIS)
        "frames": "davis",  # scored frames: davis (1..T-2) | all_but_first (1..T-1)
        "void_label": "auto",  # common.data.void: auto (255 in 8-bit masks) | none | an id
        "void_in_scores": "exclude",  # exclude (metrics.py's void_pixels) | background
    }

    def clips(self):
        """(frames uint8 `[T,H,W,3]`, masks int32 `[T,H,W]`, void -1) of the evaluated clips."""
        import ml_collections
        import tensorflow_datasets as tfds

        from common.data import loading

        o = self.options
        void_label = void.check_setting(o.void_label)
        data = ml_collections.ConfigDict(
            {
                "name": o.dataset,
                "data_dir": o.data_dir or self.config.data.get("data_dir", ""),
                "split": o.split,
                "build_if_missing": True,
            }
        )
        loading.ensure_dataset(data)
        builder = loading.get_builder(data)
        split = o.split if not o.examples else f"{o.split}[:{int(o.examples)}]"
        ds = builder.as_dataset(split=split, shuffle_files=False)
        for ex in tfds.as_numpy(ds):
            frames = np.asarray(_get(ex, o.video_key))
            masks = np.asarray(_get(ex, o.mask_key))
            if masks.ndim == 4:  # [T, H, W, 1] (DAVIS segmentations are images)
                masks = masks[..., 0]
            if o.max_frames:
                frames, masks = frames[: o.max_frames], masks[: o.max_frames]
            if frames.shape[:3] != masks.shape:
                raise ValueError(
                    f"label_propagation: frames {frames.shape} and masks {masks.shape} differ"
                )
            yield frames, void.to_ignore(masks, void.resolve(void_label, masks.dtype))

    def dense_features(self, setup, state, frames: np.ndarray) -> np.ndarray:
        """Frozen `layer` features `[T, h, w, C]` of frames in [0, 1]."""
        o = self.options
        module = setup.modules[o.network]
        variables = network_variables(state, o.network)
        b = int(o.batch_size)
        out = []
        for i in range(0, len(frames), b):
            chunk = frames[i : i + b]
            n = len(chunk)
            if n < b:  # pad: one compiled shape per clip size
                chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
            x = extract_dense(module, o.layer, variables, jnp.asarray(chunk))
            out.append(np.asarray(jax.device_get(x))[:n])
        return np.concatenate(out)

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        del mesh
        o = self.options
        if o.void_in_scores not in ("exclude", "background"):
            raise ValueError(
                "label_propagation: void_in_scores must be exclude or background, got "
                f"{o.void_in_scores!r}"
            )
        scores = []
        num_clips = 0
        for frames, masks in self.clips():
            num_clips += 1
            scored_frames(len(masks), o.frames)  # a clear error before any feature is computed
            objects = [int(i) for i in np.unique(masks[0]) if i > 0]
            if not objects:
                continue
            feats = self.dense_features(setup, state, _resize_frames(frames, int(o.image_size)))
            t, h, w, c = feats.shape
            num_labels = max(objects) + 1
            first = first_frame_labels(masks[0], (h, w), num_labels)
            labels = propagate_clip(
                jnp.asarray(feats.reshape(t, h * w, c)), first, (h, w), context=int(o.context),
                k=int(o.k), temperature=float(o.temperature), radius=int(o.radius),
            )  # fmt: skip
            pred = labels_to_segmentation(labels, (h, w), masks.shape[1:], o.upsample)
            if o.void_in_scores == "background":
                masks = np.maximum(masks, 0)
            scores.extend(clip_scores(pred, masks, objects, float(o.bound_th), frames=o.frames))
        if not scores:
            raise ValueError(f"label_propagation: no object in the first frames of {o.dataset}")
        j = float(np.mean([s[0] for s in scores]))
        f = float(np.mean([s[1] for s in scores]))
        return {
            "J_mean": j,
            "F_mean": f,
            "JF_mean": (j + f) / 2,
            "num_clips": float(num_clips),
            "num_objects": float(len(scores)),
        }
