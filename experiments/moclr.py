"""MoCLR (Tian, Hénaff, van den Oord 2021), docs/METHODS.md §4: BYOL's architecture, InfoNCE loss.

    python -m common.train --config experiments/moclr.py:local --workdir workdirs/moclr_local
    python -m common.train --config experiments/moclr.py:imagenet,epochs=300 --workdir ...

Unverified details (docs/METHODS.md §4): temperature 0.1, predictor on, negatives from both views;
each is a config field. Reported (DnC paper, VITO's table): ImageNet-pretrained MoCLR R50,
300 epochs: PASCAL 76.4 mIoU, ADE20K 39.2, COCO 43.9 AP, LVIS 25.8.
"""

from experiments.base import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=1000)
    config = base_config("moclr", args.variant)
    config.loss.temperature = 0.1
    if args.variant == "imagenet":
        config.num_epochs = args.epochs
    config.lock()
    return config
