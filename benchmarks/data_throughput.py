"""Input-pipeline and FH-generation throughput; the last line printed is one JSON object.

    python benchmarks/data_throughput.py [--data_dir D] [--batches 30]

* `pipeline_views_per_s`: two-view pretraining examples with FH masks per second (the BYOL/DetCon
  `local` data config on the embedded `synthetic_scenes` dataset, which it builds if missing),
  and `pipeline_over_step`: that rate over the rate at which the BYOL `local` training step
  consumes examples, measured in the same run (target >= 3).
* `fh_parallel_efficiency`: FH generation throughput with every core over (cores x one-core
  throughput), through the FH pipeline's own shard computation (target >= 0.8).
* `fh_overhead`: the pipeline's time per image (read, decode, FH, narrow, write) over bare
  `skimage.segmentation.felzenszwalb` on the same decoded images (target <= 1.15).
The FH figures use real photographs shipped with scikit-image (ImageNet-like sizes) as an image
folder dataset, with DetCon's settings (scale=1000, min_size=1000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")


def pipeline_rate(data_dir: str, batches: int) -> tuple[float, dict]:
    from common.data import loading, pipeline
    from experiments import detcon_b

    config = detcon_b.get_config("local")  # FH masks transported with both views
    data = ml_collections.ConfigDict({**config.data.to_dict(), "data_dir": data_dir})
    loading.ensure_dataset(data)
    it = pipeline.make_pretrain_iterator(data, global_batch_size=config.batch_size, seed=0)
    for _ in range(3):  # warm-up: tf.data threads, file handles
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    return batches * config.batch_size / seconds, {k: list(v.shape) for k, v in batch.items()}


def byol_step_rate() -> float:
    from benchmarks.train_throughput import byol_local_images_per_s

    images_per_s, _ = byol_local_images_per_s(steps=5)
    return images_per_s


def _photo_folder(root: str, copies: int) -> None:
    import skimage.data
    from PIL import Image

    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = image[..., None].repeat(3, axis=-1)
        for c in range(copies):
            Image.fromarray(image[..., :3]).save(os.path.join(root, f"{name}_{c}.png"))


def fh_figures(work: str, copies: int) -> dict:
    """Times the FH pipeline's shard computation with 1 and all workers, and bare FH."""
    import numpy as np
    import skimage.segmentation

    from common.data import fh_masks, folder_builders

    root = os.path.join(work, "photos")
    os.makedirs(root)
    _photo_folder(root, copies)
    data_dir = os.path.join(work, "tfds")
    builder = folder_builders.FolderImages(
        config=folder_builders.ImageFolderConfig(name="bench", root_dir=root), data_dir=data_dir
    )
    builder.download_and_prepare()
    source = fh_masks.load_source("folder_images/bench", data_dir)
    num = source.info.splits["train"].num_examples
    cores = os.cpu_count() or 1

    def run(workers: int, tag: str) -> float:
        # One record per shard, so the pool can spread the work over every core.
        shards = fh_masks.plan_shards({"train": num}, 1)
        job = fh_masks.FhJob(
            source_name=source.info.full_name,
            source_dir=os.fspath(source.data_dir),
            image_key="image",
            fh_settings=((1000.0, 1000),),
            work_dir=os.path.join(work, f"fh_{tag}"),
            name_key=None,
        )
        start = time.perf_counter()
        fh_masks._compute_all_shards(job, shards, False, None, workers)
        return time.perf_counter() - start

    run(1, "warmup")
    one_core = run(1, "one")
    all_cores = run(cores, "all")

    from PIL import Image

    decoded = [np.asarray(Image.open(os.path.join(root, f"{n}_0.png"))) for n in PHOTOS] * copies
    start = time.perf_counter()
    for image in decoded:
        skimage.segmentation.felzenszwalb(image, scale=1000, min_size=1000)
    bare = time.perf_counter() - start
    return {
        "fh_images": num,
        "fh_one_core_images_per_s": round(num / one_core, 3),
        "fh_all_cores_images_per_s": round(num / all_cores, 3),
        "fh_parallel_efficiency": round((one_core / all_cores) / cores, 3),
        "fh_overhead": round(one_core / bare, 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--fh_copies", type=int, default=4)
    args = parser.parse_args()

    views_per_s, shapes = pipeline_rate(args.data_dir, args.batches)
    step_per_s = byol_step_rate()
    with tempfile.TemporaryDirectory() as work:
        fh = fh_figures(work, args.fh_copies)
    result = {
        "pipeline_views_per_s": round(views_per_s, 1),
        "byol_step_examples_per_s": round(step_per_s, 2),
        "pipeline_over_step": round(views_per_s / step_per_s, 2),
        **fh,
        "batch_shapes": shapes,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
