"""Surface sources of the `natural` scenes: class texture structures, photographs, palettes.

Pure NumPy (plus PIL and scikit-image's bundled images at first use, once per process), like
`common.data.procedural`, whose `natural` style paints with these.

Colour is a nuisance by construction. An object's texture is a class *structure*, a grey-level
tile `g` in [0, 1] (bricks, grass, stripes, rings, ...), mapped through a palette of three
colours drawn for the instance independently of its class. Every tile is rank-equalised to a
uniform grey-level histogram, so that the distribution of a pixel's colour (palette colours
drawn i.i.d., `g` uniform) is the same for every class: only the spatial arrangement of the
colours, and the shape, tell classes apart.

Backgrounds and unannotated "stuff" regions are patches of the colour photographs that
scikit-image ships inside its wheel (`skimage/data/*.png|jpg`, no download), recoloured by a
random rotation about the grey axis, so the scenes have natural image statistics (multi-colour,
high contrast, edges everywhere) without their colours saying anything about the classes.
"""

from __future__ import annotations

import colorsys
import functools
import os

import numpy as np

TILE = 96  # side of the class structure tiles, in tile pixels

# One structure per class, in the order of `procedural.CLASSES` (disc..arrow): six procedural
# patterns and six grey photographs of textures/surfaces from scikit-image's data directory.
CLASS_STRUCTURES = (
    "brick", "stripes", "grass", "checker", "gravel", "rings",
    "spots", "waves", "coins", "zigzag", "blocks", "moon",
)  # fmt: skip
# Grey structures only the unannotated distractors use (never a class's).
DISTRACTOR_STRUCTURES = ("camera", "text", "page", "clock_motion")
# Colour photographs for backgrounds and stuff regions.
PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
    "ihc.png", "retina.jpg", "motorcycle_left.png", "color.png",
)  # fmt: skip


