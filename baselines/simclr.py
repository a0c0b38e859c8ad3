"""SimCLR (Chen et al. 2020; docs/METHODS.md §3): one network, NT-Xent between the two views.

No predictor and no EMA: both views pass through the same backbone and projector, and gradients
flow through both sides of the loss.
"""

from __future__ import annotations

from common import losses
from common.method import Method, flatten_projection, two_view_outputs
from common.network import build_network


class SimCLR(Method):
    def build_networks(self):
        return {"online": build_network(self.config, predictor=False)}

    def loss(self, nets, batch, rng, step):
        del rng, step
        out1, out2 = two_view_outputs(nets, batch, "online")
        z1, z2 = out1["projection"][:, 0], out2["projection"][:, 0]
        loss = losses.nt_xent(z1, z2, temperature=self.config.loss.temperature)
        return loss, {"embedding": out1["embedding"], "projection": flatten_projection(z1, z2)}
