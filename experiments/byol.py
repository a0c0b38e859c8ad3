"""BYOL (Grill et al. 2020), docs/METHODS.md §2.

Local run (a few minutes on 2 CPU cores, builds the embedded dataset on first use):
    python -m common.train --config experiments/byol.py:local --workdir workdirs/byol_local
Paper run (ImageNet, ResNet-50, batch 4096, LARS; presets for 40/100/300/1000 epochs):
    python -m common.train --config experiments/byol.py:imagenet,epochs=300 --workdir ...
Expected at 1000 epochs (paper): 74.3% ImageNet linear top-1.
"""

from experiments.base import base_config, parse_arg

# BYOL's released presets by epoch budget [CODE: byol/configs/byol.py]: (base LR, WD, tau).
PRESETS = {40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99),
           1000: (0.2, 1.5e-6, 0.996)}  # fmt: skip


def get_config(arg: str | None = None):
    args = parse_arg(arg, variant="local", epochs=1000)
    config = base_config("byol", args.variant)
    if args.variant == "imagenet":
        if args.epochs not in PRESETS:
            raise ValueError(f"byol imagenet: epochs must be one of {sorted(PRESETS)}")
        lr, wd, tau = PRESETS[args.epochs]
        config.num_epochs = args.epochs
        config.optimizer.base_lr, config.optimizer.weight_decay = lr, wd
        config.ema.base_tau = tau
    config.lock()
    return config
