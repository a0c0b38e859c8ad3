"""Procedural multi-object scenes and clips: the renderer behind the embedded datasets.

Pure NumPy on purpose: the dataset builders render examples in worker processes, and keeping
TensorFlow out of this module keeps those workers light (they import this module, not TFDS).

Two styles (`STYLES`):

* `natural`: colour is a nuisance. An object class is a shape family plus a texture
  *structure* (`common.data.textures`); each instance's colours are drawn independently of its
  class. Backgrounds are recoloured patches of photographs with unannotated stuff regions and
  distractor blobs (clutter). Since the datasets' 4.0.0 a scene (or clip) is about one large,
  central main object (the first drawn, so the others may occlude it), with smaller objects
  anywhere: object-centric like an ImageNet photo, cluttered like a COCO one.
* `legacy` (the function default here; the datasets' `legacy*` configs): the first generator: a
  class is a shape family *and* a colour/texture distribution (a fixed hue per class) on
  low-saturation backgrounds, so colour alone identifies the classes.

Geometry is evaluated in the object's own frame (`u`, `v`, in units of its radius), so textures
rotate and scale with the object.
"""

from __future__ import annotations

import colorsys
import dataclasses
from collections.abc import Callable

import numpy as np

from common.data import textures

STYLES = ("natural", "legacy")

# ---------------------------------------------------------------------------------------------
# Shape families: inside tests in the object frame (u, v in units of the object radius).
# ---------------------------------------------------------------------------------------------


def _regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1)


