"""Projector/predictor MLP and pooling modules (docs/METHODS.md §1.2, §5.5).

Pooling modules share one signature, `pool(features, masks=None) -> [B, R, C]`, where
`features` is the backbone's dict of dense maps (`features['out']` is `[B, h, w, C]`) and
`masks` are float weights `[B, R, h*w]`:
* `MeanPool`: global spatial mean, R = 1 (BYOL, SimCLR, MoCLR).
* `MaskPool`: mean over each mask's cells (DetCon, Odin).
* `AttentionPool`: learned spatial softmax attention, R = number of queries (VITO, docs/METHODS.md
  §7.2).
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
    """`Dense(hidden, bias) -> BatchNorm -> ReLU -> Dense(output, no bias)` (docs/METHODS.md §1.2).

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
    """Mean of the dense features over each mask's cells (DetCon, docs/METHODS.md §5.5).

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


def spatial_softmax_pool(x: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Attention-weighted spatial sum: `pooled[b, q] = sum_n softmax_n(logits[b, :, q])[n] x[b, n]`.

    Args:
      x: dense features `[B, h, w, C]`.
      logits: one logit per location and query, `[B, h, w, Q]`.

    Returns:
      `(pooled [B, Q, C], weights [B, Q, h*w])`; the weights of each query sum to 1 over space
      (softmax in float32, so a bfloat16 network still pools with normalised weights). Zero
      (or constant) logits give uniform weights, i.e. the global spatial mean.
    """
    b, h, w, c = x.shape
    if logits.shape[:3] != (b, h, w):
        raise ValueError(f"attention logits {logits.shape} do not match features {x.shape}")
    weights = jax.nn.softmax(logits.reshape(b, h * w, -1).astype(jnp.float32), axis=1)
    weights = jnp.swapaxes(weights, 1, 2)  # [B, Q, h*w]
    pooled = jnp.einsum("bqn,bnc->bqc", weights.astype(x.dtype), x.reshape(b, h * w, c))
    return pooled, weights


class AttentionPool(nn.Module):
    """Learned attention pooling (VITO's multi-scale attention pooling, one scale; §7.2).

    `1x1 conv(hidden) -> ReLU -> 1x1 conv(num_queries)` gives one logit per location and query,
    a softmax over the `h*w` locations turns them into weights, and the pooled vector is the
    weighted sum of the features. The head design is [UNVERIFIED lo] in the paper (docs/METHODS.md
    §7.7 q1); the last layer starts at zero [DEFAULT] so that training starts from global
    average pooling (the MoCLR network VITO modifies) and learns where to look.

    Attributes:
      hidden_dim: width of the hidden 1x1 conv.
      num_queries: Q, pooled vectors per image (R of the pooling signature).
      feature_key: which dense map of the backbone to pool (`stage3`, `stage4`, `out`).
      dtype: computation dtype of the convs (the softmax is float32).
      zero_init: zero-initialise the logit layer (uniform attention at step 0).
    """

    hidden_dim: int = 512
    num_queries: int = 1
    feature_key: str = "out"
    dtype: Any = jnp.float32
    zero_init: bool = True

    @nn.compact
    def __call__(
        self,
        features: dict[str, jax.Array],
        masks: jax.Array | None = None,
        *,
        return_weights: bool = False,
    ):
        """Pools.

        Args:
          features: dict of dense maps; `features[feature_key]` is `[B, h, w, C]`.
          masks: ignored (accepted for the common pooling signature).
          return_weights: also return the attention weights.

        Returns:
          `[B, Q, C]` in the features' dtype, and with `return_weights` the weights
          `[B, Q, h*w]` (float32, each row sums to 1).
        """
        del masks
        if self.feature_key not in features:
            raise ValueError(
                f"AttentionPool: no feature map {self.feature_key!r}; the backbone gives "
                f"{sorted(features)}"
            )
        x = features[self.feature_key]
        h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(x)  # a 1x1 conv
        h = nn.relu(h)
        logit_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        logits = nn.Dense(
            self.num_queries, dtype=self.dtype, kernel_init=logit_init, name="logits"
        )(h)
        pooled, weights = spatial_softmax_pool(x, logits)
        return (pooled, weights) if return_weights else pooled
