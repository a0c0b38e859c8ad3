"""The two shapes the speed benchmarks race at, as training configs and as plain numbers.

* `local`: what `experiments/byol.py:local` and `experiments/detcon_b.py:local` train (a
  ResNet-18 layout with one block per stage, 16 base channels and a stride-1 3x3 stem; 48 px
  views, batch 64, heads 512 -> 128, 16 masks for DetCon).
* `papers`: the papers' network at a laptop batch (ResNet-50, 224 px, batch 8, 16 masks, heads
  4096 -> 256).

The peer script (`benchmarks/peer_race.py`'s PyTorch side) builds its networks from
`shape_numbers`, so both sides of the race read one description.
"""

from __future__ import annotations

import ml_collections

SHAPES = ("local", "papers")
METHODS = ("detcon_b", "byol")


def race_config(method: str, shape: str, **backbone_overrides) -> ml_collections.ConfigDict:
    """The training config of `method` at `shape`, photometric augmentation off.

    Augmentation is off on our side because the peer (a lightly user) augments in its data
    loader, outside the step; `peer_race.py` reports our on-device augmentation separately.
    `backbone_overrides` go to `config.model.backbone_kwargs` (e.g. `einsum_1x1=False`,
    `cpu_stem=False`).
    """
    from experiments import byol, detcon_b

    if method not in METHODS or shape not in SHAPES:
        raise ValueError(f"race: method in {METHODS}, shape in {SHAPES}; got {method}, {shape}")
    config = {"byol": byol, "detcon_b": detcon_b}[method].get_config("local")
    with config.unlocked():
        if shape == "papers":
            # The papers' ResNet-50 with our CPU lowerings: those of the `local` backbone that
            # are not about its size (the 1x1 convs as einsums), and the 7x7 stem's (the
            # `local` backbone has a 3x3 stride-1 stem, for which the patches matmul is slower).
            cpu_kwargs = {
                k: v
                for k, v in config.model.backbone_kwargs.items()
                if k not in ("small_stem", "base_width", "blocks_per_group")
            }
            cpu_kwargs["cpu_stem"] = True
            config.model.backbone = "resnet50"
            config.model.backbone_kwargs = ml_collections.ConfigDict(cpu_kwargs)
            config.model.projector_hidden = 4096
            config.model.predictor_hidden = 4096
            config.model.projector_dim = 256
            config.data.image_size = 224
            config.batch_size = 8
        kwargs = dict(config.model.backbone_kwargs)
        kwargs.update(backbone_overrides)
        config.model.backbone_kwargs = ml_collections.ConfigDict(kwargs)
        config.augment.view1 = "none"
        config.augment.view2 = "none"
    return config


def shape_numbers(method: str, shape: str) -> dict:
    """Plain numbers of `race_config(method, shape)` for the peer (no JAX import needed)."""
    if shape == "local":
        return dict(
            depth=18, base_width=16, blocks=(1, 1, 1, 1), small_stem=True, image_size=48,
            batch_size=64, hidden=512, out_dim=128, num_masks=16, num_classes=12,
        )  # fmt: skip
    if shape == "papers":
        return dict(
            depth=50, base_width=64, blocks=(3, 4, 6, 3), small_stem=False, image_size=224,
            batch_size=8, hidden=4096, out_dim=256, num_masks=16, num_classes=12,
        )  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
