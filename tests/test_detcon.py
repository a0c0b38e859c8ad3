"""DetCon_B and DetCon_S through the real trainer (`train.build`, `init_state`, `train_step`).

Tiny configs (tests/helpers.py): 32 px views, stride-8 backbone, a 4x4 feature grid.
* the ids: online and target networks pool with the same sampled masks per view; those are the
  masks `view_masks` draws with the step's rng; a sampled id always owns a cell of its view;
* gradients: DetCon_B trains only the online network (the target moves by EMA alone), DetCon_S
  differentiates through both sides of its loss;
* 8 devices compute the same step as 1;
* the `fh`, `grid` and `gt` mask sources of the embedded dataset through the pipeline and a step;
* a short `local`-style DetCon_B run learns (loss, collapse, object-level probe);
* pictures during training and on demand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import losses, train
from common.method import Networks
from tests import helpers
from tests.test_train import _step_on, data_dir  # noqa: F401  (session fixture)

# An id on one pixel of every 8x8 cell: present in the pixel map, never a cell's majority.
PIXEL_ONLY_ID = 1000


def _id_maps(rng: np.random.Generator, vocab: np.ndarray, size: int) -> np.ndarray:
    """One view's id maps: each image's ids (`vocab[b]`, 4 sparse ids below 900, shared by both
    views as an image's segment ids are) in random 16x16 blocks, an id that exists at pixel
    level only (`PIXEL_ONLY_ID`), unlabelled pixels (-1), and a last image without any id.

    Returns:
      int32 `[B, size, size]`.
    """
    out = np.empty((len(vocab), size, size), np.int32)
    for b, ids in enumerate(vocab):
        blocks = rng.choice(ids, size=(size // 16 + 1, size // 16 + 1))
        x = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)[:size, :size]
        x[3::8, 3::8] = PIXEL_ONLY_ID
        x[rng.random((size, size)) < 0.1] = -1
        out[b] = x
    out[-1] = -1
    return out


def _detcon_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = config.data.image_size
    vocab = np.stack([rng.choice(900, size=4, replace=False) for _ in range(batch_size)])
    return {
        "view1": rng.uniform(size=(batch_size, s, s, 3)).astype(np.float32),
        "view2": rng.uniform(size=(batch_size, s, s, 3)).astype(np.float32),
        "mask1": _id_maps(rng, vocab, s),
        "mask2": _id_maps(rng, vocab, s),
        "label": rng.integers(0, config.num_classes, size=(batch_size,)).astype(np.int32),
    }


def _step_rngs(config, step: int):
    """The trainer's derivation (`train.train_step`): augmentation and loss keys of a step."""
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    return jax.random.split(rng)


class _SpyModule:
    """Stands in for a network module; reports, from inside the jitted step, which masks each
    call pooled with and a fingerprint of the images it saw."""

    def __init__(self, module, name: str, log: list):
        self.module, self.name, self.log = module, name, log

    def apply(self, variables, images, *args, masks=None, **kwargs):
        def record(images, masks):
            digest = hashlib.sha1(np.asarray(images).tobytes()).hexdigest()
            self.log.append((self.name, digest, np.asarray(masks)))

        jax.debug.callback(record, images, masks)
        return self.module.apply(variables, images, *args, masks=masks, **kwargs)


@pytest.fixture(scope="module")
def detcon_b(tmp_path_factory):
    config = helpers.tiny_config("detcon_b", str(tmp_path_factory.mktemp("unused")))
    setup = train.build(config, num_examples=256)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    batch = {k: jnp.asarray(v) for k, v in _detcon_batch(config, 8).items()}
    return setup, state, batch


@pytest.fixture(scope="module")
def spied_step(detcon_b):
    """One real (jitted) DetCon_B step whose networks report the masks of every call."""
    setup, state, batch = detcon_b
    log: list = []
    spied = dataclasses.replace(
        setup, modules={n: _SpyModule(m, n, log) for n, m in setup.modules.items()}
    )
    new_state, metrics = jax.jit(functools.partial(train.train_step, spied))(state, batch)
    jax.effects_barrier()
    return new_state, jax.device_get(metrics), log


def test_online_and_target_pool_the_same_sampled_masks(detcon_b, spied_step):
    setup, state, batch = detcon_b
    new_state, metrics, log = spied_step
    assert bool(metrics["finite"]) and float(metrics["loss"]) > 0
    assert int(new_state.step) == 1

    # What the step must have sampled: `view_masks` with the step's loss key, on the batch's ids.
    _, rng_loss = _step_rngs(setup.config, int(state.step))
    want = jax.device_get(setup.method.view_masks(batch, rng_loss))

    by_images: dict[str, dict[str, np.ndarray]] = {}
    for name, digest, m in log:
        by_images.setdefault(digest, {})[name] = m
    assert len(by_images) == 2, "two views, each seen by both networks"
    pooled = []
    for calls in by_images.values():
        assert set(calls) == {"online", "target"}
        np.testing.assert_array_equal(calls["online"], calls["target"])
        pooled.append(calls["online"])
    # The two views' masks are the ones view_masks draws for view 1 and view 2 (in some order:
    # the log is keyed by image content), and they differ (independent sampling per view).
    got = sorted(pooled, key=lambda m: m.tobytes())
    expected = sorted([want["masks1"], want["masks2"]], key=lambda m: m.tobytes())
    for g, w in zip(got, expected):
        np.testing.assert_array_equal(g, w)
    assert not np.array_equal(want["ids1"], want["ids2"])


def test_sampling_never_picks_an_absent_id(detcon_b):
    setup, _, batch = detcon_b
    view_masks = jax.jit(setup.method.view_masks)
    for step in range(3):  # a few keys: different draws from the same maps
        _, rng_loss = _step_rngs(setup.config, step)
        m = jax.device_get(view_masks(batch, rng_loss))
        for v in ("1", "2"):
            ids, grid, masks = m["ids" + v], m["grid" + v], m["masks" + v]
            assert grid.shape == (8, 4, 4) and masks.shape == (8, 16, 16)
            for b in range(ids.shape[0]):
                present = set(np.unique(grid[b])) - {-1}
                if not present:  # the image without ids: no id, empty masks
                    assert (ids[b] == -1).all() and masks[b].sum() == 0
                    continue
                assert set(ids[b]) <= present, (ids[b], present)
                pixels = np.asarray(batch["mask" + v][b])
                assert PIXEL_ONLY_ID in pixels and PIXEL_ONLY_ID not in ids[b]
                # Every mask is the (non-empty) set of cells of its id.
                for r, i in enumerate(ids[b]):
                    np.testing.assert_array_equal(masks[b, r], (grid[b].ravel() == i))
                    assert masks[b, r].sum() >= 1


def _augmented(setup, batch, step: int = 0):
    """The step's augmented batch and loss key, as `train.train_step` derives them."""
    rng_aug, rng_loss = _step_rngs(setup.config, step)
    augment = jax.jit(functools.partial(train.augment_views, setup))
    return augment(batch, rng_aug), rng_loss


def test_detcon_b_gradients_reach_only_the_online_network(detcon_b, spied_step):
    setup, state, batch = detcon_b
    augmented, rng_loss = _augmented(setup, batch)

    # Differentiate with respect to the target too, without the trainer's stop_gradient: the
    # method itself must keep gradients out of the target.
    def loss(online, ema, batch, rng):
        nets = Networks(setup.modules, {**online, **ema}, state.batch_stats)
        return setup.method.loss(nets, batch, rng, jnp.int32(0))[0]

    online = {"online": state.params["online"]}
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    g_online, g_target = grad(online, state.ema_params, augmented, rng_loss)
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g_target)) == 0.0
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g_online)) > 0

    # Through the real step: the target moves only by EMA towards the updated online network.
    new, metrics, _ = spied_step
    tau = float(metrics["tau_target"])
    assert 0 < tau < 1
    for path, t_old in jax.tree_util.tree_flatten_with_path(state.ema_params["target"])[0]:
        o_new = functools.reduce(lambda d, k: d[k.key], path, new.params["online"])
        t_new = functools.reduce(lambda d, k: d[k.key], path, new.ema_params["target"])
        np.testing.assert_allclose(t_new, t_old + (1 - tau) * (o_new - t_old), rtol=1e-5, atol=1e-7)
    assert set(new.params) == {"online", "classifier"}


