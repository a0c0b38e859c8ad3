"""Object-discovery evaluation time on the embedded validation split; the last line printed is one
JSON object.

    python benchmarks/eval_throughput.py [--data_dir D] [--workdir W] [--num_images 2000]

Times `common.eval.discovery` (the `discovery` options of the `local` config: the whole image at
64 px through the `local` BYOL backbone, k-means with K = 8 on its 8 x 8 feature grid, ABO^i /
ABO^c / OR at the masks' 64 px) on `num_images` images of the default `synthetic_scenes`
validation split (2,000: all of it): reading and decoding, forward passes, k-means and overlaps,
with compilation (`seconds`, what an evaluation round costs) and once more when compiled
(`seconds_warm`, what a periodic evaluation costs from its second round on).

Data. If `synthetic_scenes/default` is prepared in `--data_dir`, its validation split is read.
Otherwise only what is needed is generated: a `synthetic_scenes` config with the default seed and
image size and `num_images` validation images (1 training and 1 test image). Every example is
rendered from `(seed, split, index)` alone, so these are validation images 0..n-1 of the default
config (checked: the same pixels and masks; with n = 2,000 the same split). It is kept in
`--data_dir` for later runs (about 1-2 minutes to build on 2 cores). Building
the whole default config instead: `python -m common.data.synthetic_scenes --data_dir D`.

Network: a random initialisation, or the latest checkpoint of a `byol.py:local` run (`--workdir`);
the time does not depend on the weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402


def validation_source(data_dir: str, num_images: int):
    """(validation split, tf.data source or None to read TFDS, description) of the images."""
    import tensorflow_datasets as tfds

    from common.data import synthetic_scenes

    default = synthetic_scenes.SyntheticScenes(config="default", data_dir=data_dir)
    if default.is_prepared():
        return f"validation[:{num_images}]", None, "synthetic_scenes/default"
    config = synthetic_scenes.SyntheticScenesConfig(
        name=f"validation_{num_images}",
        description="the default validation split only (benchmarks)",
        num_train=1,
        num_validation=num_images,
        num_test=1,
    )
    builder = synthetic_scenes.SyntheticScenes(config=config, data_dir=data_dir)
    built = 0.0
    if not builder.is_prepared():
        start = time.perf_counter()
        builder.download_and_prepare()
        built = time.perf_counter() - start
    # Only the features discovery reads are decoded (not the FH masks).
    wanted = {"image": True, "instance_mask": True, "class_mask": True, "label": True}
    source = builder.as_dataset(
        split="validation", shuffle_files=False, decoders=tfds.decode.PartialDecoding(wanted)
    )
    name = f"synthetic_scenes/{config.name}" + (f" (built in {built:.0f} s)" if built else "")
    return "validation", source, name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--workdir", default="", help="a byol.py:local run (default: random init)")
    parser.add_argument("--num_images", type=int, default=2000)
    args = parser.parse_args()

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from common import evaluate, train
    from common.eval import get_evaluator
    from experiments import byol

    config = byol.get_config("local")
    config.data.data_dir = args.data_dir
    split, source, description = validation_source(args.data_dir, args.num_images)
    if args.workdir:
        setup, state, mesh = evaluate.restore_state(config, args.workdir)
    else:
        setup = train.build(config, num_examples=20_000)
        mesh = train.create_mesh()
        init = functools.partial(train.init_state, setup)
        state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))(train.init_rng(0))
    options = {**config.evals.discovery, "split": split, "examples": 0}
    evaluator = get_evaluator("discovery")(config, options)
    evaluator.source_dataset = source
    times, results = [], {}
    for _ in range(2):
        start = time.perf_counter()
        results = evaluator.run(setup, state, mesh=mesh)
        times.append(time.perf_counter() - start)
    n = args.num_images
    o = evaluator.options
    print(
        json.dumps(
            {
                "discovery_seconds": round(times[0], 2),
                "discovery_seconds_warm": round(times[1], 2),
                "images": n,
                "images_per_s_warm": round(n / times[1], 1),
                "abo_i": round(results["abo_i"], 4),
                "abo_c": round(results["abo_c"], 4),
                "or": round(results["or"], 4),
                "num_instances": int(results["num_instances"]),
                "network": "checkpoint " + args.workdir if args.workdir else "random init",
                "settings": f"image {o.image_size}px K={o.num_clusters} iters={o.num_iters} "
                f"{o.init} {o.distance} batch {o.batch_size}",
                "data": description,
                "devices": f"{jax.device_count()}x{jax.devices()[0].platform}",
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
