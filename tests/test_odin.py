"""Odin: mask transport, the discovery view of the pipeline, the discovery network's updates and
the training step (tiny configs, tests/helpers.py).

* transport: a discovery map of known geometry lands in the right pixels of a cropped, flipped
  view (against a per-pixel reference written out in numpy), and through the real pipeline a
  pixel-resolution map transported from `view0` into `view1` equals the pipeline's own crop of
  the same map, with the views cut inside the discovery crop (every view pixel gets an id) or
  from the whole image (the fraction with an id under each option is printed);
* the discovery network follows the online network as configured (`ema`, `copy`, `frozen`);
* the step compiles once and its masks are the k-means clusters of the discovery network.
(k-means itself: tests/test_kmeans.py, separated clusters and determinism for a key.)
"""

from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import train
from common.data import pipeline
from odin.transport import transport_ids
from tests import helpers


def _reference_transport(grid, box0, box, flip, size):
    """Per-pixel loop: the view pixel's centre -> image -> discovery crop -> grid cell."""
    h0, w0 = grid.shape
    out = np.full((size, size), -1, np.int32)
    for i in range(size):
        for j in range(size):
            cy = (i + 0.5) / size
            cx = (j + 0.5) / size
            if flip:
                cx = 1.0 - cx
            y = box[0] + cy * (box[2] - box[0])
            x = box[1] + cx * (box[3] - box[1])
            r = (y - box0[0]) / (box0[2] - box0[0])
            c = (x - box0[1]) / (box0[3] - box0[1])
            if 0 <= r < 1 and 0 <= c < 1:
                out[i, j] = grid[int(np.floor(r * h0)), int(np.floor(c * w0))]
    return out


def test_transport_of_known_geometry_matches_reference():
    rng = np.random.default_rng(0)
    grid = np.arange(36, dtype=np.int32).reshape(6, 6)  # id = row * 6 + col: every cell unique
    box0 = np.array([0.25, 0.0, 1.0, 0.75], np.float32)  # the lower-left 3/4 x 3/4
    cases = [
        (np.array([0.0, 0.0, 0.5, 0.5], np.float32), 0),  # straddles the discovery crop
        (np.array([0.5, 0.25, 1.0, 0.75], np.float32), 1),  # inside it, flipped
        (rng.uniform(0, 0.5, 2).tolist() + rng.uniform(0.5, 1, 2).tolist(), 1),
    ]
    boxes = np.stack([np.asarray(b, np.float32) for b, _ in cases])  # (ymin, xmin, ymax, xmax)
    flips = np.array([f for _, f in cases], np.int32)
    got = np.asarray(
        transport_ids(
            jnp.asarray(np.stack([grid] * 3)), jnp.asarray(np.stack([box0] * 3)),
            jnp.asarray(boxes), jnp.asarray(flips), 24,
        )
    )  # fmt: skip
    for k in range(3):
        np.testing.assert_array_equal(
            got[k], _reference_transport(grid, box0, boxes[k], flips[k], 24)
        )
    # Case 0 by hand: view rows 0..11 are image y < 0.25, above the discovery crop: no id.
    assert (got[0, :12] == -1).all() and (got[0, 12:] >= 0).all()
    # Its first valid row is the discovery grid's row 0; column 0 of the view is x = 1/48
    # of the image, discovery column floor(1/48 / 0.75 * 6) = 0.
    assert got[0, 12, 0] == 0
    # Case 1 is flipped: the view's top-left pixel sits at image (y, x) = (0.510, 0.740),
    # discovery (row, col) = (floor(0.347 * 6), floor(0.986 * 6)) = (2, 5); its top-right one
    # at x = 0.260, column floor(0.347 * 6) = 2.
    assert got[1, 0, 0] == grid[2, 5] and got[1, 0, -1] == grid[2, 2]


@pytest.fixture(scope="module", params=[True, False], ids=["views_in_crop", "views_in_image"])
def discovery_batch(data_dir, request):
    """A real pipeline batch with the discovery view and ground-truth ids in every view; the
    views cut from inside the discovery crop (Odin's default) or from the whole image."""
    config = helpers.tiny_config(
        "odin", data_dir,
        **{"data.mask_source": "gt", "data.views_in_discovery_crop": request.param},
    )  # fmt: skip
    it = pipeline.make_pretrain_iterator(config.data, global_batch_size=16, seed=3)
    return next(it)


