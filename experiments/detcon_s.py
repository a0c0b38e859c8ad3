"""DetCon_S (Hénaff et al., ICCV 2021), docs/METHODS.md §5.7: SimCLR architecture, contrastive
detection.

    python -m common.train --config experiments/detcon_s.py:local --workdir workdirs/detcon_s
    python -m common.train --config experiments/detcon_s.py:imagenet,epochs=1000 --workdir ...

One network; the mask projections of both views are queries and keys, gradients through both.
Unverified in the paper text we could read (each is a field here): SimCLR's colour jitter with
asymmetric blur 1.0 / 0.0 (as lightly's DetCon_S), LARS base LR 0.3, WD 1e-6, temperature 0.1.
Expected (paper, COCO Mask R-CNN FPN 1x): 41.8 AP^bb / 37.4 AP^mk.
"""

from experiments.base import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=1000, mask_source="fh", grid_size=4)
    config = base_config("detcon_s", args.variant)
    config.data.mask_source = args.mask_source
    config.data.grid_size = args.grid_size
    config.augment.view1, config.augment.view2 = "detcon_s_view1", "detcon_s_view2"
    config.optimizer.base_lr = 0.3
    config.optimizer.weight_decay = 1e-6
    if args.variant == "imagenet":
        config.num_epochs = args.epochs
        config.data.name = "imagenet2012_fh"
        config.optimizer.warmup_rule = "detcon"
    config.lock()
    return config
