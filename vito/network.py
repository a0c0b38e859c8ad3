"""VITO's network: backbone -> attention pooling per scale -> projector (-> predictor) per scale.

docs/METHODS.md §7.2 [UNVERIFIED lo/med]: multi-scale attention pooling replaces MoCLR's global mean
before the projector, on the last two ResNet stages. Each scale has its own `AttentionPool`,
projector and (online) predictor; with `combine='concat'` the pooled vectors of the scales are
concatenated before one projector instead (the alternative the paper leaves open).

The `embedding` output (linear monitor, evaluators) stays the spatial mean of the backbone's
`out` map: downstream transfer uses the backbone only, the attention heads are discarded
(§7.2 [DEFAULT]), and evaluators call the network on whole images without masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from common import heads
from common.network import build_backbone

COMBINES = ("sum_losses", "concat")


class MultiScaleNetwork(nn.Module):
    """Backbone with one attention pooling (and heads) per scale.

    Attributes:
      backbone: images `[B,S,S,3]` -> dict of dense maps (`stage1`..`stage4`, `out`).
      scales: the backbone maps pooled, e.g. `('stage3', 'stage4')`.
      attention_hidden: hidden width of each attention head.
      num_queries: Q, attention queries (pooled vectors) per scale.
      combine: `sum_losses` (per-scale heads, one loss per scale) or `concat` (the scales'
        pooled vectors concatenated, one projector).
      projector_hidden, projector_dim, predictor_hidden: MLP sizes (as `config.model`).
      predictor: whether the network has predictors (online) or not (EMA target).
      dtype: computation dtype of the heads.
    """

    backbone: nn.Module
    scales: Sequence[str] = ("stage3", "stage4")
    attention_hidden: int = 512
    num_queries: int = 1
    combine: str = "sum_losses"
    projector_hidden: int = 4096
    projector_dim: int = 256
    predictor_hidden: int = 4096
    predictor: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        masks: jax.Array | None = None,
        *,
        train: bool,
        return_attention: bool = False,
    ) -> dict[str, Any]:
        """Returns `dense` `[B,h,w,C]`, `features`, `embedding` `[B,C]` (float32 spatial mean of
        `dense`), `pooled` (per scale `[B,Q,C_s]`, a tuple), `projection` and `prediction`
        (`[B, n, Q, D]` float32, n = number of scales for `sum_losses`, 1 for `concat`), and with
        `return_attention` `attention` (per scale `[B,Q,h_s*w_s]` float32)."""
        del masks  # the pooling is learned, not given by masks
        if self.combine not in COMBINES:
            raise ValueError(f"method_kwargs.combine: {self.combine!r} not in {COMBINES}")
        if not self.scales:
            raise ValueError("method_kwargs.scales: at least one backbone stage is needed")
        features = self.backbone(images, train=train)
        dense = features["out"]
        pooled, attention = [], []
        for scale in self.scales:
            p, w = heads.AttentionPool(
                self.attention_hidden, self.num_queries, feature_key=scale, dtype=self.dtype,
                name=f"attention_{scale}",
            )(features, return_weights=True)  # fmt: skip
            pooled.append(p)
            attention.append(w)
        if self.combine == "concat":
            inputs = [jnp.concatenate([p.astype(jnp.float32) for p in pooled], axis=-1)]
            names = ["concat"]
        else:
            inputs, names = pooled, list(self.scales)
        projections, predictions = [], []
        for x, name in zip(inputs, names):
            z = heads.MLP(
                self.projector_hidden, self.projector_dim, dtype=self.dtype,
                name=f"projector_{name}",
            )(x, train=train)  # fmt: skip
            projections.append(z.astype(jnp.float32))
            if self.predictor:
                q = heads.MLP(
                    self.predictor_hidden, self.projector_dim, dtype=self.dtype,
                    name=f"predictor_{name}",
                )(z, train=train)  # fmt: skip
                predictions.append(q.astype(jnp.float32))
        out: dict[str, Any] = {
            "dense": dense,
            "features": features,
            "embedding": jnp.mean(dense.astype(jnp.float32), axis=(1, 2)),
            "pooled": tuple(pooled),
            "projection": jnp.stack(projections, axis=1),
        }
        if predictions:
            out["prediction"] = jnp.stack(predictions, axis=1)
        if return_attention:
            out["attention"] = tuple(attention)
        return out


def build_multiscale_network(
    config: ml_collections.ConfigDict, *, predictor: bool
) -> MultiScaleNetwork:
    """A `MultiScaleNetwork` with `config.model` sizes and `config.method_kwargs` pooling."""
    m, k = config.model, config.method_kwargs
    return MultiScaleNetwork(
        backbone=build_backbone(config),
        scales=tuple(k.scales),
        attention_hidden=int(k.attention_hidden),
        num_queries=int(k.num_queries),
        combine=str(k.combine),
        projector_hidden=m.projector_hidden,
        projector_dim=m.projector_dim,
        predictor_hidden=m.predictor_hidden,
        predictor=predictor,
    )
