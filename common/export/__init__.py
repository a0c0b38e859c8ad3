"""Backbone weights out to torchvision, detectron2 and Haiku, and DeepMind's Haiku weights in.

    python -m common.export --workdir W --config experiments/X.py:variant \\
        --format torchvision|detectron2|haiku_npy|flax_npy --out FILE [--network online|target]
    python -m common.export --haiku_checkpoint pretrain_res50x1.pkl --format torchvision \\
        --out byol_r50.pth [--network online|target]

The first form takes the backbone of `--network` from the latest (or `--step`) checkpoint of a
training run (the config must describe the run's model, as for `common.evaluate`); the second
converts a DeepMind BYOL / DetCon Haiku checkpoint (`import_haiku`). Output formats:

* `torchvision`: a `torchvision.models.resnet*` state dict (`.pth` through `torch.save`, or
  `.npz` of numpy arrays without torch). `fc.*` is absent unless `--classifier` adds the online
  linear monitor: set `model.fc = torch.nn.Identity()` before `load_state_dict(..., strict=True)`.
* `detectron2`: the pickle detectron2's `DetectionCheckpointer` reads from a `.pkl` (names of
  detectron2's `tools/convert-torchvision-to-d2.py`). Its config needs `MODEL.RESNETS.DEPTH`,
  `MODEL.RESNETS.STRIDE_IN_1X1: False`, `INPUT.FORMAT: "RGB"`, `MODEL.PIXEL_MEAN: [123.675,
  116.28, 103.53]`, `MODEL.PIXEL_STD: [58.395, 57.12, 57.375]` (our ImageNet normalisation).
* `haiku_npy`: `np.save` of `{'<network>_params', '<network>_state'}` in DeepMind's Haiku layout
  (`hk.nets.ResNet` module names; what `haiku_import.load_haiku_checkpoint` reads).
* `flax_npy`: `np.save` of our `{'params', 'batch_stats'}` (e.g. the result of an import).

Padding. Our ResNet pads like Haiku and TensorFlow ('SAME': on a stride-2 layer the odd pixel
of padding goes bottom/right, and on an even input size there is one), torchvision and
detectron2 pad symmetrically (conv1 pad 3, max-pool pad 1, strided 3x3 convs pad 1). On a
224 px input every stride-2 layer sees an even size, so torchvision reads each of those windows
(conv1, the max-pool, the strided 3x3 convs; 1x1 shortcuts do not pad) one pixel up and left of
ours: the weights are the same, the features are not (tests/test_export.py measures the
difference). `torch_models.haiku_padding(model)` makes a torchvision ResNet pad like ours
(`torch_models.torchvision_resnet(state_dict)` builds one, padded so, from an export); inputs
whose every stride-2 layer sees an odd size (e.g. 225 or 97 px) need no fix.

torchvision/detectron2 export covers ResNet v1 (basic or bottleneck blocks) with the standard
7x7 stem; `small_stem`, v2 and ViT backbones have no counterpart there (a clear error).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from common.backbones import haiku_import

FORMATS = ("torchvision", "detectron2", "haiku_npy", "flax_npy")


class ExportError(ValueError):
    """The weights or the request cannot be exported (unsupported backbone, bad file name)."""


class ResNetLayout(NamedTuple):
    """What a ResNet's variables say about its structure."""

    blocks_per_group: tuple[int, ...]
    bottleneck: bool
    stem_width: int
    stem_kernel: int  # 7: standard stem; 3: small_stem
    v2: bool

    @property
    def depth(self) -> int | None:
        """The standard depth with these blocks (18 .. 200), or None."""
        from common.backbones.resnet import RESNET_CONFIGS

        for depth, (blocks, bottleneck) in RESNET_CONFIGS.items():
            if tuple(blocks) == self.blocks_per_group and bottleneck == self.bottleneck:
                return depth
        return None


