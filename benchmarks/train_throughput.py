"""Training-step throughput and memory; the last line printed is one JSON object.

    python benchmarks/train_throughput.py [--steps 10]

Reports images/s of the BYOL `local` step (random device batches: the step alone, without the
input pipeline), the process's peak resident memory, and one ResNet-50 forward+backward at 224 px,
batch 8, so that regressions of the backbone on XLA:CPU show.
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


def _time(fn, *args, repeats: int) -> float:
    out = fn(*args)  # compile
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def byol_local_images_per_s(steps: int) -> tuple[float, float]:
    from common import train
    from experiments import byol

    config = byol.get_config("local")
    setup = train.build(config, num_examples=20_000)
    state = jax.jit(functools.partial(train.init_state, setup))(train.init_rng(0))
    s, b = config.data.image_size, config.batch_size
    rng = np.random.default_rng(0)
    batch = {
        "view1": jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32),
        "view2": jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, config.num_classes, b), jnp.int32),
    }
    step = jax.jit(functools.partial(train.train_step, setup), donate_argnums=0)
    state, m = step(state, batch)  # compile
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - start) / steps
    return b / seconds, seconds


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resnet50_repeats", type=int, default=3)
    args = parser.parse_args()
    images_per_s, step_s = byol_local_images_per_s(args.steps)
    r50 = resnet50_fwd_bwd_seconds(args.resnet50_repeats)
    result = {
        "byol_local_images_per_s": round(images_per_s, 2),
        "byol_local_step_s": round(step_s, 4),
        "resnet50_224_b8_fwd_bwd_s": round(r50, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "devices": f"{jax.device_count()}x{jax.devices()[0].platform}",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
