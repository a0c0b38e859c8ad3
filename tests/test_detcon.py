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
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from common import losses, train
from common.method import Networks
from detcon import pictures
from tests import helpers

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
    state8, m8 = helpers.step_on(jax.devices()[:8], setup, batch)
    state1, m1 = helpers.step_on(jax.devices()[:1], setup, batch)
    for part in ("params", "ema_params", "batch_stats"):
        assert (
            helpers.relative_difference(_flat(getattr(state8, part)), _flat(getattr(state1, part)))
            <= 1e-5
        ), part
    assert np.isclose(m8["loss"], m1["loss"], rtol=1e-5)
    assert np.isclose(m8["segments_per_view"], m1["segments_per_view"])


def test_mask_sources_give_valid_ids_in_a_step(data_dir, tmp_path):
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


# ---------------------------------------------------------------------------------------------
# A short run that learns, and its pictures.

# The `local` recipe (DetCon_B, FH masks, BYOL augmentations, LARS, EMA target) at the tiny size.
# LARS moves every weight by about lr * eta = lr * 1e-3 of its norm per step (x10 with momentum),
# so the local peak of 0.1 would change the network by a few percent in 150 steps (measured on the
# local config: loss -4% in 200 steps); 16 * 32/256 = peak 2.0 moves it enough to learn within the
# budget (loss -10 to -12%, normalised std stable).
LEARN = {
    "batch_size": 32,
    "total_steps": 150,
    "optimizer.base_lr": 16.0,
    "optimizer.warmup_steps": 10,
    "checkpoint.every_steps": 1000,
    "pictures_every_steps": 100,  # step 100, and the last step
}


@pytest.fixture(scope="module")
def learned_run(data_dir, tmp_path_factory):
    """Trains the tiny DetCon_B for 150 steps with the real loop; (config, workdir).

    On one device: the 8 simulated devices of the test session would only slow the 2 CPU cores
    down (sharded steps equal unsharded ones, tested above).
    """
    workdir = str(tmp_path_factory.mktemp("detcon_b_run"))
    config = helpers.tiny_config("detcon_b", data_dir, **LEARN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "create_mesh", lambda: Mesh(np.asarray(jax.devices()[:1]), ("data",)))
        train.main(config, workdir)
    return config, workdir


def _dense_fn(setup, state):
    """Jitted `images [B,S,S,3] in [0,1] -> online dense features [B,h,w,C]`, inference mode."""
    from common import augment

    module = setup.modules["online"]
    variables = {"params": state.params["online"], "batch_stats": state.batch_stats["online"]}
    return jax.jit(lambda x: module.apply(variables, augment.normalize(x), train=False)["dense"])


def _pool(dense: np.ndarray, mask: np.ndarray, min_cells: float = 0.5) -> np.ndarray | None:
    """Mean of `dense [h,w,C]` weighted by the fraction of each cell that `mask [S,S]` covers
    (None if the object covers less than `min_cells` cells in total)."""
    h, w, _ = dense.shape
    k = mask.shape[0] // h
    area = mask[: h * k, : w * k].reshape(h, k, w, k).mean(axis=(1, 3))
    if area.sum() < min_cells:
        return None
    return (area[..., None] * dense).sum((0, 1)) / area.sum()


def cross_view_object_matching(setup, state, data_config, *, rounds: int = 6) -> tuple[float, int]:
    """Object-level evaluation: can the network tell which object is which across two views?

    For every validation image, two random crops (+ flips) with their ground-truth instance ids
    (`mask_source='gt'`, background 0 included as a segment), no photometric augmentation (the
    random network's colour features are not disturbed). Each object visible in both views is
    mask-pooled in each; an object of view 1 is matched to the most similar (cosine) object of
    view 2 of the same image. Returns the fraction matched correctly (`rounds` crop pairs of
    every image) and the number of objects it is over. Chance is 1 / (segments shared by the
    views, background included), averaged over the images.
    """
    import ml_collections

    from common.data import pipeline

    data = ml_collections.ConfigDict(data_config.to_dict())
    data.update(mask_source="gt", split="validation")
    batches = pipeline.make_pretrain_iterator(data, global_batch_size=64, seed=0, start_step=0)
    dense = _dense_fn(setup, state)
    hits = total = 0
    for _ in range(rounds):
        host = next(batches)
        d1, d2 = (np.asarray(dense(jnp.asarray(host[k]))) for k in ("view1", "view2"))
        for b in range(len(d1)):
            pooled = []
            for d, ids in ((d1[b], host["mask1"][b]), (d2[b], host["mask2"][b])):
                per_id = {int(i): _pool(d, ids == i) for i in np.unique(ids[ids >= 0])}
                pooled.append(
                    {i: f / np.linalg.norm(f) for i, f in per_id.items() if f is not None}
                )
            shared = sorted(set(pooled[0]) & set(pooled[1]))
            if len(shared) < 2:
                continue
            x1 = np.stack([pooled[0][i] for i in shared])
            x2 = np.stack([pooled[1][i] for i in shared])
            hits += int(np.sum(np.argmax(x1 @ x2.T, axis=1) == np.arange(len(shared))))
            total += len(shared)
    assert total > 200, total
    return hits / total, total


