"""Tests for common.export: weights out to torchvision / detectron2 / Haiku, DeepMind's in.

Without torch (CI): the Haiku `.npy` export runs in dm-haiku with our features, DeepMind-layout
checkpoints (BYOL's pickled experiment state, a flat DetCon-style `.npy`) import to dm-haiku's
features, the torchvision and detectron2 names cover every variable exactly once against rules
written here independently, and bad input fails with one clear line.

With torch, and only when selected (`pip install -e ".[torch]"`, then `python -m pytest -q -m
torch tests/test_export.py`; a plain run skips them even where torch is installed): the
exported state dict loads into `torchvision.models.resnet50()` with `strict=True` and gives our
features once it pads like Haiku, and measurably other ones with torchvision's own padding; the
command line exports a training run's workdir.
"""

from __future__ import annotations

import functools
import pickle
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from common import export, safe_pickle
from common.backbones import ResNet, get_backbone, haiku_import
from tests import helpers

TINY_HAIKU = dict(  # hk.nets.ResNet twin of ResNet(depth=50, base_width=2, (1, 1, 1, 1))
    blocks_per_group=(1, 1, 1, 1),
    channels_per_group=(8, 16, 32, 64),
    initial_conv_config=dict(output_channels=2),
    name="res_net",
)
MAPS = ("stage1", "stage2", "stage3", "stage4", "out")


@functools.partial(jax.jit, static_argnums=0)
def _features(module, variables, x):
    """Our inference-mode dense maps, compiled once per (module, shapes)."""
    return module.apply(variables, x, train=False)


def _rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _assert_same_maps(ours, theirs, rtol):
    for key in MAPS:
        assert ours[key].shape == theirs[key].shape, key
        assert _rel(ours[key], theirs[key]) <= rtol, (key, _rel(ours[key], theirs[key]))


def _noisy(tree, seed):
    """A copy of a variables tree with every leaf moved (variances kept positive)."""
    rng = np.random.default_rng(seed)

    def move(a):
        a = np.asarray(a)
        if a.dtype != np.float32:  # EMA counters
            return a
        return (a * rng.uniform(0.8, 1.25, a.shape)).astype(np.float32)

    return jax.tree.map(move, tree)


@pytest.fixture(scope="module")
def tiny_haiku():
    """dm-haiku's tiny bottleneck ResNet: (jitted inference forward, params, state, x), every
    variable random (tests.helpers.random_haiku_variables)."""
    fn = helpers.haiku_resnet_features(TINY_HAIKU)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 35, 35, 3))  # odd: asymmetric SAME padding
    params, state = helpers.random_haiku_variables(fn, x, seed=3, batch_statistics=False)
    forward = jax.jit(lambda p, s, x: fn.apply(p, s, None, x, False)[0])
    return forward, params, state, x


TINY_FLAX = ResNet(depth=50, base_width=2, blocks_per_group=(1, 1, 1, 1))


# --------------------------------------------------------------------------------------------
# Haiku out and in (CI)


def test_haiku_npy_export_runs_in_dm_haiku(tiny_haiku, tmp_path):
    forward, hk_params, hk_state, x = tiny_haiku
    # Flax variables of our own (the Haiku ones converted, then every leaf moved).
    variables = _noisy(haiku_import.haiku_to_flax(hk_params, hk_state), seed=1)
    path = str(tmp_path / "r50_tiny.npy")
    export.to_haiku_npy(path, variables["params"], variables["batch_stats"])
    params, state = haiku_import.load_haiku_checkpoint(path)
    assert set(params) == set(hk_params) and set(state) == set(hk_state)  # hk.nets names
    _assert_same_maps(_features(TINY_FLAX, variables, x), forward(params, state, x), 1e-5)
    # The counter makes Haiku's debiasing divide by exactly 1.
    assert all(int(s["counter"]) >= 1000 for s in state.values())


class _LarsState(tuple):  # stands for byol.utils.optimizers.LarsState
    pass


def _byol_checkpoint(path, online, target, opt_state):
    """A pickle laid out like byol.utils.checkpointing's (DeepMind's `pretrain_res50x1.pkl`):
    `{'experiment_state': _ByolExperimentState(...), 'step', 'rng'}`, whose classes live in the
    `byol` package, which is importable while writing and not while reading (as here)."""
    from typing import NamedTuple

    class _ByolExperimentState(NamedTuple):
        online_params: dict
        target_params: dict
        online_state: dict
        target_state: dict
        opt_state: object

    module = types.ModuleType("byol.byol_experiment")
    for cls in (_ByolExperimentState, _LarsState):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    fake = {"byol": types.ModuleType("byol"), module.__name__: module}
    sys.modules.update(fake)
    try:
        state = _ByolExperimentState(online[0], target[0], online[1], target[1], opt_state)
        data = {"experiment_state": state, "step": 1000, "rng": np.zeros(2, np.uint32)}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    finally:
        for name in fake:
            del sys.modules[name]