def _flat(tree: Mapping[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
    return {path: np.asarray(value) for path, value in haiku_import._flatten(tree)}


def resnet_layout(params: Mapping[str, Any]) -> ResNetLayout:
    """Reads the structure of our `ResNet` from its `params` (raises `ExportError` otherwise)."""
    if "initial_conv" not in params:
        kind = "a ViT" if "pos_embed" in params else "not a ResNet"
        raise ExportError(
            f"the backbone is {kind} (top-level parameters: {sorted(params)[:6]}); only ResNets "
            "can be exported to torchvision/detectron2/Haiku"
        )
    groups = sorted(int(k.rsplit("_", 1)[1]) for k in params if k.startswith("block_group_"))
    if groups != list(range(len(groups))) or not groups:
        raise ExportError(f"ResNet parameters with block groups {groups}; expected 0, 1, ...")
    blocks = tuple(len(params[f"block_group_{g}"]) for g in groups)
    first = params["block_group_0"]["block_0"]
    kernel = np.shape(params["initial_conv"]["kernel"])
    return ResNetLayout(
        blocks_per_group=blocks,
        bottleneck="conv_2" in first,
        stem_width=int(kernel[-1]),
        stem_kernel=int(kernel[0]),
        v2="final_batchnorm" in params,
    )


def _check_torch_layout(layout: ResNetLayout, target: str) -> None:
    unsupported = []
    if layout.v2:
        unsupported.append("ResNet v2 (pre-activation; torchvision's ResNet is v1)")
    if layout.stem_kernel != 7:
        unsupported.append(f"small_stem ({layout.stem_kernel}x{layout.stem_kernel} stride-1 "
                           "stem without max-pool; torchvision's is 7x7/2 + max-pool)")  # fmt: skip
    if len(layout.blocks_per_group) != 4:
        unsupported.append(f"{len(layout.blocks_per_group)} block groups instead of 4")
    if unsupported:
        raise ExportError(f"cannot export to {target}: {'; '.join(unsupported)}")


def _torchvision_modules(layout: ResNetLayout, params: Mapping[str, Any]):
    """`(our module path, torchvision module name, 'conv' | 'bn')` in torchvision's order."""
    yield ("initial_conv",), "conv1", "conv"
    yield ("initial_batchnorm",), "bn1", "bn"
    for g, num_blocks in enumerate(layout.blocks_per_group):
        for b in range(num_blocks):
            ours, theirs = (f"block_group_{g}", f"block_{b}"), f"layer{g + 1}.{b}"
            for k in range(3 if layout.bottleneck else 2):
                yield ours + (f"conv_{k}",), f"{theirs}.conv{k + 1}", "conv"
                yield ours + (f"batchnorm_{k}",), f"{theirs}.bn{k + 1}", "bn"
            if "shortcut_conv" in params[ours[0]][ours[1]]:
                yield ours + ("shortcut_conv",), f"{theirs}.downsample.0", "conv"
                yield ours + ("shortcut_batchnorm",), f"{theirs}.downsample.1", "bn"


def to_torchvision(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    *,
    classifier: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Our ResNet v1's variables as a torchvision `ResNet` state dict (numpy arrays).

    Args:
      params: the backbone's `params` (`initial_conv`, `block_group_*`, ...).
      batch_stats: the backbone's `batch_stats` (BN `mean`, `var`).
      classifier: optional `{'kernel': [C, K], 'bias': [K]}` (a `Dense` on the spatially pooled
        `out`, e.g. the online linear monitor) written as `fc.weight` `[K, C]`, `fc.bias`.

    Returns:
      `{name: array}` in torchvision's order: conv kernels `[O, I, kh, kw]` (ours are
      `[kh, kw, I, O]`), BN `weight`/`bias`/`running_mean`/`running_var` `[C]` and
      `num_batches_tracked` (int64 0). Every variable is used exactly once.

    Raises:
      ExportError: not a ResNet v1 with the standard stem, or variables left unused.
    """
    layout = resnet_layout(params)
    _check_torch_layout(layout, "torchvision")
    flat_p, flat_s = _flat(params), _flat(batch_stats)

    def take(flat, path, what):
        if path not in flat:
            raise ExportError(f"missing {what} {'/'.join(path)}")
        return flat.pop(path)

    out: dict[str, np.ndarray] = {}
    for ours, name, kind in _torchvision_modules(layout, params):
        if kind == "conv":
            kernel = take(flat_p, ours + ("kernel",), "parameter")
            out[f"{name}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            continue
        out[f"{name}.weight"] = take(flat_p, ours + ("scale",), "parameter")
        out[f"{name}.bias"] = take(flat_p, ours + ("bias",), "parameter")
        out[f"{name}.running_mean"] = take(flat_s, ours + ("mean",), "BatchNorm statistic")
        out[f"{name}.running_var"] = take(flat_s, ours + ("var",), "BatchNorm statistic")
        out[f"{name}.num_batches_tracked"] = np.asarray(0, np.int64)
    left = sorted("/".join(p) for p in [*flat_p, *flat_s])
    if left:
        raise ExportError(f"variables with no torchvision counterpart: {left[:5]}")
    if classifier is not None:
        out["fc.weight"] = np.ascontiguousarray(np.asarray(classifier["kernel"]).T)
        out["fc.bias"] = np.asarray(classifier["bias"])
    return out


def detectron2_name(torchvision_name: str) -> str:
    """detectron2's name of a torchvision ResNet state-dict entry (conv1 -> stem.conv1, bn1 ->
    stem.conv1.norm, layer1 -> res2, bnK -> convK.norm, downsample.0/1 -> shortcut(.norm))."""
    if torchvision_name.startswith(("conv1.", "bn1.")):
        module, leaf = torchvision_name.split(".", 1)
        return f"stem.conv1.{'norm.' if module == 'bn1' else ''}{leaf}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", torchvision_name)
    if m is None:
        raise ExportError(f"{torchvision_name!r} is not a torchvision ResNet backbone entry")
    group, block, module, leaf = m.groups()
    module = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(
        module, re.sub(r"bn(\d)", r"conv\1.norm", module)
    )
    return f"res{int(group) + 1}.{block}.{module}.{leaf}"


def to_detectron2(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict[str, Any]:
    """Our ResNet v1 as the pickle detectron2 loads (`DetectionCheckpointer` on a `.pkl`):
    `{'model': {detectron2 name: array}, '__author__': ..., 'matching_heuristics': True}`.

    The names are those of detectron2's `convert-torchvision-to-d2.py` applied to
    `to_torchvision`, without `num_batches_tracked` (detectron2's frozen BatchNorm has none).
    """
    state = to_torchvision(params, batch_stats)
    model = {
        detectron2_name(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")
    }
    return {"model": model, "__author__": "detcon-odin-vito", "matching_heuristics": True}


def to_haiku_npy(
    path: str,
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    *,
    network: str = "online",
    prefix: str | None = None,
) -> None:
    """Writes our ResNet as DeepMind's Haiku layout: `np.save` of `{'<network>_params': ...,
    '<network>_state': ...}` (read back by `haiku_import.load_haiku_checkpoint`).

    `prefix`: Haiku module prefix; default `res_net<depth>/~/` as `hk.nets.ResNet<depth>()`
    names it (`res_net/~/` for a non-standard depth). BN statistics get a large EMA counter, so
    Haiku's zero-debiasing uses them unchanged.
    """
    if not path.endswith(".npy"):
        raise ExportError(f"haiku_npy output must end in .npy (np.save appends it): {path}")
    layout = resnet_layout(params)
    if layout.stem_kernel != 7:
        raise ExportError(
            "small_stem has no Haiku counterpart (hk.nets.ResNet always has the 7x7/2 stem and "
            "max-pool)"
        )
    if prefix is None:
        prefix = f"res_net{layout.depth or ''}{haiku_import.SEP}"
    variables = {"params": params, "batch_stats": batch_stats}
    hk_params, hk_state = haiku_import.flax_to_haiku(variables, prefix=prefix)
    np.save(path, {f"{network}_params": hk_params, f"{network}_state": hk_state})


def resnet_from_variables(variables: Mapping[str, Any]):
    """Our `ResNet` module whose variables these are (depth, widths, stem and version read from
    the shapes), checked against them: the module that runs an imported checkpoint."""
    import jax
    import jax.numpy as jnp

    from common.backbones import ResNet

    layout = resnet_layout(variables["params"])
    depth = layout.depth or (50 if layout.bottleneck else 18)
    module = ResNet(
        depth=depth,
        base_width=layout.stem_width,
        blocks_per_group=None if layout.depth else layout.blocks_per_group,
        small_stem=layout.stem_kernel == 3,
        resnet_v2=layout.v2,
    )
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    flat = haiku_import._flatten
    shapes = {k: {p: tuple(v.shape) for p, v in flat(expected[k])} for k in expected}
    got = {k: {p: np.shape(v) for p, v in flat(variables.get(k, {}))} for k in expected}
    if shapes != got:
        diff = {p for k in shapes for p, _ in shapes[k].items() ^ got[k].items()}
        diff = sorted("/".join(p) for p in diff)
        raise ExportError(f"variables do not form a {module.__class__.__name__}: {diff[:5]}")
    return module


def import_haiku(path: str, *, network: str = "online", prefix: str | None = None):
    """A DeepMind Haiku checkpoint (BYOL `.pkl`, DetCon `.npy`, or `to_haiku_npy`'s) as our
    `(ResNet module, {'params', 'batch_stats'})`; see `haiku_import.load_haiku_checkpoint`."""
    hk_params, hk_state = haiku_import.load_haiku_checkpoint(path, network=network)
    variables = haiku_import.haiku_to_flax(hk_params, hk_state, prefix=prefix)
    return resnet_from_variables(variables), variables


def backbone_variables(state, network: str = "online") -> dict[str, Any]:
    """The backbone's `{'params', 'batch_stats'}` of `network` in a train state, as numpy."""
    from common.eval.features import network_variables

    variables = network_variables(state, network)
    return {k: _to_numpy(v.get("backbone", {})) for k, v in variables.items()}


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def workdir_variables(config, workdir: str, *, network: str = "online", step: int | None = None):
    """`(backbone variables, online classifier variables)` of a training run's checkpoint."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {workdir}/checkpoints)")
    from common import evaluate

    _, state, _ = evaluate.restore_state(config, workdir, step)
    classifier = state.params.get("classifier")
    return backbone_variables(state, network), classifier and _to_numpy(classifier)


def write(fmt: str, out: str, variables: Mapping[str, Any], *, network="online", classifier=None):
    """Writes `variables` (a ResNet's `params` and `batch_stats`) to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    params, stats = variables["params"], variables.get("batch_stats", {})
    if fmt == "torchvision":
        state = to_torchvision(params, stats, classifier=classifier)
        if out.endswith(".npz"):
            np.savez(out, **state)
        elif out.endswith((".pth", ".pt")):
            try:
                import torch
            except ImportError as e:
                raise ExportError("writing .pth needs torch (pip install -e '.[torch]'); "
                                  "or write .npz") from e  # fmt: skip
            torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, out)
        else:
            raise ExportError(f"torchvision output must end in .pth, .pt or .npz: {out}")
    elif fmt == "detectron2":
        if not out.endswith(".pkl"):
            raise ExportError(f"detectron2 reads these pickles only from a .pkl file: {out}")
        with open(out, "wb") as f:
            pickle.dump(to_detectron2(params, stats), f)
    elif fmt == "haiku_npy":
        to_haiku_npy(out, params, stats, network=network)
    else:
        if not out.endswith(".npy"):
            raise ExportError(f"flax_npy output must end in .npy: {out}")
        np.save(out, {"params": _to_numpy(params), "batch_stats": _to_numpy(stats)})


def run(
    fmt: str,
    out: str,
    *,
    config=None,
    workdir: str | None = None,
    haiku_checkpoint: str | None = None,
    network: str = "online",
    step: int | None = None,
    classifier: bool = False,
) -> str:
    """What `python -m common.export` does; returns a one-line summary."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if classifier and fmt != "torchvision":
        raise ExportError("--classifier goes with --format=torchvision (as its fc layer)")
    if (workdir is None) == (haiku_checkpoint is None):
        raise ExportError("give either --workdir (with --config) or --haiku_checkpoint")
    head = None
    if haiku_checkpoint is not None:
        if classifier:
            raise ExportError("--classifier needs --workdir (the online linear monitor)")
        _, variables = import_haiku(haiku_checkpoint, network=network)
        source = haiku_checkpoint
    else:
        if config is None:
            raise ExportError("--workdir needs --config (the run's experiments/X.py:variant)")
        variables, head = workdir_variables(config, workdir, network=network, step=step)
        if classifier and network != "online":
            raise ExportError("--classifier is the online network's linear monitor")
        source = f"{workdir} ({network})"
    write(fmt, out, variables, network=network, classifier=head if classifier else None)
    return f"wrote {out} ({fmt}) from {source}"
