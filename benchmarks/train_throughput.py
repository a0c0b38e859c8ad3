"""Training-step throughput, FLOPs and model FLOPs utilisation; the last line printed is JSON.

Default (the CPU regression figures):

    python benchmarks/train_throughput.py [--steps 10]

reports images/s of the BYOL `local` step (random device batches: the step alone, without the
input pipeline), its FLOPs, the process's peak resident memory, and one ResNet-50
forward+backward at 224 px, batch 8, so that regressions of the backbone on XLA:CPU show.

Any method at any size, e.g. DetCon_B's paper network on one accelerator:

    python benchmarks/train_throughput.py --method detcon_b --backbone resnet50 \
        --image_size 224 --batch_size 256 --dtype bfloat16 --steps 20

builds the method's `imagenet` config with those overrides and reports the step's FLOPs (XLA's
cost analysis of the lowered step: forward, backward, augmentation, optimiser and EMA of the
whole step, counting a multiply-add as 2 FLOPs), the achieved FLOP/s and, on a chip with a known
bf16 peak (`PEAK_BF16_FLOPS`), the MFU = achieved / peak. The step runs on one device (the
first), so every figure is per chip.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Dense bf16 peak FLOP/s per chip, by a substring of `jax.Device.device_kind` (first match wins,
# so the more specific names come first). Vendors' data sheets: TPU v4 275 T, v5e 197 T, v5p
# 459 T; A100 312 T; H100 SXM and H200 989 T (without sparsity), H100 PCIe 756 T.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)

DETCON_METHODS = ("detcon_b", "detcon_s")
METHODS = ("byol", "simclr", "moclr") + DETCON_METHODS


def peak_bf16_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak FLOP/s, or None for a chip not in `PEAK_BF16_FLOPS` (CPUs)."""
    for name, peak in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def program_flops(fn, *args) -> float:
    """FLOPs of one call of `fn(*args)` as XLA's cost analysis counts them in its HLO lowered for
    the CPU (`args` are only read for their shapes and dtypes): a multiply-add counts 2.

    Lowered, not compiled, and for the CPU whatever the chip: on GPU the compiled executable's
    analysis leaves out every convolution that runs as a cuDNN custom call, and the lowered
    program's gives none (measured on an H200 with JAX 0.11, DetCon_B's ResNet-50 step at
    224 px, batch 256: 368 GFLOP compiled, 4,540 once its 1x1 convolutions are einsums; 17,150
    here; the hand count is ~16,800 for the convolutions alone). The FLOPs are the program's,
    not the chip's, so the count is the same for every backend."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
    analysis = jax.jit(fn).lower(*specs).cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per program
        analysis = analysis[0]
    if not analysis or "flops" not in analysis:
        raise RuntimeError(f"XLA gave no FLOP count for this program: {analysis!r}")
    return float(analysis["flops"])


def _time(fn, *args, repeats: int) -> float:
    out = fn(*args)  # compile
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def random_batch(config, method: str, device) -> dict[str, jax.Array]:
    """A batch of the method's keys at the config's size, already on `device`: `view1`, `view2`
    `[B, S, S, 3]` in [0, 1], `label` `[B]`, and for DetCon `mask1`, `mask2` `[B, S, S]` ids
    (an 8 x 8 grid of 64 possible ids blown up to S x S, FH-like blocks)."""
    s, b = config.data.image_size, config.batch_size
    rng = np.random.default_rng(0)
    batch = {
        "view1": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
        "view2": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, config.num_classes, b).astype(np.int32),
    }
    if method in DETCON_METHODS:
        reps = -(-s // 8)
        for key in ("mask1", "mask2"):
            coarse = rng.integers(0, 64, (b, 8, 8))
            ids = np.repeat(np.repeat(coarse, reps, 1), reps, 2)[:, :s, :s]
            batch[key] = ids.astype(np.int32)
    return {k: jax.device_put(v, device) for k, v in batch.items()}


def step_figures(config, steps: int, num_examples: int = 20_000) -> dict:
    """Compiles `config`'s training step on the first device, then times `steps` steps.

    Returns seconds per step, images/s, the step's FLOPs, achieved FLOP/s, and the MFU where
    the chip's peak is known.
    """
    from common import train

    device = jax.devices()[0]
    setup = train.build(config, num_examples=num_examples)
    with jax.default_device(device):
        state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
        batch = random_batch(config, config.method, device)
        step = jax.jit(functools.partial(train.train_step, setup), donate_argnums=0)
        flops = program_flops(functools.partial(train.train_step, setup), state, batch)
        compiled = step.lower(state, batch).compile()
        state, m = compiled(state, batch)  # first run: allocation, autotuning
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, batch)
        jax.block_until_ready(m)
        seconds = (time.perf_counter() - start) / steps
    peak = peak_bf16_flops(device.device_kind)
    out = {
        "step_s": round(seconds, 4),
        "images_per_s": round(config.batch_size / seconds, 2),
        "step_gflops": round(flops / 1e9, 2),
        "achieved_tflop_per_s": round(flops / seconds / 1e12, 4),
        "device_kind": device.device_kind,
    }
    if peak is not None:
        out["peak_bf16_tflop_per_s"] = peak / 1e12
        out["mfu"] = round(flops / seconds / peak, 4)
    return out


def method_config(
    method: str,
    backbone: str,
    image_size: int,
    batch_size: int,
    dtype: str,
    backbone_kwargs: dict | None = None,
):
    """The `imagenet` config of `method` at the given network, size and compute dtype;
    `backbone_kwargs` override the backbone's (e.g. `{"einsum_1x1": true}`)."""
    import importlib

    import ml_collections

    if method not in METHODS:
        raise ValueError(f"--method: one of {METHODS}, got {method!r}")
    config = importlib.import_module(f"experiments.{method}").get_config("imagenet")
    with config.unlocked():
        config.model.backbone = backbone
        config.data.image_size = image_size
        config.batch_size = batch_size
        config.compute_dtype = dtype
        config.num_classes = 1000
        kwargs = {**config.model.backbone_kwargs, **(backbone_kwargs or {})}
        config.model.backbone_kwargs = ml_collections.ConfigDict(kwargs)
    return config