def test_deepmind_checkpoints_import_to_dm_haiku_features(tiny_haiku, tmp_path):
    forward, params, state, x = tiny_haiku
    # BYOL's whole network: the ResNet under its own prefix, projector, predictor, classifier.
    heads = {
        "projector/~/linear": {"w": np.ones((64, 4), np.float32), "b": np.zeros(4, np.float32)},
        "predictor/~/linear": {"w": np.ones((4, 4), np.float32)},
        "classifier/~/linear": {"w": np.ones((64, 10), np.float32)},
    }
    target_params, target_state = _noisy(params, seed=2), _noisy(state, seed=3)
    path = str(tmp_path / "pretrain_res50x1.pkl")
    opt_state = _LarsState(({"momentum": np.zeros(3)},))
    _byol_checkpoint(
        path, ({**params, **heads}, state), ({**target_params, **heads}, target_state), opt_state
    )
    for network, (p, s) in (("online", (params, state)), ("target", (target_params, target_state))):
        module, variables = export.import_haiku(path, network=network)
        assert module == TINY_FLAX
        _assert_same_maps(_features(module, variables, x), forward(p, s, x), 1e-5)
    with pytest.raises(ValueError, match="no network 'discovery'.*online.*target"):
        export.import_haiku(path, network="discovery")

    # DetCon-style .npy: one flat dict of Haiku modules, params and state mixed, another prefix.
    flat = {k.replace("res_net/", "detcon/res_net/"): v for k, v in {**params, **state}.items()}
    path = str(tmp_path / "resnet50_detcon_b_imagenet_1k.npy")
    np.save(path, {**flat, **heads})
    module, variables = export.import_haiku(path)
    _assert_same_maps(_features(module, variables, x), forward(params, state, x), 1e-5)

    # ... and straight on to torchvision's names without torch (.npz).
    out = str(tmp_path / "r50.npz")
    assert "wrote" in export.run("torchvision", out, haiku_checkpoint=path)
    saved = np.load(out)
    assert saved["conv1.weight"].shape == (2, 3, 7, 7) and "fc.weight" not in saved


# --------------------------------------------------------------------------------------------
# torchvision / detectron2 names (CI: no torch needed)


