"""The FLOP count behind `benchmarks/train_throughput.py`'s MFU, against counts by hand."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks.train_throughput import peak_bf16_flops, program_flops
from common.backbones import get_backbone


def _valid_taps(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(kernel taps that land inside the image, summed over the output positions; output size)
    of one axis of a TF-`'SAME'` convolution (padding split low/high with the odd pixel high).
    XLA counts multiply-adds only where the kernel meets the image, not the zero padding."""
    out = -(-size // stride)
    low = max((out - 1) * stride + kernel - size, 0) // 2
    taps = sum(sum(0 <= o * stride - low + t < size for t in range(kernel)) for o in range(out))
    return taps, out


def _conv_flops(batch, size, cin, cout, kernel, stride) -> tuple[int, int]:
    """2 FLOPs per multiply-add of a square conv; returns (FLOPs, output size)."""
    taps, out = _valid_taps(size, kernel, stride)
    return 2 * batch * cin * cout * taps * taps, out


@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 1), (9, 3, 2), (8, 7, 2), (6, 1, 2)])
def test_conv_flops_match_hand_count(size, kernel, stride):
    x, w = jnp.ones((2, size, size, 4)), jnp.ones((kernel, kernel, 4, 5))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    expected, _ = _conv_flops(2, size, 4, 5, kernel, stride)
    assert program_flops(conv, x, w) == expected
    # The gradient of a sum needs no forward value: the input and the weight gradient are one
    # conv each, with the forward conv's multiply-adds.
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1)))
    assert program_flops(grad, x, w) == 2 * expected


def _small_resnet_hand_count(batch: int, size: int, width: int) -> tuple[int, int]:
    """Conv FLOPs of the small-stem, one-block-per-stage ResNet-18 layout, and the number of
    conv output elements (each then goes through a BatchNorm and most through a ReLU)."""
    flops = elements = 0
    f, n = _conv_flops(batch, size, 3, width, 3, 1)
    flops, elements = flops + f, elements + batch * n * n * width
    cin = width
    for i, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
        s = 1 if i == 0 else 2
        f1, n1 = _conv_flops(batch, n, cin, c, 3, s)
        f2, _ = _conv_flops(batch, n1, c, c, 3, 1)
        flops, elements = flops + f1 + f2, elements + 2 * batch * n1 * n1 * c
        if i > 0:  # projection shortcut
            f3, _ = _conv_flops(batch, n, cin, c, 1, s)
            flops, elements = flops + f3, elements + batch * n1 * n1 * c
        n, cin = n1, c
    return flops, elements


@pytest.mark.parametrize("train", [False, True])
def test_small_resnet_flops_match_hand_count(train):
    model = get_backbone("resnet18", base_width=8, blocks_per_group=(1, 1, 1, 1), small_stem=True)
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    apply = jax.jit(
        lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"] if train else False)
    )
    xla = program_flops(apply, variables, x)
    convs, elements = _small_resnet_hand_count(2, 16, 8)
    # The convs' multiply-adds exactly, plus BatchNorm / ReLU / residual adds: a few FLOPs per
    # conv output element (about 5 at inference, 8 with batch statistics), never 10.
    assert convs + 2 * elements <= xla <= convs + 10 * elements, (xla, convs, elements)


def test_peak_table():
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("TPU v5 lite") == 197e12
    assert peak_bf16_flops("TPU v5p") == 459e12
    assert peak_bf16_flops("TPU v4") == 275e12
    assert peak_bf16_flops("cpu") is None