def _inside_convex(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Inside test for a convex polygon with counter-clockwise vertices (half-plane tests)."""
    inside = np.ones(u.shape, dtype=bool)
    nxt = np.roll(vertices, -1, axis=0)
    for (x0, y0), (x1, y1) in zip(vertices, nxt):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0.0
    return inside


def _ccw(vertices: np.ndarray) -> np.ndarray:
    """Returns the vertices in counter-clockwise order (what `_inside_convex` expects)."""
    x, y = vertices[:, 0], vertices[:, 1]
    signed_area = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return vertices if signed_area > 0 else vertices[::-1]


_TRIANGLE = _ccw(_regular_polygon(3, 1.0, np.pi / 2))
_HEXAGON = _ccw(_regular_polygon(6, 0.95))
# Five-pointed star: inner pentagon (vertices between the tips) plus five tip triangles.
_STAR_OUTER = _regular_polygon(5, 1.0, np.pi / 2)
_STAR_INNER = _regular_polygon(5, 0.42, np.pi / 2 + np.pi / 5)
_STAR_PARTS = [_ccw(_STAR_INNER)] + [
    _ccw(np.stack([_STAR_OUTER[k], _STAR_INNER[k], _STAR_INNER[(k - 1) % 5]])) for k in range(5)
]
_ARROW_HEAD = _ccw(np.array([[1.0, 0.0], [0.15, 0.75], [0.15, -0.75]]))


def _star(u, v):
    # Non-convex, so it is the union of convex parts.
    inside = np.zeros(u.shape, dtype=bool)
    for part in _STAR_PARTS:
        inside |= _inside_convex(u, v, part)
    return inside


def _arrow(u, v):
    shaft = (u >= -1.0) & (u <= 0.2) & (np.abs(v) <= 0.28)
    return shaft | _inside_convex(u, v, _ARROW_HEAD)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": lambda u, v: _inside_convex(u, v, _TRIANGLE),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "star": _star,
    "cross": lambda u, v: (
        ((np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0))
    ),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "hexagon": lambda u, v: _inside_convex(u, v, _HEXAGON),
    "striped_rectangle": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.6),
    "diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 1.0,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2),
    "arrow": _arrow,
}


# ---------------------------------------------------------------------------------------------
# Object classes: shape family + colour distribution (HSV) + texture.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    """One learnable object class.

    Attributes:
      name: class name (also the shape family).
      hue: mean hue in [0, 1); each instance jitters it by a small normal deviation.
      saturation: (low, high) uniform range.
      value: (low, high) uniform range.
      texture: one of `solid`, `gradient`, `checker`, `stripes`, `spots`, `noise`.
    """

    name: str
    hue: float
    saturation: tuple[float, float]
    value: tuple[float, float]
    texture: str


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("disc", 0.00, (0.75, 0.95), (0.75, 0.95), "solid"),
    ObjectClass("square", 0.61, (0.6, 0.9), (0.6, 0.9), "checker"),
    ObjectClass("triangle", 0.33, (0.6, 0.9), (0.55, 0.85), "gradient"),
    ObjectClass("ring", 0.15, (0.7, 0.95), (0.8, 1.0), "solid"),
    ObjectClass("star", 0.08, (0.75, 1.0), (0.85, 1.0), "solid"),
    ObjectClass("cross", 0.50, (0.6, 0.9), (0.65, 0.95), "solid"),
    ObjectClass("ellipse", 0.78, (0.45, 0.75), (0.55, 0.85), "spots"),
    ObjectClass("hexagon", 0.07, (0.5, 0.8), (0.3, 0.5), "gradient"),
    ObjectClass("striped_rectangle", 0.92, (0.6, 0.9), (0.7, 0.95), "stripes"),
    ObjectClass("diamond", 0.45, (0.5, 0.8), (0.4, 0.65), "noise"),
    ObjectClass("crescent", 0.17, (0.15, 0.35), (0.9, 1.0), "solid"),
    ObjectClass("arrow", 0.25, (0.6, 0.9), (0.6, 0.9), "stripes"),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)


def _hsv_to_rgb255(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


@dataclasses.dataclass
class ObjectSpec:
    """Pose and appearance of one object in a scene (pixel units, image frame).

    Attributes:
      class_id: index into `CLASSES`.
      cx, cy: centre (x = column, y = row), in pixels.
      radius: half-size in pixels.
      angle: rotation in radians.
      color: base RGB in [0, 255], float32 `[3]`.
      secondary: second RGB colour for two-colour textures.
      texture_freq: texture frequency in cycles per radius (`natural`: tile pixels per radius).
      texture_seed: seed of the per-object texture noise.
      palette: `natural` style: float32 `[3, 3]` instance colours (None: `legacy` texture).
      texture_offset: `natural` style: (x, y) offset of the object frame's origin in the tile.
    """

    class_id: int
    cx: float
    cy: float
    radius: float
    angle: float
    color: np.ndarray
    secondary: np.ndarray
    texture_freq: float
    texture_seed: int
    palette: np.ndarray | None = None
    texture_offset: tuple[float, float] = (0.0, 0.0)


def sample_object(
    rng: np.random.Generator,
    image_size: int,
    class_id: int | None = None,
    *,
    style: str = "legacy",
    main: bool = False,
):
    """Samples an object with a random class, pose and colour for an `image_size` square image.

    `main` (`natural` style only): the scene's main object (`MAIN_RADIUS`, `MAIN_CENTRE`).
    """
    if style == "natural":
        return _sample_natural_object(rng, image_size, class_id, main)
    if style != "legacy":
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if class_id is None:
        class_id = int(rng.integers(NUM_CLASSES))
    cls = CLASSES[class_id]
    color = _hsv_to_rgb255(
        cls.hue + rng.normal(0.0, 0.02),
        rng.uniform(*cls.saturation),
        rng.uniform(*cls.value),
    )
    # The second texture colour is a darker or lighter version of the same hue, so that the class
    # colour stays the dominant cue and the texture a second one.
    if cls.texture == "stripes":
        secondary = np.full(3, rng.uniform(215.0, 250.0), dtype=np.float32)
    else:
        secondary = color * rng.uniform(0.45, 0.65)
    return ObjectSpec(
        class_id=class_id,
        cx=float(rng.uniform(0.1, 0.9) * image_size),
        cy=float(rng.uniform(0.1, 0.9) * image_size),
        radius=float(rng.uniform(0.09, 0.22) * image_size),
        angle=float(rng.uniform(0.0, 2.0 * np.pi)),
        color=color.astype(np.float32),
        secondary=secondary.astype(np.float32),
        texture_freq=float(rng.uniform(1.2, 2.0)),
        texture_seed=int(rng.integers(2**31)),
    )


# `natural` layout (4.0.0): a scene is about one main object, as an ImageNet photo is, with
# smaller objects around and in front of it (COCO's clutter). Measured on the 3.0.0 layout (every
# object 8-30% of the image, anywhere, 1-6 of them) a supervised `local` network reached only
# 13.6 / 13.0 linear / kNN top-1 in 200 steps (random network 11.7 / 9.4); with this layout
# 31.2 / 28.7 (random 14.6 / 11.7).
MAIN_RADIUS = (0.3, 0.45)  # fraction of the image side
MAIN_CENTRE = (0.35, 0.65)  # the main object's centre, so that a centre crop holds most of it
OTHER_RADIUS = (0.07, 0.16)
OTHER_CENTRE = (0.1, 0.9)
# Tile pixels per image pixel: below 1 the class structures (stripe period 12 tile px) stay
# several pixels wide after the 64 -> 48 px crop; their density still varies 1.8x.
TEXTURE_ZOOM = (0.5, 0.9)
# Most objects per scene and per clip, by style (the datasets' defaults): `natural` a main object
# and up to two smaller ones; `legacy` as in 1.0.0.
SCENE_MAX_OBJECTS = {"natural": 3, "legacy": 6}
CLIP_MAX_OBJECTS = {"natural": 3, "legacy": 5}


def _max_objects(style: str, max_objects: int | None, defaults: dict[str, int]) -> int:
    """`max_objects`, or the style's default when None (a clear error for an unknown style)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    return defaults[style] if max_objects is None else max_objects


def _sample_natural_object(
    rng: np.random.Generator, image_size: int, class_id: int | None, main: bool
):
    """`natural` style: colours independent of the class; a large central main object or a
    smaller object anywhere."""
    if class_id is None:
        class_id = int(rng.integers(NUM_CLASSES))
    palette = textures.random_palette(rng)
    radius = float(rng.uniform(*(MAIN_RADIUS if main else OTHER_RADIUS)) * image_size)
    zoom = rng.uniform(*TEXTURE_ZOOM)
    centre = MAIN_CENTRE if main else OTHER_CENTRE
    return ObjectSpec(
        class_id=class_id,
        cx=float(rng.uniform(*centre) * image_size),
        cy=float(rng.uniform(*centre) * image_size),
        radius=radius,
        angle=float(rng.uniform(0.0, 2.0 * np.pi)),
        color=palette[1],
        secondary=palette[0],
        texture_freq=float(radius * zoom),
        texture_seed=int(rng.integers(2**31)),
        palette=palette,
        texture_offset=(float(rng.uniform(0, textures.TILE)), float(rng.uniform(0, textures.TILE))),
    )


def object_box(
    cx: float, cy: float, radius: float, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Pixel box (y0, y1, x0, x1) that can contain the object, clipped; None if off-image."""
    reach = 1.05 * radius  # every shape fits in the unit disc of the object frame
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, height)
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def object_frame(
    cx: float, cy: float, radius: float, angle: float, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates (u, v) of the pixel centres inside `box`."""
    y0, y1, x0, x1 = box
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = np.cos(angle), np.sin(angle)
    u = (c * xs + s * ys) / radius
    v = (-s * xs + c * ys) / radius
    return u, v


def shape_mask(class_id: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside mask of the class's shape family at object-frame coordinates."""
    return SHAPES[CLASSES[class_id].name](u, v)


def texture(obj: ObjectSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB float32 `[h, w, 3]` appearance of the object at object-frame coordinates."""
    if obj.palette is not None:  # natural style: the class's structure in the instance's colours
        tile = textures.class_tiles()[obj.class_id]
        g = textures.sample_tile(tile, u, v, obj.texture_freq, obj.texture_offset)
        return textures.palette_map(g, obj.palette).astype(np.float32)
    kind = CLASSES[obj.class_id].texture
    f = obj.texture_freq
    color, second = obj.color, obj.secondary
    if kind == "solid":
        return np.broadcast_to(color, u.shape + (3,)).astype(np.float32)
    if kind == "gradient":
        t = np.clip((u + 1.0) / 2.0, 0.0, 1.0)[..., None]
        return (second + (color - second) * t).astype(np.float32)
    if kind == "checker":
        on = (np.floor(u * f + 8.0) + np.floor(v * f + 8.0)) % 2 == 0
        return np.where(on[..., None], color, second).astype(np.float32)
    if kind == "stripes":
        on = np.floor(u * f * 1.5 + 8.0) % 2 == 0
        return np.where(on[..., None], color, second).astype(np.float32)
    if kind == "spots":
        on = np.sin(u * f * np.pi * 1.5) * np.sin(v * f * np.pi * 1.5) > 0.45
        return np.where(on[..., None], second, color).astype(np.float32)
    if kind == "noise":
        # Noise in the object frame (a hash of the quantised coordinates) so it moves with it.
        cells = np.floor(u * 6.0 * f).astype(np.int64) * 7919 + np.floor(v * 6.0 * f).astype(
            np.int64
        )
        noise = _hash_unit(cells + obj.texture_seed) - 0.5
        return (color + 50.0 * noise[..., None]).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _hash_unit(x: np.ndarray) -> np.ndarray:
    """Deterministic integer hash to [0, 1) (for textures that must move with the object)."""
    x = (x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFF)
    x ^= x >> np.uint64(17)
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFF)
    return (x >> np.uint64(24)).astype(np.float64) / float(1 << 24)


# ---------------------------------------------------------------------------------------------
# Backgrounds.
# ---------------------------------------------------------------------------------------------

BACKGROUNDS = ("noise", "gradient", "stripes", "blobs")


def _background_color(rng: np.random.Generator) -> np.ndarray:
    # Low saturation keeps the background from competing with the class colours.
    return _hsv_to_rgb255(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.9))


def render_background(
    rng: np.random.Generator, height: int, width: int, *, style: str = "legacy"
) -> np.ndarray:
    """Random textured background, float32 `[height, width, 3]` in [0, 255]."""
    if style == "natural":
        return _natural_background(rng, height, width)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c0, c1 = _background_color(rng), _background_color(rng)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    size = float(max(height, width))
    theta = rng.uniform(0.0, 2.0 * np.pi)
    proj = np.cos(theta) * xs + np.sin(theta) * ys
    if kind == "noise":
        image = c0 + 7.0 * rng.standard_normal((height, width, 3), dtype=np.float32)
    elif kind == "gradient":
        t = ((proj - proj.min()) / max(float(np.ptp(proj)), 1.0))[..., None]
        image = c0 + (c1 - c0) * t
    elif kind == "stripes":
        # Low-contrast stripes: a texture, not a set of objects.
        period = rng.uniform(0.2, 0.45) * size
        t = (0.5 + 0.5 * np.sin(2.0 * np.pi * proj / period))[..., None]
        c1 = c0 + rng.uniform(-25.0, 25.0, size=3)
        image = c0 + (c1 - c0) * t
    else:  # blobs: smooth low-frequency colour field
        grid = rng.uniform(0.0, 1.0, size=(4, 4, 1))
        gy = np.linspace(0.0, 3.0, height)
        gx = np.linspace(0.0, 3.0, width)
        iy, ix = np.minimum(gy.astype(int), 2), np.minimum(gx.astype(int), 2)
        fy, fx = (gy - iy)[:, None, None], (gx - ix)[None, :, None]
        top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
        bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
        t = top * (1 - fy) + bottom * fy
        image = c0 + (c1 - c0) * t
    if kind != "noise":
        # Mild sensor-like noise: without it, the uint8 steps of a smooth ramp are perfectly flat
        # bands that FH cannot merge (their internal difference is 0), giving dozens of slivers.
        image = image + 2.5 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.asarray(image, dtype=np.float32)


def _natural_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photograph patch with 1-3 stuff regions (other photographs) and 0-3 distractor blobs
    (non-class structures in random colours), none of them annotated: the clutter that keeps
    FH and colour from finding the objects for free."""
    size = float(max(height, width))
    image = textures.photo_patch(rng, height, width)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        inside = textures.blob_mask(rng, height, width, cx, cy, rng.uniform(0.25, 0.6) * size)
        image[inside] = textures.photo_patch(rng, height, width)[inside]
    tiles = textures.distractor_tiles()
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        inside = textures.blob_mask(rng, height, width, cx, cy, rng.uniform(0.05, 0.16) * size)
        tile = tiles[int(rng.integers(len(tiles)))]
        offset = (rng.uniform(0, textures.TILE), rng.uniform(0, textures.TILE))
        g = textures.sample_tile(tile, xs + 0 * ys, ys + 0 * xs, rng.uniform(0.7, 1.4), offset)
        image[inside] = textures.palette_map(g[inside], textures.random_palette(rng))
    # Sensor-like noise, as on the legacy backgrounds (flat uint8 bands otherwise).
    return image + 2.5 * rng.standard_normal((height, width, 3), dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rounds and clips a float image in [0, 255] to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Scenes (images) and clips (videos).
# ---------------------------------------------------------------------------------------------

# An object is kept only if enough of it shows: at least this fraction of its in-image area and
# `_min_visible_pixels` pixels. Otherwise it is removed before painting, so that every labelled
# instance is a recognisable part of the image and fully occluded objects never get an id.
MIN_VISIBLE_FRACTION = 0.15


def _min_visible_pixels(height: int, width: int) -> int:
    return max(4, round(0.002 * height * width))


@dataclasses.dataclass
class Scene:
    """One rendered image with its ground truth.

    Attributes:
      image: uint8 `[H, W, 3]`.
      instance_mask: uint8 `[H, W]`, 0 = background, 1..n objects in painter's order.
      class_mask: uint8 `[H, W]`, 0 = background, c + 1 for class c.
      instance_classes: int64 `[n]`, class of instance i + 1.
      labels: bool `[NUM_CLASSES]`, the classes present.
      label: majority class by visible area.
    """

    image: np.ndarray
    instance_mask: np.ndarray
    class_mask: np.ndarray
    instance_classes: np.ndarray
    labels: np.ndarray
    label: int


def _majority_class(class_mask: np.ndarray) -> int:
    areas = np.bincount(class_mask.ravel(), minlength=NUM_CLASSES + 1)[1:]
    return int(np.argmax(areas))  # ties go to the smaller class id (argmax takes the first)


def render_scene(
    rng: np.random.Generator,
    image_size: int,
    *,
    min_objects: int = 1,
    max_objects: int | None = None,
    style: str = "legacy",
) -> Scene:
    """Renders a scene of `min_objects..max_objects` objects on a textured background.

    Objects are painted in painter's order (later objects occlude earlier ones). Objects that
    would show too little (see `MIN_VISIBLE_FRACTION`) are dropped before painting, so the image,
    the masks and the labels always agree.

    Args:
      rng: the example's generator (all randomness comes from it).
      image_size: side of the square image in pixels.
      min_objects: least number of objects drawn before the visibility filter.
      max_objects: largest number of objects (None: the style's, `SCENE_MAX_OBJECTS`).
      style: `natural` or `legacy` (see the module docstring).

    Returns:
      A `Scene` with at least one object.
    """
    max_objects = _max_objects(style, max_objects, SCENE_MAX_OBJECTS)
    size = image_size
    min_px = _min_visible_pixels(size, size)
    while True:  # redraw in the (rare) case that no object is visible enough
        num = int(rng.integers(min_objects, max_objects + 1))
        # The first object (bottom of the painter's order) is the main one in `natural` scenes.
        objects = [sample_object(rng, size, style=style, main=i == 0) for i in range(num)]
        background = render_background(rng, size, size, style=style)
        shapes = []
        for obj in objects:
            box = object_box(obj.cx, obj.cy, obj.radius, size, size)
            if box is None:
                shapes.append(None)
                continue
            u, v = object_frame(obj.cx, obj.cy, obj.radius, obj.angle, box)
            shapes.append((box, u, v, shape_mask(obj.class_id, u, v)))
        # Top-down: an object is occluded only by kept objects above it, and dropping an object
        # can only uncover the ones below, so one pass decides every object.
        covered = np.zeros((size, size), dtype=bool)
        keep = [False] * num
        for i in reversed(range(num)):
            if shapes[i] is None:
                continue
            (y0, y1, x0, x1), _, _, inside = shapes[i]
            area = int(inside.sum())
            visible = int((inside & ~covered[y0:y1, x0:x1]).sum())
            if visible >= max(min_px, MIN_VISIBLE_FRACTION * area):
                keep[i] = True
                covered[y0:y1, x0:x1] |= inside
        if any(keep):
            break

    image = background
    instance_mask = np.zeros((size, size), dtype=np.uint8)
    class_mask = np.zeros((size, size), dtype=np.uint8)
    instance_classes = []
    for i in range(num):
        if not keep[i]:
            continue
        obj = objects[i]
        (y0, y1, x0, x1), u, v, inside = shapes[i]
        patch = image[y0:y1, x0:x1]
        patch[inside] = texture(obj, u, v)[inside]
        instance_classes.append(obj.class_id)
        instance_mask[y0:y1, x0:x1][inside] = len(instance_classes)
        class_mask[y0:y1, x0:x1][inside] = obj.class_id + 1
    labels = np.zeros(NUM_CLASSES, dtype=bool)
    present = np.unique(class_mask)
    labels[present[present > 0] - 1] = True
    return Scene(
        image=to_uint8(image),
        instance_mask=instance_mask,
        class_mask=class_mask,
        instance_classes=np.asarray(instance_classes, dtype=np.int64),
        labels=labels,
        label=_majority_class(class_mask),
    )


@dataclasses.dataclass
class Clip:
    """One rendered clip.

    Attributes:
      video: uint8 `[T, H, W, 3]`.
      instance_masks: uint8 `[T, H, W]`; id i + 1 is the same object in every frame (0 =
        background); an object may be absent from some frames (occluded or out of view).
      instance_classes: int64 `[n]`, class of instance i + 1.
      label: majority class by visible area over the whole clip.
    """

    video: np.ndarray
    instance_masks: np.ndarray
    instance_classes: np.ndarray
    label: int


def render_clip(
    rng: np.random.Generator,
    image_size: int,
    num_frames: int,
    *,
    min_objects: int = 1,
    max_objects: int | None = None,
    style: str = "legacy",
) -> Clip:
    """Renders a clip of objects that translate, scale and rotate under a panning camera.

    The depth order is fixed for the clip (painter's order), so objects occlude each other as
    they move; the camera pans linearly over a background larger than the frame; the lighting
    (a per-channel gain) drifts linearly from the first to the last frame.

    Args:
      rng: the clip's generator.
      image_size: frame side in pixels.
      num_frames: number of frames `T`.
      min_objects: least number of objects drawn before the visibility filter.
      max_objects: largest number of objects (None: the style's, `CLIP_MAX_OBJECTS`).
      style: `natural` or `legacy` (see the module docstring).

    Returns:
      A `Clip` with at least one object visible in at least one frame.
    """
    max_objects = _max_objects(style, max_objects, CLIP_MAX_OBJECTS)
    size, frames = image_size, num_frames
    unit = size / 64.0  # motion is specified for 64 px frames and scales with the frame size
    pan_speed = 0.75 * unit
    margin = int(np.ceil(pan_speed * frames / 2.0)) + 1
    canvas = size + 2 * margin
    min_px = _min_visible_pixels(size, size)
    t = np.arange(frames, dtype=np.float64)
    while True:
        num = int(rng.integers(min_objects, max_objects + 1))
        objects = [sample_object(rng, size, style=style, main=i == 0) for i in range(num)]
        velocity = rng.uniform(-1.5, 1.5, size=(num, 2)) * unit
        growth = rng.uniform(-0.025, 0.025, size=num)
        spin = rng.uniform(-0.15, 0.15, size=num)
        background = render_background(rng, canvas, canvas, style=style)
        cam_velocity = rng.uniform(-pan_speed, pan_speed, size=2)
        # Camera offset (x, y) of the frame's top-left corner on the canvas, centred over time.
        cam = margin + (t[:, None] - (frames - 1) / 2.0) * cam_velocity[None, :]
        gain = np.linspace(rng.uniform(0.7, 1.2), rng.uniform(0.7, 1.2), frames)[:, None]
        gain = gain * rng.uniform(0.95, 1.05, size=(1, 3))

        # Per frame and object: box, object-frame coordinates and inside mask.
        shapes = [[None] * num for _ in range(frames)]
        for f in range(frames):
            for i, obj in enumerate(objects):
                radius = obj.radius * (1.0 + growth[i]) ** f
                cx = obj.cx + velocity[i, 0] * (f - (frames - 1) / 2.0) - (cam[f, 0] - margin)
                cy = obj.cy + velocity[i, 1] * (f - (frames - 1) / 2.0) - (cam[f, 1] - margin)
                box = object_box(cx, cy, radius, size, size)
                if box is None:
                    continue
                u, v = object_frame(cx, cy, radius, obj.angle + spin[i] * f, box)
                shapes[f][i] = (box, u, v, shape_mask(obj.class_id, u, v))
        covered = np.zeros((frames, size, size), dtype=bool)
        keep = [False] * num
        for i in reversed(range(num)):
            best = 0
            for f in range(frames):
                if shapes[f][i] is None:
                    continue
                (y0, y1, x0, x1), _, _, inside = shapes[f][i]
                area = int(inside.sum())
                visible = int((inside & ~covered[f, y0:y1, x0:x1]).sum())
                if visible >= MIN_VISIBLE_FRACTION * area:
                    best = max(best, visible)
            if best >= min_px:
                keep[i] = True
                for f in range(frames):
                    if shapes[f][i] is not None:
                        (y0, y1, x0, x1), _, _, inside = shapes[f][i]
                        covered[f, y0:y1, x0:x1] |= inside
        if any(keep):
            break

    ids = {}
    for i in range(num):
        if keep[i]:
            ids[i] = len(ids) + 1
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    class_areas = np.zeros(NUM_CLASSES, dtype=np.int64)
    for f in range(frames):
        ox, oy = (int(round(c)) for c in cam[f])
        frame = background[oy : oy + size, ox : ox + size].copy()
        for i in range(num):
            if not keep[i] or shapes[f][i] is None:
                continue
            (y0, y1, x0, x1), u, v, inside = shapes[f][i]
            frame[y0:y1, x0:x1][inside] = texture(objects[i], u, v)[inside]
            masks[f, y0:y1, x0:x1][inside] = ids[i]
        video[f] = to_uint8(frame * gain[f])
        for i, k in ids.items():
            class_areas[objects[i].class_id] += int((masks[f] == k).sum())
    return Clip(
        video=video,
        instance_masks=masks,
        instance_classes=np.asarray([objects[i].class_id for i in ids], dtype=np.int64),
        label=int(np.argmax(class_areas)),
    )


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 `[H, W]`, `[H, W, 1]` or `[H, W, 3]` array (lossless).

    Level 1 because these are small images written once and read many times: zlib's level hardly
    changes decoding speed, and higher levels cost generation time for a few percent of size.
    """
    import io

    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def scene_record(
    index: int,
    *,
    seed: int,
    split_id: int,
    image_size: int,
    max_objects: int,
    fh_settings: tuple[tuple[float, int], ...],
    fh_dtype: str,
    style: str = "legacy",
) -> dict:
    """Renders example `index` of a split and encodes it for TFDS (runs in worker processes).

    The example is a function of `(seed, split_id, index)` only, through
    `np.random.default_rng([seed, split_id, index])`, so it does not depend on which process makes
    it or in which order.

    Returns:
      A dict ready for the `synthetic_scenes` features: PNG bytes for the three images, `labels`,
      `label` and `fh_masks` (`[n_fh, H, W]` of `fh_dtype`).
    """
    from common.data import segmentation  # local: keeps this module's import graph minimal

    rng = np.random.default_rng([seed, split_id, index])
    scene = render_scene(rng, image_size, max_objects=max_objects, style=style)
    masks = segmentation.fh_masks(
        scene.image, fh_settings, fh_dtype, record=f"split {split_id} index {index}"
    )
    return {
        "image": encode_png(scene.image),
        "instance_mask": encode_png(scene.instance_mask),
        "class_mask": encode_png(scene.class_mask),
        "labels": scene.labels,
        "label": scene.label,
        "fh_masks": masks,
    }


def clip_record(
    index: int,
    *,
    seed: int,
    split_id: int,
    image_size: int,
    num_frames: int,
    max_objects: int,
    encoding: str,
    style: str = "legacy",
) -> dict:
    """Renders clip `index` of a split and encodes its frames (runs in worker processes)."""
    import io

    from PIL import Image

    rng = np.random.default_rng([seed, split_id, index])
    clip = render_clip(rng, image_size, num_frames, max_objects=max_objects, style=style)
    frames = []
    for frame in clip.video:
        if encoding == "png":
            frames.append(encode_png(frame))
        else:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
            frames.append(buffer.getvalue())
    return {"video": frames, "instance_masks": clip.instance_masks, "label": clip.label}
