"""Odin (Hénaff et al., ECCV 2022; docs/METHODS.md §6): DetCon_B whose masks come from k-means of a
discovery network's own features.

What makes Odin different from DetCon_B is only where the id maps come from. Inside the one
jitted training step:

1. the discovery network (the online network's architecture; parameters following the online
   network, see `discovery_mode`) runs without gradient on the discovery view `view0`, a large
   crop of the image with no flip and no photometric augmentation (the data pipeline emits it
   with `data.discovery_view=True`);
2. its dense features (backbone output, or the projector applied per location) are
   l2-normalised and clustered per image by k-means (`common.kmeans`): K cluster ids on the
   discovery feature grid;
3. the ids are transported into the two representation views through the crop boxes and flips
   (`odin.transport`). The views are random crops of the discovery crop
   (`data.views_in_discovery_crop=True`, the default: their masks differ from the discovery
   masks only through cropping), so every view pixel has an id; with `False` they are crops of
   the whole image and view pixels outside the discovery crop get no id;
4. from there on DetCon_B unchanged: majority down-sampling, R ids sampled per view, mask
   pooling, `contrastive_detection_loss`.

Options the paper text we could read does not pin down (docs/METHODS.md §6.2-6.3, §6.7; the source
of each default is in experiments/odin.py) are `method_kwargs` with documented defaults
[DEFAULT]:

* `discovery_mode`: `ema` (its own EMA of the online network, `discovery_base_tau` with
  `discovery_tau_schedule` `constant` or BYOL's `cosine`), `target` (the target network serves
  as discovery network), `copy` (a copy of the online network every `discovery_copy_every`
  steps), `frozen` (never updated: its initialisation; with `ema.init=independent` a random
  network, the ablation).
* `discovery_features`: `backbone` (the final dense map) or `projector` (the projector MLP
  applied at every location, a 1x1 layer).
* `num_clusters` (K, default 8), `kmeans_iters` (10), `kmeans_init` (`kmeans++`),
  `kmeans_distance` (`cosine`).

BatchNorm: the discovery network runs in training mode, as the target network does in BYOL
(batch statistics; its running statistics, used by the evaluators, follow its own inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import kmeans, optim
from common.pictures import under_jit
from detcon.method import DetConB, default_detcon_kwargs
from odin.transport import transport_ids

DISCOVERY_MODES = ("ema", "target", "copy", "frozen")
DISCOVERY_FEATURES = ("backbone", "projector")


def default_odin_kwargs() -> ml_collections.ConfigDict:
    c = default_detcon_kwargs()
    c.discovery_mode = "ema"
    c.discovery_base_tau = 0.99  # [DEFAULT] (a student re-implementation uses 0.99, §6.2)
    c.discovery_tau_schedule = "constant"  # or "cosine" (base -> 1 as BYOL's target)
    c.discovery_copy_every = 100  # `copy` mode: steps between copies
    c.discovery_features = "backbone"
    c.num_clusters = 8  # K [DEFAULT], docs/METHODS.md §6.3 suggests sweeping {4, 8, 16, 32}
    c.kmeans_iters = 10
    c.kmeans_init = "kmeans++"
    c.kmeans_distance = "cosine"
    return c


class Odin(DetConB):
    augmented_views = {"view0": "view0", "view1": "view1", "view2": "view2"}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        kw = config.method_kwargs
        if kw.discovery_mode not in DISCOVERY_MODES:
            raise ValueError(
                f"method_kwargs.discovery_mode must be one of {DISCOVERY_MODES}, "
                f"got {kw.discovery_mode!r}"
            )
        if kw.discovery_features not in DISCOVERY_FEATURES:
            raise ValueError(
                f"method_kwargs.discovery_features must be one of {DISCOVERY_FEATURES}, "
                f"got {kw.discovery_features!r}"
            )
        if kw.discovery_tau_schedule not in ("constant", "cosine"):
            raise ValueError(
                "method_kwargs.discovery_tau_schedule must be 'constant' or 'cosine', "
                f"got {kw.discovery_tau_schedule!r}"
            )
        if not config.data.get("discovery_view", False):
            raise ValueError("odin needs the discovery view: set data.discovery_view=True")
        self.discovery_network = "target" if kw.discovery_mode == "target" else "discovery"
        self.ema_networks = {"target": "online"}
        if self.discovery_network == "discovery":
            self.ema_networks["discovery"] = "online"

    @classmethod
    def default_config(cls):
        return default_odin_kwargs()

    def build_networks(self):
        networks = super().build_networks()
        if self.discovery_network == "discovery":
            # The target's architecture (no predictor): its parameters are a subset of the
            # online network's, so the EMA and the copy follow the online network directly.
            networks["discovery"] = networks["target"]
        return networks

    def tau(self, ema_name, step, total_steps):
        if ema_name != "discovery":
            return super().tau(ema_name, step, total_steps)
        kw = self.config.method_kwargs
        if kw.discovery_mode == "frozen":
            return jnp.ones((), jnp.float32)
        if kw.discovery_mode == "copy":
            # tau = 0 replaces the parameters by the online ones; 1 keeps them.
            return jnp.where(step % int(kw.discovery_copy_every) == 0, 0.0, 1.0)
        if kw.discovery_tau_schedule == "cosine":
            return optim.ema_tau(step, base_tau=kw.discovery_base_tau, total_steps=total_steps)
        return jnp.asarray(kw.discovery_base_tau, jnp.float32)

    def discover(self, nets, view0: jax.Array, rng: jax.Array) -> jax.Array:
        """Cluster ids of the discovery view on its feature grid.

        Args:
          nets: the step's networks (the discovery parameters are already stop-gradient).
          view0: normalised discovery views `[B, S0, S0, 3]`.
          rng: k-means key.

        Returns:
          int32 `[B, h0, w0]` ids in `[0, K)`.
        """
        kw = self.config.method_kwargs
        projector = kw.discovery_features == "projector"
        out = nets(self.discovery_network, view0, dense_projection=projector)
        dense = jax.lax.stop_gradient(out["dense_projection" if projector else "dense"])
        clusters, _ = kmeans.kmeans_dense(
            rng,
            dense.astype(jnp.float32),
            int(kw.num_clusters),
            num_iters=int(kw.kmeans_iters),
            init=kw.kmeans_init,
            distance=kw.kmeans_distance,
        )
        return clusters

    def transported_masks(self, nets, batch, rng) -> dict[str, jax.Array]:
        """`mask1`, `mask2` `[B, S, S]`: the discovery clusters in each view's pixels (-1 none)."""
        clusters = self.discover(nets, batch["view0"], rng)
        size = batch["view1"].shape[1]
        return {
            "mask" + v: transport_ids(
                clusters, batch["box0"], batch["box" + v], batch["flip" + v], size
            )
            for v in ("1", "2")
        }

    def loss(self, nets, batch, rng, step):
        rng_discover, rng_sample = jax.random.split(rng)
        ids = self.transported_masks(nets, batch, rng_discover)
        loss, aux = super().loss(nets, {**batch, **ids}, rng_sample, step)
        aux["metrics"]["view_pixels_with_id"] = jnp.mean((ids["mask1"] >= 0).astype(jnp.float32))
        return loss, aux

    def save_pictures(self, nets, batch, rng, path):
        """DetCon's picture (`detcon.pictures`) of the discovered masks in both views."""
        keys = ("view0", "box0", "box1", "box2", "view1", "flip1", "flip2")
        host = {k: np.asarray(batch[k]) for k in keys}
        ids = jax.device_get(_picture_masks(self, nets, host, rng))
        return super().save_pictures(nets, {**batch, **ids}, rng, path)


@under_jit
def _picture_masks(method: Odin, nets, batch, rng) -> dict[str, jax.Array]:
    """`Odin.transported_masks` of a host batch (views in [0, 1]: the discovery view is
    normalised here, as the training step's augmentation does), one compiled program."""
    from common import augment

    view0 = augment.normalize(batch["view0"])
    return method.transported_masks(nets, {**batch, "view0": view0}, rng)
