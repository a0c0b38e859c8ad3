"""Tests for common.backbones: shapes, Haiku parity and conversion, ViT, sharded BatchNorm.

Everything is tiny except the ResNet-50 parity test (224 px, batch 2, ~30 s on 2 CPU cores), which
is the reason the backbone exists in this form: DeepMind's Haiku checkpoints must give the same
features in our Flax ResNet.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common.backbones import BACKBONE_NAMES, ResNet, ViT, get_backbone, haiku_import
from common.backbones.resnet import BlockV1
from common.backbones.vit import resize_pos_embed
from tests.helpers import HAIKU_COUNTER
from tests.helpers import haiku_resnet_features as _haiku_features
from tests.helpers import random_haiku_variables as _random_haiku_variables


# Everything runs under jit (eager Flax/Haiku compiles every primitive separately), and inits use
# 'rbg' keys: XLA:CPU takes ~45 s to compile the threefry bits of a tiny ResNet-18 init, ~5 s
# with rbg.
def _init(model, x, seed=0, **kwargs):
    init = jax.jit(lambda key, x: model.init(key, x, **kwargs))
    return init(jax.random.key(seed, impl="rbg"), x)


def _apply(model, variables, x, train=False):
    fn = lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"] if train else False)
    return jax.jit(fn)(variables, x)


def _shapes(model, input_shape):
    """(variables, outputs) as ShapeDtypeStructs: traces without compiling or computing."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return variables, jax.eval_shape(model.apply, variables, x)


