"""SimCLR (Chen et al. 2020), docs/METHODS.md §3: one network, NT-Xent, symmetric augmentations.

    python -m common.train --config experiments/simclr.py:local --workdir workdirs/simclr_local
    python -m common.train --config experiments/simclr.py:imagenet,epochs=1000 --workdir ...

Paper recipe: LARS, LR 0.3 x B/256, WD 1e-6, 10 warm-up epochs, cosine, batch 4096, projection
2048-2048-128, temperature 0.1 at batch 4096 (0.5 in the small-batch ablations).
Expected at 1000 epochs (paper): 69.3% ImageNet linear top-1.
"""

from experiments.base import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=1000, temperature=0.1)
    config = base_config("simclr", args.variant)
    config.loss.temperature = args.temperature
    config.augment.view1 = config.augment.view2 = "simclr"
    if args.variant == "imagenet":
        # local: the recipe sweep's optimiser (experiments/base.py)
        config.optimizer.base_lr, config.optimizer.weight_decay = 0.3, 1e-6
        config.num_epochs = args.epochs
        config.model.projector_hidden = 2048
        config.model.projector_dim = 128
    config.lock()
    return config
