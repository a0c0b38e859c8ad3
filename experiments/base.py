"""Shared pieces of every experiment config.

Each experiment file defines `get_config(arg)`; `arg` is a variant name optionally followed by
`key=value` pairs, big_vision style: `experiments/byol.py:imagenet,epochs=300`. The returned
config is locked: `--config.some_typo=1` fails instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`'imagenet,epochs=300'` -> `{variant: 'imagenet', epochs: 300, ...defaults}`.

    The first comma-separated item without `=` is the variant; values are converted to the type
    of their default, and an unknown key fails with the list of valid ones.
    """
    out = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            out["variant"] = item
            continue
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ValueError(f"config argument {key!r} unknown; valid: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            out[key] = value
        else:
            out[key] = type(default)(value)
    return ml_collections.ConfigDict(out)


# Optimiser of ViT backbones: MoCo v3's ViT recipe [CODE: facebookresearch/moco-v3 README, ViT-S/B
# pretraining commands, and `main_moco.py`]: AdamW (PyTorch's default betas 0.9 / 0.999, weight
# decay on every parameter), LR 1.5e-4 per 256 images (`init_lr = lr * batch / 256`: 2.4e-3 at
# batch 4096), weight decay 0.1, 40 warm-up epochs, then a half-cosine to 0 - the schedule of
# `common.optim.warmup_cosine_schedule`. Chosen over DINO's (LR 5e-4 per 256, weight decay 0.04
# -> 0.4, 10 warm-up epochs) because MoCo v3 is, like Odin and DetCon, a contrastive method
# trained at batch 4096. The ViT recipe of the Odin paper itself could not be read [UNVERIFIED].
# Not reproduced: MoCo v3's frozen random patch projection (`--stop-grad-conv1`).
VIT_OPTIMIZER = {
    "name": "adamw",
    "base_lr": 1.5e-4,
    "weight_decay": 0.1,
    "warmup_epochs": 40,
    "warmup_steps": -1,
    "warmup_rule": "epochs",
}


def set_backbone(config: ml_collections.ConfigDict, backbone: str) -> None:
    """Sets `config.model.backbone`; a ViT (`vit_*`) also gets `VIT_OPTIMIZER`.

    The LARS recipe of the ResNet configs is the BYOL/DetCon one; transformer SSL recipes use
    AdamW with their own warm-up and weight decay, so every method offering `backbone=vit_*`
    goes through here. Fields `--config.optimizer.*` still override the preset.
    """
    config.model.backbone = backbone
    if backbone.startswith("vit_"):
        config.optimizer.update(VIT_OPTIMIZER)


def data_config(**overrides) -> ml_collections.ConfigDict:
    from common.data.config import default_data_config

    cfg = default_data_config()
    cfg.update(overrides)
    return cfg


def base_config(method: str, variant: str) -> ml_collections.ConfigDict:
    """Trainer fields shared by every method; `variant` is `local` or `imagenet`."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.compute_dtype = "float32"
    c.total_steps = 0  # 0: derived from num_epochs and the dataset size
    c.num_epochs = 0
    c.log_every_steps = 10
    c.eval_every_steps = 0  # 0: evaluate at the end only
    c.pictures_every_steps = 0  # 0: no pictures during training
    # Print the final evaluation beside the random network's (computed once, cached under the
    # data dir: common.eval.random_init).
    c.random_init_baseline = True
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 100, "keep": 3})
    # The training loop (common/train.py): global batches staged on the devices ahead of their
    # step, and `sync_every_step` to make the host wait for every step (only to measure what the
    # overlap gains; `--config.loop.prefetch=0 --config.loop.sync_every_step=True`).
    c.loop = ml_collections.ConfigDict({"prefetch": 2, "sync_every_step": False})
    c.ema = ml_collections.ConfigDict({"base_tau": 0.996, "init": "independent"})
    c.loss = ml_collections.ConfigDict({"temperature": 0.1})
    c.augment = ml_collections.ConfigDict({"view1": "byol_view1", "view2": "byol_view2"})
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "lars",
            "base_lr": 0.2,
            "weight_decay": 1.5e-6,
            "momentum": 0.9,
            "eta": 1e-3,
            "warmup_epochs": 10,
            "warmup_steps": -1,  # >= 0 overrides warmup_epochs / warmup_rule
            "warmup_rule": "epochs",  # or "detcon": (num_epochs // 100) epochs
            # Per-module learning rates: 'predictor=10,backbone=0.5' multiplies the updates of
            # the parameters under those modules (common/optim.py `scale_by_module`).
            "lr_multipliers": "",
        }
    )
    c.distributed = ml_collections.ConfigDict(
        {
            "initialize": False,
            "coordinator_address": "",
            "num_processes": 1,
            "process_id": 0,
            "cpu_collectives": "",
        }
    )
    from common.method import get_method

    c.method_kwargs = get_method(method).default_config()
    if variant == "imagenet":
        c.batch_size = 4096
        c.num_epochs = 1000
        c.num_classes = 1000
        c.model = ml_collections.ConfigDict(
            {
                "backbone": "resnet50",
                "backbone_kwargs": {},
                "projector_hidden": 4096,
                "projector_dim": 256,
                "predictor_hidden": 4096,
            }
        )
        c.data = data_config(
            name="imagenet2012", split="train", image_size=224, num_examples=IMAGENET_TRAIN_EXAMPLES
        )
        # Precision: DeepMind's released BYOL and DetCon have no bfloat16 cast (float32 arrays,
        # whose convolutions XLA:TPU runs at its default precision: bfloat16 multiplies, float32
        # sums). Ours computes convolutions and matmuls in bfloat16 on every accelerator (GPUs
        # run float32 convolutions in float32 or TF32, not bfloat16), with parameters, optimiser
        # state, BatchNorm statistics, losses and the EMA in float32 (tests/test_bf16.py).
        # Paper-faithful: --config.compute_dtype=float32.
        c.compute_dtype = "bfloat16"
        c.log_every_steps = 100
        c.checkpoint.every_steps = 1000
        from common.eval import evaluator_config

        c.evals = ml_collections.ConfigDict(
            {"monitor": evaluator_config("monitor", batch_size=1024)}
        )
    elif variant == "local":
        # A few minutes on 2 CPU cores. XLA:CPU runs backward convolutions slowly
        # (docs/DESIGN.md §6), so the local network is a ResNet-18 layout with one block per stage
        # and 16 base channels (DetCon's TinyResNet style) and a stride-8 stem: 48 px views give a
        # 6x6 feature grid, the smallest DetCon's masks need, with every stage at >= 6x6.
        c.batch_size = 64
        c.total_steps = 200
        c.num_classes = 12
        c.model = ml_collections.ConfigDict(
            {
                "backbone": "resnet18",
                "backbone_kwargs": {
                    "small_stem": True,
                    "base_width": 16,
                    "blocks_per_group": (1, 1, 1, 1),
                    # 1x1 convs as matmuls: 2-7x faster forward+backward per layer on XLA:CPU,
                    # ~1.3x on this whole step; float32 rounding differs from nn.Conv only.
                    "einsum_1x1": True,
                    # Haiku's one-pass batch variance (the papers' code). True: two passes,
                    # which two processes reproduce to rounding where one pass does not
                    # (common/backbones/resnet.py, `bn_two_pass_variance`).
                    "bn_two_pass_variance": False,
                },
                "projector_hidden": 512,
                "projector_dim": 128,
                "predictor_hidden": 512,
            }
        )
        c.data = data_config(name="synthetic_scenes", split="train", image_size=48)
        c.optimizer.warmup_steps = 20
        # AdamW at peak rate 3e-3 (base 1.2e-2 per 256 images, batch 64) with weight decay 1e-4:
        # the first of the recipe sweep by mean gain over random on the 4.0.0 scenes' validation
        # split (experiments/paper_tables/results/local_recipe.md; LARS 0.4 / 3.2 / 6.4, AdamW
        # 1e-3 / 3e-3). The papers' LARS rates (0.2-0.4) barely move a network in 200 steps of
        # batch 64: LARS moves each layer by lr * 1e-3 * |w| per step.
        c.optimizer.name = "adamw"
        c.optimizer.base_lr = 1.2e-2
        c.optimizer.weight_decay = 1e-4
        c.ema.base_tau = 0.99
        from common.eval import evaluator_config

        # Each evaluator with every option (overridable: --config.evals.knn.k=10); sized so
        # that the final evaluation and the random network's take ~15 s each on 2 CPU cores
        # (the main job's 6 minutes); the paper tables evaluate on more images.
        c.evals = ml_collections.ConfigDict(
            {
                "monitor": evaluator_config("monitor", batch_size=128),
                # At the embedded images' own 64 px: an 8 x 8 feature grid to cluster.
                "discovery": evaluator_config(
                    "discovery", batch_size=128, image_size=64, examples=500
                ),
                "seg_probe": evaluator_config(
                    "seg_probe", train_examples=500, examples=500, epochs=5
                ),
                # Batch 128 as the monitor's: the four share one pass over the validation split
                # (its 1,000 images).
                "linear_probe": evaluator_config(
                    "linear_probe", train_examples=1000, batch_size=128
                ),
                "knn": evaluator_config("knn", train_examples=1000, batch_size=128),
                # Label-free: dimensional collapse shows here first (docs/results.md).
                "rank": evaluator_config("rank", batch_size=128),
            }
        )
    else:
        raise ValueError(f"unknown config variant {variant!r}; use 'local' or 'imagenet'")
    return c
