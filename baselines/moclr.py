"""MoCLR (Tian, Hénaff, van den Oord 2021; docs/METHODS.md §4): BYOL's architecture with InfoNCE.

Online predictions are queries, EMA target projections are keys; negatives are the target
projections of every other image of the global batch in both views. This is exactly DetCon's
loss with one mask covering the whole image (R = 1, one id), so it is computed by that function.
"""

from __future__ import annotations

import jax.numpy as jnp

from common import losses
from common.method import flatten_projection
from common.two_tower import TwoTowerMethod


class MoCLR(TwoTowerMethod):
    def loss(self, nets, batch, rng, step):
        del rng, step
        online1, online2, target1, target2 = self.forward(nets, batch)
        ids = jnp.zeros(online1["prediction"].shape[:2], jnp.int32)  # [B, 1]: one full-image mask
        loss = losses.contrastive_detection_loss(
            online1["prediction"], online2["prediction"],
            target1["projection"], target2["projection"],
            ids, ids, temperature=self.config.loss.temperature,
        )  # fmt: skip
        aux = {
            "embedding": online1["embedding"],
            "projection": flatten_projection(online1["projection"], online2["projection"]),
        }
        return loss, aux
