"""Projector/predictor MLP and pooling modules (METHODS.md §1.2, §5.5).

Pooling modules share one signature, `pool(features, masks=None) -> [B, R, C]`, where
`features` is the backbone's dict of dense maps (`features['out']` is `[B, h, w, C]`) and
`masks` are float weights `[B, R, h*w]`:
* `MeanPool`: global spatial mean, R = 1 (BYOL, SimCLR, MoCLR).
* `MaskPool`: mean over each mask's cells (DetCon, Odin).
* Attention pooling (VITO, METHODS.md §7.2) will be added here later with the same signature.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Haiku's default `hk.Linear` init is TruncatedNormal(stddev=1/sqrt(fan_in)) applied to a normal
# truncated at +-2 *without* re-scaling, i.e. an actual std of 0.8796/sqrt(fan_in). Flax's
# variance_scaling(..., 'truncated_normal') divides by that 0.8796 factor, so scale = 0.8796^2
# reproduces the Haiku distribution used by DeepMind's projector/predictor.
_HAIKU_LINEAR_INIT = nn.initializers.variance_scaling(
    0.87962566103423978**2, "fan_in", "truncated_normal"
)


class MLP(nn.Module):
    """`Dense(hidden, bias) -> BatchNorm -> ReLU -> Dense(output, no bias)` (METHODS.md §1.2).

    Works on `[..., C]`: BatchNorm normalises over every axis but the last (as Haiku does for
    DetCon's `[B, R, C]` mask features, statistics over batch x masks). Under `jax.jit` on a
    mesh the statistics are global over the sharded batch; `axis_name` is only for pmap /
    shard_map callers.

    Attributes:
      hidden_dim: width of the hidden layer (4096 for BYOL/DetCon).
      output_dim: output width (256 for BYOL/DetCon).
      dtype: computation dtype (parameters stay float32).
      bn_momentum: BatchNorm running-average momentum (Haiku `decay_rate=0.9`).
      bn_epsilon: BatchNorm epsilon.
      axis_name: optional cross-replica axis for BatchNorm statistics.
    """

    hidden_dim: int
    output_dim: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the MLP.

        Args:
          x: `[..., C]`.
          train: BatchNorm uses batch statistics (and updates `batch_stats`) when True.

        Returns:
          `[..., output_dim]` in `dtype`.
        """
        x = nn.Dense(
            self.hidden_dim,
            use_bias=True,
            dtype=self.dtype,
            kernel_init=_HAIKU_LINEAR_INIT,
            name="Dense_0",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="BatchNorm_0",  # the name LARS' default_exclude relies on ("norm")
        )(x)
        x = nn.relu(x)
        return nn.Dense(
            self.output_dim,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_HAIKU_LINEAR_INIT,
            name="Dense_1",
        )(x)


class MeanPool(nn.Module):
    """Global spatial mean of `features[feature_key]` -> `[B, 1, C]` (masks ignored)."""

    feature_key: str = "out"

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], masks: jax.Array | None = None):
        """Pools.

        Args:
          features: dict of dense maps; `features[feature_key]` is `[B, h, w, C]`.
          masks: ignored (accepted for the common pooling signature).

        Returns:
          `[B, 1, C]`.
        """
        del masks
        x = features[self.feature_key]
        return jnp.mean(x, axis=(1, 2))[:, None, :]


class MaskPool(nn.Module):
    """Mean of the dense features over each mask's cells (DetCon, METHODS.md §5.5).

    `pooled = (masks / max(area, 1)) @ features` with `area = sum(masks)` per mask, exactly the
    DeepMind code; an empty mask therefore pools to a zero vector.
    """

    feature_key: str = "out"

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], masks: jax.Array | None = None):
        """Pools.

        Args:
          features: dict of dense maps; `features[feature_key]` is `[B, h, w, C]`.
          masks: float weights `[B, R, h*w]` (row-major over h, w), e.g. binary masks from
            `common.masks.masks_from_ids`.

        Returns:
          `[B, R, C]` in the features' dtype.
        """
        if masks is None:
            raise ValueError("MaskPool needs masks [B, R, h*w].")
        x = features[self.feature_key]
        b, h, w, c = x.shape
        if masks.shape[-1] != h * w:
            raise ValueError(f"masks have {masks.shape[-1]} cells, features {h}x{w}.")
        x = x.reshape(b, h * w, c)
        masks = masks.astype(x.dtype)
        area = jnp.sum(masks, axis=-1, keepdims=True)
        weights = masks / jnp.maximum(area, 1.0)
        return jnp.einsum("brn,bnc->brc", weights, x)