def _view_pixels_with_id(root: str, views_in_crop: bool, n: int = 256) -> tuple[float, dict]:
    """Fraction of view-1 pixels that receive a discovery id (the training metric
    `view_pixels_with_id`) over `n` examples of the tiny Odin pipeline, and the batch."""
    config = helpers.tiny_config("odin", root, **{"data.views_in_discovery_crop": views_in_crop})
    b = next(pipeline.make_pretrain_iterator(config.data, global_batch_size=n, seed=5))
    grid = jnp.zeros((n, 6, 6), jnp.int32)  # any ids: only the coverage counts
    size = b["view1"].shape[1]
    ids = transport_ids(
        grid, jnp.asarray(b["box0"]), jnp.asarray(b["box1"]), jnp.asarray(b["flip1"]), size
    )
    return float(jnp.mean(ids >= 0)), b


def test_fraction_of_view_pixels_with_an_id_under_each_view_option(data_dir):
    """Views cut inside the discovery crop (the default, as the paper's summaries describe
    Odin) give every view pixel a discovery id; views cut from the whole image leave a part of
    each view outside the discovery crop, without an id. Prints both fractions."""
    inside, b = _view_pixels_with_id(data_dir, True)
    whole, _ = _view_pixels_with_id(data_dir, False)
    print(f"\nview pixels with a discovery id: views in the discovery crop {inside:.4f}, "
          f"views in the whole image {whole:.4f}")  # fmt: skip
    assert inside == 1.0
    assert 0.5 < whole < 0.97
    # The boxes say the same: every view box lies inside its discovery box, and its area is a
    # `crop_scale` fraction of the discovery crop's (up to pixel rounding).
    b0, b1 = b["box0"], b["box1"]
    eps = 1e-6
    assert (b1[:, :2] >= b0[:, :2] - eps).all() and (b1[:, 2:] <= b0[:, 2:] + eps).all()
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    frac = area(b1) / area(b0)
    assert frac.max() <= 1.0 + eps and frac.min() >= 0.08 * 0.5


def test_pipeline_discovery_view_is_a_large_unflipped_crop(discovery_batch):
    b = discovery_batch
    assert b["view0"].shape == b["view1"].shape and (b["flip0"] == 0).all()
    area = (b["box0"][:, 2] - b["box0"][:, 0]) * (b["box0"][:, 3] - b["box0"][:, 1])
    assert (area >= 0.5 - 0.05).all() and (area <= 1.0).all()  # scale (0.5, 1), pixel rounding


def test_pixel_map_transported_from_discovery_view_equals_pipeline_crop(discovery_batch):
    """`mask0` is the pipeline's crop of the instance ids for view 0; transported into view 1 it
    must reproduce `mask1` (the pipeline's crop of the same ids for view 1) wherever view 1
    sees the discovery crop, up to nearest-neighbour rounding at id boundaries."""
    b = discovery_batch
    size = b["view1"].shape[1]
    got = np.asarray(
        transport_ids(
            jnp.asarray(b["mask0"]), jnp.asarray(b["box0"]), jnp.asarray(b["box1"]),
            jnp.asarray(b["flip1"]), size,
        )
    )  # fmt: skip
    inside = got >= 0
    # Away from boundaries: pixels whose 3x3 neighbourhood in mask1 holds a single id.
    m = np.pad(b["mask1"], ((0, 0), (1, 1), (1, 1)), mode="edge")
    same = np.ones_like(inside)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= m[:, dy : dy + size, dx : dx + size] == b["mask1"]
    checked = inside & same
    assert checked.sum() > 0.3 * inside.size
    agreement = np.mean(got[checked] == b["mask1"][checked])
    assert agreement >= 0.99, agreement
    # And the pixels with no id are exactly those whose centre lies outside the discovery box.
    from odin.transport import view_coordinates

    y, x = (
        np.asarray(a)
        for a in view_coordinates(jnp.asarray(b["box1"]), jnp.asarray(b["flip1"]), size)
    )
    b0 = b["box0"]
    in_y = (y >= b0[:, 0:1]) & (y < b0[:, 2:3])
    in_x = (x >= b0[:, 1:2]) & (x < b0[:, 3:4])
    expected = in_y[:, :, None] & in_x[:, None, :]
    assert np.mean(expected == inside) >= 0.999


def _odin_setup(root, **overrides):
    config = helpers.tiny_config("odin", root, **overrides)
    return config, train.build(config, num_examples=256)


def _device_batch(config):
    it = pipeline.make_pretrain_iterator(config.data, global_batch_size=config.batch_size, seed=0)
    return {k: jnp.asarray(v) for k, v in next(it).items() if not k.startswith("_")}


