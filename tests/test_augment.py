"""Photometric augmentations: ranges, preset probabilities, the single ops against TensorFlow's,
per-image independence, jit."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from common import augment

S = 32


def images(n=8, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, S, S, 3)), jnp.float32)


@functools.cache
def jitted():
    return jax.jit(augment.augment_batch, static_argnames="preset")


# detcon_s_view1/2 are simclr's code path with other probabilities (test_preset_probabilities);
# every preset compiles separately, which is most of this file's run time on 2 cores.
@pytest.mark.parametrize("preset", ["byol_view1", "byol_view2", "simclr", "none"])
def test_presets_jit_and_stay_in_range(preset):
    x = images()
    out = jitted()(jax.random.PRNGKey(0), x, preset=preset)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if preset == "none":
        np.testing.assert_array_equal(out, x)
    else:
        assert not np.allclose(out, x)


def test_preset_probabilities():
    """Frequencies of every decision over 4000 images with a fixed seed (3-sigma bounds)."""
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)

    def freq(preset):
        params = jax.vmap(lambda k: augment.sample_params(k, preset))(keys)
        return {k: float(np.mean(v)) for k, v in params.items() if v.dtype == bool}, params

    expected = {
        "byol_view1": dict(jitter=0.8, grayscale=0.2, blur=1.0, solarize=0.0),
        "byol_view2": dict(jitter=0.8, grayscale=0.2, blur=0.1, solarize=0.2),
        "simclr": dict(jitter=0.8, grayscale=0.2, blur=0.5, solarize=0.0),
        "detcon_s_view1": dict(jitter=0.8, grayscale=0.2, blur=1.0, solarize=0.0),
        "detcon_s_view2": dict(jitter=0.8, grayscale=0.2, blur=0.0, solarize=0.0),
    }
    for preset, want in expected.items():
        got, params = freq(preset)
        for k, p in want.items():
            assert abs(got[k] - p) <= 3 * np.sqrt(p * (1 - p) / 4000) + 1e-9, (preset, k, got[k])
    _, params = freq("byol_view2")
    assert np.all(np.abs(params["brightness"]) <= 0.4)
    assert np.all(np.abs(params["contrast"] - 1) <= 0.4)
    assert np.all(np.abs(params["saturation"] - 1) <= 0.2)
    assert np.all(np.abs(params["hue"]) <= 0.1)
    assert 0.1 <= params["sigma"].min() and params["sigma"].max() <= 2.0
    orders = np.asarray(params["order"])
    assert (np.sort(orders, axis=1) == np.arange(4)).all()
    assert len({tuple(o) for o in orders}) == 24  # every permutation occurs
    _, params = freq("simclr")
    assert np.abs(params["saturation"] - 1).max() > 0.7 and np.abs(params["hue"]).max() > 0.18


def test_solarize_fraction_seen_in_outputs():
    """Solarisation as an output effect: constant 0.8 images become 0.2 in ~20% of them."""
    preset = augment.AugmentPreset(solarize_prob=0.2)
    x = jnp.full((2000, 2, 2, 3), 0.8)
    out = jitted()(jax.random.PRNGKey(2), x, preset=preset)
    solarized = np.isclose(np.asarray(out[:, 0, 0, 0]), 0.2)
    assert np.isclose(out, 0.8).all(axis=(1, 2, 3)).sum() + solarized.sum() == 2000
    assert abs(solarized.mean() - 0.2) < 0.03


def test_grayscale_gives_equal_channels():
    out = augment.augment_batch(jax.random.PRNGKey(3), images(), augment.AugmentPreset())
    np.testing.assert_array_equal(out, images())  # nothing enabled
    gray = augment.augment_batch(
        jax.random.PRNGKey(3), images(), augment.AugmentPreset(grayscale_prob=1.0)
    )
    np.testing.assert_allclose(gray[..., 0], gray[..., 1])
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    want = np.asarray(images()) @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(gray[..., 0], want, atol=1e-5)
    # in the full BYOL view 1 (blur after grayscale keeps channels equal)
    rng = jax.random.PRNGKey(6)
    flags = np.asarray(
        jax.vmap(lambda k: augment.sample_params(k, "byol_view1"))(jax.random.split(rng, 8))[
            "grayscale"
        ]
    )
    out = jitted()(rng, images(), preset="byol_view1")
    spread = np.ptp(np.asarray(out), axis=-1).max(axis=(1, 2))
    assert flags.any() and not flags.all()
    assert (spread[flags] < 1e-6).all() and (spread[~flags] > 1e-3).all()


def test_blur():
    x = images(1)[0]
    r = augment.blur_radius(S)
    assert r == 1 and augment.blur_radius(224) == 11  # 23 taps at 224 px, as BYOL
    np.testing.assert_allclose(augment.gaussian_blur(x, 1e-3, 3), x, atol=1e-6)
    blurred = augment.gaussian_blur(x, 2.0, 5)
    assert float(jnp.std(blurred[5:-5, 5:-5])) < 0.6 * float(jnp.std(x))
    # SAME with zero padding: a constant image darkens at the border only; a separable blur.
    ones = jnp.ones((S, S, 3))
    out = augment.gaussian_blur(ones, 1.0, 3)
    np.testing.assert_allclose(out[3:-3, 3:-3], 1.0, atol=1e-6)
    assert float(out[0, 0, 0]) < 0.8
    k = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
    k /= k.sum()
    want = tf.nn.depthwise_conv2d(
        np.asarray(x)[None],
        np.tile((k[:, None] * k[None, :])[..., None, None], (1, 1, 3, 1)).astype(np.float32),
        strides=[1, 1, 1, 1],
        padding="SAME",
    )[0]
    np.testing.assert_allclose(augment.gaussian_blur(x, 1.0, 3), want, atol=1e-5)


def test_colour_ops_match_tensorflow():
    x = np.asarray(images(2))
    hsv = augment.rgb_to_hsv(jnp.asarray(x))
    np.testing.assert_allclose(hsv, tf.image.rgb_to_hsv(x), atol=1e-5)
    np.testing.assert_allclose(augment.hsv_to_rgb(hsv), x, atol=1e-5)
    np.testing.assert_allclose(
        augment.adjust_contrast(jnp.asarray(x[0]), 1.3),
        tf.image.adjust_contrast(x[0], 1.3),
        atol=1e-5,
    )
    p = augment.AugmentPreset(jitter_prob=1.0, saturation=0.5)
    params = augment.sample_params(jax.random.PRNGKey(0), p)
    want = np.clip(tf.image.adjust_saturation(x[0], float(params["saturation"])), 0, 1)
    np.testing.assert_allclose(augment.apply_params(jnp.asarray(x[0]), params, p), want, atol=1e-5)
    p = augment.AugmentPreset(jitter_prob=1.0, hue=0.3)
    params = augment.sample_params(jax.random.PRNGKey(0), p)
    want = np.clip(tf.image.adjust_hue(x[0], float(params["hue"])), 0, 1)
    np.testing.assert_allclose(augment.apply_params(jnp.asarray(x[0]), params, p), want, atol=1e-5)
    p = augment.AugmentPreset(jitter_prob=1.0, brightness=0.4)
    params = augment.sample_params(jax.random.PRNGKey(0), p)
    want = np.clip(x[0] + float(params["brightness"]), 0, 1)
    np.testing.assert_allclose(augment.apply_params(jnp.asarray(x[0]), params, p), want, atol=1e-6)


def test_jitter_order_matters_and_is_per_image():
    """Brightness then contrast differs from contrast then brightness once clipping bites."""
    p = augment.AugmentPreset(jitter_prob=1.0, brightness=0.4, contrast=0.4)
    x = images(1)[0]
    base = augment.sample_params(jax.random.PRNGKey(0), p)
    base = dict(base, brightness=jnp.float32(0.35), contrast=jnp.float32(1.4))
    a = augment.apply_params(x, dict(base, order=jnp.array([0, 1, 2, 3])), p)
    b = augment.apply_params(x, dict(base, order=jnp.array([1, 0, 2, 3])), p)
    want_a = np.clip(np.clip(x + 0.35, 0, 1), 0, 1)
    want_a = np.clip((want_a - want_a.mean((0, 1))) * 1.4 + want_a.mean((0, 1)), 0, 1)
    np.testing.assert_allclose(a, want_a, atol=1e-5)
    assert not np.allclose(a, b)


def test_per_image_independence():
    """Image i uses key split(rng, B)[i] alone: it does not depend on the other images, and
    identical images get different augmentations."""
    rng = jax.random.PRNGKey(5)
    x = jnp.broadcast_to(images(1), (8, S, S, 3))
    out = jitted()(rng, x, preset="byol_view1")  # always blurred, with its own sigma
    assert len({np.asarray(o).tobytes() for o in out}) == 8
    y = x.at[1:].set(0.5)
    out2 = jitted()(rng, y, preset="byol_view1")
    np.testing.assert_array_equal(out[0], out2[0])
    key0 = jax.random.split(rng, 8)[0]
    alone = augment.apply_params(x[0], augment.sample_params(key0, "byol_view1"), "byol_view1")
    np.testing.assert_allclose(out[0], alone, atol=1e-6)


def test_normalize_and_errors():
    out = augment.normalize(jnp.broadcast_to(jnp.asarray(augment.IMAGENET_MEAN), (2, 2, 2, 3)))
    np.testing.assert_allclose(out, 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment.augment_batch(jax.random.PRNGKey(0), images(), "byol")


def test_preset_with_replaced_fields():
    """`name:field=value,...` is the named preset with those fields replaced, nothing else."""
    got = augment.get_preset("byol_view2:grayscale_prob=1, solarize_prob=0")
    base = augment.PRESETS["byol_view2"]
    assert got.grayscale_prob == 1.0 and got.solarize_prob == 0.0
    assert dataclasses.replace(got, grayscale_prob=0.2, solarize_prob=0.2) == base
    assert augment.get_preset("simclr:") == augment.PRESETS["simclr"]
    # Under jit the string is the static preset: every image grayscale with probability 1.
    out = jitted()(jax.random.PRNGKey(0), images(4), preset="byol_view1:grayscale_prob=1")
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)
    for bad, message in (
        ("byol_view1:gray=1", "'gray=1' is not `field=value`"),
        ("byol_view1:grayscale_prob", "is not `field=value`"),
        ("byol_view1:blur_sigma=1", "is not `field=value` with a field of"),
        ("byol_view1:grayscale_prob=high", "grayscale_prob wants a number, got 'high'"),
        ("byol:grayscale_prob=1", "unknown augmentation preset 'byol'"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            augment.get_preset(bad)