def test_short_detcon_b_run_learns(learned_run):
    from common import checkpoint
    from common.metrics import read_jsonl

    config, workdir = learned_run
    rows = [r for r in read_jsonl(workdir) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 151))
    losses = np.asarray([r["train/loss"] for r in rows])
    # Per-step losses are noisy (std ~0.2: how many sampled ids find a partner varies), so means
    # of 20 steps: the first 20 (around chance, warm-up) against the last 20.
    first, last = losses[:20].mean(), losses[-20:].mean()
    # Collapse: l2-normalised D-dim projections spread over the sphere have a per-dimension std
    # of about 1/sqrt(D) (0.18 for D = 32); a collapsed representation goes to 0. A quarter of
    # the healthy value leaves room for the anisotropy of a young network and catches collapse.
    std = np.asarray([r["train/normalized_proj_std"] for r in rows])
    threshold = 0.25 / np.sqrt(config.model.projector_dim)

    setup = train.build(config, num_examples=256)
    fresh = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(config.seed))
    ckpt = checkpoint.Checkpointer(workdir)
    trained = ckpt.restore(ckpt.latest_step(), fresh, checkpoint.model_signature(config, fresh))
    ckpt.close()
    assert int(trained.step) == 150
    match = {
        name: cross_view_object_matching(setup, state, config.data)
        for name, state in (("random", fresh), ("trained", trained))
    }
    print(
        f"loss {first:.3f} -> {last:.3f}; normalized_proj_std min {std.min():.4f} "
        f"(threshold {threshold:.4f}); matching {match}"
    )
    # Measured on the tiny `natural` scenes (synthetic_scenes 4.0.0), seed 0: loss 3.39 -> 2.98
    # (ratio 0.88), std min 0.127, matching random 0.67 -> trained 0.77 over 827 objects (six
    # crop pairs of the 64 validation images), i.e. 4.8 standard errors of the difference. With
    # 4.0.0's 1-3 objects per image, two crop pairs gave only ~275 objects (random 0.69 ->
    # trained 0.76, 1.8 standard errors): too few to decide, hence the six.
    assert last < 0.95 * first, (first, last)
    assert std.min() > threshold, (std.min(), threshold)
    # Telling the objects of an image apart across views is what DetCon's loss trains. The margin
    # is 3 standard errors of the difference of two proportions over these objects (the same
    # objects for both networks, so this independent-samples error overstates the noise).
    (p_random, n), (p_trained, _) = match["random"], match["trained"]
    se = np.sqrt((p_random * (1 - p_random) + p_trained * (1 - p_trained)) / n)
    assert p_trained > p_random + 3 * se, (match, se)
    # Not asserted: the object class. On the `natural` scenes a class is a shape plus a texture
    # structure in arbitrary colours, which a 4 x 4 grid of the 32 px views does not resolve:
    # a ridge probe on mask-pooled features scored random 0.14, trained 0.12 (chance 0.083,
    # standard error ~0.02 on ~170 objects), a comparison that says nothing either way.


def test_pictures_during_training_and_on_demand(learned_run):
    config, workdir = learned_run
    size = pictures.figure_size(pictures.NUM_IMAGES, config.data.image_size)
    written = {}
    for step in (100, 150):
        path = os.path.join(workdir, "pictures", f"step_{step:07d}.png")
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size and image.mode == "RGB"
            written[step] = np.asarray(image)
        assert written[step].std() > 10  # drawn, not blank

    # On demand, from the workdir's latest checkpoint: the batch and rng of the trainer's
    # picture of that step, so the same picture.
    args = [
        sys.executable, "-m", "common.pictures",
        f"--config={os.path.join(helpers.REPO, 'experiments', 'detcon_b.py')}:local",
        f"--workdir={workdir}",
    ]  # fmt: skip
    overrides = {**helpers.TINY_OVERRIDES, "data.data_dir": config.data.data_dir, **LEARN}
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    out = helpers.run_cli(args).stdout
    path = os.path.join(workdir, "pictures", "step_0000150_on_demand.png")
    assert f"pictures: {path}" in out
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        np.testing.assert_array_equal(np.asarray(image), written[150])


