"""VITO (Parthasarathy, Eslami, Carreira, Hénaff; docs/METHODS.md §7): MoCLR on video frame
pairs with multi-scale attention pooling.

* Data: the two views are two frames of one clip, `min_offset..max_offset` frames apart, each
  with its own random resized crop and flip (`config.data.kind = 'video_pairs'`, the trainer's
  `make_video_pair_iterator`), then BYOL's photometric augmentations on device.
* Network (`vito.network.MultiScaleNetwork`): backbone -> `AttentionPool` on each scale of
  `method_kwargs.scales` -> per-scale projector (-> predictor online); target by EMA.
* Loss: MoCLR's InfoNCE (`contrastive_detection_loss` with one full-image id per attention
  query) on each scale, summed over scales (`combine='sum_losses'`), or one loss on the
  concatenated scales (`combine='concat'`).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from common import losses
from common.method import flatten_projection
from common.two_tower import TwoTowerMethod
from vito.network import build_multiscale_network


class VITO(TwoTowerMethod):
    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """`scales`: backbone maps pooled (the last two ResNet stages, §7.2 [UNVERIFIED med]);
        `attention_hidden`: hidden width of each attention head [DEFAULT 512];
        `num_queries`: attention queries per scale [DEFAULT 1]; `combine`: `sum_losses`
        (per-scale heads and losses, summed) or `concat` [UNVERIFIED lo]."""
        return ml_collections.ConfigDict(
            {
                "scales": ("stage3", "stage4"),
                "attention_hidden": 512,
                "num_queries": 1,
                "combine": "sum_losses",
            }
        )

    def build_networks(self):
        return {
            "online": build_multiscale_network(self.config, predictor=True),
            "target": build_multiscale_network(self.config, predictor=False),
        }

    def loss(self, nets, batch, rng, step):
        del rng, step
        online1, online2, target1, target2 = self.forward(nets, batch)
        # projection/prediction: [B, n_heads, Q, D]; one MoCLR loss per head (scale), each query
        # its own full-image "region" that matches the same query of the other frame.
        n_heads, q = online1["prediction"].shape[1:3]
        ids = jnp.broadcast_to(
            jnp.arange(q, dtype=jnp.int32), online1["prediction"].shape[:1] + (q,)
        )
        k = self.config.method_kwargs
        names = list(k.scales) if k.combine == "sum_losses" else ["concat"]
        total, per_head = 0.0, {}
        for i in range(n_heads):
            loss_i = losses.contrastive_detection_loss(
                online1["prediction"][:, i], online2["prediction"][:, i],
                target1["projection"][:, i], target2["projection"][:, i],
                ids, ids, temperature=self.config.loss.temperature,
            )  # fmt: skip
            per_head[f"loss_{names[i]}"] = loss_i
            total = total + loss_i
        aux = {
            "embedding": online1["embedding"],
            "projection": flatten_projection(online1["projection"], online2["projection"]),
            "metrics": per_head,
        }
        return total, aux

    def save_pictures(self, nets, batch, rng, path) -> bool:
        from vito import pictures

        del rng
        return pictures.save(nets, batch, path, scales=tuple(self.config.method_kwargs.scales))
