"""Backbones: Haiku-compatible ResNets and ViTs returning dense feature maps.

`get_backbone(name, **kwargs)` builds one by name; see docs/ARCHITECTURE.md for the contract
(`module.apply(variables, x, train=..., mutable=[...])` -> dict of `[B, h, w, C]` maps, attributes
`output_stride` and `out_channels`).
"""

from __future__ import annotations

import flax.linen as nn

from common.backbones.resnet import RESNET_CONFIGS, ResNet
from common.backbones.vit import VIT_CONFIGS, ViT

__all__ = ["BACKBONE_NAMES", "ResNet", "ViT", "get_backbone"]

_RESNETS = {f"resnet{depth}": depth for depth in RESNET_CONFIGS}
_VITS = {f"vit_{size}{patch}": (size, patch) for size in VIT_CONFIGS for patch in (8, 16)}
BACKBONE_NAMES: tuple[str, ...] = tuple(_RESNETS) + tuple(_VITS)


def get_backbone(name: str, **kwargs) -> nn.Module:
    """Builds a backbone by name.

    Args:
      name: `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`, `resnet200`,
        `vit_s8`, `vit_s16`, `vit_b8` or `vit_b16`.
      **kwargs: module attributes overriding the named configuration, e.g. `width_multiplier`,
        `small_stem`, `base_width`, `blocks_per_group`, `dtype` for ResNets; `depth`, `width`,
        `num_heads`, `image_size`, `dtype` for ViTs (a tiny ViT for tests).

    Returns:
      An unbound `flax.linen.Module` (`ResNet` or `ViT`).

    Raises:
      ValueError: unknown name.
    """
    if name in _RESNETS:
        return ResNet(**{"depth": _RESNETS[name], **kwargs})
    if name in _VITS:
        size, patch = _VITS[name]
        return ViT(**{"patch_size": patch, **VIT_CONFIGS[size], **kwargs})
    raise ValueError(f"Unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