def _torchvision_keys(layers, bottleneck, *, base=64):
    """torchvision.models.resnet.ResNet's state-dict names and shapes, from its definition:
    `_make_layer` adds `downsample` to a layer's first block when the stride is not 1 or the
    channels change; Bottleneck = 1x1, 3x3 (stride), 1x1 x4; BasicBlock = 3x3 (stride), 3x3."""
    keys = {}

    def conv(name, o, i, k):
        keys[f"{name}.weight"] = (o, i, k, k)

    def bn(name, c):
        keys.update(
            {f"{name}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
        )
        keys[f"{name}.num_batches_tracked"] = ()

    conv("conv1", base, 3, 7)
    bn("bn1", base)
    inplanes, expansion = base, 4 if bottleneck else 1
    for i, blocks in enumerate(layers):
        planes = base * 2**i
        for b in range(blocks):
            name = f"layer{i + 1}.{b}"
            specs = (
                [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
                if bottleneck
                else [(planes, inplanes, 3), (planes, planes, 3)]
            )
            for k, (o, c, ks) in enumerate(specs):
                conv(f"{name}.conv{k + 1}", o, c, ks)
                bn(f"{name}.bn{k + 1}", o)
            if b == 0 and (i > 0 or inplanes != planes * expansion):
                conv(f"{name}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{name}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return keys


def _d2_rule(key):
    """detectron2's tools/convert-torchvision-to-d2.py, as written there."""
    if "layer" not in key:
        key = "stem." + key
    for t in [1, 2, 3, 4]:
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in [1, 2, 3]:
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    key = key.replace("downsample.0", "shortcut")
    return key.replace("downsample.1", "shortcut.norm")


def _random_variables(module, seed=0, size=32):
    """Random numpy variables of `module` from shapes alone (no compilation)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize("depth", [50, 18])
def test_torchvision_and_detectron2_names_cover_every_variable_once(depth):
    module = get_backbone(f"resnet{depth}")
    variables = _random_variables(module)
    params, stats = variables["params"], variables["batch_stats"]
    state = export.to_torchvision(params, stats)
    layers, bottleneck = ((3, 4, 6, 3), True) if depth == 50 else ((2, 2, 2, 2), False)
    expected = _torchvision_keys(layers, bottleneck)
    if depth == 50:  # torchvision's resnet50().state_dict() has 320 entries, fc.weight/bias too
        assert len(expected) + 2 == 320
    assert list(state) == list(expected)  # torchvision's order too
    assert {k: v.shape for k, v in state.items()} == expected
    n_ours = sum(a.size for a in jax.tree.leaves(variables))
    assert sum(v.size for k, v in state.items() if "num_batches" not in k) == n_ours
    # Values: kernels HWIO -> OIHW, BN vectors and statistics as they are.
    block = params["block_group_1"]["block_0"]
    np.testing.assert_array_equal(
        state["layer2.0.conv1.weight"], block["conv_0"]["kernel"].transpose(3, 2, 0, 1)
    )
    bias = block["shortcut_batchnorm"]["bias"]
    np.testing.assert_array_equal(state["layer2.0.downsample.1.bias"], bias)
    np.testing.assert_array_equal(state["bn1.running_var"], stats["initial_batchnorm"]["var"])
    classified = export.to_torchvision(
        params, stats, classifier={"kernel": np.ones((module.out_channels, 7)), "bias": np.ones(7)}
    )
    assert classified["fc.weight"].shape == (7, module.out_channels)

    d2 = export.to_detectron2(params, stats)
    assert d2["matching_heuristics"] is True and isinstance(d2["__author__"], str)
    assert d2["__author__"] != "Caffe2"  # detectron2 would apply Caffe2's renaming
    with_rule = {_d2_rule(k): v for k, v in state.items() if "num_batches_tracked" not in k}
    assert list(d2["model"]) == list(with_rule)
    assert all(np.array_equal(d2["model"][k], with_rule[k]) for k in with_rule)
    assert "stem.conv1.norm.running_mean" in d2["model"]
    if depth == 50:
        assert "res5.0.shortcut.norm.weight" in d2["model"] and len(d2["model"]) == 265


def test_unsupported_backbones_and_outputs_fail_clearly(tmp_path):
    def params_of(name, **kwargs):
        module = get_backbone(name, **kwargs)
        return _random_variables(module)

    for (name, kwargs), match in [
        (("resnet18", dict(small_stem=True, base_width=4)), "small_stem"),
        (("resnet50", dict(resnet_v2=True, base_width=2)), "ResNet v2"),
        (("vit_s16", dict(width=32, depth=1, num_heads=2, image_size=32)), "ViT"),
    ]:
        variables = params_of(name, **kwargs)
        with pytest.raises(export.ExportError, match=match):
            export.to_torchvision(variables["params"], variables.get("batch_stats", {}))
        with pytest.raises(export.ExportError, match=match):
            export.to_detectron2(variables["params"], variables.get("batch_stats", {}))
        if name != "resnet50":  # v2 is a Haiku ResNet (hk.nets.ResNet(resnet_v2=True))
            with pytest.raises(export.ExportError, match="small_stem|ViT"):
                export.write("haiku_npy", str(tmp_path / "x.npy"), variables)
    variables = params_of("resnet18", base_width=4)
    params, stats = variables["params"], variables["batch_stats"]
    extra = {**params, "extra": {"kernel": np.zeros(3)}}
    with pytest.raises(export.ExportError, match="no torchvision counterpart: .'extra/kernel'"):
        export.to_torchvision(extra, stats)
    missing = {**stats, "initial_batchnorm": {"mean": stats["initial_batchnorm"]["mean"]}}
    with pytest.raises(
        export.ExportError, match="missing BatchNorm statistic initial_batchnorm/var"
    ):
        export.to_torchvision(params, missing)
    for fmt, out, match in [
        ("detectron2", "r18.pth", r"only from a \.pkl"),
        ("torchvision", "r18.pkl", r"\.pth, \.pt or \.npz"),
        ("haiku_npy", "r18.pkl", r"\.npy"),
        ("onnx", "r18.onnx", "unknown format 'onnx'; use one of torchvision, detectron2"),
    ]:
        with pytest.raises(export.ExportError, match=match):
            export.write(fmt, str(tmp_path / out), variables)
    # The Flax tree round-trips through flax_npy.
    export.write("flax_npy", str(tmp_path / "r18.npy"), variables)
    back = safe_pickle.load_npy(str(tmp_path / "r18.npy")).item()
    jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_backbone_of_a_train_state_network():
    def net(seed):
        return {"backbone": {"initial_conv": {"kernel": np.full(2, seed)}}, "projector": {}}

    state = types.SimpleNamespace(
        params={"online": net(1), "classifier": {"kernel": 0}},
        ema_params={"target": net(2)},
        batch_stats={"online": {"backbone": {"bn": 1}}, "target": {"backbone": {"bn": 2}}},
    )
    target = export.backbone_variables(state, "target")
    assert target["params"]["initial_conv"]["kernel"].tolist() == [2, 2]
    assert target["batch_stats"] == {"bn": 2}
    with pytest.raises(ValueError, match="'discovery' is not in this model"):
        export.backbone_variables(state, "discovery")


def test_command_line_errors_are_one_line(tmp_path):
    missing = str(tmp_path / "nope.npy")
    proc = subprocess.run(
        [sys.executable, "-m", "common.export", "--format=torchvision", "--out=x.npz",
         f"--haiku_checkpoint={missing}"],
        capture_output=True, text=True, env=helpers.subprocess_env(), cwd=helpers.REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"common.export: error: Haiku checkpoint {missing} does not exist"
    # What the command prints for the other errors (`main` prints the exception's first line).
    config = ml_collections.ConfigDict()  # never read: the workdir is checked first
    for kwargs, error, match in [
        (
            dict(workdir=str(tmp_path / "run")),
            FileNotFoundError,
            f"workdir {tmp_path}/run does not",
        ),
        (dict(workdir=str(tmp_path)), FileNotFoundError, f"no checkpoints in {tmp_path} "),
        (dict(), export.ExportError, "give either --workdir (with --config) or --haiku_checkpoint"),
        (dict(workdir=str(tmp_path), config=None), export.ExportError, "--workdir needs --config"),
        (dict(haiku_checkpoint=missing, classifier=True), export.ExportError, "--classifier"),
    ]:
        with pytest.raises(error, match=re.escape(match)):
            export.run("torchvision", "x.npz", **{"config": config, **kwargs})
    with pytest.raises(export.ExportError, match="unknown format 'onnx'; use one of torchvision"):
        export.run("onnx", "x.onnx", haiku_checkpoint=missing)


# --------------------------------------------------------------------------------------------
# torch (not in CI): `python -m pytest -q -m torch tests/test_export.py`


@pytest.fixture
def torch(request):
    """torch, for tests that run only when selected with `-m torch` (a plain run skips them even
    where torch is installed: the ResNet-50 comparison compiles for about a minute)."""
    if "torch" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("torch tests run with -m torch")
    torch = pytest.importorskip("torch")
    from common.export import torch_models

    try:
        torch_models.import_torchvision()
    except ImportError as e:
        pytest.skip(str(e))
    return torch


def _realistic_variables(module, x, seed=0):
    """Random parameters and BatchNorm statistics that keep activations O(1): the statistics are
    the batch statistics of `x` (read off one training-mode update from mean 0 / variance 1),
    then perturbed, so inference differs from training mode (as helpers.random_haiku_variables
    does for Haiku)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x[:1])
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "scale":
            value = rng.uniform(0.5, 1.5, s.shape)
        elif name == "bias":
            value = rng.normal(0.0, 0.2, s.shape)
        else:
            value = rng.normal(0.0, 1.0, s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        return value.astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
    stats = jax.tree_util.tree_map_with_path(  # mean 0, variance 1
        lambda p, s: np.full(s.shape, float(p[-1].key == "var"), np.float32), shapes["batch_stats"]
    )
    step = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])[1])
    updated = step({"params": params, "batch_stats": stats}, x)["batch_stats"]

    def batch_statistic(path, new):
        new = np.asarray(new, np.float64)
        if path[-1].key == "mean":  # new = 0.9 * 0 + 0.1 * batch
            value = new / 0.1
            value = value + rng.normal(0.0, 0.1, value.shape) * np.abs(value).mean()
        else:  # new = 0.9 * 1 + 0.1 * batch
            value = np.maximum((new - 0.9) / 0.1, 1e-3) * rng.uniform(0.7, 1.4, new.shape)
        return value.astype(np.float32)

    stats = jax.tree_util.tree_map_with_path(batch_statistic, updated)
    return {"params": params, "batch_stats": stats}


