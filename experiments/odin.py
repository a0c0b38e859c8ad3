"""Odin (Hénaff et al., ECCV 2022), docs/METHODS.md §6: DetCon_B with k-means masks of a discovery
network that follows the online network.

Local run (embedded scenes, no masks read from the dataset; a few minutes on 2 CPU cores):
    python -m common.train --config experiments/odin.py:local --workdir workdirs/odin
Paper scale (ImageNet; ResNet-50 or ViT-B/8):
    python -m common.train --config experiments/odin.py:imagenet,backbone=resnet50 --workdir ...
    python -m common.train --config experiments/odin.py:imagenet,backbone=vit_b8 --workdir ...

Hyper-parameters. The paper's optimisation is not verified (docs/METHODS.md §6.4): with ResNet-50
the `imagenet` variant takes DetCon_B's released recipe (LARS base LR 0.2, WD 1.5e-6, tau 0.996,
16 masks, temperature 0.1, batch 4096, 1000 epochs) [CODE: detcon_b_config.py]; with ViT-B/8 the
optimiser is the ViT preset `experiments/base.py` `VIT_OPTIMIZER` (MoCo v3's AdamW: LR 1.5e-4
per 256, WD 0.1, 40 warm-up epochs) [CODE: facebookresearch/moco-v3], the rest as ResNet-50.

Sources of the discovery settings. Of the Odin paper (arXiv 2203.08777) only the abstract and
the introduction could be read (ar5iv, Springer); its method section and appendix could not, so
no value below is read from the paper [UNVERIFIED: each needs the paper's §3 and appendix].
Every one is a field (`method_kwargs.*`, `data.*`) with its default here:

* discovery network update (`discovery_mode=ema`, `discovery_base_tau=0.99`, constant): the
  summaries say it "is updated from the representation network's parameters" ("periodically")
  [2nd: 3ctvn.net / vitomag.com summaries, docs/METHODS.md §6.1]; rule and rate [DEFAULT],
  0.99 being a student re-implementation's EMA rate [2nd: RyanAmaudruz/detcon-pytorch];
  `copy` (every `discovery_copy_every` steps) and `target` are the other readings;
* K (`num_clusters=8`) [DEFAULT]; the student re-implementation uses 5 [2nd]; docs/METHODS.md §6.3
  suggests sweeping {4, 8, 16, 32}; k-means: 10 Lloyd iterations, k-means++ init, cosine
  distance [DEFAULT];
* clustered features (`discovery_features=backbone`: the final dense map, l2-normalised)
  [DEFAULT]; lightly's maintainers read the paper as "ResNet with FPN + k-means on the output
  features" [2nd: lightly-ai/lightly issue 777]; no FPN here;
* discovery crop (`data.discovery_crop_scale=(0.5, 1)`, no flip, no photometric change): "one
  crop that covers most of the image and is not otherwise augmented" [2nd: the summaries]; the
  scale range is [DEFAULT];
* views (`data.views_in_discovery_crop=True`): both representation views are random crops of
  the discovery crop, so their masks "differ from the discovery masks only through cropping"
  [2nd: the summaries, docs/METHODS.md §6.1]; `False` cuts them from the whole image: then 13%
  of the view pixels lie outside the discovery crop and carry no id (measured: 0.8665 of view pixels
  with an id, against 1.0 inside; crop scales (0.08, 1) and (0.5, 1), 256 tiny-config examples,
  printed by tests/test_odin.py `test_fraction_of_view_pixels_with_an_id_under_each_view_option`).

Evaluation: the discovery evaluator scores the *discovery* network's k-means segments (the
masks Odin trains on; choose the mode with `experiments/odin.py:local,discovery_mode=target` so
that the evaluator follows it); its pictures (`<workdir>/pictures/discovery_<step>.png`, the same
validation images every time) show the cycle at every `eval_every_steps`.
"""

from experiments.base import base_config, parse_arg, set_backbone

BACKBONES = ("resnet50", "vit_b8")


def get_config(arg: str | None = None):
    args = parse_arg(
        arg, variant="local", epochs=1000, backbone="resnet50", num_clusters=8, discovery_mode="ema"
    )
    config = base_config("odin", args.variant)
    config.method_kwargs.num_clusters = args.num_clusters
    config.method_kwargs.discovery_mode = args.discovery_mode
    config.data.discovery_view = True
    config.augment.view0 = "none"  # the discovery view is not photometrically augmented
    config.loss.temperature = 0.1
    if args.variant == "imagenet":
        if args.backbone not in BACKBONES:
            raise ValueError(f"odin imagenet: backbone must be one of {BACKBONES}")
        config.num_epochs = args.epochs
        config.data.name = "imagenet2012"
        config.optimizer.warmup_rule = "detcon"  # ResNet: DetCon_B's LARS recipe
        set_backbone(config, args.backbone)  # ViT: AdamW (`base.VIT_OPTIMIZER`)
    else:
        # Discovery view at the views' 48 px (a 6x6 grid): a 64 px one (8x8) costs 1.8x a
        # view's forward pass. `--config.data.discovery_image_size=64` for a finer grid.
        config.eval_every_steps = 100
        # The network whose k-means makes the masks (the target itself in `target` mode).
        config.evals.discovery.network = (
            "target" if args.discovery_mode == "target" else "discovery"
        )
    config.lock()
    return config