# --------------------------------------------------------------------------------------------
# Shapes, strides, get_backbone


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 200])
def test_resnet_shapes_all_depths(depth):
    # eval_shape traces without computing, so even ResNet-200 at full width is cheap.
    model = get_backbone(f"resnet{depth}")
    variables, out = _shapes(model, (2, 64, 64, 3))
    assert model.output_stride == 32
    for i, (c, s) in enumerate(zip(model.channels_per_group, model.stage_strides)):
        assert out[f"stage{i + 1}"].shape == (2, 64 // s, 64 // s, c)
    assert out["out"].shape == (2, 2, 2, model.out_channels)
    assert model.out_channels == (512 if depth < 50 else 2048)
    if depth == 50:
        # torchvision / Haiku ResNet-50 without the classifier: 23,508,032 parameters.
        n = sum(np.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
        assert n == 23_508_032


def test_resnet_small_stem_and_width_multiplier():
    model = get_backbone("resnet18", small_stem=True, width_multiplier=2, base_width=4)
    assert model.output_stride == 8 and model.out_channels == 64
    variables, out = _shapes(model, (1, 64, 64, 3))
    assert variables["params"]["initial_conv"]["kernel"].shape == (3, 3, 3, 8)
    assert [out[f"stage{i}"].shape[1] for i in range(1, 5)] == [64, 32, 16, 8]
    assert out["out"].shape == (1, 8, 8, 64)


def test_resnet_bfloat16_compute_float32_params():
    model = get_backbone(
        "resnet50", base_width=2, blocks_per_group=(1, 1, 1, 1), dtype=jnp.bfloat16
    )
    variables, out = _shapes(model, (1, 32, 32, 3))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    assert all(a.dtype == jnp.bfloat16 for a in out.values())


def test_get_backbone_names():
    assert set(BACKBONE_NAMES) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
        "vit_s8", "vit_s16", "vit_b8", "vit_b16",
    }  # fmt: skip
    assert isinstance(get_backbone("resnet101"), ResNet)
    vit = get_backbone("vit_b8")
    assert isinstance(vit, ViT) and (vit.width, vit.num_heads, vit.output_stride) == (768, 12, 8)
    with pytest.raises(ValueError, match="resnet50.*vit_b16"):
        get_backbone("resnet51")


# --------------------------------------------------------------------------------------------
# Zero-initialised last BN: a fresh residual block is relu(shortcut)


def test_fresh_bottleneck_block_is_shortcut():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    # Identity shortcut: output = relu(x), in both BN modes.
    block = BlockV1(channels=16, stride=1, use_projection=False, bottleneck=True,
                    zero_init_last_bn=True)  # fmt: skip
    variables = _init(block, x, train=False)
    assert not np.any(np.asarray(variables["params"]["batchnorm_2"]["scale"]))
    np.testing.assert_allclose(_apply(block, variables, x), jax.nn.relu(x), atol=1e-6)
    out, _ = _apply(block, variables, x, train=True)
    np.testing.assert_allclose(out, jax.nn.relu(x), atol=1e-6)
    # Projection shortcut: output = relu(BN(strided 1x1 conv(x))) with fresh BN statistics.
    block = BlockV1(channels=32, stride=2, use_projection=True, bottleneck=True,
                    zero_init_last_bn=True)  # fmt: skip
    variables = _init(block, x, train=False)
    kernel = variables["params"]["shortcut_conv"]["kernel"][0, 0]
    shortcut = jnp.einsum("bhwc,cd->bhwd", x[:, ::2, ::2], kernel) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(_apply(block, variables, x), jax.nn.relu(shortcut), atol=1e-5)


def test_zero_init_follows_haiku():
    # Haiku's BlockV1 zero-inits the last BN scale of bottleneck blocks only; basic blocks keep 1
    # unless zero_init_last_bn=True; v2 never.
    assert get_backbone("resnet50").zero_init_residual
    assert not get_backbone("resnet18").zero_init_residual
    assert get_backbone("resnet18", zero_init_last_bn=True).zero_init_residual
    assert not get_backbone("resnet50", resnet_v2=True).zero_init_residual
    assert not get_backbone("resnet50", zero_init_last_bn=False).zero_init_residual
    # ... and the flag reaches every block: only the last BN of each block starts at zero.
    model = get_backbone("resnet50", base_width=2, blocks_per_group=(2, 1, 1, 1))
    params = _init(model, jnp.ones((1, 16, 16, 3)))["params"]
    for group in range(4):
        for block, bns in params[f"block_group_{group}"].items():
            assert not np.any(bns["batchnorm_2"]["scale"]), (group, block)
            for name in ("batchnorm_0", "batchnorm_1", "shortcut_batchnorm"):
                if name in bns:
                    assert np.all(bns[name]["scale"] == 1), (group, block, name)


# --------------------------------------------------------------------------------------------
# Haiku parity


def _flax_stats_from_haiku_state(state, prefix):
    return haiku_import.haiku_to_flax({}, state, prefix=prefix)["batch_stats"]


def _check_parity(model, hk_fn, hk_params, hk_state, x, prefix, atol, rel=False):
    variables = haiku_import.haiku_to_flax(hk_params, hk_state)
    # Every Flax variable is covered by the conversion, with the right shapes.
    expected, _ = _shapes(model, x.shape)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, dict(expected))
    errors = {}
    for train in (False, True):
        hk_out, hk_new_state = jax.jit(hk_fn.apply, static_argnums=4)(
            hk_params, hk_state, None, x, train
        )
        out, new_vars = (
            _apply(model, variables, x, train=True)
            if train
            else (_apply(model, variables, x), None)
        )
        for key in ("stage1", "stage2", "stage3", "stage4", "out"):
            assert out[key].shape == hk_out[key].shape, key
            err = float(jnp.max(jnp.abs(out[key] - hk_out[key])))
            errors[(train, key)] = err
            scale = float(jnp.max(jnp.abs(hk_out[key])))
            assert err <= atol * (max(1.0, scale) if rel else 1.0), (train, key, err, scale)
        if train:
            ours = jax.tree.leaves(new_vars["batch_stats"])
            theirs = jax.tree.leaves(_flax_stats_from_haiku_state(hk_new_state, prefix))
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return errors


@pytest.fixture(scope="module")
def haiku_r50():
    hk_fn = _haiku_features(dict(blocks_per_group=(3, 4, 6, 3), name="res_net50"))
    x = jax.random.normal(jax.random.PRNGKey(42), (2, 224, 224, 3))
    params, state = _random_haiku_variables(hk_fn, x)
    return hk_fn, params, state, x