def test_discovery_network_is_copied_every_n_steps(data_dir):
    """`copy` mode through the compiled step: tau 0 (a copy of the online network) every 2nd
    step, 1 (unchanged) otherwise. `ema` goes through the same update with its own tau
    (checked in `test_discovery_rates_of_each_mode`; the formula is tested in test_train)."""
    config, setup = _odin_setup(
        data_dir,
        **{"method_kwargs.discovery_mode": "copy", "method_kwargs.discovery_copy_every": 2},
    )
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    batch = _device_batch(config)
    step = jax.jit(functools.partial(train.train_step, setup))
    leaf = lambda tree: np.asarray(tree["backbone"]["initial_conv"]["kernel"])  # noqa: E731
    for k in range(3):
        before = state
        state, metrics = step(state, batch)
        d_old, d_new = leaf(before.ema_params["discovery"]), leaf(state.ema_params["discovery"])
        copied = k % 2 == 0
        assert float(metrics["tau_discovery"]) == (0.0 if copied else 1.0)
        # A copy through the EMA formula t + (1 - 0) (o - t): o up to float32 rounding.
        want = leaf(state.params["online"]) if copied else d_old
        np.testing.assert_allclose(d_new, want, atol=1e-6)
    assert "discovery" not in state.params  # never trained by the optimiser


def test_step_compiles_once_and_trains_on_discovered_masks(data_dir, tmp_path, monkeypatch):
    counted = chex.assert_max_traces(train.train_step, n=1)
    monkeypatch.setattr(train, "train_step", counted)
    config = helpers.tiny_config(
        "odin", data_dir, **{"evals.discovery.enabled": False, "pictures_every_steps": 6}
    )
    train.main(config, str(tmp_path))
    # The discovered masks in both views, drawn by DetCon's picture code.
    assert os.path.getsize(tmp_path / "pictures" / "step_0000006.png") > 1000
    from common.metrics import read_jsonl

    rows = [r for r in read_jsonl(str(tmp_path)) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["train/loss"]) for r in rows)
    # The views are cut inside the discovery crop (the default): every view pixel has an id.
    frac = [r["train/view_pixels_with_id"] for r in rows]
    assert all(f == 1.0 for f in frac), frac
    # K = 8 clusters on a 4x4 grid: several segments per view.
    assert all(r["train/segments_per_view"] >= 2 for r in rows)


def test_masks_are_the_discovery_networks_kmeans_clusters(data_dir):
    """The ids the loss sees are the k-means clusters of the discovery network's features on
    `view0`, transported: recompute them outside the method and compare."""
    from common import kmeans
    from common.method import Networks

    config, setup = _odin_setup(data_dir)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    batch = train.augment_views(setup, _device_batch(config), jax.random.key(0))
    nets = Networks(setup.modules, {**state.params, **state.ema_params}, state.batch_stats)
    rng = jax.random.key(5)
    got = setup.method.transported_masks(nets, batch, rng)
    dense = setup.modules["discovery"].apply(
        {"params": state.ema_params["discovery"], "batch_stats": state.batch_stats["discovery"]},
        batch["view0"], train=True, mutable=["batch_stats"],
    )[0]["dense"]  # fmt: skip
    clusters, _ = kmeans.kmeans_dense(rng, dense, config.method_kwargs.num_clusters)
    size = batch["view1"].shape[1]
    for v in ("1", "2"):
        want = transport_ids(clusters, batch["box0"], batch["box" + v], batch["flip" + v], size)
        np.testing.assert_array_equal(np.asarray(got["mask" + v]), np.asarray(want))


def test_discovery_rates_of_each_mode(data_dir):
    """`ema`: its own constant rate; `frozen` keeps tau = 1 (t + 0 (o - t) = t exactly);
    `cosine` is BYOL's schedule."""
    from common import optim

    _, ema = _odin_setup(data_dir)  # the default: its own constant rate
    assert [float(ema.method.tau("discovery", s, 100)) for s in (0, 99)] == [
        pytest.approx(0.99)
    ] * 2
    _, frozen = _odin_setup(data_dir, **{"method_kwargs.discovery_mode": "frozen"})
    assert [float(frozen.method.tau("discovery", s, 100)) for s in (0, 7, 99)] == [1.0] * 3
    _, cosine = _odin_setup(data_dir, **{"method_kwargs.discovery_tau_schedule": "cosine"})
    for s in (0, 50, 100):
        want = optim.ema_tau(s, base_tau=0.99, total_steps=100)
        assert float(cosine.method.tau("discovery", s, 100)) == pytest.approx(float(want))
    assert float(cosine.method.tau("discovery", 100, 100)) == pytest.approx(1.0)


def test_target_mode_has_no_discovery_network_and_evaluates_the_target():
    from experiments import odin as odin_config
    from odin.method import Odin

    config = odin_config.get_config("local,discovery_mode=target")
    assert config.evals.discovery.network == "target"
    method = Odin(config)
    assert method.ema_networks == {"target": "online"}
    assert sorted(method.build_networks()) == ["online", "target"]


def test_bad_discovery_mode_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="discovery_mode must be one of"):
        _odin_setup(data_dir, **{"method_kwargs.discovery_mode": "sometimes"})
