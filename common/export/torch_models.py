"""torch side of `common.export`: a torchvision ResNet that holds an export and pads like ours.

Imported on use only: torch and torchvision are the optional `torch` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.export import ExportError


def import_torchvision():
    """`import torchvision`, also where its compiled ops do not load.

    PyPI's torchvision wheels for x86_64 Linux are CUDA builds; next to the CPU-only torch wheel
    their ops library fails to load and `import torchvision` then stops at registering a fake
    kernel for `torchvision::nms` ("operator torchvision::nms does not exist"). The ResNets need
    none of those ops, so in that case the two op schemas it registers against are declared
    first (detection ops such as `nms` stay unusable).
    """
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed (pip install -e '.[torch]')")
    if not hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.load_library(os.path.join(spec.submodule_search_locations[0], "_C.so"))
        except (OSError, RuntimeError):
            global _TORCHVISION_STUB
            _TORCHVISION_STUB = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                _TORCHVISION_STUB.define(
                    f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
    import torchvision

    return torchvision


_TORCHVISION_STUB = None


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Haiku 'SAME' padding `(before, after)` of one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def haiku_padding(model):
    """Makes a torchvision ResNet pad like Haiku / our ResNet, in place; returns it.

    Every strided conv with a kernel larger than 1 and the max-pool lose their symmetric padding
    and get a forward pre-hook that pads the input 'SAME' (zeros for convs, -inf for the
    max-pool, as `hk.max_pool`/`nn.max_pool` do) for the size it actually sees. Stride-1 3x3
    convs (pad 1 both ways) and 1x1 convs (no padding) already agree. The state dict is
    unchanged.
    """
    import torch
    import torch.nn.functional as F

    def hook(module, args):
        x = args[0]
        pads = []
        for axis in (1, 0):  # F.pad lists the last dimension (width) first
            k, s, d = (
                _pair(getattr(module, a))[axis] for a in ("kernel_size", "stride", "dilation")
            )
            pads.extend(_same_padding(x.shape[2 + axis], k, s, d))
        value = float("-inf") if isinstance(module, torch.nn.MaxPool2d) else 0.0
        return (F.pad(x, pads, value=value),) + tuple(args[1:])

    for module in model.modules():
        strided = isinstance(module, torch.nn.Conv2d | torch.nn.MaxPool2d) and (
            max(_pair(module.stride)) > 1 and max(_pair(module.kernel_size)) > 1
        )
        if strided and not getattr(module, "_haiku_padding", False):
            module.padding = (0, 0) if isinstance(module, torch.nn.Conv2d) else 0
            module.register_forward_pre_hook(hook)
            module._haiku_padding = True
    return model


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def torchvision_resnet(state_dict: Mapping[str, Any], *, pad_like_haiku: bool = True):
    """A torchvision `ResNet` (eval mode) holding `state_dict` (numpy arrays or tensors), loaded
    with `strict=True`; `fc` is `Identity` when the state dict has none. Blocks per layer and the
    block type are read from the names; the widths must be torchvision's (64-channel stem)."""
    import torch

    resnet = import_torchvision().models.resnet
    layers = [
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")})
        for i in (1, 2, 3, 4)
    ]
    block = resnet.Bottleneck if "layer1.0.conv3.weight" in state_dict else resnet.BasicBlock
    if tuple(state_dict["conv1.weight"].shape[:2]) != (64, 3):
        width = state_dict["conv1.weight"].shape[0]
        raise ExportError(
            f"torchvision's ResNet class has a 64-channel stem; this state dict has {width} "
            "(width_multiplier/base_width)"
        )
    num_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 1000
    model = resnet.ResNet(block, layers, num_classes=num_classes)
    if "fc.weight" not in state_dict:
        model.fc = torch.nn.Identity()
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return haiku_padding(model) if pad_like_haiku else model