def test_haiku_resnet50_parity_224(haiku_r50):
    hk_fn, params, state, x = haiku_r50
    assert "res_net50/~/block_group_3/~/block_2/~/batchnorm_2" in params
    errors = _check_parity(ResNet(depth=50), hk_fn, params, state, x, "res_net50/~/", atol=1e-4)
    print("R50 max abs error per (train, map):", errors)


_TINY_BOTTLENECK = dict(
    channels_per_group=(8, 16, 32, 64), initial_conv_config=dict(output_channels=2)
)


@pytest.mark.parametrize(
    "hk_kwargs,ours",
    [
        (  # basic blocks (ResNet-18/34 style), v1, nn.Conv everywhere
            dict(blocks_per_group=(2, 1, 1, 1), bottleneck=False,
                 use_projection=(False, True, True, True), channels_per_group=(8, 16, 32, 64),
                 initial_conv_config=dict(output_channels=8)),
            dict(depth=18, base_width=8, blocks_per_group=(2, 1, 1, 1)),
        ),
        (  # bottleneck v1 with the einsum 1x1 convs
            dict(blocks_per_group=(2, 1, 1, 1), **_TINY_BOTTLENECK),
            dict(depth=50, base_width=2, blocks_per_group=(2, 1, 1, 1), einsum_1x1=True),
        ),
        (  # bottleneck v2 (pre-activation), einsum 1x1 convs
            dict(blocks_per_group=(1, 2, 1, 1), resnet_v2=True, **_TINY_BOTTLENECK),
            dict(depth=50, base_width=2, blocks_per_group=(1, 2, 1, 1), resnet_v2=True,
                 einsum_1x1=True),
        ),
        (  # bottleneck v1, every CPU lowering: einsum 1x1 convs, stem matmul, sliced max-pool
            dict(blocks_per_group=(1, 1, 1, 1), **_TINY_BOTTLENECK),
            dict(depth=50, base_width=2, blocks_per_group=(1, 1, 1, 1), einsum_1x1=True,
                 cpu_stem=True),
        ),
    ],
    ids=["basic_v1", "bottleneck_v1_einsum", "bottleneck_v2_einsum", "bottleneck_v1_cpu_stem"],
)  # fmt: skip
def test_haiku_parity_tiny_variants(hk_kwargs, ours):
    hk_fn = _haiku_features(dict(name="res_net", **hk_kwargs))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 35, 35, 3))  # odd: asymmetric SAME padding
    params, state = _random_haiku_variables(hk_fn, x, seed=1)
    if ours.get("einsum_1x1") or ours.get("cpu_stem"):
        # The einsum differs from conv at float32 rounding level, and training-mode BN over few
        # pixels (18 per channel at stage 3) amplifies it to ~1e-5 relative.
        _check_parity(ResNet(**ours), hk_fn, params, state, x, "res_net/~/", atol=1e-4, rel=True)
    else:
        _check_parity(ResNet(**ours), hk_fn, params, state, x, "res_net/~/", atol=1e-5)


def test_haiku_prefix_detection_and_mixed_tree(haiku_r50):
    _, params, state, _ = haiku_r50
    assert haiku_import.detect_prefix(params) == "res_net50/~/"
    # A DetCon-like checkpoint: another prefix, extra networks, params and state in one dict.
    extra = {"projector/~/linear": {"w": np.zeros((2, 2))}, "classifier": {"b": np.zeros(3)}}
    mixed = {k.replace("res_net50", "encoder/res_net50"): v for k, v in {**params, **state}.items()}
    converted = haiku_import.haiku_to_flax({**mixed, **extra})
    reference = haiku_import.haiku_to_flax(params, state)
    jax.tree.map(np.testing.assert_array_equal, converted, reference)
    with pytest.raises(ValueError, match="prefix"):
        haiku_import.detect_prefix({**params, "target/~/initial_conv": {"w": 0}})


