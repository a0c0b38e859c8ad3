"""Photometric augmentations on device (JAX): BYOL, SimCLR and DetCon_S presets.

The host has already cropped, flipped and resized the views (`common.data.pipeline`); what is
left is colour, blur and solarisation, which only touch the image, run per image with independent
randomness (`jax.random.split(rng, B)` + `vmap`) and are jit-able with a static preset.

Per image, in this order (docs/METHODS.md §1.7, DeepMind's BYOL/DetCon `augmentations.py`):
1. with prob `jitter_prob`: brightness (add U(-b, b)), contrast (factor U(1-c, 1+c) around each
   channel's spatial mean), saturation (factor U(1-s, 1+s) in HSV), hue (shift U(-h, h) in HSV,
   wrapping), in a random order per image, each followed by a clip to [0, 1];
2. with prob `grayscale_prob` (independent of 1): grayscale (.2989, .5870, .1140), kept 3-channel;
3. with prob `blur_prob`: separable Gaussian blur, sigma ~ U(0.1, 2.0) pixels, kernel
   `2 * int(S / 20) + 1` taps (S / 10 rounded to an odd size: 23 at S = 224), zero padding (SAME);
4. with prob `solarize_prob`: x >= 0.5 -> 1 - x;
5. clip to [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)


@dataclasses.dataclass(frozen=True)
class AugmentPreset:
    """Probabilities and strengths of one view's photometric augmentation."""

    jitter_prob: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    solarize_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_threshold: float = 0.5


