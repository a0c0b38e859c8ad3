"""DetCon_S (Hénaff et al., ICCV 2021), docs/METHODS.md §5.7: SimCLR architecture, contrastive
detection.

    python -m common.train --config experiments/detcon_s.py:local --workdir workdirs/detcon_s
    python -m common.train --config experiments/detcon_s.py:imagenet,epochs=1000 --workdir ...

One network; the mask projections of both views are queries and keys, gradients through both.

Sources of the `imagenet` recipe. The DetCon paper names DetCon_S as contrastive detection on
SimCLR [PAPER §3]; its appendix (DetCon_S's augmentation, head sizes, temperature, warm-up) could
not be read (only the abstract and introduction of arXiv 2103.10957 were reachable), so every
value below is SimCLR's released ImageNet recipe [CODE: google-research/simclr `run.py` flag
defaults and the README's ImageNet command], each [UNVERIFIED against the DetCon appendix]:

* optimiser: LARS, base LR 0.3 per 256 images (4.8 at batch 4096), weight decay 1e-6, linear
  warm-up of 10 epochs then cosine (`run.py`: learning_rate 0.3, weight_decay 1e-6,
  warmup_epochs 10); DetCon_B's (epochs // 100)-epoch warm-up is not used;
* temperature 0.1 (`run.py` temperature 0.1; the README's ImageNet command);
* projection head: one hidden layer as wide as the encoder output, 2048 -> 128 (`run.py`
  head_proj_dim 128, num_nlh_layers 1); DetCon_B's 4096 -> 256 is BYOL's;
* augmentation `augment=simclr` (default): SimCLR's colour distortion at strength 1 (jitter 0.8 /
  0.8 / 0.8 / 0.2 with p 0.8, grayscale p 0.2), Gaussian blur p 0.5 on both views, no solarize
  (`run.py` color_jitter_strength 1.0, use_blur True; `data_util`: blur p 0.5 per view);
  `augment=lightly` takes lightly's DetConSTransform instead (the same jitter, blur 1.0 / 0.0)
  [2nd], the local variant's default.

Expected (paper, COCO Mask R-CNN FPN 1x): 41.8 AP^bb / 37.4 AP^mk.
"""

from experiments.base import base_config, parse_arg

# View presets of `common.augment` per augmentation recipe (view1, view2).
AUGMENTATIONS = {
    "simclr": ("simclr", "simclr"),  # [CODE: google-research/simclr], symmetric
    "lightly": ("detcon_s_view1", "detcon_s_view2"),  # [2nd: lightly DetConSTransform]
}


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=1000, mask_source="fh", grid_size=4, augment="")
    config = base_config("detcon_s", args.variant)
    config.data.mask_source = args.mask_source
    config.data.grid_size = args.grid_size
    # [CODE: simclr run.py] LARS base LR 0.3 and WD 1e-6 (imagenet; local: the recipe sweep's
    # optimiser, see experiments/base.py), temperature 0.1 (both variants).
    if args.variant == "imagenet":
        config.optimizer.base_lr, config.optimizer.weight_decay = 0.3, 1e-6
    config.loss.temperature = 0.1
    augment = args.augment or ("simclr" if args.variant == "imagenet" else "lightly")
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"detcon_s: augment must be one of {sorted(AUGMENTATIONS)}, got {augment!r}"
        )
    config.augment.view1, config.augment.view2 = AUGMENTATIONS[augment]
    if args.variant == "imagenet":
        config.num_epochs = args.epochs
        config.data.name = "imagenet2012_fh"
        config.optimizer.warmup_rule = "epochs"
        config.optimizer.warmup_epochs = 10  # [CODE: simclr run.py warmup_epochs]
        config.model.projector_hidden = 2048  # [CODE: simclr] hidden = encoder width
        config.model.projector_dim = 128  # [CODE: simclr run.py head_proj_dim]
    config.lock()
    return config
