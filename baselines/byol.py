"""BYOL (Grill et al. 2020; docs/METHODS.md §2): an online predictor regresses EMA target
projections.

Online = backbone -> mean pool -> projector -> predictor; target = backbone -> mean pool ->
projector, following the online network by EMA. Loss: `2 - 2 cos` in both directions.
"""

from __future__ import annotations

import jax

from common import losses
from common.method import Method, flatten_projection, register, two_view_outputs
from common.network import build_network


class TwoTowerMethod(Method):
    """An online network with a predictor and an EMA target without one (BYOL, MoCLR, DetCon_B)."""

    ema_networks = {"target": "online"}

    def build_networks(self):
        return {
            "online": build_network(self.config, predictor=True),
            "target": build_network(self.config, predictor=False),
        }

    def forward(self, nets, batch, **kwargs):
        """Online and target outputs of both views; target outputs carry no gradient."""
        online1, online2 = two_view_outputs(nets, batch, "online", **kwargs)
        target1, target2 = jax.lax.stop_gradient(two_view_outputs(nets, batch, "target", **kwargs))
        return online1, online2, target1, target2


@register("byol")
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
