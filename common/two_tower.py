"""The two-network shape of BYOL, MoCLR, DetCon_B and VITO: an online network with a predictor
and an EMA target network without one (docs/METHODS.md §2)."""

from __future__ import annotations

import jax

from common.method import Method, two_view_outputs
from common.network import build_network


class TwoTowerMethod(Method):
    """An online network with a predictor and an EMA target without one (BYOL, MoCLR, DetCon_B,
    VITO). Subclasses write `loss` (usually from `forward`) and may replace `build_networks`."""

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
