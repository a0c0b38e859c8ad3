"""Our DetCon_B and BYOL training steps against the same steps written with PyTorch + lightly.

    python benchmarks/peer_race.py [--shapes local,papers] [--methods detcon_b,byol] [--rounds 7]

Needs the `peers` extra (`pip install -e .[peers]`: torch, torchvision, lightly). The last line
printed is one JSON object: per shape and method, `ours_over_peer` = peer step time / our step
time (above 1: we are faster), both medians, and the machine.

How it is fair:
* Each side runs in its own worker process (JAX and PyTorch never share a process), started by
  this one; both are pinned to the same `--threads` cores (PyTorch also gets
  `torch.set_num_threads`). Only one side computes at a time: the parent asks one worker for
  `--steps` steps, waits for its time, then the other, alternating who goes first each round, so
  a drift of the (shared) machine's speed lands on both sides.
* The same work per step: online network on both views with gradients, EMA target network on
  both views without, the method's loss (ours: `common.losses`; peer: `lightly.loss`), the online
  linear monitor on stop-gradient embeddings, LARS, the EMA update. DetCon's masks are made in
  the step on both sides from the same kind of `[B, S, S]` id map (majority id per feature cell,
  16 ids sampled among those present). Our photometric augmentation runs on device inside the
  step, a lightly user's in the data loader: the race runs ours with augmentation off, and
  `--augment` also times our step with it (`ours_with_augment_s`).
* The peer networks are torchvision's own blocks (`BasicBlock`/`Bottleneck`, its ResNet-50) and
  lightly's heads, at the sizes of `benchmarks/race_shapes.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.race_shapes import METHODS, SHAPES, shape_numbers  # noqa: E402

NUM_IDS = 64  # distinct segment ids in the synthetic id maps (FH gives tens per image)


def _pin(threads: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, set(cpus))


def _id_maps(rng, batch: int, size: int):
    """FH-like `[B, S, S]` int32 id maps: an 8 x 8 grid of random ids blown up to S x S, so that
    segments are blocks of pixels and a feature cell's majority is well defined."""
    import numpy as np

    coarse = rng.integers(0, NUM_IDS, (batch, 8, 8))
    reps = -(-size // 8)
    return np.repeat(np.repeat(coarse, reps, 1), reps, 2)[:, :size, :size].astype(np.int32)


# ------------------------------------------------------------------------------------------
# Our side.


def ours_worker(
    method: str,
    shape: str,
    augment: bool,
    backbone_overrides: dict,
    compiler_options: dict | None = None,
):
    """Returns `run(steps) -> seconds per step` for our jitted training step (`compiler_options`
    go to `jax.jit`, e.g. `{"xla_cpu_use_xnnpack": True}`); `run.metrics()` gives the last
    step's metrics."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from benchmarks.race_shapes import race_config
    from common import train

    config = race_config(method, shape, **backbone_overrides)
    if augment:
        with config.unlocked():
            config.augment.view1, config.augment.view2 = "byol_view1", "byol_view2"
    setup = train.build(config, num_examples=20_000)
    # As the trainer does: state replicated, batch split over the `data` axis of all devices
    # (one device unless `--host_devices` made more).
    mesh = train.create_mesh()
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    init = jax.jit(functools.partial(train.init_state, setup), out_shardings=replicated)
    state = init(train.init_rng(0))
    n = shape_numbers(method, shape)
    b, s = n["batch_size"], n["image_size"]
    rng = np.random.default_rng(0)
    batch = {
        "view1": jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32),
        "view2": jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, n["num_classes"], b), jnp.int32),
    }
    if method == "detcon_b":
        batch["mask1"] = jnp.asarray(_id_maps(rng, b, s))
        batch["mask2"] = jnp.asarray(_id_maps(rng, b, s))
    batch = jax.device_put(batch, split)
    step = jax.jit(
        functools.partial(train.train_step, setup),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
        compiler_options=compiler_options or None,
    )
    holder = {"state": state, "metrics": None}

    def run(steps: int) -> float:
        state = holder["state"]
        start = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, batch)
        jax.block_until_ready((state, m))
        holder["state"], holder["metrics"] = state, m
        return (time.perf_counter() - start) / steps

    run.metrics = lambda: holder["metrics"]
    return run


# ------------------------------------------------------------------------------------------
# The peer: torchvision + lightly, written as a lightly user would.


def peer_worker(method: str, shape: str):
    """Returns `run(steps) -> seconds per step` for the PyTorch/lightly training step."""
    import copy

    import numpy as np
    import torch
    import torchvision
    from lightly.loss import DetConBLoss, NegativeCosineSimilarity
    from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.lars import LARS
    from torch import nn
    from torch.nn import functional as F

    n = shape_numbers(method, shape)
    torch.manual_seed(0)
    backbone, channels = _peer_backbone(torchvision, nn, n)
    stride = 8 if n["small_stem"] else 32

    class Net(nn.Module):
        def __init__(self, predictor: bool):
            super().__init__()
            self.backbone = backbone_copy()
            self.projector = BYOLProjectionHead(channels, n["hidden"], n["out_dim"])
            self.predictor = (
                BYOLPredictionHead(n["out_dim"], n["hidden"], n["out_dim"]) if predictor else None
            )

        def forward(self, x, masks=None):
            dense = self.backbone(x)  # [B, C, h, w]
            embedding = dense.mean(dim=(2, 3))
            if masks is None:
                pooled = embedding
            else:  # mask-mean pooling [B, R, h*w] x [B, h*w, C]
                weights = masks / masks.sum(-1, keepdim=True).clamp(min=1.0)
                pooled = torch.bmm(weights, dense.flatten(2).transpose(1, 2))
            z = self.projector(pooled.reshape(-1, pooled.shape[-1])).reshape(*pooled.shape[:-1], -1)
            p = None
            if self.predictor is not None:
                p = self.predictor(z.reshape(-1, z.shape[-1])).reshape(z.shape)
            return embedding, z, p

    def backbone_copy():
        return copy.deepcopy(backbone)

    online = Net(predictor=True)
    target = Net(predictor=False)
    deactivate_requires_grad(target)
    classifier = nn.Linear(channels, n["num_classes"])
    params = list(online.parameters()) + list(classifier.parameters())
    optimizer = LARS(params, lr=0.4, momentum=0.9, weight_decay=1.5e-6)
    b, s, r = n["batch_size"], n["image_size"], n["num_masks"]
    rng = np.random.default_rng(0)
    view1 = torch.tensor(rng.uniform(size=(b, 3, s, s)), dtype=torch.float32)
    view2 = torch.tensor(rng.uniform(size=(b, 3, s, s)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, n["num_classes"], b))
    id1 = torch.tensor(_id_maps(rng, b, s), dtype=torch.long)
    id2 = torch.tensor(_id_maps(rng, b, s), dtype=torch.long)
    detcon_loss = DetConBLoss(temperature=0.1)
    cosine = NegativeCosineSimilarity()

    def sample_masks(id_map):
        """Majority id per feature cell (one-hot + average pool + argmax, as DeepMind and
        lightly's DetCon example do), then R ids sampled uniformly among those present."""
        onehot = F.one_hot(id_map, NUM_IDS).permute(0, 3, 1, 2).float()
        grid = F.avg_pool2d(onehot, stride).argmax(1).flatten(1)  # [B, h*w]
        present = F.one_hot(grid, NUM_IDS).amax(1).float()  # [B, NUM_IDS]
        ids = torch.multinomial(present, r, replacement=True)  # [B, R]
        masks = (grid[:, None, :] == ids[:, :, None]).float()  # [B, R, h*w]
        return ids, masks

    def step():
        if method == "detcon_b":
            ids1, masks1 = sample_masks(id1)
            ids2, masks2 = sample_masks(id2)
        else:
            ids1 = ids2 = masks1 = masks2 = None
        e1, _, p1 = online(view1, masks1)
        _, _, p2 = online(view2, masks2)
        with torch.no_grad():
            _, t1, _ = target(view1, masks1)
            _, t2, _ = target(view2, masks2)
        if method == "detcon_b":
            loss = detcon_loss(p1, p2, t1, t2, ids1, ids2)
        else:
            loss = 2 * (cosine(p1, t2) + cosine(p2, t1))
        monitor = F.cross_entropy(classifier(e1.detach()), labels)
        optimizer.zero_grad()
        (loss + monitor).backward()
        optimizer.step()
        update_momentum(online.backbone, target.backbone, m=0.99)
        update_momentum(online.projector, target.projector, m=0.99)
        return loss

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss.detach())
        return (time.perf_counter() - start) / steps

    return run


def _peer_backbone(torchvision, nn, n: dict):
    """torchvision's ResNet-50, or the `local` ResNet from torchvision's `BasicBlock`s; dense
    output `[B, C, h, w]`. Returns `(module, C)`."""
    from torchvision.models.resnet import BasicBlock

    if n["depth"] == 50 and n["base_width"] == 64 and not n["small_stem"]:
        net = torchvision.models.resnet50()
        return nn.Sequential(*list(net.children())[:-2]), 2048
    if n["depth"] != 18:
        raise ValueError(f"peer backbone: no layout for {n}")
    width = n["base_width"]
    layers = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    inplanes = width
    for i, blocks in enumerate(n["blocks"]):
        planes, stride = width * 2**i, 1 if i == 0 else 2
        for j in range(blocks):
            downsample = None
            if j == 0 and (stride != 1 or inplanes != planes):
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            layers.append(BasicBlock(inplanes, planes, stride if j == 0 else 1, downsample))
            inplanes = planes
    return nn.Sequential(*layers), inplanes


# ------------------------------------------------------------------------------------------
# The race.


def worker_main(args) -> None:
    _pin(args.threads)
    if args.worker == "peer":
        import torch

        torch.set_num_threads(args.threads)
        run = peer_worker(args.method, args.shape)
    else:
        overrides = json.loads(args.backbone_kwargs)
        options = json.loads(args.compiler_options)
        run = ours_worker(args.method, args.shape, args.augment, overrides, options)
    run(1)  # compile / allocator warm-up
    run(1)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps({"seconds": run(int(line))}), flush=True)


