"""Time to draw the methods' pictures (`pictures_every_steps`), compiled against op by op; the
last line printed is one JSON object.

    python benchmarks/picture_time.py [--methods detcon_b,odin,vito] [--rounds 1]
        [--data_dir D] [--steady 2]

Each method's `save_pictures` (DetCon_B: sampled ids and dense features; Odin: the discovery
network, k-means and transport, then DetCon's picture; VITO: attention maps of both frames) is
timed on the `local` config (its network, batch and 48 px views) and a host batch from the
trainer's data iterator, in two modes side by side in this process:

* `op_by_op`: the numeric work run eagerly, as the pictures ran before
  (`common.pictures.op_by_op`);
* `jit`: the default, one compiled program per picture function (`common.pictures.under_jit`).

For each mode: `first_s`, the first picture after `jax.clear_caches()` (what a run pays at its
first `pictures_every_steps`: compilation of every op, or of the one program), and `steady_s`,
the median of the next `--steady` pictures (every later picture). PIL drawing and the PNG are
included in both (the same code). `same_png` says whether both modes wrote the same bytes.
The modes alternate within each round and the order swaps every round, so a machine whose
speed drifts slows both alike; the ratios (`first_speedup`, `steady_speedup`: op-by-op time /
compiled time) are the figures to read on a loaded machine.

Data: the `local` configs read the default `synthetic_scenes` / `synthetic_videos`; to keep the
benchmark quick, the tiny embedded configs (`*/tiny`) are read instead (built into `--data_dir`,
default a temporary directory, in seconds) at the `local` view size: the pictures' cost depends
on the shapes, not on the pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

TINY_DATA = {
    "synthetic_scenes": "synthetic_scenes/tiny",
    "synthetic_videos": "synthetic_videos/tiny",
}


def picture_case(experiment: str, data_dir: str):
    """(method, inference-mode networks, host batch, rng) of the `local` config's picture."""
    import importlib

    from common import train
    from common.data import loading
    from common.method import Networks

    config = importlib.import_module(f"experiments.{experiment}").get_config("local")
    config.data.name = TINY_DATA[config.data.name.split("/")[0]]
    config.data.data_dir = data_dir
    num_examples = loading.ensure_dataset(config.data)
    setup = train.build(config, num_examples)
    state = jax.jit(lambda r: train.init_state(setup, r))(train.init_rng(config.seed))
    host = next(train.make_data_iterator(config, 0))
    nets = Networks(
        setup.modules, {**state.params, **state.ema_params}, state.batch_stats, train=False
    )
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 1)
    return setup.method, nets, host, rng


def timed_picture(case, path: str) -> float:
    method, nets, host, rng = case
    start = time.perf_counter()
    assert method.save_pictures(nets, host, rng, path)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="detcon_b,odin,vito")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steady", type=int, default=2, help="pictures timed after the first")
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args()

    from common import console, pictures

    console.quiet()
    # The first picture must compile: no executable may come from an on-disk cache.
    jax.config.update("jax_enable_compilation_cache", False)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="picture_time_")
    out_dir = tempfile.mkdtemp(prefix="picture_time_png_")
    modes = ("op_by_op", "jit")
    results = {}
    for experiment in args.methods.split(","):
        case = picture_case(experiment, data_dir)
        times = {m: {"first": [], "steady": []} for m in modes}
        pngs = {}
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                path = os.path.join(out_dir, f"{experiment}_{mode}.png")
                jax.clear_caches()
                with pictures.op_by_op() if mode == "op_by_op" else contextlib.nullcontext():
                    times[mode]["first"].append(timed_picture(case, path))
                    times[mode]["steady"].extend(
                        timed_picture(case, path) for _ in range(args.steady)
                    )
                with open(path, "rb") as f:
                    pngs[mode] = f.read()
        row = {
            f"{m}_{k}_s": round(statistics.median(times[m][k]), 3)
            for m in modes
            for k in ("first", "steady")
        }
        row["first_speedup"] = round(row["op_by_op_first_s"] / row["jit_first_s"], 2)
        row["steady_speedup"] = round(row["op_by_op_steady_s"] / row["jit_steady_s"], 2)
        row["same_png"] = pngs["op_by_op"] == pngs["jit"]
        results[experiment] = row
        print(experiment, row, flush=True)

    print(f"{'method':10s} {'first: op-by-op':>16s} {'jit':>8s} {'x':>6s}   "
          f"{'steady: op-by-op':>17s} {'jit':>8s} {'x':>6s}  same PNG")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:10s} {r['op_by_op_first_s']:15.2f}s {r['jit_first_s']:7.2f}s "
            f"{r['first_speedup']:5.1f}x   {r['op_by_op_steady_s']:16.3f}s "
            f"{r['jit_steady_s']:7.3f}s {r['steady_speedup']:5.1f}x  {r['same_png']}"
        )
    summary = {
        "benchmark": "picture_time",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": jax.default_backend(),
        "rounds": args.rounds,
        "steady_pictures": args.steady,
        "methods": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
