"""Pictures of where VITO looks: each frame of a pair with its attention map per scale (PIL).

One row per example (up to 8): frame 1, its attention over each scale of `method_kwargs.scales`
(first query), then frame 2 and its maps. A map is the softmax weight of each feature cell
upsampled (nearest) to the frame and drawn as a heat overlay (red = most weight, normalised per
map), so a learned head shows which parts of the frame it finds stable across time and
distinctive; at initialisation (zero logit layer) every map is uniform.

Written by the trainer every `pictures_every_steps`, or on demand for a run's latest checkpoint:
    python -m common.pictures --config experiments/vito.py:local --workdir DIR [--out PNG]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw

from common import augment
from common.pictures import under_jit

MAX_ROWS = 8
PANEL = 96  # pixels per panel side
_PAD = 4


@under_jit
def _attention(scales: tuple[str, ...], nets, images: jax.Array) -> list[jax.Array]:
    """Online attention weights of the first query per scale, `[B, h_s, w_s]`, one program."""
    out = nets("online", augment.normalize(images), return_attention=True)
    maps = []
    for scale, w in zip(scales, out["attention"]):
        h, wd = out["features"][scale].shape[1:3]
        maps.append(w[:, 0].reshape(-1, h, wd))
    return maps


def attention_maps(nets, images: np.ndarray, scales: Sequence[str]) -> list[np.ndarray]:
    """Online attention weights of the first query per scale, `[B, h_s, w_s]` float32 (each map
    sums to 1), for images `[B, S, S, 3]` in [0, 1] (`common.pictures.under_jit`)."""
    maps = _attention(tuple(scales), nets, np.asarray(images, np.float32))
    return [np.asarray(m) for m in jax.device_get(maps)]


def overlay(frame: np.ndarray, weights: np.ndarray, size: int = PANEL) -> np.ndarray:
    """`frame [S,S,3]` in [0,1] blended with the heat map of `weights [h,w]` -> uint8 `[size,
    size, 3]` (weights scaled by their max, so a uniform map is a uniform tint)."""
    img = np.asarray(
        Image.fromarray((np.clip(frame, 0, 1) * 255).astype(np.uint8)).resize((size, size))
    )
    heat = weights / max(float(weights.max()), 1e-12)
    heat = (
        np.asarray(
            Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        ).astype(np.float32)[..., None]
        / 255.0
    )
    red = np.array([255.0, 40.0, 0.0])
    blended = 0.45 * img + 0.55 * (heat * red + (1 - heat) * img * 0.35)
    return np.clip(blended, 0, 255).astype(np.uint8)


def render(frames1, frames2, maps1, maps2, scales: Sequence[str]) -> Image.Image:
    """The figure: rows of `frame1 | maps1 per scale | frame2 | maps2 per scale`."""
    n = min(len(frames1), MAX_ROWS)
    cols = 2 * (1 + len(scales))
    header = 14
    fig = Image.new(
        "RGB", (cols * (PANEL + _PAD) + _PAD, header + n * (PANEL + _PAD) + _PAD), "white"
    )
    draw = ImageDraw.Draw(fig)
    titles = ["frame 1", *scales, "frame 2", *scales]
    for c, t in enumerate(titles):
        draw.text((_PAD + c * (PANEL + _PAD), 1), t, fill=(0, 0, 0))
    for r in range(n):
        panels = []
        for frames, maps in ((frames1, maps1), (frames2, maps2)):
            panels.append(
                np.asarray(Image.fromarray((np.clip(frames[r], 0, 1) * 255).astype(np.uint8))
                           .resize((PANEL, PANEL)))
            )  # fmt: skip
            panels.extend(overlay(frames[r], m[r]) for m in maps)
        for c, p in enumerate(panels):
            fig.paste(Image.fromarray(p), (_PAD + c * (PANEL + _PAD), header + r * (PANEL + _PAD)))
    return fig


def save(nets, batch: Mapping[str, np.ndarray], path: str, *, scales: Sequence[str]) -> bool:
    """Writes the attention figure of the host batch's `view1`/`view2` to `path` (PNG)."""
    v1 = np.asarray(batch["view1"])[:MAX_ROWS]
    v2 = np.asarray(batch["view2"])[:MAX_ROWS]
    # Both frames in one forward pass (inference BatchNorm: each image on its own, the same
    # numbers as one pass per frame): the compiled program holds the network once.
    maps = attention_maps(nets, np.concatenate([v1, v2]), scales)
    maps1 = [m[: len(v1)] for m in maps]
    maps2 = [m[len(v1) :] for m in maps]
    render(v1, v2, maps1, maps2, scales).save(path)
    return True
