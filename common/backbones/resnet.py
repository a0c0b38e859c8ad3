"""ResNet v1 (and v2) encoders laid out exactly like Haiku's `hk.nets.ResNet` / DeepMind DetCon.

The module tree mirrors Haiku's names one to one (`initial_conv`, `initial_batchnorm`,
`block_group_{i}/block_{j}/{conv,batchnorm}_{k}`, `shortcut_conv`, `shortcut_batchnorm`,
`final_batchnorm` for v2), so that `haiku_import` is a pure renaming and DeepMind's released Haiku
checkpoints give identical features. Facts that matter for that parity:

* Bottleneck v1 blocks put the stride on the 3x3 conv ("ResNet v1.5"); basic blocks on the first
  3x3 conv. The shortcut is a strided 1x1 conv + BN on the first block of a group when
  `use_projection` says so (always for bottleneck nets, groups 1-3 for ResNet-18/34).
* All convs are bias-free and use `'SAME'` padding. `lax`'s `'SAME'` is TensorFlow's: on stride 2
  the odd extra pixel of padding goes bottom/right, which is what Haiku uses too; an explicit
  symmetric padding (PyTorch style) would shift every feature map by one pixel.
* BatchNorm: decay 0.9, eps 1e-5, variance as E[x^2] - E[x]^2 (Haiku and Flax's fast variance
  agree). Haiku zero-initialises the scale of the last BN in *bottleneck* blocks only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# depth -> (blocks per group, bottleneck). Channels follow from `base_width` (see `ResNet`).
RESNET_CONFIGS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}


class ConvAsMatmul(nn.Module):
    """Bias-free `'SAME'` convolution written as one matmul over `k x k x Cin` patches.

    Two layers of the ResNet run this way on XLA:CPU, where a matmul is much faster than the
    convolution's own backward:

    * 1x1 convolutions (`kernel_size=1`): the "patches" are the input itself (a 1x1 kernel never
      pads, and stride `s` keeps pixels `0, s, 2s, ...`: one strided slice). Forward+backward
      runs 2.3-7x faster than `lax.conv` at ResNet-50 shapes (`benchmarks/layer_profile.py`).
    * the 7x7 stride-2 stem on the image: the image needs no gradient, so the backward is only
      the weight gradient `patches^T @ dy`, one matmul. 284 vs 108 ms forward+backward at batch
      8, 224 px (building the patches is ~65 ms of the 108). Worth it only for few input
      channels (the patches are `k * k` times the input); at the `local` 3x3 stride-1 stem it is
      slower (35 vs 19 ms).

    The patches are the `k * k` strided slices of the padded input, concatenated on channels in
    `(row, col, channel)` order, the row-major flattening of `nn.Conv`'s `[k, k, Cin, Cout]`
    kernel: same parameter (name, layout, LeCun-normal initialiser), so checkpoints and the
    Haiku converter do not care which implementation ran; same function, float32 summation
    order aside. The product is a 2-D matmul: XLA:CPU runs the stem's weight gradient 2x faster
    than as the equivalent 4-D einsum, and the 1x1 layers equally fast or faster.

    Attributes:
      features: output channels `Cout`.
      kernel_size: `k`.
      stride: spatial stride.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution.

        Args:
          x: `[B, H, W, Cin]`.

        Returns:
          `[B, ceil(H/stride), ceil(W/stride), Cout]` in `dtype`.
        """
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        patches = jnp.concatenate(_sliding_windows(x, k, self.stride, pad_value=0.0), axis=-1)
        b, h, w, p = patches.shape
        y = patches.reshape(b * h * w, p) @ kernel.reshape(p, self.features)
        return y.reshape(b, h, w, self.features)


def _sliding_windows(x: jax.Array, k: int, stride: int, pad_value: float) -> list[jax.Array]:
    """The `k * k` strided slices of `x` padded TensorFlow-`'SAME'`-style (extra pixel of
    padding bottom/right), in row-major window order: slice `(i, j)` holds, at each output
    position, the input pixel at window offset `(i, j)`.

    Args:
      x: `[B, H, W, C]`.

    Returns:
      `k * k` arrays `[B, ceil(H/stride), ceil(W/stride), C]`.
    """
    (top, bottom), (left, right) = jax.lax.padtype_to_pads(
        x.shape[1:3], (k, k), (stride, stride), "SAME"
    )
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    out_h = -(-(x.shape[1] - top - bottom) // stride)
    out_w = -(-(x.shape[2] - left - right) // stride)
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    return [
        x[:, i : i + span_h : stride, j : j + span_w : stride, :]
        for i in range(k)
        for j in range(k)
    ]


def max_pool_as_slices(x: jax.Array) -> jax.Array:
    """Haiku's stem max-pool (3x3, stride 2, TF `'SAME'`, -inf padding) as the maximum of its
    nine strided window slices.

    The forward is bitwise `nn.max_pool`'s. The backward differs only at ties: `reduce_window`'s
    gradient (`select_and_scatter`) goes to one maximal pixel, `jnp.maximum`'s is split between
    them. In a v1 stem the pool follows a ReLU, so ties are zeros whose gradient the ReLU drops
    anyway, and the parameter gradients agree to rounding (in v2 ties need two equal floats).
    On XLA:CPU, forward + backward at batch 8 on ResNet-50's 112 x 112 x 64 map: 119 vs 169 ms
    on Gaussian inputs (`benchmarks/layer_profile.py`), 28 vs 175 ms in a one-off measurement
    on ReLU outputs (half of them zeros).

    Args:
      x: `[B, H, W, C]`.

    Returns:
      `[B, ceil(H/2), ceil(W/2), C]`.
    """
    return functools.reduce(jnp.maximum, _sliding_windows(x, 3, 2, pad_value=-jnp.inf))


def _conv(
    features: int,
    kernel: int,
    stride: int,
    *,
    name: str,
    dtype: Dtype,
    einsum_1x1: bool,
) -> nn.Module:
    """A bias-free `'SAME'` conv (Haiku's `Conv2D(with_bias=False, padding='SAME')`)."""
    if kernel == 1 and einsum_1x1:
        return ConvAsMatmul(features, 1, stride, dtype=dtype, name=name)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _batch_norm(
    train: bool,
    *,
    name: str,
    dtype: Dtype,
    axis_name: str | None,
    zero_scale: bool = False,
    two_pass_variance: bool = False,
) -> nn.BatchNorm:
    """Haiku-equivalent BatchNorm (decay 0.9, eps 1e-5); statistics in `batch_stats`.

    `two_pass_variance`: the batch variance as E[(x - E[x])^2] instead of Haiku's one-pass
    E[x^2] - E[x]^2 (see `ResNet.bn_two_pass_variance`)."""
    return nn.BatchNorm(
        use_fast_variance=not two_pass_variance,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        axis_name=axis_name,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


def _norm_factory(module: nn.Module, train: bool) -> Callable[..., nn.BatchNorm]:
    """`_batch_norm` with a block's or network's `dtype`, `bn_axis_name` and
    `bn_two_pass_variance`; called with `name=` (and `zero_scale=`)."""
    return functools.partial(
        _batch_norm, train, dtype=module.dtype, axis_name=module.bn_axis_name,
        two_pass_variance=module.bn_two_pass_variance,
    )  # fmt: skip


class BlockV1(nn.Module):
    """Post-activation residual block (Haiku `BlockV1`), basic or bottleneck.

    Bottleneck: 1x1 (C/4) -> BN -> ReLU -> 3x3 (C/4, stride) -> BN -> ReLU -> 1x1 (C) -> BN;
    basic: 3x3 (C, stride) -> BN -> ReLU -> 3x3 (C) -> BN. Then add the shortcut and ReLU.

    Attributes:
      channels: output channels C.
      stride: stride of the block (on the 3x3 conv of a bottleneck, the first conv otherwise).
      use_projection: 1x1 conv + BN on the shortcut.
      bottleneck: bottleneck (3 convs) or basic (2 convs) block.
      zero_init_last_bn: initialise the scale of the last BN to zero, so that a fresh block is
        `relu(shortcut)`.
      dtype: compute dtype.
      bn_axis_name: `axis_name` for BatchNorm under `shard_map`/`pmap` (not needed under `jit`).
      einsum_1x1: implement 1x1 convs as matmuls (`ConvAsMatmul`).
      bn_two_pass_variance: BatchNorm's batch variance in two passes (`ResNet`).
    """

    channels: int
    stride: int
    use_projection: bool
    bottleneck: bool
    zero_init_last_bn: bool
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    einsum_1x1: bool = False
    bn_two_pass_variance: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x `[B, H, W, Cin]`. Returns `[B, H/stride, W/stride, C]`."""
        conv = functools.partial(_conv, dtype=self.dtype, einsum_1x1=self.einsum_1x1)
        norm = _norm_factory(self, train)
        shortcut = x
        if self.use_projection:
            shortcut = conv(self.channels, 1, self.stride, name="shortcut_conv")(x)
            shortcut = norm(name="shortcut_batchnorm")(shortcut)

        if self.bottleneck:
            c = self.channels // 4
            specs = ((c, 1, 1), (c, 3, self.stride), (self.channels, 1, 1))
        else:
            specs = ((self.channels, 3, self.stride), (self.channels, 3, 1))
        out = x
        for i, (features, kernel, stride) in enumerate(specs):
            last = i == len(specs) - 1
            out = conv(features, kernel, stride, name=f"conv_{i}")(out)
            out = norm(name=f"batchnorm_{i}", zero_scale=last and self.zero_init_last_bn)(out)
            if not last:
                out = nn.relu(out)
        return nn.relu(out + shortcut)


class BlockV2(nn.Module):
    """Pre-activation residual block (Haiku `BlockV2`): (BN -> ReLU -> conv) x 2 or 3, + shortcut.

    The projection shortcut (1x1 conv, no BN) reads the first pre-activation, as in Haiku.
    Attributes as in `BlockV1` (`zero_init_last_bn` is ignored: Haiku's v2 has no such init and
    its last BN precedes the last conv, so zeroing it would not give an identity block).
    """

    channels: int
    stride: int
    use_projection: bool
    bottleneck: bool
    zero_init_last_bn: bool = False
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    einsum_1x1: bool = False
    bn_two_pass_variance: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x `[B, H, W, Cin]`. Returns `[B, H/stride, W/stride, C]` (pre-activation)."""
        conv = functools.partial(_conv, dtype=self.dtype, einsum_1x1=self.einsum_1x1)
        norm = _norm_factory(self, train)
        if self.bottleneck:
            c = self.channels // 4
            specs = ((c, 1, 1), (c, 3, self.stride), (self.channels, 1, 1))
        else:
            specs = ((self.channels, 3, self.stride), (self.channels, 3, 1))
        shortcut = x
        for i, (features, kernel, stride) in enumerate(specs):
            x = nn.relu(norm(name=f"batchnorm_{i}")(x))
            if i == 0 and self.use_projection:
                shortcut = conv(self.channels, 1, self.stride, name="shortcut_conv")(x)
            x = conv(features, kernel, stride, name=f"conv_{i}")(x)
        return x + shortcut


class BlockGroup(nn.Module):
    """`num_blocks` residual blocks; the first carries the stride and the projection.

    Attributes:
      block_kwargs: keyword arguments shared by all blocks (`channels`, `bottleneck`, ...).
      num_blocks: number of blocks.
      stride: stride of the first block.
      use_projection: projection shortcut on the first block.
      resnet_v2: `BlockV2` instead of `BlockV1`.
    """

    block_kwargs: dict
    num_blocks: int
    stride: int
    use_projection: bool
    resnet_v2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x `[B, H, W, Cin]`. Returns `[B, H/stride, W/stride, C]`."""
        block_cls = BlockV2 if self.resnet_v2 else BlockV1
        for i in range(self.num_blocks):
            x = block_cls(
                stride=self.stride if i == 0 else 1,
                use_projection=self.use_projection and i == 0,
                name=f"block_{i}",
                **self.block_kwargs,
            )(x, train)
        return x


class ResNet(nn.Module):
    """ResNet encoder returning dense maps (DetCon's `ResNetTorso`, `final_mean_pool=False`).

    Channels: stem `base_width * width_multiplier`; groups `base_width * width_multiplier *
    (1, 2, 4, 8)` for basic blocks and `* (4, 8, 16, 32)` for bottleneck blocks. The defaults
    (`base_width=64`) are Haiku's / DetCon's; a smaller `base_width` and `blocks_per_group`
    give tiny networks for tests and local runs.

    Attributes:
      depth: 18, 34, 50, 101, 152 or 200 (sets blocks per group and the block type).
      width_multiplier: integer channel multiplier (DetCon's `width_multiplier`).
      small_stem: 3x3 stride-1 stem conv and no max-pool (output stride 8 instead of 32), for
        small (e.g. 64 px) inputs. Not compatible with Haiku checkpoints (the stem kernel differs).
      base_width: stem channels at `width_multiplier=1` (64 in Haiku).
      blocks_per_group: overrides the blocks per group of `depth` (e.g. `(1, 1, 1, 1)`).
      resnet_v2: pre-activation (Haiku `resnet_v2=True`) instead of v1.
      zero_init_last_bn: zero-init the scale of each block's last BN. `None` follows Haiku:
        bottleneck v1 blocks only. Ignored for v2.
      dtype: compute dtype (bfloat16 on accelerators); parameters and BN statistics stay float32.
      bn_axis_name: BatchNorm `axis_name` for `shard_map`/`pmap`. Under `jax.jit` on a mesh
        leave it `None`: batch statistics are then global over the sharded batch anyway.
      einsum_1x1: implement 1x1 convs as matmuls (`ConvAsMatmul`, same parameters). On XLA:CPU a
        1x1 layer's forward+backward runs 2.3-7x faster as an einsum (ResNet-50 shapes, batch 8),
        so the `local` configs turn it on (`benchmarks/peer_race.py` races the whole step). Off
        by default because it is not bit-exact with Haiku: with `nn.Conv` a ResNet-50
        reproduces Haiku's features exactly (error 0.0 on XLA:CPU, both BN modes). With the
        einsum, inference is still exact, but in training mode the batch statistics see
        float32-rounding-level differences that BatchNorm amplifies to ~1e-3 at stage 4
        (random-weight R50, batch 2 at 224 px; the same amount by which Haiku differs from
        itself between eager and jit execution).
      cpu_stem: for the 7x7 stride-2 stem (ignored with `small_stem`), its conv as one patches
        matmul (`ConvAsMatmul`) and its max-pool as a maximum of strided slices
        (`max_pool_as_slices`): same parameters and function; on XLA:CPU forward+backward about
        3x faster for the conv and 1.4-6x for the pool, 1.04x on a whole ResNet-50. Off by
        default (accelerators run `nn.Conv` and `reduce_window` well).
      bn_two_pass_variance: BatchNorm's batch variance as E[(x - E[x])^2] (two reductions)
        instead of Haiku's E[x^2] - E[x]^2 (one). The one-pass form cancels catastrophically in
        channels whose mean is large against their spread, which amplifies the float32 rounding
        of the batch sums: one vs two processes (gloo, same global batch) differ by 2e-5 in the
        parameters after 2 steps on the `natural` scenes, 7e-8 with two passes
        (tests/test_multiprocess.py). Off by default: Haiku, hence DeepMind's BYOL / DetCon,
        use the one-pass form, and a ResNet-50 in training mode then reproduces Haiku to 1e-4
        (two passes: 4e-4 at stage 3, random weights at 224 px, where the two-pass figure is
        the more accurate one).
    """

    depth: int = 50
    width_multiplier: int = 1
    small_stem: bool = False
    base_width: int = 64
    blocks_per_group: Sequence[int] | None = None
    resnet_v2: bool = False
    zero_init_last_bn: bool | None = None
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    einsum_1x1: bool = False
    cpu_stem: bool = False
    bn_two_pass_variance: bool = False

    @property
    def bottleneck(self) -> bool:
        """Whether the blocks are bottleneck blocks."""
        return _config(self.depth)[1]

    @property
    def channels_per_group(self) -> tuple[int, int, int, int]:
        """Output channels of the four block groups."""
        mult = (4, 8, 16, 32) if self.bottleneck else (1, 2, 4, 8)
        return tuple(m * self.base_width * self.width_multiplier for m in mult)

    @property
    def zero_init_residual(self) -> bool:
        """Whether the blocks' last BN scale starts at zero (resolves `zero_init_last_bn=None`)."""
        if self.resnet_v2:
            return False
        if self.zero_init_last_bn is None:
            return self.bottleneck  # Haiku: BlockV1 zero-inits batchnorm_2 only
        return self.zero_init_last_bn

    @property
    def stage_strides(self) -> tuple[int, int, int, int]:
        """Pixels per feature cell of `stage1` .. `stage4`."""
        first = 1 if self.small_stem else 4
        return (first, 2 * first, 4 * first, 8 * first)

    @property
    def output_stride(self) -> int:
        """Pixels per feature cell of `out` (32, or 8 with `small_stem`)."""
        return self.stage_strides[-1]

    @property
    def out_channels(self) -> int:
        """Channels of `out`."""
        return self.channels_per_group[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Computes the feature pyramid.

        Args:
          x: `[B, S, S, 3]` normalised images (any spatial size; stride-2 layers round up).
          train: batch statistics (and their EMA update, with `mutable=['batch_stats']`) if True,
            stored statistics otherwise.

        Returns:
          `{'stage1': [B, S/s1, S/s1, C1], ..., 'stage4': [B, S/s4, S/s4, C4], 'out': stage4}`
          with `s_i = stage_strides[i]`, `C_i = channels_per_group[i]`, in `dtype`. For v2 the
          stages are the pre-activation sums and `out` is `relu(final_batchnorm(stage4))`.
        """
        blocks, bottleneck = _config(self.depth)
        if self.blocks_per_group is not None:
            blocks = tuple(self.blocks_per_group)
            if len(blocks) != 4:
                raise ValueError(f"blocks_per_group must have 4 entries, got {blocks}")
        # Haiku: every group of a bottleneck net projects; basic nets skip group 0 because the
        # stem already has the group-0 width.
        use_projection = (True,) * 4 if bottleneck else (False, True, True, True)
        norm = _norm_factory(self, train)

        stem_width = self.base_width * self.width_multiplier
        if self.small_stem:
            x = _conv(stem_width, 3, 1, name="initial_conv", dtype=self.dtype, einsum_1x1=False)(x)
        elif self.cpu_stem:
            x = ConvAsMatmul(stem_width, 7, 2, dtype=self.dtype, name="initial_conv")(x)
        else:
            x = _conv(stem_width, 7, 2, name="initial_conv", dtype=self.dtype, einsum_1x1=False)(x)
        if not self.resnet_v2:
            x = nn.relu(norm(name="initial_batchnorm")(x))
        if not self.small_stem:
            if self.cpu_stem:
                x = max_pool_as_slices(x)
            else:
                # Same reduce_window as hk.max_pool: -inf padding, TF 'SAME' (extra pad
                # bottom/right).
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")

        block_kwargs = dict(
            bottleneck=bottleneck,
            zero_init_last_bn=self.zero_init_residual,
            dtype=self.dtype,
            bn_axis_name=self.bn_axis_name,
            einsum_1x1=self.einsum_1x1,
            bn_two_pass_variance=self.bn_two_pass_variance,
        )
        features = {}
        for i, (channels, num_blocks, stride) in enumerate(
            zip(self.channels_per_group, blocks, (1, 2, 2, 2))
        ):
            x = BlockGroup(
                block_kwargs={**block_kwargs, "channels": channels},
                num_blocks=num_blocks,
                stride=stride,
                use_projection=use_projection[i],
                resnet_v2=self.resnet_v2,
                name=f"block_group_{i}",
            )(x, train)
            features[f"stage{i + 1}"] = x
        if self.resnet_v2:
            x = nn.relu(norm(name="final_batchnorm")(x))
        features["out"] = x
        return features


def _config(depth: int) -> tuple[tuple[int, int, int, int], bool]:
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"Unsupported ResNet depth {depth}; valid: {sorted(RESNET_CONFIGS)}")
    return RESNET_CONFIGS[depth]
