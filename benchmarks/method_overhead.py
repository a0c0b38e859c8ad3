"""What a method costs over its baseline: time per training step of method / baseline.

    python benchmarks/method_overhead.py [--shape local|paper] [--repeats 9] [--steps 3]
        [--pairs detcon_b:byol,...]

Each pair runs the `local` configs of both experiments (same backbone, resolution and batch) on
the same random device batch, views and realistic id maps included, so the ratio isolates what
the method adds: mask down-sampling and sampling, mask pooling of R vectors instead of one, the
heads on `[B, R, C]`, the loss. The input pipeline is not timed. The steps are timed
*alternately* (A B A B ..., the order swapped every repetition), so a machine whose speed drifts
(other jobs, thermal limits) slows both sides alike, and the ratio of the medians is reported.

The last line printed is one JSON object: `<method>_over_<baseline>` for every pair (ratio of
the median wall-clock seconds per step), plus the medians themselves (`step_s`) and the same
ratios in process CPU time (`cpu_time`: all threads' CPU seconds per step). On a machine shared
with other jobs, wall-clock times swing with their load while CPU time counts only this
process's work, so the CPU-time ratio is the steadier of the two. Pairs whose method is not
registered yet are skipped (`PAIRS` already lists Odin and VITO).

Shapes. `local` (default) times the `local` configs: a tiny ResNet (16 base channels) whose
step is so cheap that the per-mask heads (R = 16 vectors per view through 512-wide MLPs) are a
visible share of it. `paper` replaces the network and data shape by the papers' (ResNet-50,
224 px views, projector/predictor 4096 -> 256, 16 masks) with a small batch (8) so that it runs
on a CPU; the ratio then says what the method costs where it is actually trained.
"""

from __future__ import annotations

import argparse
import functools
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

# (method experiment, baseline experiment): a method against the method it extends.
PAIRS = (
    ("detcon_b", "byol"),
    ("detcon_s", "simclr"),
    ("odin", "detcon_b"),
    ("vito", "moclr"),
)


def voronoi_ids(rng: np.random.Generator, batch: int, size: int, max_segments: int) -> np.ndarray:
    """FH-like id maps: each image split into 2..max_segments Voronoi cells, ids 0..n-1.

    What matters for the step's cost is the shape and a realistic number of segments per view
    (FH on the embedded scenes: 4-20 per image); the ids are kept dense like FH's.

    Returns:
      int32 `[batch, size, size]`.
    """
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((batch, size, size), np.int32)
    for i in range(batch):
        n = int(rng.integers(2, max_segments + 1))
        seeds = rng.uniform(0, size, size=(n, 2))
        d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
        out[i] = np.argmin(d, axis=-1)
    return out