def test_haiku_round_trips(haiku_r50):
    _, params, state, _ = haiku_r50
    # Haiku -> Flax -> Haiku is exact (the debiased average is what Haiku uses; hidden = average
    # and the counter is large on both sides here).
    back_params, back_state = haiku_import.flax_to_haiku(
        haiku_import.haiku_to_flax(params, state), prefix="res_net50/~/", counter=HAIKU_COUNTER
    )
    jax.tree.map(np.testing.assert_array_equal, back_params, params)
    jax.tree.map(np.testing.assert_array_equal, back_state, state)
    # Flax -> Haiku -> Flax on a fresh Flax init (random BN stats for a non-trivial check).
    model = get_backbone("resnet50", base_width=2, blocks_per_group=(1, 1, 2, 1))
    variables = _init(model, jnp.ones((1, 32, 32, 3)))
    variables = jax.tree.map(
        lambda a: np.asarray(a) + np.random.default_rng(0).normal(size=a.shape).astype(a.dtype),
        dict(variables),
    )
    hk_params, hk_state = haiku_import.flax_to_haiku(variables, prefix="res_net/~/")
    assert hk_params["res_net/~/initial_batchnorm"]["scale"].shape == (1, 1, 1, 2)
    assert "res_net/~/block_group_2/~/block_1/~/batchnorm_2/~/var_ema" in hk_state
    jax.tree.map(
        np.testing.assert_array_equal, haiku_import.haiku_to_flax(hk_params, hk_state), variables
    )


# --------------------------------------------------------------------------------------------
# ViT


def _tiny_vit(**kwargs):
    return get_backbone("vit_s8", width=32, depth=2, num_heads=2, image_size=32, **kwargs)


def test_vit_grid_and_pos_emb_interpolation():
    vit = _tiny_vit()
    assert vit.output_stride == 8 and vit.out_channels == 32
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = _init(vit, x)
    assert variables["params"]["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    out = _apply(vit, variables, x, train=True)[0]
    assert out["out"].shape == (2, 4, 4, 32)
    assert set(out) == {"out", "block_0", "block_1"}
    # New (non-square) resolution: same parameters, interpolated positional embeddings.
    out48 = _apply(vit, variables, jax.random.normal(jax.random.PRNGKey(2), (2, 48, 64, 3)))
    assert out48["out"].shape == (2, 6, 8, 32) and np.isfinite(np.asarray(out48["out"])).all()
    # At the init resolution the interpolation is the identity (the very same array) ...
    grid = variables["params"]["pos_embed"][0, 1:].reshape(4, 4, 32)
    assert resize_pos_embed(grid, (4, 4), "bicubic") is grid
    # ... and a real interpolation preserves a constant field and lands on the right shape.
    const = jnp.full((4, 4, 3), 0.7)
    np.testing.assert_allclose(resize_pos_embed(const, (7, 5), "bicubic"), 0.7, atol=1e-6)


def test_vit_full_size_shapes():
    for name, grid, c in [("vit_s16", 14, 384), ("vit_b8", 28, 768)]:
        variables, out = _shapes(get_backbone(name), (1, 224, 224, 3))
        assert out["out"].shape == (1, grid, grid, c)
    n = sum(np.prod(a.shape) for a in jax.tree.leaves(variables["params"]))
    assert 85e6 < n < 87e6  # ViT-B/8 without head: ~85.8M


# --------------------------------------------------------------------------------------------
# BatchNorm under jit on a mesh: statistics are global over the sharded batch


def test_batchnorm_global_statistics_on_mesh():
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 (simulated) devices, see tests/conftest.py")
    model = get_backbone("resnet18", base_width=4, blocks_per_group=(1, 1, 1, 1), small_stem=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 16, 16, 3))
    variables = _init(model, x[:1])
    # Per-example shifts make per-shard statistics differ from the global ones: a per-device BN
    # would fail this test.
    x = x + jnp.arange(16.0)[:, None, None, None] / 4

    fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    ref_out, ref_vars = fwd(variables, jax.device_put(x, devices[0]))

    mesh = Mesh(np.array(devices[:8]), ("data",))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    variables_repl = jax.device_put(variables, NamedSharding(mesh, P()))
    out, new_vars = fwd(variables_repl, x_sharded)
    assert len(out["out"].sharding.device_set) == 8

    def rel(a, b):
        a, b = np.asarray(a), np.asarray(b)  # gathers the sharded array to the host
        return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))

    for key in out:
        assert rel(out[key], ref_out[key]) <= 1e-5, key
    for a, b in zip(jax.tree.leaves(new_vars), jax.tree.leaves(ref_vars)):
        assert rel(a, b) <= 1e-5