# ---------------------------------------------------------------------------------------------
# The loss's fast paths (common/losses.py): constant-shift log-sum-exp, shared keys (DetCon_S).


@pytest.mark.parametrize("temperature", [0.1, 1.0, 0.02])  # 0.02: the logsumexp fallback
def test_detcon_loss_fast_paths_match_reference(temperature):
    (p1, p2, t1, t2), (i1, i2) = helpers.random_detcon_case(3, 4, 5, 8, 3, invalid_frac=0.25)
    loss = functools.partial(losses.contrastive_detection_loss, temperature=temperature)
    got = jax.jit(loss)(p1, p2, t1, t2, i1, i2)
    want = helpers.ref_detcon(p1, p2, t1, t2, i1, i2, temperature)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)

    # Shared keys (the same arrays as queries, as DetCon_S passes them) against the general
    # path (copies, so not the same objects): equal values and gradients through both sides.
    shared = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b, a, b, i1, i2), argnums=(0, 1)))
    general = jax.jit(
        jax.value_and_grad(lambda a, b: loss(a, b, a + 0.0, b + 0.0, i1, i2), argnums=(0, 1))
    )
    (v_s, g_s), (v_g, g_g) = shared(p1, p2), general(p1, p2)
    np.testing.assert_allclose(
        float(v_s), helpers.ref_detcon(p1, p2, p1, p2, i1, i2, temperature), 2e-5
    )
    np.testing.assert_allclose(float(v_s), float(v_g), rtol=1e-6)
    for a, b in zip(g_s, g_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_detcon_loss_without_other_images_has_finite_gradients():
    """B = 1: the other-image candidate set is empty (the shifted sum is 0, log is floored)."""
    rng = np.random.default_rng(0)
    p = [jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32) for _ in range(2)]
    ids = jnp.asarray([[0, 1, 1, 2]], jnp.int32)
    for temperature in (0.1, 0.02):

        def loss(a, b, temperature=temperature):
            return losses.contrastive_detection_loss(a, b, a, b, ids, ids, temperature=temperature)

        value, grads = jax.value_and_grad(loss, (0, 1))(*p)
        assert np.isfinite(float(value)) and float(value) > 0
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_detcon_s_loss_sharded_equals_single_device():
    """The shared-key path reduces one logits block over its sharded axis (the transposed
    direction): 8 devices must give the 1-device value and gradients."""
    (z1, z2, _, _), (i1, i2) = helpers.random_detcon_case(11, 8, 4, 16, 5)
    fn = jax.jit(
        jax.value_and_grad(
            lambda a, b, i, j: losses.contrastive_detection_loss(a, b, a, b, i, j), argnums=(0, 1)
        )
    )
    want = jax.device_get(fn(*jax.device_put((z1, z2, i1, i2), jax.devices()[0])))
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    got = jax.device_get(fn(*jax.device_put((z1, z2, i1, i2), sharding)))
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_detcon_s_imagenet_recipe_is_simclrs():
    """DetCon_S's `imagenet` variant follows SimCLR's released recipe (experiments/detcon_s.py
    names each source): 10 warm-up epochs whatever the budget (DetCon_B: epochs // 100),
    2048 -> 128 projection, temperature 0.1, SimCLR's symmetric augmentation."""
    from experiments import base, detcon_s

    n = base.IMAGENET_TRAIN_EXAMPLES
    config = detcon_s.get_config("imagenet,epochs=300")
    assert train.warmup_steps_of(config, None) == 10 * n // 4096  # detcon's rule would be 938
    assert train.warmup_steps_of(config, None) != 300 // 100 * n // 4096
    assert (config.model.projector_hidden, config.model.projector_dim) == (2048, 128)
    assert (config.optimizer.base_lr, config.optimizer.weight_decay) == (0.3, 1e-6)
    assert config.loss.temperature == 0.1
    assert (config.augment.view1, config.augment.view2) == ("simclr", "simclr")
    lightly = detcon_s.get_config("imagenet,augment=lightly")
    assert (lightly.augment.view1, lightly.augment.view2) == ("detcon_s_view1", "detcon_s_view2")
    with pytest.raises(ValueError, match="augment must be one of"):
        detcon_s.get_config("imagenet,augment=byol")