def _torch_maps(torch, model, x):
    """torchvision ResNet `model`'s stage maps (NHWC numpy) and its output on NHWC `x`."""
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    maps = {}
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(t))))
        for i in range(1, 5):
            h = getattr(model, f"layer{i}")(h)
            maps[f"stage{i}"] = h.numpy().transpose(0, 2, 3, 1)
        maps["out"] = maps["stage4"]
        maps["final"] = model(t).numpy()  # avgpool + fc (Identity when exported without one)
    return maps


@pytest.mark.torch
def test_torchvision_resnet50_matches_ours_with_haiku_padding(torch):
    from common.export import torch_models

    torchvision = torch_models.import_torchvision()

    module = get_backbone("resnet50")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 224, 224, 3))
    variables = _realistic_variables(module, x)
    ours = jax.device_get(_features(module, variables, x))
    pooled = ours["out"].mean(axis=(1, 2))

    state = export.to_torchvision(variables["params"], variables["batch_stats"])
    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()  # the export is the backbone
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.eval()
    plain = _torch_maps(torch, model, x)
    fixed = _torch_maps(torch, torch_models.haiku_padding(model), x)

    errors = {}
    for name, theirs in (("plain", plain), ("haiku_padding", fixed)):
        errors[name] = {k: _rel(theirs[k], ours[k]) for k in ("stage1", "stage2", "stage3", "out")}
        errors[name]["max_abs_out"] = float(np.abs(theirs["out"] - ours["out"]).max())
        errors[name]["pooled"] = _rel(theirs["final"], pooled)
        a, b = theirs["final"], pooled
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        errors[name]["pooled_cosine_min"] = float(cosine.min())
    print("ResNet-50, 224 px, relative difference (max |d| / max |ours|):", errors)
    for key in ("stage1", "stage2", "stage3", "out", "pooled"):
        assert errors["haiku_padding"][key] <= 1e-4, (key, errors)
        assert errors["plain"][key] >= 1e-2, (key, errors)  # the shift is not rounding