class Worker:
    """One worker process; `time(steps)` asks it for `steps` steps and returns seconds/step."""

    def __init__(self, side: str, method: str, shape: str, args, augment: bool = False):
        cmd = [
            sys.executable, os.path.abspath(__file__), "--worker", side, "--method", method,
            "--shape", shape, "--threads", str(args.threads),
            "--backbone_kwargs", args.backbone_kwargs, "--compiler_options", args.compiler_options,
        ]  # fmt: skip
        if augment:
            cmd.append("--augment")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        if side == "ours":
            # XLA:CPU runs a fused elementwise loop (BatchNorm, ReLU, residual adds) on one
            # thread; N host devices run N slices of the batch at once on the same cores.
            flags = (
                env.get("XLA_FLAGS", "")
                + f" --xla_force_host_platform_device_count={args.host_devices}"
            )
            env["XLA_FLAGS"] = flags.strip()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{side} worker ({method}, {shape}) failed to start: {line!r}")

    def time(self, steps: int) -> float:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def race(method: str, shape: str, args) -> dict:
    ours = Worker("ours", method, shape, args)
    peer = Worker("peer", method, shape, args)
    times = {"ours": [], "peer": []}
    try:
        for r in range(args.rounds):
            order = (("ours", ours), ("peer", peer))
            for side, worker in order if r % 2 == 0 else order[::-1]:
                times[side].append(worker.time(args.steps))
    finally:
        ours.close()
        peer.close()
    ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
    ratios = [p / o for o, p in zip(times["ours"], times["peer"])]
    out = {
        "ours_over_peer": round(peer_s / ours_s, 3),
        "ours_s": round(ours_s, 4),
        "peer_s": round(peer_s, 4),
        "round_ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
    }
    if args.augment:
        aug = Worker("ours", method, shape, args, augment=True)
        try:
            out["ours_with_augment_s"] = round(
                statistics.median(aug.time(args.steps) for _ in range(3)), 4
            )
        finally:
            aug.close()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument(
        "--host_devices", type=int, default=1,
        help="our step data-parallel over this many XLA:CPU devices (on the same --threads cores)",
    )  # fmt: skip
    parser.add_argument(
        "--backbone_kwargs", default="{}", help='our backbone overrides, JSON: {"einsum_1x1": 0}'
    )
    parser.add_argument(
        "--compiler_options", default="{}", help='our jit\'s, JSON: {"xla_cpu_use_xnnpack": 1}'
    )
    parser.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    import torch

    result = {}
    for shape in args.shapes.split(","):
        for method in args.methods.split(","):
            result[f"{shape}/{method}"] = race(method, shape, args)
    result.update(
        threads=args.threads,
        steps_per_timing=args.steps,
        rounds=args.rounds,
        host_devices=args.host_devices,
        backbone_kwargs=json.loads(args.backbone_kwargs),
        compiler_options=json.loads(args.compiler_options),
        load_avg_1min=round(os.getloadavg()[0], 2),
        cpus=os.cpu_count(),
        machine=platform.machine(),
        processor=_cpu_name(),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d", time.gmtime()),
    )
    print(json.dumps(result))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
