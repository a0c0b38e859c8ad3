"""Where the ResNet-50 training step's time goes, layer type by layer type: ours (JAX, each layer
one `jax.jit` program) against PyTorch, side by side in one process. The last line printed is
one JSON object.

    python benchmarks/layer_profile.py [--rounds 3] [--reps 3] [--batch 8] [--size 224]
        [--threads 2] [--kinds stem,conv3x3,conv1x1,batchnorm,bn_relu,relu_add,heads,augment]

At the papers' shape (batch 8, 224 px views, DetCon's 16 masks per view), every distinct layer
of a ResNet-50 v1 (bottleneck, stride on the 3x3) is timed forward + backward (the value and
the gradients of its input, unless it is the first layer, and of its parameters; the backward
gets a fixed random cotangent), once per distinct shape, and multiplied by how many times the
network holds it:

* `stem`: the 7x7 stride-2 conv (3 -> 64, no input gradient) and the 3x3 stride-2 max pool,
  two ways each: the `cpu_stem` lowering (`matmul`: `ConvAsMatmul`, one matmul over 7x7x3
  patches; `slices`: `max_pool_as_slices`) and flax's (`lax.conv`: `nn.Conv`; `flax`:
  `nn.max_pool`, a `reduce_window`);
* `conv3x3`: the seven 3x3 shapes (stride 1 and the strided first block of stages 2-4);
* `conv1x1`: the fifteen 1x1 shapes, two ways: `einsum` (our default, `ConvAsMatmul`) and
  `lax.conv` (flax's `nn.Conv`);
* `batchnorm`: the 20 BatchNorms not followed by a ReLU (a block's last, the shortcut's):
  flax's `nn.BatchNorm` in training mode (batch statistics); torch's `BatchNorm2d`;
* `bn_relu`: the 33 BatchNorms followed by a ReLU, three ways on our side: flax's
  `nn.BatchNorm` then `relu` (what the backbone runs), one hand-fused jitted elementwise
  function (`fused_bn_relu`: the same formula, one function), and the same with a hand-written
  backward (`custom_vjp`: two reductions and one elementwise pass); torch: `BatchNorm2d` then
  in-place ReLU (torchvision); `bn_relu_max_relative_difference` says how far the fused
  versions are from flax's (output and gradients);
* `relu_add`: the residual add + ReLU at each block's output;
* `heads`: the projector and predictor matmuls (2048 -> 4096 -> 256, 256 -> 4096 -> 256) on
  the B x 16 mask vectors of one view, bias-free;
* `augment`: the photometric augmentation of one view (BYOL's view 1: colour jitter,
  grayscale, blur with 23 taps; forward only): ours `common.augment.augment_batch` (on device,
  every image its own parameters); torch: torchvision's `transforms.v2` per image, as lightly's
  `BYOLView1Transform` applies them in a data loader.

Sides alternate layer by layer (the order swaps every round), `--reps` calls each (after one
warm-up call of each); reported: the median of all calls (`per_type`, `layers`) and the fastest
(`per_type_fastest`, `layers_fastest`: on a loaded machine, the least disturbed call). Both
get the same `--threads` cores (JAX: this process pinned to them; PyTorch also
`torch.set_num_threads`). `torch_over_ours` above 1 means ours is faster. `per_type` sums
count x time per layer type: a ResNet-50 forward + backward at this batch (one view), the
heads of one view, one view's augmentation. Needs the `peers` extra (torch, torchvision).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

EPS = 1e-5  # the backbone's BatchNorm epsilon (Haiku's)
NUM_MASKS = 16  # DetCon's mask vectors per view: the heads' rows are batch x 16


# ------------------------------------------------------------------------------------------
# The layers of ResNet-50 at a given view size.


def resnet50_layers(size: int) -> dict[str, list[tuple]]:
    """Distinct layer shapes of a ResNet-50 v1 and how many times each occurs.

    Returns:
      kind -> [(shape tuple, count)]: convs `(cin, cout, input size, kernel, stride)`;
      `bn_relu`: the BatchNorms followed by a ReLU (stem, first two of a block), `batchnorm`:
      the others (last of a block, shortcut), both `(size, channels)`; `block_outputs`: the
      residual adds + ReLU `(size, channels)`.
    """
    convs, relu_bns, plain_bns, outs = {}, {}, {}, {}

    def add(table, key, n=1):
        table[key] = table.get(key, 0) + n

    s = -(-size // 2)  # after the stem conv
    add(convs, (3, 64, size, 7, 2))
    add(relu_bns, (s, 64))
    s = -(-s // 2)  # after the max pool
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            out = -(-s // stride)
            add(convs, (cin, width, s, 1, 1))
            add(relu_bns, (s, width))
            add(convs, (width, width, s, 3, stride))
            add(relu_bns, (out, width))
            add(convs, (width, 4 * width, out, 1, 1))
            add(plain_bns, (out, 4 * width))
            if b == 0:  # projection shortcut
                add(convs, (cin, 4 * width, s, 1, stride))
                add(plain_bns, (out, 4 * width))
            add(outs, (out, 4 * width))
            cin, s = 4 * width, out
    return {
        "stem": [(k, n) for k, n in convs.items() if k[3] == 7],
        "conv3x3": [(k, n) for k, n in convs.items() if k[3] == 3],
        "conv1x1": [(k, n) for k, n in convs.items() if k[3] == 1],
        "bn_relu": list(relu_bns.items()),
        "batchnorm": list(plain_bns.items()),
        "block_outputs": list(outs.items()),
    }


def head_matmuls() -> list[tuple[tuple[int, int], int]]:
    """(din, dout) of the projector's and the predictor's layers (papers' widths) and how many
    there are."""
    return [((2048, 4096), 1), ((4096, 256), 2), ((256, 4096), 1)]


# ------------------------------------------------------------------------------------------
# Our side: one jitted program per layer.


def fused_bn_relu(x, scale, bias):
    """BatchNorm (batch statistics, variance E[x^2] - E[x]^2 as flax's) + ReLU, one function:
    `[B, H, W, C] -> [B, H, W, C]`, and the batch mean and variance `[C]` (for the running
    statistics)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
    mul = scale * jax.lax.rsqrt(var + EPS)
    return jnp.maximum((x - mean) * mul + bias, 0.0), mean, var


@jax.custom_vjp
def fused_bn_relu_vjp(x, scale, bias):
    """`fused_bn_relu` with a hand-written backward: two reductions over the output gradient
    and one elementwise pass for the input gradient."""
    return fused_bn_relu(x, scale, bias)


def _bn_relu_fwd(x, scale, bias):
    y, mean, var = fused_bn_relu(x, scale, bias)
    return (y, mean, var), (x, y, mean, var, scale)


def _bn_relu_bwd(res, cotangents):
    x, y, mean, var, scale = res
    g = jnp.where(y > 0, cotangents[0], 0.0)  # through the ReLU
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    inv = jax.lax.rsqrt(var + EPS)
    xhat = (x - mean) * inv
    dbias = jnp.sum(g, axes)
    dscale = jnp.sum(g * xhat, axes)
    dx = (scale * inv) * (g - (dbias + xhat * dscale) / n)
    # The batch mean and variance are outputs too (running statistics), never differentiated
    # through in the backbone: their cotangents are zero there.
    return dx, dscale, dbias


fused_bn_relu_vjp.defvjp(_bn_relu_fwd, _bn_relu_bwd)


def bn_relu_agreement(shape=(8, 14, 14, 64)) -> dict[str, float]:
    """Largest relative difference of the fused functions from flax's BatchNorm + ReLU, in the
    output and in the gradients of input, scale and bias (a random cotangent), at one shape."""
    from flax import linen as nn

    k = jax.random.split(jax.random.PRNGKey(1), 4)
    x = 2.0 * jax.random.normal(k[0], shape) + 0.5
    g = jax.random.normal(k[1], shape)
    scale = 1.0 + 0.1 * jax.random.normal(k[2], shape[-1:])
    bias = 0.1 * jax.random.normal(k[3], shape[-1:])
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS)
    stats = bn.init(jax.random.PRNGKey(0), x)["batch_stats"]

    def flax_fn(x, scale, bias):
        variables = {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}
        return jax.nn.relu(bn.apply(variables, x, mutable=["batch_stats"])[0])

    def value_and_grads(f):
        out, vjp = jax.vjp(f, x, scale, bias)
        return (out, *vjp(g))

    want = value_and_grads(flax_fn)
    result = {}
    for name, f in (("fused", fused_bn_relu), ("custom_vjp", fused_bn_relu_vjp)):
        got = value_and_grads(lambda x, s, b, f=f: f(x, s, b)[0])
        result[name] = max(
            float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            for a, b in zip(got, want)
        )
    return result


def _timed(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `fn()` (warmed up when built)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _jax_runner(loss, args, argnums):
    """`run()`: value and gradients of `loss(*args)` w.r.t. `argnums`, blocking."""
    step = jax.jit(jax.value_and_grad(loss, argnums=argnums))
    return lambda: jax.block_until_ready(step(*args))


def ours(kind: str, shape: tuple, batch: int, variant: str):
    """`run()` of our side of one layer (see the module docstring for kinds and variants)."""
    from flax import linen as nn

    rng = np.random.default_rng(0)

    def normal(*s):
        return jnp.asarray(rng.standard_normal(s), jnp.float32)

    if kind in ("stem", "conv3x3", "conv1x1"):
        cin, cout, s, k, stride = shape
        x, w = normal(batch, s, s, cin), normal(k, k, cin, cout) * 0.05
        out = -(-s // stride)
        g = normal(batch, out, out, cout)
        if variant == "einsum":

            def layer(x, w):
                if stride > 1:
                    x = x[:, ::stride, ::stride]
                return jnp.einsum("bhwc,cd->bhwd", x, w[0, 0])
        elif variant == "matmul":  # the `cpu_stem` lowering
            from common.backbones.resnet import ConvAsMatmul

            def layer(x, w):
                return ConvAsMatmul(cout, k, stride).apply({"params": {"kernel": w}}, x)
        else:

            def layer(x, w):
                dims = ("NHWC", "HWIO", "NHWC")
                return jax.lax.conv_general_dilated(
                    x, w, (stride,) * 2, "SAME", dimension_numbers=dims
                )

        # The stem's input is the image: no gradient (as in the network).
        argnums = (1,) if kind == "stem" else (0, 1)
        return _jax_runner(lambda x, w: jnp.vdot(layer(x, w), g), (x, w), argnums)
    if kind == "maxpool":
        s, c = shape
        x = normal(batch, s, s, c)
        g = normal(batch, -(-s // 2), -(-s // 2), c)
        if variant == "slices":  # the `cpu_stem` lowering
            from common.backbones.resnet import max_pool_as_slices as pool
        else:
            pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), "SAME")  # noqa: E731
        return _jax_runner(lambda x: jnp.vdot(pool(x), g), (x,), (0,))
    if kind in ("batchnorm", "bn_relu"):
        s, c = shape
        x, g = normal(batch, s, s, c), normal(batch, s, s, c)
        scale, bias = jnp.ones((c,)), jnp.zeros((c,))
        if variant == "flax":
            bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS)
            stats = bn.init(jax.random.PRNGKey(0), x)["batch_stats"]
            act = jax.nn.relu if kind == "bn_relu" else (lambda y: y)

            def loss(x, scale, bias):
                variables = {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}
                y, _ = bn.apply(variables, x, mutable=["batch_stats"])
                return jnp.vdot(act(y), g)
        else:
            f = fused_bn_relu_vjp if variant == "custom_vjp" else fused_bn_relu

            def loss(x, scale, bias):
                return jnp.vdot(f(x, scale, bias)[0], g)

        return _jax_runner(loss, (x, scale, bias), (0, 1, 2))
    if kind == "relu_add":
        s, c = shape
        x, sc, g = normal(batch, s, s, c), normal(batch, s, s, c), normal(batch, s, s, c)
        return _jax_runner(lambda x, sc: jnp.vdot(jax.nn.relu(x + sc), g), (x, sc), (0, 1))
    if kind == "heads":
        din, dout = shape
        rows = batch * NUM_MASKS
        x, w, g = normal(rows, din), normal(din, dout) * 0.02, normal(rows, dout)
        return _jax_runner(lambda x, w: jnp.vdot(x @ w, g), (x, w), (0, 1))
    if kind == "augment":
        from common import augment

        (s,) = shape
        images = jnp.asarray(rng.uniform(size=(batch, s, s, 3)), jnp.float32)
        fn = jax.jit(lambda r, x: augment.augment_batch(r, x, "byol_view1"))
        key = jax.random.PRNGKey(0)
        return lambda: jax.block_until_ready(fn(key, images))
    raise ValueError(f"unknown layer kind {kind!r}")


# ------------------------------------------------------------------------------------------
# The peer: the same layers with PyTorch (torchvision's layouts and modules).


def peer(kind: str, shape: tuple, batch: int):
    """`run()` of PyTorch's side of one layer (NCHW, as torchvision's ResNet-50)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind in ("stem", "conv3x3", "conv1x1"):
        cin, cout, s, k, stride = shape
        x = torch.randn(batch, cin, s, s, requires_grad=kind != "stem")
        conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        g = torch.randn_like(conv(x.detach()))
        module = conv
    elif kind == "maxpool":
        s, c = shape
        x = torch.randn(batch, c, s, s, requires_grad=True)
        module = nn.MaxPool2d(3, 2, 1)
        g = torch.randn_like(module(x.detach()))
    elif kind in ("batchnorm", "bn_relu"):
        s, c = shape
        x = torch.randn(batch, c, s, s, requires_grad=True)
        layers = [nn.BatchNorm2d(c)] + ([nn.ReLU(inplace=True)] if kind == "bn_relu" else [])
        module = nn.Sequential(*layers)
        g = torch.randn(batch, c, s, s)
    elif kind == "relu_add":
        s, c = shape
        x = torch.randn(batch, c, s, s, requires_grad=True)
        sc = torch.randn(batch, c, s, s, requires_grad=True)
        g = torch.randn(batch, c, s, s)

        def module(x):
            out = x + sc
            return torch.relu_(out)  # torchvision: `out += identity; out = self.relu(out)`
    elif kind == "heads":
        din, dout = shape
        x = torch.randn(batch * NUM_MASKS, din, requires_grad=True)
        module = nn.Linear(din, dout, bias=False)
        g = torch.randn(batch * NUM_MASKS, dout)
    elif kind == "augment":
        from torchvision.transforms import v2

        (s,) = shape
        transform = v2.Compose(
            [
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.GaussianBlur(kernel_size=23, sigma=(0.1, 2.0)),
            ]
        )
        images = torch.rand(batch, 3, s, s)

        def run():
            with torch.no_grad():
                return [transform(img) for img in images]

        return run
    else:
        raise ValueError(f"unknown layer kind {kind!r}")

    def run():
        for t in (x, *module.parameters()) if isinstance(module, nn.Module) else (x, sc):
            t.grad = None
        module(x).backward(g)

    return run


# ------------------------------------------------------------------------------------------


def cases(size: int) -> list[tuple[str, tuple, int, list[str]]]:
    """(kind, shape, count, our variants); the first variant is what our CPU race runs (the
    `cpu_stem` and `einsum_1x1` lowerings, see `benchmarks/race_shapes.py`)."""
    layers = resnet50_layers(size)
    stem_out = -(-size // 2)
    out = [("stem", k, n, ["matmul", "lax.conv"]) for k, n in layers["stem"]]
    out.append(("maxpool", (stem_out, 64), 1, ["slices", "flax"]))
    out += [("conv3x3", k, n, ["lax.conv"]) for k, n in layers["conv3x3"]]
    out += [("conv1x1", k, n, ["einsum", "lax.conv"]) for k, n in layers["conv1x1"]]
    out += [("batchnorm", k, n, ["flax"]) for k, n in layers["batchnorm"]]
    out += [("bn_relu", k, n, ["flax", "fused", "custom_vjp"]) for k, n in layers["bn_relu"]]
    out += [("relu_add", k, n, ["jnp"]) for k, n in layers["block_outputs"]]
    out += [("heads", k, n, ["matmul"]) for k, n in head_matmuls()]
    out.append(("augment", (size,), 1, ["byol_view1"]))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--kinds", default="stem,conv3x3,conv1x1,batchnorm,bn_relu,relu_add,heads,augment"
    )
    args = parser.parse_args()

    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import torch

    torch.set_num_threads(args.threads)
    kinds = set(args.kinds.split(","))
    if "stem" in kinds:
        kinds.add("maxpool")
    todo = [c for c in cases(args.size) if c[0] in kinds]
    runners = []
    for kind, shape, count, variants in todo:
        for variant in variants:
            runners.append(
                (kind, shape, count, "ours:" + variant, ours(kind, shape, args.batch, variant))
            )
        runners.append((kind, shape, count, "torch", peer(kind, shape, args.batch)))
    for *_, run in runners:  # warm-up: compiles ours, lets torch allocate
        run()
    times: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        # Layer by layer, ours and torch next to each other; the order swaps every round.
        for i in range(0, len(runners)):
            kind, shape, count, side, run = runners[i if r % 2 == 0 else len(runners) - 1 - i]
            times.setdefault((kind, shape, side), []).extend(_timed(run, args.reps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def layer_rows(reduce):
        rows = []
        for kind, shape, count, variants in todo:
            row = {"kind": kind, "shape": list(shape), "count": count}
            for side in [f"ours:{v}" for v in variants] + ["torch"]:
                row[side.replace("ours:", "ours_") + "_ms"] = round(
                    1e3 * reduce(times[(kind, shape, side)]), 3
                )
            rows.append(row)
        return rows

    def type_sums(rows):
        def total(kind, key):
            return sum(r["count"] * r[key] for r in rows if r["kind"] == kind and key in r)

        per_type = {}
        for kind, _, _, variants in todo:
            if kind in per_type:
                continue
            entry = {f"ours_{v}_ms": round(total(kind, f"ours_{v}_ms"), 1) for v in variants}
            entry["torch_ms"] = round(total(kind, "torch_ms"), 1)
            first = entry[f"ours_{variants[0]}_ms"]
            entry["torch_over_ours"] = round(entry["torch_ms"] / first, 2)
            per_type[kind] = entry
        return per_type

    # Medians, and the fastest call of each (on a loaded machine the least disturbed one).
    rows, best_rows = layer_rows(statistics.median), layer_rows(min)
    per_type, per_type_best = type_sums(rows), type_sums(best_rows)

    print(
        f"{'kind':10s} {'shape':24s} {'n':>3s}  ours ms (variants)            torch ms  torch/ours"
    )
    for r in rows:
        ours_cols = {k: v for k, v in r.items() if k.startswith("ours_")}
        first = next(iter(ours_cols.values()))
        text = " ".join(f"{k[5:-3]}={v:.2f}" for k, v in ours_cols.items())
        print(
            f"{r['kind']:10s} {str(tuple(r['shape'])):24s} {r['count']:3d}  {text:30s}"
            f" {r['torch_ms']:9.2f}  {r['torch_ms'] / first:9.2f}"
        )
    for title, table in (("medians", per_type), ("fastest calls", per_type_best)):
        print(f"per layer type (count x time), {title}:")
        for kind, e in table.items():
            print(f"  {kind:10s} {e}")
    bn = per_type.get("bn_relu")
    bn_best = per_type_best.get("bn_relu")
    agreement = bn_relu_agreement() if bn else None
    if bn:
        print(f"fused BatchNorm + ReLU against flax's (output and gradients): {agreement}")
    summary = {
        "benchmark": "layer_profile",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "rounds": args.rounds,
        "reps": args.reps,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "per_type": per_type,
        "per_type_fastest": per_type_best,
        "bn_relu_fused_speedup": (
            round(bn["ours_flax_ms"] / bn["ours_fused_ms"], 2) if bn else None
        ),
        "bn_relu_custom_vjp_speedup": (
            round(bn["ours_flax_ms"] / bn["ours_custom_vjp_ms"], 2) if bn else None
        ),
        "bn_relu_fused_speedup_fastest": (
            round(bn_best["ours_flax_ms"] / bn_best["ours_fused_ms"], 2) if bn else None
        ),
        "bn_relu_max_relative_difference": agreement,
        "layers": rows,
        "layers_fastest": best_rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
