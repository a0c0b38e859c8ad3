"""Supervised pretraining: backbone + linear classifier trained by cross-entropy on `label`.

The reference row of the evaluation tables ("Supervised" in Odin's object-discovery table,
docs/METHODS.md §9), and the positive control of the evaluator tests: features trained with labels
must beat a random initialisation on every evaluator. Unlike the online linear monitor (trained on
stop-gradient features), this classifier's gradients flow into the backbone.

Network: backbone -> global mean pool -> linear classifier (in the `projector` slot of
`SSLNetwork`, so its `projection` output holds the logits `[B, 1, num_classes]`). One augmented
view (`view1`, the `config.augment.view1` preset) per image.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from common import heads
from common.method import Method
from common.network import SSLNetwork, build_backbone


class LinearHead(nn.Module):
    """`[..., C] -> [..., num_classes]` logits (a `train` flag for the projector signature)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return nn.Dense(self.num_classes, name="classifier")(x)


class Supervised(Method):
    augmented_views = {"view1": "view1"}

    def build_networks(self):
        return {
            "online": SSLNetwork(
                backbone=build_backbone(self.config),
                pool=heads.MeanPool(),
                projector=LinearHead(self.config.num_classes),
            )
        }

    def loss(self, nets, batch, rng, step):
        del rng, step
        out = nets("online", batch["view1"])
        logits = out["projection"][:, 0]
        labels = batch["label"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        aux = {
            "embedding": out["embedding"],
            # Collapse metrics on the pooled features (the logits are not a representation).
            "projection": out["pooled"][:, 0].astype(jnp.float32),
            "metrics": {"train_top1": jnp.mean(jnp.argmax(logits, -1) == labels)},
        }
        return loss, aux