def _features_and_grads(model, variables, x):
    """(parameter gradients, training-mode features) of a loss over every stage's features."""

    def loss(params):
        out, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return sum(jnp.mean(jnp.sin(f)) for f in out.values()), out

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])


def test_einsum_1x1_matches_conv_forward_and_gradients():
    """The fast path (1x1 convs as einsums, the `local` default) against the exact `nn.Conv`
    path with the same parameters, on the `local` configs' layout (basic blocks, stride-1 stem,
    strided 1x1 projection shortcuts): training-mode features and the parameter gradients of a
    loss over every stage agree to float32 rounding (max error <= 1e-4 of each array's largest
    entry; measured <= 2e-6). The bottleneck layout's einsum path is checked against Haiku above."""
    kwargs = dict(depth=18, base_width=8, blocks_per_group=(1, 1, 1, 1), small_stem=True)
    exact, fast = ResNet(**kwargs), ResNet(**kwargs, einsum_1x1=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 33, 33, 3))  # odd: strided slices round up
    variables = _init(exact, x, seed=2)
    assert jax.tree.structure(_init(fast, x, seed=2)) == jax.tree.structure(variables)

    def close(a, b):
        scale = float(jnp.max(jnp.abs(a)))
        assert scale > 0 and float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale

    jax.tree.map(
        close,
        _features_and_grads(exact, variables, x),
        _features_and_grads(fast, variables, x),
    )


def test_cpu_stem_matches_conv_and_reduce_window():
    """The CPU stem (7x7 stride-2 conv as a patches matmul, max-pool as a maximum of strided
    slices) against `nn.Conv` + `nn.max_pool` with the same parameters, on a bottleneck net
    with odd input sizes (TF 'SAME' pads the extra pixel bottom/right, and the pool's window
    hangs over its -inf padding): the stem alone agrees to rounding and the pool bitwise; the
    training-mode features and the parameter gradients of a loss over every stage agree to
    float32 rounding (max error <= 1e-4 of the largest entry: of each feature map, of the whole
    gradient; measured <= 1e-5)."""
    from common.backbones.resnet import ConvAsMatmul, max_pool_as_slices

    for shape in [(3, 37, 29, 3), (2, 8, 8, 3), (1, 7, 9, 3)]:
        x = jax.random.normal(jax.random.PRNGKey(shape[1]), shape)
        conv = nn.Conv(5, (7, 7), strides=(2, 2), padding="SAME", use_bias=False)
        conv_vars = _init(conv, x, seed=1)
        fast_vars = _init(ConvAsMatmul(5, 7, 2), x, seed=1)
        np.testing.assert_array_equal(fast_vars["params"]["kernel"], conv_vars["params"]["kernel"])
        np.testing.assert_allclose(
            ConvAsMatmul(5, 7, 2).apply(conv_vars, x), conv.apply(conv_vars, x),
            rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(conv.apply(conv_vars, x)))),
        )  # fmt: skip
        reference = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        np.testing.assert_array_equal(max_pool_as_slices(x), reference)
        # Without ties the input gradients are the same too (each output picks one pixel).
        weights = jnp.arange(reference.size, dtype=jnp.float32).reshape(reference.shape)

        def pool_grad(pool, x, weights):
            return jax.grad(lambda x: jnp.sum(jnp.sin(pool(x)) * weights))(x)

        np.testing.assert_array_equal(
            pool_grad(max_pool_as_slices, x, weights),
            pool_grad(lambda x: nn.max_pool(x, (3, 3), (2, 2), padding="SAME"), x, weights),
        )

    # Last BN scales not zeroed, so that every parameter gets a gradient.
    kwargs = dict(depth=50, base_width=2, blocks_per_group=(1, 1, 1, 1), zero_init_last_bn=False)
    exact, fast = ResNet(**kwargs), ResNet(**kwargs, cpu_stem=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 45, 39, 3))
    variables = _init(exact, x, seed=2)
    jax.tree.map(np.testing.assert_array_equal, _init(fast, x, seed=2), variables)

    grads, features = _features_and_grads(exact, variables, x)
    fast_grads, fast_features = _features_and_grads(fast, variables, x)

    def error(a, b):
        return float(jnp.max(jnp.abs(a - b)))

    for key in features:
        assert error(features[key], fast_features[key]) <= 1e-4 * float(jnp.max(features[key]))
    # Gradients against the largest gradient entry: some arrays' gradients are near-cancelling
    # sums (a BN scale feeding a training-mode BN, ~3e-4 of the largest), where rounding is
    # large relative to the array itself (measured 5e-4) and tiny against the whole (<= 1e-5).
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    assert scale > 0
    assert max(jax.tree.leaves(jax.tree.map(error, grads, fast_grads))) <= 1e-4 * scale