def byol_local_images_per_s(steps: int) -> tuple[float, float]:
    """Images/s and seconds per step of the BYOL `local` training step."""
    from experiments import byol

    figures = step_figures(byol.get_config("local"), steps)
    return figures["images_per_s"], figures["step_s"]


def resnet50_fwd_bwd_seconds(repeats: int) -> float:
    from common.backbones import get_backbone

    model = get_backbone("resnet50")
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 224, 224, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=True)

    @jax.jit
    def fwd_bwd(params, x):
        def loss(p):
            out, _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                mutable=["batch_stats"],
            )  # fmt: skip
            return jnp.mean(out["out"] ** 2)

        return jax.grad(loss)(params)

    return _time(fwd_bwd, variables["params"], x, repeats=repeats)


def _machine() -> dict:
    return {
        "devices": f"{jax.device_count()}x{jax.devices()[0].platform}",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def step_setting(args: argparse.Namespace) -> dict:
    """The step a run times, as its JSON line names it."""
    keys = ("method", "backbone", "image_size", "batch_size", "dtype")
    return {k: getattr(args, k) for k in keys}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resnet50_repeats", type=int, default=3)
    parser.add_argument("--method", choices=METHODS, help="time this method's imagenet config")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--backbone_kwargs", default="{}", help='JSON, e.g. {"einsum_1x1": true}')
    args = parser.parse_args()
    if args.method:
        backbone_kwargs = json.loads(args.backbone_kwargs)
        config = method_config(
            args.method, args.backbone, args.image_size, args.batch_size, args.dtype,
            backbone_kwargs,
        )  # fmt: skip
        result = {
            **step_setting(args),
            "backbone_kwargs": backbone_kwargs,
            **step_figures(config, args.steps),
            **_machine(),
        }
        print(json.dumps(result))
        return
    from experiments import byol

    local = step_figures(byol.get_config("local"), args.steps)
    r50 = resnet50_fwd_bwd_seconds(args.resnet50_repeats)
    result = {
        "byol_local_images_per_s": local["images_per_s"],
        "byol_local_step_s": local["step_s"],
        "byol_local_step_gflops": local["step_gflops"],
        "byol_local_achieved_tflop_per_s": local["achieved_tflop_per_s"],
        "resnet50_224_b8_fwd_bwd_s": round(r50, 3),
        **_machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