def random_batch(config, seed: int = 0) -> dict[str, jax.Array]:
    """Every key any method reads, on device, for the config's global batch."""
    rng = np.random.default_rng(seed)
    b, s = config.batch_size, config.data.image_size
    boxes = np.tile(np.asarray([[0.0, 0.0, 1.0, 1.0]], np.float32), (b, 1))
    batch = {
        "view1": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
        "view2": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
        "mask1": voronoi_ids(rng, b, s, 20),
        "mask2": voronoi_ids(rng, b, s, 20),
        "box1": boxes,
        "box2": boxes,
        "flip1": np.zeros((b,), np.int32),
        "flip2": np.zeros((b,), np.int32),
        "label": rng.integers(0, config.num_classes, size=(b,)).astype(np.int32),
    }
    if config.data.get("discovery_view", False):  # Odin's discovery view, a large crop
        s0 = int(config.data.discovery_image_size) or s
        batch["view0"] = rng.uniform(size=(b, s0, s0, 3)).astype(np.float32)
        batch["box0"] = np.tile(np.asarray([[0.1, 0.1, 0.9, 0.9]], np.float32), (b, 1))
        batch["flip0"] = np.zeros((b,), np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


# `--shape paper`: the papers' network and resolution, with a batch a CPU can step.
PAPER_SHAPE = {
    "batch_size": 8,
    "data.image_size": 224,
    "model.backbone": "resnet50",
    "model.backbone_kwargs": {},
    "model.projector_hidden": 4096,
    "model.projector_dim": 256,
    "model.predictor_hidden": 4096,
}


def local_config(experiment: str, overrides: dict | None = None):
    import importlib

    config = importlib.import_module(f"experiments.{experiment}").get_config("local")
    if overrides:
        config.unlock()
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = functools.reduce(lambda c, k: c[k], parents, config)
            if isinstance(value, dict):
                node[leaf] = type(node[leaf])(value) if hasattr(node[leaf], "lock") else value
            else:
                node[leaf] = value
        config.lock()
    return config


class Runner:
    """One experiment's compiled step and its state, stepping on a fixed batch."""

    def __init__(self, experiment: str, overrides: dict | None = None):
        from common import train

        config = local_config(experiment, overrides)
        self.name = experiment
        self.config = config
        self.setup = train.build(config, num_examples=20_000)
        self.state = jax.jit(functools.partial(train.init_state, self.setup))(train.init_rng(0))
        self.batch = random_batch(config)
        self.step = jax.jit(functools.partial(train.train_step, self.setup), donate_argnums=0)
        self.run(2)  # compile + one warm step

    def run(self, steps: int) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds per step over `steps` consecutive steps."""
        start, cpu = time.perf_counter(), time.process_time()
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def registered(experiment: str) -> bool:
    from common.method import get_method

    try:
        get_method(experiment)
        local_config(experiment)
    except (ImportError, ValueError):
        return False
    return True


def check_comparable(a, b) -> None:
    """A ratio means something only on the same backbone, resolution and batch."""
    for key in ("batch_size", "data.image_size", "model.backbone", "model.backbone_kwargs"):
        va, vb = (functools.reduce(lambda c, k: c[k], key.split("."), r.config) for r in (a, b))
        if va != vb:
            raise ValueError(f"{a.name} and {b.name} differ in {key}: {va} vs {vb}")


def measure(pairs, repeats: int, steps: int, overrides: dict | None = None) -> dict[str, float]:
    experiments = sorted({e for p in pairs for e in p})
    runners = {}
    for e in experiments:
        t = time.perf_counter()
        runners[e] = Runner(e, overrides)
        print(f"{e}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
    for a, b in pairs:
        check_comparable(runners[a], runners[b])
    wall: dict[str, list[float]] = {e: [] for e in experiments}
    cpu: dict[str, list[float]] = {e: [] for e in experiments}
    for r in range(repeats):
        # Alternate, and reverse the order every other repetition so neither side always runs
        # right after the other's (cache, frequency) footprint.
        order = experiments if r % 2 == 0 else experiments[::-1]
        for e in order:
            w, c = runners[e].run(steps)
            wall[e].append(w)
            cpu[e].append(c)
        row = "  ".join(
            f"{e} {wall[e][-1] * 1e3:7.1f} ms ({cpu[e][-1] * 1e3:7.1f} cpu)" for e in experiments
        )
        print(f"repeat {r + 1}/{repeats}: {row}", flush=True)
    med = {e: statistics.median(v) for e, v in wall.items()}
    med_cpu = {e: statistics.median(v) for e, v in cpu.items()}
    result = {f"{a}_over_{b}": round(med[a] / med[b], 4) for a, b in pairs}
    result["step_s"] = {e: round(med[e], 5) for e in experiments}
    result["cpu_time"] = {f"{a}_over_{b}": round(med_cpu[a] / med_cpu[b], 4) for a, b in pairs}
    result["cpu_time"]["step_s"] = {e: round(med_cpu[e], 5) for e in experiments}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("local", "paper"), default="local")
    parser.add_argument("--repeats", type=int, default=9, help="alternating repetitions")
    parser.add_argument("--steps", type=int, default=3, help="consecutive steps per timing")
    parser.add_argument(
        "--pairs",
        default="",
        help="comma-separated method:baseline pairs (default: every registered pair of PAIRS)",
    )
    args = parser.parse_args()
    if args.pairs:
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    else:
        pairs = [p for p in PAIRS if registered(p[0]) and registered(p[1])]
    overrides = PAPER_SHAPE if args.shape == "paper" else None
    result = measure(pairs, args.repeats, args.steps, overrides)
    result.update(
        shape=args.shape,
        repeats=args.repeats,
        steps_per_repeat=args.steps,
        devices=f"{jax.device_count()}x{jax.devices()[0].device_kind}",
        cpus=os.cpu_count(),
        machine=platform.machine(),
        jax=jax.__version__,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