def test_checkpoint_signature_ignores_the_1x1_lowering():
    """A workdir written with 1x1 convs as `nn.Conv` resumes under the einsum lowering (the
    `local` default since the speed work) and back: same parameter tree, same signature; a
    backbone option that changes the parameters still changes it."""
    import types

    import ml_collections

    from common import checkpoint

    def signature(**backbone_kwargs):
        model = ResNet(depth=18, base_width=8, blocks_per_group=(1, 1, 1, 1), **backbone_kwargs)
        params = _init(model, jnp.zeros((1, 16, 16, 3)), seed=0)["params"]
        model_config = {"backbone": "resnet18", "backbone_kwargs": backbone_kwargs}
        config = ml_collections.ConfigDict({"method": "byol", "model": model_config})
        return checkpoint.model_signature(config, types.SimpleNamespace(params=params))

    assert signature(einsum_1x1=True) == signature(einsum_1x1=False) == signature()
    assert signature(cpu_stem=True) == signature(einsum_1x1=True, cpu_stem=False) == signature()
    assert signature(small_stem=True) != signature()


def test_two_pass_batch_variance_is_exact_where_one_pass_cancels():
    """A channel with mean 1000 and spread 0.1: float32 E[x^2] - E[x]^2 loses every digit of
    the variance (1e6 +- ulp 0.06 against 0.01), E[(x - E[x])^2] keeps it. Reference: the
    normalised batch must have mean 0 and variance var / (var + eps) per channel."""
    from common.backbones.resnet import BN_EPSILON, _batch_norm

    x = 1000.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 3))
    ref = np.asarray(x, np.float64)
    var = ref.var(axis=(0, 1, 2))
    for two_pass in (True, False):
        bn = _batch_norm(
            True, name="bn", dtype=jnp.float32, axis_name=None, two_pass_variance=two_pass
        )
        variables = bn.init(jax.random.PRNGKey(1), x)
        y, _ = bn.apply(variables, x, mutable=["batch_stats"])
        y = np.asarray(y, np.float64)
        ratio = y.var(axis=(0, 1, 2)) / (var / (var + BN_EPSILON))
        if two_pass:
            # The float32 inputs alone are rounded by ulp(1000) / 0.1 = 6e-4 of the spread, and
            # the mean's float32 sums by a few times that (measured 1e-3 to 3e-3).
            np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-2)
            np.testing.assert_allclose(ratio, 1.0, rtol=1e-4)  # measured 1.3e-6
        else:  # what the option is for: one pass is off by orders of magnitude (~1000x here)
            assert np.all(np.abs(np.log10(ratio)) > 1.0), ratio