def test_detcon_s_gradients_flow_through_both_sides(tmp_path, monkeypatch):
    config = helpers.tiny_config("detcon_s", str(tmp_path))
    setup = train.build(config, num_examples=256)
    assert setup.method.ema_networks == {} and set(setup.modules) == {"online"}
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    batch = {k: jnp.asarray(v) for k, v in _detcon_batch(config, 8).items()}
    augmented, rng_loss = _augmented(setup, batch)

    def loss_and_grad():
        def loss(params, batch, rng):
            nets = Networks(setup.modules, params, state.batch_stats)
            return setup.method.loss(nets, batch, rng, jnp.int32(0))[0]

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        value, grads = value_and_grad({"online": state.params["online"]}, augmented, rng_loss)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        return float(value), {jax.tree_util.keystr(p): np.asarray(g) for p, g in flat}

    value, grads = loss_and_grad()
    # The same loss with the keys (the `target*` arguments) stop-gradiented: a DetCon_B-like
    # one-sided gradient. Equal values, different gradients = the keys carry gradient.
    original = losses.contrastive_detection_loss

    def keys_stopped(p1, p2, t1, t2, *args, **kwargs):
        sg = jax.lax.stop_gradient
        return original(p1, p2, sg(t1), sg(t2), *args, **kwargs)

    monkeypatch.setattr(losses, "contrastive_detection_loss", keys_stopped)
    value_sg, grads_sg = loss_and_grad()
    assert value > 0 and np.isclose(value, value_sg, rtol=1e-6)
    assert all(np.isfinite(g).all() for g in grads.values())
    # Far above rounding: the key side is a large share of the gradient.
    assert helpers.relative_difference(grads_sg, grads) > 0.05


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_detcon_b_step_on_8_devices_equals_1_device(tmp_path):
    config = helpers.tiny_config("detcon_b", str(tmp_path))
    setup = train.build(config, num_examples=256)
    batch = _detcon_batch(config, config.batch_size)
    state8, m8 = _step_on(jax.devices()[:8], setup, batch)
    state1, m1 = _step_on(jax.devices()[:1], setup, batch)
    for part in ("params", "ema_params", "batch_stats"):
        assert (
            helpers.relative_difference(_flat(getattr(state8, part)), _flat(getattr(state1, part)))
            <= 1e-5
        ), part
    assert np.isclose(m8["loss"], m1["loss"], rtol=1e-5)
    assert np.isclose(m8["segments_per_view"], m1["segments_per_view"])