@pytest.mark.torch
def test_torchvision_padding_agrees_where_every_stride_2_input_is_odd(torch):
    from common.export import torch_models

    # 97 -> 49 -> 25 -> 13 -> 7 -> 4: every stride-2 layer sees an odd size, where 'SAME' pads
    # symmetrically, as torchvision does.
    module = get_backbone("resnet18")
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 97, 97, 3))
    variables = _realistic_variables(module, x, seed=1)
    ours = jax.device_get(_features(module, variables, x))
    state = export.to_torchvision(variables["params"], variables["batch_stats"])
    for pad_like_haiku in (False, True):
        model = torch_models.torchvision_resnet(state, pad_like_haiku=pad_like_haiku)
        theirs = _torch_maps(torch, model, x)
        for key in ("stage1", "stage2", "stage3", "out"):
            assert _rel(theirs[key], ours[key]) <= 1e-4, (pad_like_haiku, key)


@pytest.mark.torch
def test_export_command_from_a_training_run(torch, tmp_path):
    from common import checkpoint, evaluate
    from common.export import torch_models

    # A run's checkpoint (its initial state: what is trained does not matter here) of a
    # torchvision-shaped ResNet-18 layout with one block per group.
    overrides = {"model.backbone_kwargs.small_stem": False, "model.backbone_kwargs.base_width": 64}
    config = helpers.tiny_config("byol", str(tmp_path), **overrides)
    workdir = str(tmp_path / "run")
    _, state, _ = evaluate.restore_state(config, workdir, initial=True)
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    ckpt.save(0, state, checkpoint.model_signature(config, state))
    ckpt.close()

    base = helpers.cli_args("byol", str(tmp_path), workdir, **overrides)
    base[base.index("common.train")] = "common.export"
    pth, pkl = str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl")
    helpers.run_cli(base + ["--format=torchvision", f"--out={pth}", "--classifier"])
    # detectron2 through the same function, in this process (a second command costs ~30 s).
    export.run("detectron2", pkl, config=config, workdir=workdir, network="target")

    tv_state = torch.load(pth)
    model = torch_models.torchvision_resnet(tv_state)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 64, 64, 3))
    online = export.backbone_variables(state, "online")
    ours = jax.device_get(_features(export.resnet_from_variables(online), online, x))
    theirs = _torch_maps(torch, model, x)
    assert _rel(theirs["out"], ours["out"]) <= 1e-4
    head = state.params["classifier"]
    logits = ours["out"].mean(axis=(1, 2)) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    assert _rel(theirs["final"], logits) <= 1e-4

    with open(pkl, "rb") as f:
        d2 = pickle.load(f)
    target = export.backbone_variables(state, "target")
    expected = export.to_detectron2(target["params"], target["batch_stats"])["model"]
    names = [_d2_rule(k) for k in tv_state if "num_batches" not in k and not k.startswith("fc")]
    assert list(d2["model"]) == names
    jax.tree.map(np.testing.assert_array_equal, d2["model"], expected)
