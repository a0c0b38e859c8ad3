"""DetCon_B and DetCon_S (Hénaff et al., ICCV 2021; docs/METHODS.md §5).

What makes DetCon different from its baselines is only this: features are pooled over sampled
segments of each view instead of the whole image, and the contrastive loss runs over those mask
vectors. Per view: the pipeline's id map (FH, grid or ground truth, transported through the crop)
-> majority id per feature cell -> R ids sampled uniformly among those present -> binary masks
`[B, R, h*w]` -> mask-mean pooling -> projector (-> predictor). The same ids serve the online and
the target network.

* DetCon_B: BYOL's architecture; online predictions against EMA target projections.
* DetCon_S: SimCLR's; one network, projections on both sides, gradients through both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from common import heads, losses, masks
from common.method import Method, flatten_projection, two_view_outputs
from common.network import build_backbone, build_network
from common.two_tower import TwoTowerMethod


def default_detcon_kwargs() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "num_masks": 16,  # R, sampled with replacement per view [CODE: detcon_b_config]
            # Ids at or above this are ignored; FH on large images may exceed 256, so the
            # default leaves room (the mask code never materialises [S, S, num_ids]).
            "max_mask_id": 1024,
        }
    )


def num_present_ids(grid: jax.Array) -> jax.Array:
    """Mean number of distinct valid ids per image of a grid `[B,h,w]` (-1 = none)."""
    g = jnp.sort(grid.reshape(grid.shape[0], -1), axis=1)
    first = jnp.concatenate([jnp.ones_like(g[:, :1], bool), g[:, 1:] != g[:, :-1]], axis=1)
    return jnp.mean(jnp.sum(first & (g >= 0), axis=1).astype(jnp.float32))


def sample_view_masks(
    rng: jax.Array, id_map: jax.Array, *, stride: int, num_ids: int, num_masks: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pixel ids `[B,S,S]` -> (sampled ids `[B,R]`, binary masks on the feature grid `[B,R,h*w]`,
    the grid of majority ids `[B,h,w]`).

    docs/METHODS.md §5.4-5.5: majority id per stride x stride cell, then R ids with replacement,
    uniformly among the ids that own at least one cell of this view.
    """
    grid = masks.ids_to_grid(id_map, stride, num_ids)
    ids = masks.sample_ids(rng, grid, num_masks)
    return ids, masks.masks_from_ids(grid, ids), grid


class DetConPool(nn.Module):
    """`heads.MaskPool` during pretraining; the global spatial mean when called without masks.

    Evaluators (the online linear monitor, `common.eval`) apply the online network to whole
    images without masks and read only its `embedding`; falling back to one full-image mask
    (`[B, 1, C]`) keeps those calls valid. Parameter-free, so checkpoints are unaffected.
    """

    feature_key: str = "out"

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], masks: jax.Array | None = None):
        """Pools `features[feature_key]` `[B, h, w, C]` -> `[B, R, C]` (`R = 1` without masks)."""
        if masks is None:
            return heads.MeanPool(self.feature_key)(features)
        return heads.MaskPool(self.feature_key)(features, masks)


class _DetConMasks:
    """Mixin: turns a batch's `mask1`/`mask2` into sampled ids and feature-grid masks."""

    config: ml_collections.ConfigDict

    def view_masks(self, batch, rng):
        kw = self.config.method_kwargs
        stride = build_backbone(self.config).output_stride
        out = {}
        for i, v in enumerate(("1", "2")):
            # Independent sampling per view (different rng), as the released code does.
            out["ids" + v], out["masks" + v], out["grid" + v] = sample_view_masks(
                jax.random.fold_in(rng, i),
                batch["mask" + v],
                stride=stride,
                num_ids=kw.max_mask_id,
                num_masks=kw.num_masks,
            )
        return out

    def save_pictures(self, nets, batch, rng, path):
        """Views, id maps on the feature grid, sampled ids and features (`detcon.pictures`)."""
        from detcon import pictures  # PIL only where pictures are drawn

        return pictures.save(self, nets, batch, rng, path)

    def init_args(self, network, batch):
        del network
        b, s = batch["view1"].shape[:2]
        stride = build_backbone(self.config).output_stride
        cells = (s // stride) ** 2
        dummy = jnp.ones((b, self.config.method_kwargs.num_masks, cells)) / cells
        return (batch["view1"],), {"masks": dummy}


class DetConB(_DetConMasks, TwoTowerMethod):
    @classmethod
    def default_config(cls):
        return default_detcon_kwargs()

    def build_networks(self):
        return {
            "online": build_network(self.config, pool=DetConPool(), predictor=True),
            "target": build_network(self.config, pool=DetConPool(), predictor=False),
        }

    def loss(self, nets, batch, rng, step):
        del step
        m = self.view_masks(batch, rng)
        online1, online2, target1, target2 = self.forward(
            nets, batch, masks1=m["masks1"], masks2=m["masks2"]
        )
        loss = losses.contrastive_detection_loss(
            online1["prediction"], online2["prediction"],
            target1["projection"], target2["projection"],
            m["ids1"], m["ids2"], temperature=self.config.loss.temperature,
        )  # fmt: skip
        aux = {
            "embedding": online1["embedding"],
            "projection": flatten_projection(online1["projection"], online2["projection"]),
            "metrics": {"segments_per_view": num_present_ids(m["grid1"])},
        }
        return loss, aux


class DetConS(_DetConMasks, Method):
    @classmethod
    def default_config(cls):
        return default_detcon_kwargs()

    def build_networks(self):
        return {"online": build_network(self.config, pool=DetConPool(), predictor=False)}

    def loss(self, nets, batch, rng, step):
        del step
        m = self.view_masks(batch, rng)
        out1, out2 = two_view_outputs(nets, batch, "online", masks1=m["masks1"], masks2=m["masks2"])
        z1, z2 = out1["projection"], out2["projection"]
        # SimCLR-style: the projections are both queries and keys, gradients through both.
        loss = losses.contrastive_detection_loss(
            z1, z2, z1, z2, m["ids1"], m["ids2"], temperature=self.config.loss.temperature
        )
        aux = {
            "embedding": out1["embedding"],
            "projection": flatten_projection(z1, z2),
            "metrics": {"segments_per_view": num_present_ids(m["grid1"])},
        }
        return loss, aux