_BYOL_JITTER = dict(jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
# SimCLR colour distortion at strength 1 (0.8, 0.8, 0.8, 0.2), applied with BYOL's ops (additive
# brightness); SimCLR's own code draws brightness multiplicatively in v2 [UNVERIFIED which].
_SIMCLR_JITTER = dict(jitter_prob=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)

PRESETS: dict[str, AugmentPreset] = {
    "byol_view1": AugmentPreset(**_BYOL_JITTER, grayscale_prob=0.2, blur_prob=1.0),
    "byol_view2": AugmentPreset(
        **_BYOL_JITTER, grayscale_prob=0.2, blur_prob=0.1, solarize_prob=0.2
    ),
    "simclr": AugmentPreset(**_SIMCLR_JITTER, grayscale_prob=0.2, blur_prob=0.5),
    # DetCon_S: SimCLR jitter, asymmetric blur (lightly's reading of the paper) [2nd].
    "detcon_s_view1": AugmentPreset(**_SIMCLR_JITTER, grayscale_prob=0.2, blur_prob=1.0),
    "detcon_s_view2": AugmentPreset(**_SIMCLR_JITTER, grayscale_prob=0.2, blur_prob=0.0),
    "none": AugmentPreset(),
}


def get_preset(preset: str | AugmentPreset) -> AugmentPreset:
    """A preset by name, optionally with fields replaced: `'byol_view1:grayscale_prob=0.6'`.

    The `name:field=value,field=value` form lets a config (or `--config.augment.view1=...`)
    change one strength of a paper's preset without a new named preset; values are floats.
    """
    if isinstance(preset, AugmentPreset):
        return preset
    name, _, overrides = preset.partition(":")
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {sorted(PRESETS)}")
    base = PRESETS[name]
    scalar = sorted(
        f.name for f in dataclasses.fields(base) if isinstance(getattr(base, f.name), float)
    )
    changes = {}
    for item in filter(None, (i.strip() for i in overrides.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in scalar:
            raise ValueError(
                f"augmentation preset {preset!r}: {item!r} is not `field=value` with a field of "
                f"{scalar}"
            )
        try:
            changes[key] = float(value)
        except ValueError:
            raise ValueError(
                f"augmentation preset {preset!r}: {key} wants a number, got {value!r}"
            ) from None
    return dataclasses.replace(base, **changes)


def normalize(images: jax.Array) -> jax.Array:
    """ImageNet mean/std normalisation of `[..., 3]` images in [0, 1] (what backbones expect)."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    std = jnp.asarray(IMAGENET_STD, images.dtype)
    return (images - mean) / std


# ---------------------------------------------------------------------------------------------
# Single-image ops, `[H, W, 3]` float in [0, 1].


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """`[..., 3]` RGB in [0, 1] -> HSV with hue in [0, 1) (TF's convention)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    # Hue sector by which channel is the maximum (ties resolved r, then g, as TF does).
    hue = jnp.where(
        r == value,
        (g - b) / safe,
        jnp.where(g == value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    hue = jnp.where(chroma > 0, hue / 6.0, 0.0) % 1.0
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of `rgb_to_hsv`; hue wraps."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    dh = (h % 1.0) * 6.0
    dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
    db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
    rgb = jnp.stack([dr, dg, db], axis=-1)
    return v[..., None] * (1.0 - s[..., None] + s[..., None] * rgb)


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
    return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each channel's deviation from its spatial mean (`tf.image.adjust_contrast`)."""
    mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
    return (image - mean) * factor + mean


def to_grayscale(image: jax.Array) -> jax.Array:
    gray = image @ jnp.asarray(GRAYSCALE_WEIGHTS, image.dtype)
    return jnp.broadcast_to(gray[..., None], image.shape)


def blur_radius(image_size: int) -> int:
    """BYOL's kernel of `S / 10` pixels as a radius: `int(S / 10 / 2)` (11 at S = 224)."""
    return int(image_size / 10 / 2)


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of `[H, W, C]`, `2 * radius + 1` taps, zero padding ('SAME').

    Each pass is a matmul with a banded `[n, n]` matrix (`K[i, j] = g(j - i)` for `|j - i| <=
    radius`), which is exactly a 1-D convolution with zero padding: under `vmap` every image has
    its own sigma, and a per-example kernel would become a grouped convolution, slow on CPU and
    slow to compile.
    """
    if radius == 0:
        return image
    h, w = image.shape[0], image.shape[1]
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-(x**2) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2))
    kernel = kernel / jnp.sum(kernel)

    def band(n):
        offset = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]  # j - i
        taps = kernel[jnp.clip(offset + radius, 0, 2 * radius)]
        return jnp.where(jnp.abs(offset) <= radius, taps, 0.0).astype(image.dtype)

    out = jnp.einsum("ij,jwc->iwc", band(h), image)
    return jnp.einsum("vw,hwc->hvc", band(w), out)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    return jnp.where(image < threshold, image, 1.0 - image)


# ---------------------------------------------------------------------------------------------
# Random parameters and their application.


def sample_params(rng: jax.Array, preset: str | AugmentPreset) -> dict[str, jax.Array]:
    """Draws one image's augmentation decisions and strengths.

    Args:
      rng: a PRNG key.
      preset: preset name or `AugmentPreset`.

    Returns:
      Scalars `jitter`, `grayscale`, `blur`, `solarize` (bool: apply?), `brightness`, `contrast`,
      `saturation`, `hue` (the jitter's draws), `sigma` (blur), and `order` int32 `[4]` (the
      jitter's permutation of brightness 0, contrast 1, saturation 2, hue 3).
    """
    p = get_preset(preset)
    # One draw of 13 uniforms rather than 10 random calls: each call is its own threefry
    # circuit, and compiling them dominated the compile time of the whole augmentation.
    u = jax.random.uniform(rng, (13,))

    def sym(v, strength):  # U(-strength, strength)
        return (2.0 * v - 1.0) * strength

    lo, hi = p.blur_sigma
    return {
        "jitter": u[0] < p.jitter_prob,
        "grayscale": u[1] < p.grayscale_prob,
        "blur": u[2] < p.blur_prob,
        "solarize": u[3] < p.solarize_prob,
        "brightness": sym(u[4], p.brightness),
        "contrast": 1.0 + sym(u[5], p.contrast),
        "saturation": 1.0 + sym(u[6], p.saturation),
        "hue": sym(u[7], p.hue),
        "sigma": lo + (hi - lo) * u[8],
        # The ranks of 4 iid uniforms are a uniformly random permutation.
        "order": jnp.argsort(u[9:13]).astype(jnp.int32),
    }


def _color_jitter(image: jax.Array, params: dict[str, jax.Array], p: AugmentPreset) -> jax.Array:
    """The four jitter ops in `params['order']`, each followed by a clip.

    Under vmap a data-dependent choice computes every branch, so each of the 4 slots evaluates
    brightness, contrast and one HSV round trip shared by saturation and hue, then selects.
    """
    use_hsv = p.saturation > 0 or p.hue > 0

    def slot(i, x):
        op = params["order"][i]
        if use_hsv:
            hsv = rgb_to_hsv(x)
            sat = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * params["saturation"], 0.0, 1.0))
            hue = hsv.at[..., 0].set((hsv[..., 0] + params["hue"]) % 1.0)
            shifted = hsv_to_rgb(jnp.where(op == 2, sat, hue))
        else:
            shifted = x
        y = jnp.where(
            op == 0,
            adjust_brightness(x, params["brightness"]),
            jnp.where(op == 1, adjust_contrast(x, params["contrast"]), shifted),
        )
        return jnp.clip(y, 0.0, 1.0).astype(x.dtype)

    # A loop rather than 4 unrolled copies: the same result, a quarter of the code to compile.
    return jax.lax.fori_loop(0, 4, slot, image)


def apply_params(
    image: jax.Array, params: dict[str, jax.Array], preset: str | AugmentPreset
) -> jax.Array:
    """Applies one image's drawn augmentation (`sample_params`) to `[H, W, 3]` in [0, 1]."""
    p = get_preset(preset)
    x = image
    # Operations whose probability is 0 are left out of the graph (static preset).
    if p.jitter_prob > 0:
        x = jnp.where(params["jitter"], _color_jitter(x, params, p), x)
    if p.grayscale_prob > 0:
        x = jnp.where(params["grayscale"], jnp.clip(to_grayscale(x), 0.0, 1.0), x)
    if p.blur_prob > 0:
        blurred = gaussian_blur(x, params["sigma"], blur_radius(image.shape[0]))
        x = jnp.where(params["blur"], blurred, x)
    if p.solarize_prob > 0:
        x = jnp.where(params["solarize"], solarize(x, p.solarize_threshold), x)
    return jnp.clip(x, 0.0, 1.0)


def augment_batch(rng: jax.Array, images: jax.Array, preset: str | AugmentPreset) -> jax.Array:
    """Augments every image of a batch with its own randomness.

    Args:
      rng: PRNG key; image i uses `jax.random.split(rng, B)[i]`.
      images: float `[B, S, S, 3]` in [0, 1].
      preset: `byol_view1`, `byol_view2`, `simclr`, `detcon_s_view1`, `detcon_s_view2`, `none`
        or an `AugmentPreset`; static under jit.

    Returns:
      float `[B, S, S, 3]` in [0, 1], same dtype.
    """
    p = get_preset(preset)
    if p == PRESETS["none"]:
        return images
    keys = jax.random.split(rng, images.shape[0])
    params = jax.vmap(lambda k: sample_params(k, p))(keys)
    out = jax.vmap(lambda x, q: apply_params(x, q, p))(images, params)
    return out.astype(images.dtype)
