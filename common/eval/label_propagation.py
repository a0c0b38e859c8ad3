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
Scores (DAVIS `davis2017-evaluation`): for each object of the first frame, J = region IoU and
F = boundary F-measure (boundaries matched within `0.008 x image diagonal` pixels), each a mean
over frames 1..T-1; `J_mean`, `F_mean` are means over all objects of all clips, `JF_mean` their
mean. Empty prediction and empty ground truth score 1 (DAVIS convention).

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

from common.eval import Evaluator, register_evaluator
from common.eval.features import extract_dense, network_variables

# ---------------------------------------------------------------------------------------------
# Propagation.


def first_frame_labels(mask: np.ndarray, grid_hw: tuple[int, int], num_labels: int) -> jax.Array:
    """One-hot ids of `mask [H, W]` (ids >= num_labels count as background) averaged over each
    feature cell's pixels (pixel (y, x) belongs to cell (y * h // H, x * w // W), the area
    average when the grid divides the mask): `[h*w, num_labels]` float32, rows summing to 1."""
    mask = np.asarray(mask)
    ids = np.where(mask < num_labels, mask, 0).astype(np.int64)
    big_h, big_w = ids.shape
    h, w = grid_hw
    cell = (np.arange(big_h)[:, None] * h // big_h) * w + np.arange(big_w)[None] * w // big_w
    counts = np.zeros((h * w, num_labels), np.float64)
    np.add.at(counts, (cell.ravel(), ids.ravel()), 1.0)
    counts /= np.maximum(counts.sum(-1, keepdims=True), 1.0)
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
# DAVIS measures.


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two bool masks `[H, W]`; 1 when both are empty."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """bool `[H, W]`: foreground pixels with a 4-neighbour in the background (the image border
    is not a boundary)."""
    mask = mask.astype(bool)
    padded = np.pad(mask, 1, mode="edge")
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(2, 1))
    return mask & ~eroded[1:-1, 1:-1]


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """F: boundary F-measure of two bool masks `[H, W]` (DAVIS `f_measure`).

    Boundary pixels match if within `ceil(bound_th * diagonal)` pixels (`bound_th >= 1`: that
    many pixels) of the other boundary. Both empty: 1; exactly one empty: 0.
    """
    h, w = gt.shape
    r = int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w)))
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_p, n_g = pb.sum(), gb.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    disk = _disk(max(r, 0))
    g_dil = ndimage.binary_dilation(gb, structure=disk)
    p_dil = ndimage.binary_dilation(pb, structure=disk)
    precision = (pb & g_dil).sum() / n_p
    recall = (gb & p_dil).sum() / n_g
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def clip_scores(
    pred: np.ndarray, gt: np.ndarray, objects, bound_th: float = 0.008
) -> list[tuple[float, float]]:
    """Per object `(J, F)`, each the mean over frames 1..T-1 of `pred`/`gt` int `[T, H, W]`."""
    scores = []
    for obj in objects:
        js = [region_similarity(pred[t] == obj, gt[t] == obj) for t in range(1, len(gt))]
        fs = [boundary_f_measure(pred[t] == obj, gt[t] == obj, bound_th) for t in range(1, len(gt))]
        scores.append((float(np.mean(js)) if js else 1.0, float(np.mean(fs)) if fs else 1.0))
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
    }

    def clips(self):
        """(frames uint8 `[T,H,W,3]`, masks int `[T,H,W]`) of the evaluated clips."""
        import ml_collections
        import tensorflow_datasets as tfds

        from common.data import loading

        o = self.options
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
            yield frames, masks.astype(np.int32)

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
        scores = []
        num_clips = 0
        for frames, masks in self.clips():
            num_clips += 1
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
            scores.extend(clip_scores(pred, masks, objects, float(o.bound_th)))
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
