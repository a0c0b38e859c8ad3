"""Vision Transformer encoder (pre-LN, CLS token, learned positional embeddings) for dense features.

Architecture as in ViT/DeiT/DINO: non-overlapping patch embedding (conv with kernel = stride =
patch), a CLS token, learned absolute positional embeddings, `depth` pre-LN blocks
(`x + MHA(LN(x))`, `x + MLP(LN(x))`, MLP ratio 4, exact GELU, LayerNorm eps 1e-6) and a final
LayerNorm. The encoder returns the patch tokens as a dense map (CLS dropped), so the same mask
pooling as for ResNets applies, with `output_stride = patch_size`.

The positional-embedding parameter has the fixed grid of `image_size`; other input sizes get a
bicubic interpolation of it (the CLS embedding is kept as is), as DINO does at evaluation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

VIT_CONFIGS: dict[str, dict[str, int]] = {
    # name: width (embedding dim), depth (blocks), num_heads
    "s": dict(width=384, depth=12, num_heads=6),
    "b": dict(width=768, depth=12, num_heads=12),
}

LN_EPSILON = 1e-6


def resize_pos_embed(pos_grid: jax.Array, new_hw: tuple[int, int], method: str) -> jax.Array:
    """Interpolates a grid of positional embeddings.

    Args:
      pos_grid: `[g_h, g_w, C]` embeddings of the patch grid at the init resolution.
      new_hw: target grid `(h, w)`.
      method: `jax.image.resize` method (`'bicubic'`, `'bilinear'`, ...).

    Returns:
      `[h, w, C]`; `pos_grid` itself (no arithmetic) when the grid is unchanged.
    """
    if tuple(pos_grid.shape[:2]) == tuple(new_hw):
        return pos_grid
    # No antialiasing: the embeddings are samples of a smooth function of position, and
    # antialiasing on downsampling would blur them more than a plain interpolation.
    return jax.image.resize(
        pos_grid, (*new_hw, pos_grid.shape[-1]), method=method, antialias=False
    ).astype(pos_grid.dtype)


class MlpBlock(nn.Module):
    """Dense(hidden) -> GELU -> Dense(out).

    Attributes:
      hidden_dim: hidden width.
      dtype: compute dtype.
    """

    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x `[B, N, C]`. Returns `[B, N, C]`."""
        dense = lambda features, name: nn.Dense(
            features,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            name=name,
        )
        out_dim = x.shape[-1]
        x = dense(self.hidden_dim, "fc1")(x)
        # Exact (erf) GELU, as in the reference ViT / DINO weights.
        x = nn.gelu(x, approximate=False)
        return dense(out_dim, "fc2")(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block.

    Attributes:
      num_heads: attention heads.
      mlp_dim: MLP hidden width.
      dtype: compute dtype.
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x `[B, N, C]` tokens. Returns `[B, N, C]`."""
        y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            force_fp32_for_softmax=True,
            deterministic=True,
            name="attn",
        )(y)
        x = x + y
        y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm2")(x)
        return x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class ViT(nn.Module):
    """ViT encoder returning the patch-token grid.

    Attributes:
      patch_size: patch side in pixels (= `output_stride`).
      width: embedding dim C.
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / C.
      image_size: input side the positional-embedding parameter is made for
        (`(image_size // patch_size)**2` patch embeddings + 1 for CLS).
      pos_interp: `jax.image.resize` method for other resolutions.
      dtype: compute dtype (bfloat16 on accelerators); parameters stay float32.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224
    pos_interp: str = "bicubic"
    dtype: Dtype = jnp.float32

    @property
    def output_stride(self) -> int:
        """Pixels per feature cell of `out`."""
        return self.patch_size

    @property
    def out_channels(self) -> int:
        """Channels of `out`."""
        return self.width

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Encodes images.

        Args:
          x: `[B, H, W, 3]` normalised images; H and W should be multiples of `patch_size`
            (the remainder is cropped by the patch embedding).
          train: unused (no dropout or BatchNorm); accepted for the common backbone interface.

        Returns:
          `{'out': [B, h, w, C], 'block_{i}': [B, h, w, C] for i < depth}` with
          `h, w = H // patch_size, W // patch_size`; `out` is after the final LayerNorm, the
          `block_{i}` maps are the raw outputs of block i (patch tokens only), in `dtype`.
        """
        del train
        p = self.patch_size
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            name="patch_embed",
        )(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)

        init = nn.initializers.truncated_normal(stddev=0.02)
        cls = self.param("cls_token", init, (1, 1, c))
        g = self.image_size // p
        pos = self.param("pos_embed", init, (1, 1 + g * g, c))
        pos_grid = resize_pos_embed(pos[0, 1:].reshape(g, g, c), (h, w), self.pos_interp)
        x = x + pos_grid.reshape(1, h * w, c).astype(x.dtype)
        cls = (cls + pos[:, :1]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)), x], axis=1)

        features = {}
        mlp_dim = int(self.width * self.mlp_ratio)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, mlp_dim, dtype=self.dtype, name=f"block_{i}")(x)
            # Unused maps are removed by XLA under jit, so returning them costs nothing.
            features[f"block_{i}"] = x[:, 1:].reshape(b, h, w, c)
        x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="final_norm")(x)
        features["out"] = x[:, 1:].reshape(b, h, w, c)
        return features
