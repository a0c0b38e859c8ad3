"""BYOL (Grill et al. 2020; docs/METHODS.md §2): an online predictor regresses EMA target
projections.

Online = backbone -> mean pool -> projector -> predictor; target = backbone -> mean pool ->
projector, following the online network by EMA. Loss: `2 - 2 cos` in both directions.
"""

from __future__ import annotations

from common import losses
from common.method import flatten_projection
from common.two_tower import TwoTowerMethod


class BYOL(TwoTowerMethod):
    def loss(self, nets, batch, rng, step):
        del rng, step
        online1, online2, target1, target2 = self.forward(nets, batch)
        loss = losses.byol_loss(
            online1["prediction"], online2["prediction"],
            target1["projection"], target2["projection"],
        )  # fmt: skip
        aux = {
            "embedding": online1["embedding"],
            "projection": flatten_projection(online1["projection"], online2["projection"]),
        }
        return loss, aux
