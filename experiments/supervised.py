"""Supervised pretraining (cross-entropy on the image label), the reference row of
docs/METHODS.md §9.

Local run (the embedded synthetic_scenes, majority-class labels; about a minute on 2 CPU cores):
    python -m common.train --config experiments/supervised.py:local --workdir workdirs/sup_local
ImageNet (ResNet-50, 90 epochs, LARS; an untuned [DEFAULT] recipe, not a paper's):
    python -m common.train --config experiments/supervised.py:imagenet --workdir ...
"""

from experiments.base import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=90)
    config = base_config("supervised", args.variant)
    config.augment.view1 = "byol_view1"
    if args.variant == "local":
        # LARS (trust ratio 1e-3) at batch 64 moves the weights too little in 200 steps for a
        # useful supervised reference; Adam does. Milder crops keep the labelled (majority)
        # object in view; no photometric augmentation: the reference learns from the labels
        # alone, not from the self-supervised views' invariances.
        config.optimizer.name = "adamw"
        config.optimizer.base_lr = 0.005  # x 64/256: 1.25e-3
        config.optimizer.weight_decay = 1e-4
        config.augment.view1 = "none"
        config.data.crop_scale = (0.5, 1.0)
    if args.variant == "imagenet":
        config.num_epochs = args.epochs
        config.optimizer.weight_decay = 1e-4
    config.lock()
    return config