def test_mask_sources_give_valid_ids_in_a_step(data_dir, tmp_path):  # noqa: F811
    """`fh`, `grid` (4x4) and `gt` id maps of the embedded scenes, through the pipeline, the id
    sampling and a real step (one compiled step serves the three: the source is data only)."""
    import ml_collections

    from common.data import pipeline

    config = helpers.tiny_config("detcon_b", data_dir)
    setup = train.build(config, num_examples=256)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    step = jax.jit(functools.partial(train.train_step, setup))
    view_masks = jax.jit(setup.method.view_masks)
    one_device = NamedSharding(Mesh(np.asarray(jax.devices()[:1]), ("data",)), P("data"))
    # Largest id each source can produce: FH below max_mask_id, grid n*n - 1, gt the largest
    # instance id (1..6 objects, 0 = background, itself a segment).
    max_id = {"fh": config.method_kwargs.max_mask_id - 1, "grid": 15, "gt": 6}
    for source in ("fh", "grid", "gt"):
        data_config = ml_collections.ConfigDict(config.data.to_dict())
        data_config.mask_source = source
        host = next(
            pipeline.make_pretrain_iterator(
                data_config, global_batch_size=config.batch_size, seed=0, start_step=0
            )
        )
        batch = train.to_global(host, one_device)
        m = jax.device_get(view_masks(batch, jax.random.PRNGKey(0)))
        for v in ("1", "2"):
            pixels = host["mask" + v]
            assert pixels.shape == (16, 32, 32) and pixels.dtype == np.int32
            # Crops lie inside the image, so every pixel carries an id of the source's range.
            assert pixels.min() >= 0 and pixels.max() <= max_id[source], source
            for b in range(16):
                present = set(np.unique(m["grid" + v][b]))
                assert present <= set(np.unique(pixels[b])) and -1 not in present, source
                assert set(m["ids" + v][b]) <= present, source
        new_state, metrics = step(state, batch)
        metrics = jax.device_get(metrics)
        assert bool(metrics["finite"]) and float(metrics["loss"]) > 0, source
        # Mean distinct ids per 4x4 grid of view 1: a grid crop spans a few cells, FH and gt
        # find a few segments; never the degenerate 1 of a source that failed to load.
        assert 1.5 <= float(metrics["segments_per_view"]) <= 16, (source, metrics)
        assert int(new_state.step) == 1
