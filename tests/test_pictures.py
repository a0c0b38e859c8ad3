"""The methods' pictures run their numbers as compiled programs (`common.pictures.under_jit`):
the same numbers as op by op, compiled once per run.

* `under_jit` on a small network: one trace for repeated pictures of a run (new parameters,
  new `Networks` objects, the same modules), the eager result, inference mode only;
* Odin's discovered masks and DetCon's sampled ids and features (Odin's picture draws both), and
  VITO's attention maps, on tiny configs: compiled equal to op by op (ids exactly, features to
  float32 rounding).

Their figures are drawn during training in test_detcon, test_odin and test_vito; the time they
take is `benchmarks/picture_time.py`'s.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import pictures, train
from common.method import Networks
from tests import helpers


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def test_under_jit_traces_once_per_run_and_equals_op_by_op():
    traces = []

    @pictures.under_jit
    def picture(scale, nets, x):
        traces.append(1)
        return scale * nets("net", x)

    modules = {"net": _Tiny()}  # one dict for the whole run, as `Setup.modules`
    x = jnp.arange(8.0).reshape(2, 4)
    for seed in range(3):  # three pictures of one run: new parameters, new Networks objects
        variables = modules["net"].init(jax.random.PRNGKey(seed), x)
        nets = Networks(
            modules, {"net": variables["params"]}, {"net": variables["batch_stats"]}, train=False
        )
        compiled = picture(2.0, nets, x)
        with pictures.op_by_op():
            eager = picture(2.0, nets, x)
        np.testing.assert_allclose(compiled, eager, rtol=1e-6)
        want = 2.0 * modules["net"].apply(variables, x)
        np.testing.assert_allclose(compiled, want, rtol=1e-6)
    # One trace for the compiled program, one per eager call.
    assert len(traces) == 1 + 3
    with pytest.raises(ValueError, match="inference mode"):
        picture(2.0, Networks(modules, nets.params, nets.new_batch_stats, train=True), x)


def _inference_networks(config):
    """The method and inference-mode networks with random variables of the trainer's shapes.

    Drawn in NumPy from `jax.eval_shape` of the trainer's initialisation (nothing to compile):
    kernels with LeCun scale, BatchNorm scales and variances around 1, small biases and means;
    random throughout, so that no map is uniform (VITO's attention logits start at zero)."""
    setup = train.build(config, num_examples=256)
    shapes = jax.eval_shape(functools.partial(train.init_state, setup), train.init_rng(0))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if len(leaf.shape) >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(size=leaf.shape).astype(leaf.dtype) / np.sqrt(fan_in)
        if "scale" in name or "var" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return 0.1 * rng.normal(size=leaf.shape).astype(leaf.dtype)

    state = jax.tree_util.tree_map_with_path(draw, shapes)
    params = {**state.params, **state.ema_params}
    return setup.method, Networks(setup.modules, params, state.batch_stats, train=False)


def _assert_same(compiled: dict, eager: dict):
    assert compiled.keys() == eager.keys()
    for k in compiled:
        a, b = np.asarray(compiled[k]), np.asarray(eager[k])
        if np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, b, err_msg=k)
        else:  # XLA may fuse what op by op rounds in between: float32 rounding only
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)


def _odin_host_batch(b: int, size: int) -> dict[str, np.ndarray]:
    """A host batch as the pipeline emits it for Odin: views in [0, 1]; the views' boxes inside
    the discovery crop's (`views_in_discovery_crop`), in the image's normalised coordinates."""
    rng = np.random.default_rng(0)
    out = {f"view{v}": rng.uniform(size=(b, size, size, 3)).astype(np.float32) for v in "012"}
    out["box0"] = np.tile(np.float32([0.1, 0.2, 0.9, 0.8]), (b, 1))
    for v in "12":
        lo = np.stack([rng.uniform(0.1, 0.5, b), rng.uniform(0.2, 0.4, b)], axis=1)
        out[f"box{v}"] = np.concatenate([lo, lo + 0.4], axis=1).astype(np.float32)
        out[f"flip{v}"] = rng.integers(0, 2, b).astype(np.int32)
    return out


def test_odin_and_detcon_pictures_compiled_equal_op_by_op():
    from detcon import pictures as detcon_pictures
    from odin.method import _picture_masks

    config = helpers.tiny_config("odin", "unused: no data is read")
    method, nets = _inference_networks(config)
    # 8 discovery views and DetCon's two views of 4 rows: the same shapes, so op by op compiles
    # the network's ops once.
    host = _odin_host_batch(8, config.data.image_size)
    rng = jax.random.PRNGKey(1)
    part = {k: v for k, v in host.items() if k != "view2"}
    masks = jax.device_get(_picture_masks(method, nets, part, rng))
    with pictures.op_by_op():
        _assert_same(masks, jax.device_get(_picture_masks(method, nets, part, rng)))
    # Real discovered masks: several clusters per view, every view pixel with an id.
    assert len(np.unique(masks["mask1"])) > 2 and (masks["mask1"] >= 0).all()

    batch = {**host, **masks}
    arrays = detcon_pictures.picture_arrays(method, nets, batch, rng, 4)
    with pictures.op_by_op():
        _assert_same(arrays, detcon_pictures.picture_arrays(method, nets, batch, rng, 4))
    assert arrays["dense"].shape[:2] == (2, 4) and arrays["ids1"].shape == (4, 16)
    assert np.std(arrays["dense"]) > 0


def test_vito_attention_maps_compiled_equal_op_by_op():
    from vito import pictures as vito_pictures

    config = helpers.tiny_config("vito", "unused: no data is read")
    _, nets = _inference_networks(config)
    frames = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype(np.float32)
    scales = tuple(config.method_kwargs.scales)
    maps = vito_pictures.attention_maps(nets, frames, scales)
    with pictures.op_by_op():
        eager = vito_pictures.attention_maps(nets, frames, scales)
    _assert_same(dict(enumerate(maps)), dict(enumerate(eager)))
    for m in maps:  # one softmax over the cells of each map, not uniform
        np.testing.assert_allclose(m.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert np.ptp(m) > 1e-3 * m.max()
