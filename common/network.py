"""The network every method is made of: backbone -> pooling -> projector (-> predictor)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from common import heads
from common.backbones import get_backbone


class SSLNetwork(nn.Module):
    """Backbone, pooling and MLP heads of one network (online, target or discovery).

    Attributes:
      backbone: maps normalised images `[B,S,S,3]` to a dict of dense maps with `out` `[B,h,w,C]`.
      pool: maps `(features, masks)` to pooled vectors `[B,R,C]` (global mean gives `R = 1`).
      projector: MLP `[B,R,C] -> [B,R,D]`, or None.
      predictor: MLP `[B,R,D] -> [B,R,D]` (online networks of BYOL-style methods), or None.
    """

    backbone: nn.Module
    pool: nn.Module
    projector: nn.Module | None = None
    predictor: nn.Module | None = None

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        masks: jax.Array | None = None,
        *,
        train: bool,
        dense_projection: bool = False,
    ):
        """Returns `dense` `[B,h,w,C]`, `features` (all dense maps), `pooled` `[B,R,C]`,
        `embedding` `[B,C]` (spatial mean of `dense`, float32), `projection` and `prediction`
        `[B,R,D]` when the heads exist (float32: losses and EMA stay in float32), and with
        `dense_projection` the projector applied at every location, `dense_projection`
        `[B,h,w,D]` (Odin's discovery features; the same parameters, a 1x1 layer)."""
        features = self.backbone(images, train=train)
        dense = features["out"]
        pooled = self.pool(features, masks)
        out: dict[str, Any] = {
            "dense": dense,
            "features": features,
            "pooled": pooled,
            "embedding": jnp.mean(dense.astype(jnp.float32), axis=(1, 2)),
        }
        if self.projector is not None:
            out["projection"] = self.projector(pooled, train=train).astype(jnp.float32)
            if self.predictor is not None:
                out["prediction"] = self.predictor(out["projection"], train=train).astype(
                    jnp.float32
                )
            if dense_projection:
                out["dense_projection"] = self.projector(dense, train=train).astype(jnp.float32)
        return out


def build_backbone(config: ml_collections.ConfigDict) -> nn.Module:
    """The backbone named by `config.model.backbone` with `config.model.backbone_kwargs`."""
    kwargs = dict(config.model.get("backbone_kwargs", {}))
    return get_backbone(
        config.model.backbone, dtype=jnp.dtype(config.get("compute_dtype", "float32")), **kwargs
    )


def build_network(
    config: ml_collections.ConfigDict,
    *,
    pool: nn.Module | None = None,
    projector: bool = True,
    predictor: bool = False,
) -> SSLNetwork:
    """An `SSLNetwork` with the sizes of `config.model` (`projector_hidden`, `projector_dim`,
    `predictor_hidden`); pooling defaults to the global spatial mean."""
    m = config.model
    return SSLNetwork(
        backbone=build_backbone(config),
        pool=pool if pool is not None else heads.MeanPool(),
        projector=heads.MLP(m.projector_hidden, m.projector_dim) if projector else None,
        predictor=heads.MLP(m.predictor_hidden, m.projector_dim) if predictor else None,
    )
