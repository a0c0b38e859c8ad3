"""Pictures of what DetCon sees: views, id maps on the feature grid, sampled ids (PIL + NumPy).

During training (`--config.pictures_every_steps=N`) the trainer calls `DetConB/DetConS
.save_pictures`, which writes `<workdir>/pictures/step_<step>.png`. On demand, for the latest
checkpoint of a workdir, `python -m common.pictures` (any method) draws the same picture.

One row per image (the first `num_images` of the batch), eight panels:
  view 1 | ids 1 | sampled 1 | features 1 | view 2 | ids 2 | sampled 2 | features 2
* view: the crop as the pipeline emits it (before photometric augmentation);
* ids: the majority id of every feature cell (`common.masks.ids_to_grid`), one colour per id
  (the same id has the same colour in both views: ids are global per image), id written in the
  cell when it fits; black = no id;
* sampled: the view, dimmed except the cells of the sampled ids; a sampled id that was also
  sampled in the other view (it has a positive in the loss) is tinted with its colour and
  outlined in white, one without a partner (zero loss weight) is tinted only;
* features: the online network's dense features (inference mode), their first three principal
  components (over every cell of both views of the rows shown) as RGB: cells that the network
  thinks alike look alike, so a trained network's colours follow the segments.
Under each row: the sampled ids of each view with their multiplicity (`id:count`) and the ids
sampled in both views.

The sampling and the network run as one compiled program (`common.pictures.under_jit`); the
principal components and the drawing in NumPy and PIL.
"""

from __future__ import annotations

import colorsys
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.pictures import under_jit

NUM_IMAGES = 4  # rows of a picture (fewer if the batch is smaller)
MIN_PANEL = 128  # views are upscaled by an integer factor to at least this many pixels
PAD = 4  # pixels between panels and around the figure
TITLE_HEIGHT = 14  # the column titles above the first row
TEXT_LINE = 12  # one line of text under a row; two lines per row
COLUMNS = (
    "view 1", "ids 1", "sampled 1", "features 1",
    "view 2", "ids 2", "sampled 2", "features 2",
)  # fmt: skip
_NO_ID = (0, 0, 0)


def upscale_factor(view_size: int) -> int:
    """Integer factor that brings a `view_size` view to at least `MIN_PANEL` pixels."""
    return max(1, math.ceil(MIN_PANEL / view_size))


