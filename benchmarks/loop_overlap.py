"""What the training loop's overlap buys: step time with the host waiting for every step against
the host running ahead; the last line printed is one JSON object.

    python benchmarks/loop_overlap.py --method detcon_b --backbone resnet50 --image_size 224 \
        --batch_size 256 --dtype bfloat16 --steps 30

Both modes run the trainer's own pieces (`train.make_step_fn`, `train.staged_batches`,
`train.healthy`) on host batches that are numpy arrays, as the input pipeline yields them, so
every step pays the host's conversion and the host-to-device transfer:

* `sync`: `prefetch=0` and the host reads the step's health before it dispatches the next step
  (the loop before the run-ahead change; `--config.loop.sync_every_step=True --config.loop.
  prefetch=0` in `common.train`);
* `overlap`: the trainer's defaults: batches staged `prefetch=2` ahead, and the host reads device
  values only every `--log_every` steps.

The data pipeline itself (tf.data) is not part of this benchmark: on a real run it overlaps the
step in its own threads either way. Reported per mode: seconds per step, images/s, and the MFU
against the chip's bf16 peak where `train_throughput.PEAK_BF16_FLOPS` knows the chip.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks import train_throughput  # noqa: E402


def host_batches(config, method: str, count: int = 4):
    """An endless cycle of `count` distinct numpy batches of the method's keys (host memory)."""
    batches = []
    for i in range(count):
        device_batch = train_throughput.random_batch(config, method, jax.devices("cpu")[0])
        batch = {k: np.asarray(v) for k, v in device_batch.items()}
        batch["view1"] = np.roll(batch["view1"], i, axis=0)  # distinct contents per batch
        batches.append(batch)
    return itertools.cycle(batches)


def run_mode(setup, mesh, state, method: str, *, steps: int, sync: bool, log_every: int):
    """Seconds per step of `steps` steps after two warm-up steps, and the final state."""
    from common import train

    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    step_fn = train.make_step_fn(setup, mesh)
    health = train.healthy(replicated)
    data = host_batches(setup.config, method)
    staged = train.staged_batches(data, batch_sharding, count=steps + 2, prefetch=0 if sync else 2)
    for _ in range(2):  # warm-up (the first call compiles)
        state, m, health = step_fn(state, next(staged).batch, health)
    jax.block_until_ready((state, health))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        state, m, health = step_fn(state, next(staged).batch, health)
        if sync or step % log_every == 0:
            jax.device_get(health)  # what the loop reads: the host waits for this step
    jax.block_until_ready((state, m, health))
    return (time.perf_counter() - start) / steps, state


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="detcon_b", choices=train_throughput.METHODS)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from common import train

    config = train_throughput.method_config(
        args.method, args.backbone, args.image_size, args.batch_size, args.dtype
    )
    setup = train.build(config, num_examples=1_281_167)
    mesh = train.create_mesh()
    replicated = NamedSharding(mesh, P())
    state = jax.jit(lambda r: train.init_state(setup, r), out_shardings=replicated)(
        train.init_rng(0)
    )
    # The step's FLOPs from XLA's cost analysis of the same program the loop runs.
    example = next(host_batches(config, args.method, count=1))
    batch = train.to_global(example, NamedSharding(mesh, P("data")))
    flops = train_throughput.program_flops(
        lambda s, b, h: train.train_step_with_health(setup, s, b, h),
        state, batch, train.healthy(replicated),
    )  # fmt: skip
    times = {"sync": [], "overlap": []}
    for _ in range(args.rounds):  # alternate, so drift of the machine hits both modes
        for mode in ("sync", "overlap"):
            seconds, state = run_mode(
                setup, mesh, state, args.method, steps=args.steps, sync=mode == "sync",
                log_every=args.log_every,
            )  # fmt: skip
            times[mode].append(seconds)
    device = jax.devices()[0]
    peak = train_throughput.peak_bf16_flops(device.device_kind)
    result = {
        **train_throughput.step_setting(args),
        "step_gflops": round(flops / 1e9, 2),
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
    }
    for mode, values in times.items():
        seconds = float(np.median(values))
        result[f"{mode}_step_s"] = round(seconds, 5)
        result[f"{mode}_images_per_s"] = round(args.batch_size / seconds, 1)
        if peak is not None:
            result[f"{mode}_mfu"] = round(flops / seconds / peak, 4)
    result["overlap_speedup"] = round(result["sync_step_s"] / result["overlap_step_s"], 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