def _data_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def _read(name: str, *, grey: bool, max_side: int) -> np.ndarray:
    """float32 image in [0, 1] (`[H, W]` grey or `[H, W, 3]`), shrunk to at most `max_side`."""
    from PIL import Image

    path = os.path.join(_data_dir(), name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: scikit-image's bundled image {name!r} is missing; the natural scenes need "
            "the scikit-image wheel's data directory (reinstall scikit-image)"
        )
    with Image.open(path) as im:
        im = im.convert("L" if grey else "RGB")
        scale = max_side / max(im.size)
        if scale < 1.0:
            size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            im = im.resize(size, Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0


def _equalise(g: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Rank-equalises `g` to a uniform histogram on (0, 1); `tie_break` orders equal values."""
    flat = g.ravel().astype(np.float64)
    if tie_break is not None:
        flat = flat + 1e-3 * (tie_break.ravel() - tie_break.mean())
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return ((ranks + 0.5) / flat.size).reshape(g.shape).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Periodic smooth noise `[size, size]`: bilinear interpolation of a `cells`^2 random grid."""
    grid = rng.uniform(size=(cells, cells))
    t = np.arange(size) * cells / size
    i0 = np.floor(t).astype(int)
    f = (t - i0)[:, None]
    i1 = (i0 + 1) % cells
    rows = grid[i0] * (1 - f) + grid[i1] * f  # [size, cells]
    return rows[:, i0] * (1 - f.T) + rows[:, i1] * f.T


def _procedural(name: str, rng: np.random.Generator) -> np.ndarray:
    n = TILE
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    two_pi = 2.0 * np.pi
    if name == "stripes":
        return np.sign(np.sin(two_pi * x / 12.0))
    if name == "checker":
        return np.sign(np.sin(two_pi * x / 24.0) * np.sin(two_pi * y / 24.0))
    if name == "rings":
        r = np.hypot(((x + n / 2) % n) - n / 2, ((y + n / 2) % n) - n / 2)
        return np.sign(np.sin(two_pi * r / 10.0))
    if name == "spots":
        return (np.sin(two_pi * x / 16.0) * np.sin(two_pi * y / 16.0) > 0.5).astype(float)
    if name == "waves":
        return np.sign(np.sin(two_pi * (x + 5.0 * np.sin(two_pi * y / 32.0)) / 12.0))
    if name == "zigzag":
        tri = np.abs(((y / 8.0) % 2.0) - 1.0) * 8.0
        return np.sign(np.sin(two_pi * (x + tri) / 12.0))
    if name == "blocks":
        cells = rng.uniform(size=(n // 6, n // 6))
        return np.kron(cells, np.ones((6, 6)))
    raise ValueError(f"unknown procedural structure {name!r}")


_PHOTO_STRUCTURES = {
    "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "coins": "coins.png",
    "moon": "moon.png", "camera": "camera.png", "text": "text.png", "page": "page.png",
    "clock_motion": "clock_motion.png",
}  # fmt: skip


def _structure_tile(name: str) -> np.ndarray:
    """Equalised grey tile float32 `[TILE, TILE]` of a named structure (deterministic)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    # A faint smooth field orders the pixels of flat regions, so equalised two-level patterns
    # keep their two halves (with soft shading inside) instead of random salt and pepper.
    shading = _smooth_noise(rng, TILE, 4)
    if name in _PHOTO_STRUCTURES:
        g = _read(_PHOTO_STRUCTURES[name], grey=True, max_side=4 * TILE)
        # A central crop shrunk to the tile: photos are not periodic, the wrap leaves a seam.
        side = min(g.shape)
        g = g[(g.shape[0] - side) // 2 :, (g.shape[1] - side) // 2 :][:side, :side]
        idx = (np.arange(TILE) * side / TILE).astype(int)
        g = g[idx][:, idx]
    else:
        g = _procedural(name, rng)
    return _equalise(g, shading)


@functools.cache
def class_tiles() -> np.ndarray:
    """float32 `[num_classes, TILE, TILE]`: the equalised structure of each class."""
    return np.stack([_structure_tile(n) for n in CLASS_STRUCTURES])


@functools.cache
def distractor_tiles() -> np.ndarray:
    """float32 `[len(DISTRACTOR_STRUCTURES), TILE, TILE]`."""
    return np.stack([_structure_tile(n) for n in DISTRACTOR_STRUCTURES])


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
    """The colour photographs, float32 `[H, W, 3]` in [0, 255], at most 192 px a side."""
    return tuple(_read(name, grey=False, max_side=192) * 255.0 for name in PHOTOS)


def random_palette(rng: np.random.Generator) -> np.ndarray:
    """float32 `[3, 3]`: three RGB colours in [0, 255], dark to light, any hue, wide saturation.

    Drawn without reference to any class (the nuisance). Value ranges that do not overlap keep
    the texture's structure visible (high contrast) whatever the hues.
    """
    values = (rng.uniform(0.08, 0.45), rng.uniform(0.35, 0.8), rng.uniform(0.65, 1.0))
    colours = [colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1.0), v) for v in values]
    return np.asarray(colours, dtype=np.float32) * 255.0


def palette_map(g: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of grey `g` in [0, 1] `[...]` through 3 colours -> `[..., 3]`."""
    t = np.clip(g, 0.0, 1.0)[..., None] * 2.0
    low = palette[0] + (palette[1] - palette[0]) * np.minimum(t, 1.0)
    return np.where(t <= 1.0, low, palette[1] + (palette[2] - palette[1]) * (t - 1.0))


def sample_tile(
    tile: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float, offset: tuple[float, float]
) -> np.ndarray:
    """Nearest sample of a periodic tile at object-frame coordinates (`scale` tile px per unit)."""
    n = tile.shape[0]
    tx = np.floor(u * scale + offset[0]).astype(np.int64) % n
    ty = np.floor(v * scale + offset[1]).astype(np.int64) % n
    return tile[ty, tx]


def recolour_matrix(rng: np.random.Generator) -> np.ndarray:
    """float32 `[3, 3]` (applied as `rgb @ M`): a random rotation of the hue (about the grey
    axis) with a random saturation gain, so a photograph's colours carry no fixed meaning."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gain = rng.uniform(0.6, 1.5)
    axis = np.full(3, 1.0 / np.sqrt(3.0))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
    grey = np.outer(axis, axis)
    m = grey + gain * (rot - grey)
    if rng.uniform() < 0.5:
        m = m[:, rng.permutation(3)]
    return m.astype(np.float32)


def photo_patch(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A recoloured, rotated, scaled patch of a random photograph, float32 `[h, w, 3]`."""
    pool = photos()
    photo = pool[int(rng.integers(len(pool)))]
    ph, pw = photo.shape[:2]
    zoom = rng.uniform(0.5, 1.5)  # photo px per image px
    angle = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    ys = (np.arange(height, dtype=np.float32) - height / 2.0)[:, None]
    xs = (np.arange(width, dtype=np.float32) - width / 2.0)[None, :]
    cy, cx = rng.uniform(0.25, 0.75) * ph, rng.uniform(0.25, 0.75) * pw
    py = np.clip((cy + zoom * (s * xs + c * ys)).astype(np.int64), 0, ph - 1)
    px = np.clip((cx + zoom * (c * xs - s * ys)).astype(np.int64), 0, pw - 1)
    return np.clip(photo[py, px] @ recolour_matrix(rng), 0.0, 255.0)


def blob_mask(
    rng: np.random.Generator, height: int, width: int, cx: float, cy: float, radius: float
) -> np.ndarray:
    """bool `[h, w]`: an irregular blob (a disc whose radius varies with angle, 3 harmonics)."""
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5 - cx
    theta = np.arctan2(ys, xs)
    r = np.ones_like(theta)
    for k, amp in ((1, 0.25), (2, 0.2), (3, 0.12)):
        r = r + rng.uniform(0.0, amp) * np.cos(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    return xs * xs + ys * ys <= (radius * r) ** 2