def figure_size(num_images: int, view_size: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of `num_images` rows of `view_size` views."""
    panel = view_size * upscale_factor(view_size)
    width = len(COLUMNS) * panel + (len(COLUMNS) + 1) * PAD
    height = TITLE_HEIGHT + num_images * (panel + 2 * TEXT_LINE + PAD) + PAD
    return width, height


def id_colour(i: int) -> tuple[int, int, int]:
    """A bright colour per id, far from its neighbours' (golden-ratio hue steps); black for -1."""
    if i < 0:
        return _NO_ID
    hue = (i * 0.618033988749895) % 1.0
    value = 0.95 if i % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
    return int(255 * r), int(255 * g), int(255 * b)


def id_colours(ids: np.ndarray) -> np.ndarray:
    """`id_colour` of every entry of an int id map `[...]` -> uint8 `[..., 3]` (-1: black).

    The colours of the pictures, for drawing id maps elsewhere (the notebooks): an id has the
    same colour in every map, so ids shared by two views match."""
    ids = np.asarray(ids, np.int64)
    table = np.asarray([id_colour(i) for i in range(-1, max(int(ids.max(initial=-1)), -1) + 1)])
    return table.astype(np.uint8)[np.maximum(ids, -1) + 1]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _cells_to_pixels(grid: np.ndarray, cell: int, size: int, fill) -> np.ndarray:
    """`[h, w, ...]` per-cell values -> `[size, size, ...]` pixels; the part that no whole cell
    covers (VALID pooling drops it) keeps `fill`."""
    up = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
    out = np.empty((size, size) + grid.shape[2:], grid.dtype)
    out[...] = fill
    out[: up.shape[0], : up.shape[1]] = up
    return out


def _ids_panel(grid: np.ndarray, cell: int, size: int, font) -> Image.Image:
    pixels = _cells_to_pixels(id_colours(grid), cell, size, _NO_ID)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    h, w = grid.shape
    for y in range(h):
        for x in range(w):
            draw.rectangle(
                [x * cell, y * cell, (x + 1) * cell - 1, (y + 1) * cell - 1], outline=(40, 40, 40)
            )
            # Default bitmap font: ~6 px per digit, 11 px high.
            label = str(int(grid[y, x]))
            if grid[y, x] >= 0 and cell >= 7 * len(label) + 2 and cell >= 13:
                r, g, b = id_colour(int(grid[y, x]))
                ink = (0, 0, 0) if 0.3 * r + 0.6 * g + 0.1 * b > 110 else (255, 255, 255)
                draw.text((x * cell + 2, y * cell + 1), label, fill=ink, font=font)
    return image


def _sampled_panel(
    view: np.ndarray, grid: np.ndarray, sampled: set[int], matched: set[int], cell: int
) -> Image.Image:
    size = view.shape[0]
    colours = _cells_to_pixels(id_colours(grid).astype(np.float32) / 255.0, cell, size, 0.0)
    chosen = np.isin(grid, np.asarray(sorted(sampled) or [-2]))
    chosen_px = _cells_to_pixels(chosen, cell, size, False)[..., None]
    # Sampled cells: half view, half id colour; the rest: the view at a third of its brightness.
    pixels = np.where(chosen_px, 0.5 * view + 0.5 * colours, 0.3 * view)
    image = Image.fromarray(_to_uint8(pixels))
    draw = ImageDraw.Draw(image)
    h, w = grid.shape
    for y in range(h):
        for x in range(w):
            if int(grid[y, x]) in matched:
                box = [x * cell, y * cell, (x + 1) * cell - 1, (y + 1) * cell - 1]
                draw.rectangle(box, outline=(255, 255, 255))
    return image


def feature_colours(dense: np.ndarray) -> np.ndarray:
    """Dense features `[..., C]` -> their first 3 principal components as RGB in [0, 1].

    The components are computed over all given cells together (so colours compare across images
    and views); each is scaled by its 2nd-98th percentile range.
    """
    x = dense.reshape(-1, dense.shape[-1]).astype(np.float64)
    x = x - x.mean(axis=0)
    # Right singular vectors = principal directions; a constant map (no variance) stays grey.
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt[:3].T
    if pcs.shape[1] < 3:
        pcs = np.pad(pcs, ((0, 0), (0, 3 - pcs.shape[1])))
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    rgb = np.clip((pcs - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
    rgb = np.where(hi - lo > 1e-8, rgb, 0.5)
    return rgb.reshape(dense.shape[:-1] + (3,))


def _describe(ids: np.ndarray) -> str:
    counts = Counter(int(i) for i in ids)
    return " ".join(f"{i}:{n}" if n > 1 else str(i) for i, n in sorted(counts.items()))


def render(
    views: tuple[np.ndarray, np.ndarray],
    grids: tuple[np.ndarray, np.ndarray],
    ids: tuple[np.ndarray, np.ndarray],
    features: tuple[np.ndarray, np.ndarray],
    stride: int,
) -> Image.Image:
    """Draws the figure.

    Args:
      views: both views, float `[N, S, S, 3]` in [0, 1].
      grids: majority id per feature cell of each view, int `[N, h, w]` (-1 = no id).
      ids: sampled ids of each view, int `[N, R]` (-1 = none).
      features: per-cell colours of each view's features, float `[N, h, w, 3]` in [0, 1].
      stride: pixels of a view per feature cell.

    Returns:
      An RGB image of `figure_size(N, S)`.
    """
    n, s = views[0].shape[:2]
    k = upscale_factor(s)
    panel, cell = s * k, stride * k
    figure = Image.new("RGB", figure_size(n, s), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for c, title in enumerate(COLUMNS):
        draw.text((PAD + c * (panel + PAD), 1), title, fill=(0, 0, 0), font=font)
    for row in range(n):
        top = TITLE_HEIGHT + row * (panel + 2 * TEXT_LINE + PAD)
        sampled = [{int(i) for i in ids[v][row] if i >= 0} for v in (0, 1)]
        matched = sampled[0] & sampled[1]
        for v in (0, 1):
            view = np.repeat(np.repeat(views[v][row], k, axis=0), k, axis=1)
            panels = [
                Image.fromarray(_to_uint8(view)),
                _ids_panel(grids[v][row], cell, panel, font),
                _sampled_panel(view, grids[v][row], sampled[v], matched, cell),
                Image.fromarray(_to_uint8(_cells_to_pixels(features[v][row], cell, panel, 0.0))),
            ]
            for j, image in enumerate(panels):
                figure.paste(image, (PAD + (4 * v + j) * (panel + PAD), top))
        text = [
            f"sampled 1: {_describe(ids[0][row])}   sampled 2: {_describe(ids[1][row])}",
            f"in both views (positives): {' '.join(map(str, sorted(matched))) or 'none'}",
        ]
        for line, t in enumerate(text):
            draw.text((PAD, top + panel + 1 + line * TEXT_LINE), t, fill=(0, 0, 0), font=font)
    return figure


@under_jit
def _masks_and_features(method, nets, batch: Mapping[str, jax.Array], rng: jax.Array) -> dict:
    """The picture's numbers, one program: sampled ids and grids of both views and the online
    network's dense features `[2, N, h, w, C]` float32 (views in [0, 1], normalised here)."""
    from common import augment

    m = method.view_masks({k: batch[k] for k in ("mask1", "mask2")}, rng)
    out = {k: m[k] for k in ("grid1", "grid2", "ids1", "ids2")}
    # Both views in one forward pass (inference BatchNorm: each image on its own; the same
    # numbers as one pass per view), so the program holds the network once: half the compiling.
    views = jnp.concatenate([batch["view1"], batch["view2"]])
    dense = nets("online", augment.normalize(views))["dense"].astype(jnp.float32)
    out["dense"] = dense.reshape((2, -1) + dense.shape[1:])
    return out


def picture_arrays(method, nets, batch: Mapping[str, Any], rng: jax.Array, n: int) -> dict:
    """The numbers behind the figure of the first `n` images of a host batch, as NumPy:
    `grid1`, `grid2` int `[n, h, w]`, `ids1`, `ids2` int `[n, R]` and `dense` float32
    `[2, n, h, w, C]` (one compiled program, `common.pictures.under_jit`)."""
    part = {k: np.asarray(batch[k])[:n] for k in ("mask1", "mask2")}
    part.update({k: np.asarray(batch[k][:n], np.float32) for k in ("view1", "view2")})
    return jax.device_get(_masks_and_features(method, nets, part, rng))


def save(
    method,
    nets,
    batch: Mapping[str, Any],
    rng: jax.Array,
    path: str,
    num_images: int = NUM_IMAGES,
) -> bool:
    """Writes the figure of the first `num_images` images of a host batch to `path` (PNG).

    The ids are sampled exactly as the method's loss samples them (`method.view_masks`), with
    `rng`; the features are the `online` network's.

    Args:
      method: a DetCon method (has `view_masks` and `config`).
      nets: `common.method.Networks` in inference mode.
      batch: host batch with `view1`, `view2` float `[B, S, S, 3]` in [0, 1] and `mask1`,
        `mask2` int `[B, S, S]`.
      rng: key of the id sampling.
      path: the PNG to write (its directory must exist).
      num_images: rows of the figure.

    Returns:
      True (a picture was written).
    """
    from common.network import build_backbone

    n = min(num_images, int(np.shape(batch["view1"])[0]))
    m = picture_arrays(method, nets, batch, rng, n)
    views = tuple(np.asarray(batch[k][:n], np.float32) for k in ("view1", "view2"))
    rgb = feature_colours(m["dense"])  # [2, N, h, w, 3], one PCA for both views
    stride = build_backbone(method.config).output_stride
    figure = render(
        views, (m["grid1"], m["grid2"]), (m["ids1"], m["ids2"]), (rgb[0], rgb[1]), stride
    )
    figure.save(path, format="PNG")
    return True
