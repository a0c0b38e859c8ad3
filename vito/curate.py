"""VideoNet-style curation (docs/METHODS.md §7.4): keep the videos an image classifier recognises.

    python -m vito.curate --dataset synthetic_videos --data_dir ~/tensorflow_datasets \\
        --config experiments/supervised.py:local --workdir workdirs/sup_local \\
        [--split train,validation] [--num_frames 100] [--threshold 0.5] [--min_seconds 10] \\
        [--fps RATE] [--output_name NAME] \\
        [--beam_pipeline_options="direct_num_workers=0,direct_running_mode=multi_processing"]

First, videos shorter than `min_seconds` (default 10, the talk's VideoNet rule) are dropped:
a video's length is its frame count over its frame rate, read from the dataset (a per-video
`fps` feature, as `common.data.folder_builders videos` writes, or `info.metadata['fps']`) or
given with `--fps`; a dataset that records no frame rate is an error unless `--fps` states it or
`--min_seconds 0` turns the rule off. Short videos are not classified. (The embedded
`synthetic_videos` record 4 fps, so their 16-frame clips last 4 s and the 10 s rule drops them
all: give them a smaller `--min_seconds`, e.g. 2.) Then, for every remaining
video, the classifier (a checkpoint of this framework: the
online network and its linear classifier head `params['classifier']`, trained alongside every
run, e.g. the `supervised` baseline) predicts a class for each of the first `num_frames` frames;
the video's *agreement* is the fraction of those frames whose prediction equals the video's
label, and the video is kept when `agreement >= threshold`. Outputs:

* the filtered dataset `<output_name>` (default `<dataset>_curated`, config
  `t<threshold>-n<num_frames>-s<min_seconds>`) in `data_dir`, with the source's features and
  splits and the kept records copied unchanged (encoded frames are not re-encoded);
* a JSON report (`<data_dir>/<output_name>_report.json` unless `--report`): the settings (with
  `min_seconds` and where the frame rate came from), per split the number kept, dropped, and
  dropped as too short or by the classifier, and for every video its split, index, TFDS id,
  label, frame count, fps and length in seconds, agreement (null when too short) and decision.

Deviation from the paper (docs/METHODS.md §7.4): VideoNet issues YouTube queries per ImageNet class
and drops videos shorter than 10 s, then filters; the length rule is reproduced, but there is no
crawling here: the filter runs over an existing labelled video dataset (the label plays the
query's role), and its threshold is unknown in the paper ([DEFAULT] 0.5). Classes are compared
by index: the classifier's classes must be the dataset's (`num_classes` and order), or
`--class_map` gives the dataset label -> classifier class as a JSON list.

Both passes are Apache Beam pipelines (scoring: one work item per `records_per_shard` videos,
each worker loading the classifier once; writing: TFDS's Beam support), run locally by the
FnApiRunner (DirectRunner's engine, see `common.data.build_tools.beam_runner`) on all cores by
default, or on any runner given by `--beam_pipeline_options` (workers then need this package,
e.g. `setup_file=./setup.py`, and the data on shared storage).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import apache_beam as beam
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from common.data import build_tools
from common.data.shards import Shard, plan_source_shards

DEFAULT_THRESHOLD = 0.5  # [DEFAULT]: the paper's threshold is unknown
DEFAULT_NUM_FRAMES = 100  # the talk: "the first 100 frames"
DEFAULT_MIN_SECONDS = 10.0  # the talk: VideoNet drops videos shorter than 10 s
FPS_FEATURE = "fps"  # per-video frame rate (common.data.folder_builders videos)


# ---------------------------------------------------------------------------------------------
# Classifiers: picklable factories, so that each Beam worker builds its own.


class CheckpointClassifier:
    """Predicts classes of frames with a checkpoint of this framework.

    `frames uint8 [N, H, W, 3] -> int32 [N]`: a centre square crop of side
    `short side * S / (S + crop_padding)` (the evaluation crop of `make_eval_iterator`), resized to
    `S = image_size`, through the online network (inference mode) and the linear classifier
    head trained on its `embedding`.

    Picklable: only the paths travel; the networks are built on the first call, in the worker.
    """

    def __init__(
        self,
        config: str | ml_collections.ConfigDict,
        workdir: str,
        *,
        step: int | None = None,
        image_size: int = 0,
        crop_padding: int = -1,
        batch_size: int = 64,
    ):
        """Args:
        config: the experiment the checkpoint was trained with, `experiments/X.py:variant`,
          or its ConfigDict.
        workdir: the run's workdir (with `checkpoints/`).
        step: checkpoint step (None: latest).
        image_size: classifier input side (0: the config's eval_image_size or image_size).
        crop_padding: centre-crop padding (-1: the config's eval_crop_padding).
        batch_size: frames per forward pass.
        """
        self.config_arg = config
        self.workdir = workdir
        self.step = step
        self.image_size = image_size
        self.crop_padding = crop_padding
        self.batch_size = batch_size
        self._predict = None

    def __getstate__(self):
        return {**self.__dict__, "_predict": None}

    def _load(self):
        import functools

        import jax
        import jax.numpy as jnp

        from common import evaluate
        from common.eval.features import frozen_vector, network_variables

        config = self.config_arg
        if isinstance(config, str):
            config = load_experiment_config(config)
        setup, state, _ = evaluate.restore_state(config, self.workdir, self.step)
        size = int(self.image_size or config.data.get("eval_image_size") or config.data.image_size)
        pad = self.crop_padding if self.crop_padding >= 0 else config.data.eval_crop_padding
        module = setup.modules["online"]
        variables = network_variables(state, "online")
        classifier = state.params["classifier"]

        @functools.partial(jax.jit)
        def logits(variables, classifier, images):
            emb = frozen_vector(module, variables, images, "embedding")
            return setup.classifier.apply({"params": classifier}, emb)

        def predict(frames: np.ndarray) -> np.ndarray:
            images = centre_crop_resize(frames, size, int(pad))
            out = []
            for i in range(0, len(images), self.batch_size):
                chunk = images[i : i + self.batch_size]
                n = len(chunk)
                if n < self.batch_size:  # one compiled shape
                    fill = np.zeros((self.batch_size - n,) + chunk.shape[1:], chunk.dtype)
                    chunk = np.concatenate([chunk, fill])
                lg = logits(variables, classifier, jnp.asarray(chunk))
                out.append(np.asarray(jax.device_get(jnp.argmax(lg, -1)))[:n])
            return np.concatenate(out).astype(np.int32)

        return predict

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self._predict is None:
            self._predict = self._load()
        return self._predict(frames)


def load_experiment_config(arg: str):
    """`experiments/X.py:variant,key=value` -> the experiment's config (as `--config` does)."""
    path, _, variant = arg.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config: no experiment file {path!r}")
    spec = importlib.util.spec_from_file_location(f"_curate_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant or None)


def centre_crop_resize(frames: np.ndarray, size: int, padding: int) -> np.ndarray:
    """uint8 `[N, H, W, 3]` -> float32 `[N, size, size, 3]` in [0, 1]: the centred square of
    side `round(min(H, W) * size / (size + padding))`, resized (bilinear, antialiased)."""
    import jax

    n, h, w, _ = frames.shape
    side = max(1, round(min(h, w) * size / (size + padding)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = frames[:, top : top + side, left : left + side].astype(np.float32) / 255.0
    if side == size:
        return crop
    return np.asarray(jax.image.resize(crop, (n, size, size, 3), "linear", antialias=True))


# ---------------------------------------------------------------------------------------------
# Scoring (Beam pass 1).


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker needs to score a shard (picklable)."""

    source_dir: str  # the prepared source dataset's directory (builder_from_directory)
    video_key: str
    label_key: str
    num_frames: int
    class_map: tuple[int, ...] | None  # dataset label -> classifier class
    min_seconds: float = 0.0  # shorter videos are dropped unclassified (0: no length rule)
    fps: float | None = None  # the dataset's frame rate (None: per video, `fps_key`)
    fps_key: str | None = None  # per-video frame-rate feature


def _source(job: Job) -> tfds.core.DatasetBuilder:
    return tfds.builder_from_directory(job.source_dir)


def first_frames(job: Job, video) -> np.ndarray:
    """uint8 `[min(T, num_frames), H, W, 3]`: decodes only the first frames (encoded or not)."""
    video = video[: job.num_frames]
    if video.dtype == object or video.ndim == 1:  # encoded frames (bytes)
        import tensorflow as tf

        return np.stack([tf.io.decode_image(bytes(f), channels=3).numpy() for f in video])
    return np.asarray(video)


def video_length(job: Job, ex: dict, tfds_id: str) -> tuple[int, float | None, float | None]:
    """`(frame count, fps, seconds)` of a decoded-or-encoded example (fps None: not recorded).

    Raises:
      ValueError: the length rule is on and this video's frame rate is missing or not positive.
    """
    total = int(len(ex[job.video_key]))  # encoded videos: one bytes string per frame
    fps = float(ex[job.fps_key]) if job.fps_key else job.fps
    if fps is not None and fps <= 0:
        if job.min_seconds > 0:
            raise ValueError(
                f"video {tfds_id}: frame rate {fps:g} in feature {job.fps_key!r} is not positive, "
                "so its length in seconds is unknown (give --fps, or --min_seconds 0 to skip "
                "the length rule)"
            )
        fps = None
    return total, fps, (total / fps if fps else None)


def is_short(seconds: float | None, min_seconds: float) -> bool:
    """`seconds < min_seconds` (never with the rule off), up to float32 rounding of the rate:
    frame rates are stored as float32 (4 frames at 0.4 fps read back as 9.99999985 s)."""
    return min_seconds > 0 and seconds < min_seconds * (1.0 - 1e-6)


def score_shard(job: Job, shard: Shard, classifier: Callable) -> Iterator[dict]:
    """One row per video of the shard: split, index, tfds_id, label, total_frames, fps, seconds,
    short, frames (classified), agreement (None for a video dropped as too short)."""
    builder = _source(job)
    decoders = build_tools.skip_decoders(builder.info.features[job.video_key])
    ds = builder.as_dataset(
        split=shard.tfds_split,
        decoders={job.video_key: decoders} if decoders else None,
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=True),
    )
    for offset, ex in enumerate(tfds.as_numpy(ds)):
        if job.label_key not in ex:
            raise ValueError(f"curation needs labels: the dataset has no {job.label_key!r}")
        label = int(ex[job.label_key])
        target = job.class_map[label] if job.class_map is not None else label
        tfds_id = _text(ex["tfds_id"])
        total, fps, seconds = video_length(job, ex, tfds_id)
        row = {
            "split": shard.split,
            "index": shard.start + offset,
            "tfds_id": tfds_id,
            "label": label,
            "total_frames": total,
            "fps": fps,
            "seconds": seconds,
            "short": is_short(seconds, job.min_seconds),
        }
        if row["short"]:  # dropped before the classifier filter: never classified
            yield {**row, "frames": 0, "agreement": None}
            continue
        frames = first_frames(job, ex[job.video_key])
        predictions = np.asarray(classifier(frames))
        yield {
            **row,
            "frames": int(len(frames)),
            "agreement": float(np.mean(predictions == target)) if len(frames) else 0.0,
        }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _ScoreDoFn(beam.DoFn):
    """Scores shards; builds the classifier once per worker (DoFn.setup)."""

    def __init__(self, job: Job, classifier_factory: Callable[[], Callable]):
        super().__init__()
        self.job = job
        self.factory = classifier_factory
        self.classifier = None

    def setup(self):
        self.classifier = self.factory()

    def process(self, shard: Shard):
        for row in score_shard(self.job, shard, self.classifier):
            yield json.dumps(row)


def run_scoring(job: Job, shards: Sequence[Shard], factory, options, out_dir: str) -> list[dict]:
    """The Beam scoring pass; returns the rows sorted by (split, index)."""
    prefix = os.path.join(out_dir, "scores")
    for f in glob.glob(prefix + "*"):
        os.remove(f)
    with beam.Pipeline(runner=build_tools.beam_runner(options), options=options) as p:
        _ = (
            p
            | "Shards" >> beam.Create(list(shards))
            | "Spread" >> beam.Reshuffle()  # Create makes one bundle: spread over workers
            | "Score" >> beam.ParDo(_ScoreDoFn(job, factory))
            | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        )
    rows = []
    for path in sorted(glob.glob(prefix + "*.jsonl")):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return sorted(rows, key=lambda r: (r["split"], r["index"]))


# ---------------------------------------------------------------------------------------------
# Writing (Beam pass 2).


def _kept_records(shard: Shard, job: Job, kept: frozenset) -> Iterator[tuple[str, dict]]:
    """(key, encodable record) of the shard's kept videos, frames left encoded."""
    builder = _source(job)
    features = builder.info.features
    ds = builder.as_dataset(
        split=shard.tfds_split,
        decoders=build_tools.skip_decoders(features),
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    for offset, ex in enumerate(tfds.as_numpy(ds)):
        index = shard.start + offset
        if (shard.split, index) in kept:
            yield f"{shard.split}-{index}", build_tools.encodable(features, ex)


def write_filtered(
    job: Job,
    shards: Sequence[Shard],
    kept: frozenset,
    *,
    name: str,
    config_name: str,
    data_dir: str,
    options,
    description: str,
) -> tfds.core.DatasetBuilder:
    """Writes the kept records as the TFDS dataset `name/config_name` (same version and
    features as the source)."""
    source = _source(job)
    splits = {}
    for split in dict.fromkeys(s.split for s in shards):
        mine = [s for s in shards if s.split == split]
        splits[split] = (
            f"Shards_{split}" >> beam.Create(mine)
            | f"Spread_{split}" >> beam.Reshuffle()
            | f"Read_{split}" >> beam.FlatMap(_kept_records, job=job, kept=kept)
        )
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version=str(source.info.version),
        features=source.info.features,
        split_datasets=splits,
        config=config_name,
        data_dir=data_dir,
        description=description,
        download_config=tfds.download.DownloadConfig(
            beam_runner=build_tools.beam_runner(options),
            beam_options=options,
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        ),
    )


# ---------------------------------------------------------------------------------------------
# The driver.


def curate(
    dataset: str,
    data_dir: str,
    classifier_factory: Callable[[], Callable],
    *,
    splits: Sequence[str] | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
    threshold: float = DEFAULT_THRESHOLD,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    fps: float | None = None,
    video_key: str = "video",
    label_key: str = "label",
    class_map: Sequence[int] | None = None,
    output_name: str | None = None,
    report_path: str | None = None,
    records_per_shard: int = 64,
    beam_pipeline_options: str | Sequence[str] | None = None,
    classifier_name: str = "",
) -> dict:
    """Scores every video, writes the filtered dataset and the report; returns the report.

    Args:
      dataset: source TFDS `NAME[/CONFIG][:VERSION]` (embedded datasets are built if needed).
      data_dir: TFDS data directory of the source and of the output.
      classifier_factory: picklable callable returning `frames uint8 [N,H,W,3] -> classes [N]`
        (e.g. a `CheckpointClassifier`), called once per Beam worker.
      splits: source splits (default: all).
      num_frames: the first frames of each video that are classified.
      threshold: keep a video when its agreement (fraction of frames predicted as its label)
        is >= threshold.
      min_seconds: before the classifier, drop videos shorter than this many seconds (frame
        count / fps); 0 turns the rule off.
      fps: the source's frame rate, overriding what the dataset records (a per-video `fps`
        feature or `info.metadata['fps']`); needed when it records none and min_seconds > 0.
      video_key, label_key: the source's video and label features.
      class_map: dataset label -> classifier class (default: the identity).
      output_name: the filtered dataset's name (default `<name>_curated`).
      report_path: where the JSON report goes (default `<data_dir>/<output_name>_report.json`).
      records_per_shard: videos per Beam work item.
      beam_pipeline_options: `"key=value,..."` (default: local, all cores).
      classifier_name: recorded in the report.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    if num_frames < 1:
        raise ValueError(f"--num_frames must be positive, got {num_frames}")
    if min_seconds < 0:
        raise ValueError(f"--min_seconds must be >= 0, got {min_seconds}")
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    source = build_tools.load_source(dataset, data_dir)
    features = source.info.features
    for key in (video_key, label_key):
        if key not in features:
            raise ValueError(
                f"{source.info.full_name} has no feature {key!r} (features: {list(features)})"
            )
    fps, fps_key, fps_source = _frame_rate(source, fps, min_seconds)
    splits, shards = plan_source_shards(source, splits, records_per_shard)
    job = Job(
        source_dir=os.fspath(source.data_dir),
        video_key=video_key,
        label_key=label_key,
        num_frames=int(num_frames),
        class_map=tuple(int(c) for c in class_map) if class_map is not None else None,
        min_seconds=float(min_seconds),
        fps=fps,
        fps_key=fps_key,
    )
    name = output_name or f"{source.name}_curated"
    config_name = f"t{threshold:g}-n{num_frames}-s{min_seconds:g}".replace(".", "p")
    build_tools.make_importable_by_workers()
    options = build_tools.beam_options(beam_pipeline_options)
    work = os.path.join(data_dir, "downloads", "curate_work", name, config_name)
    os.makedirs(work, exist_ok=True)

    rows = run_scoring(job, shards, classifier_factory, options, work)
    for row in rows:
        row["kept"] = not row["short"] and row["agreement"] >= threshold
    kept = frozenset((r["split"], r["index"]) for r in rows if r["kept"])
    summary = {}
    for split in splits:
        mine = [r for r in rows if r["split"] == split]
        summary[split] = {
            "kept": sum(r["kept"] for r in mine),
            "dropped": sum(not r["kept"] for r in mine),
            "dropped_short": sum(r["short"] for r in mine),
            "dropped_classifier": sum(not r["short"] and not r["kept"] for r in mine),
        }
    if not kept:
        logging.warning("curation kept no video: the filtered dataset is not written")
        out_builder = None
    else:
        out_builder = write_filtered(
            job, [s for s in shards if summary[s.split]["kept"]], kept, name=name,
            config_name=config_name, data_dir=data_dir, options=options,
            description=(
                f"{source.info.full_name} curated: videos of at least {min_seconds:g} s whose "
                f"first {num_frames} frames "
                f"{classifier_name or 'the classifier'} labels as the video's label in >= "
                f"{threshold:g} of them (vito.curate)."
            ),
        )  # fmt: skip
    report = {
        "source": source.info.full_name,
        "output": f"{name}/{config_name}" if out_builder is not None else None,
        "output_dir": os.fspath(out_builder.data_dir) if out_builder is not None else None,
        "classifier": classifier_name,
        "num_frames": int(num_frames),
        "threshold": float(threshold),
        "min_seconds": float(min_seconds),
        "fps_source": fps_source,
        "splits": summary,
        "videos": rows,
    }
    report_path = report_path or os.path.join(data_dir, f"{name}_report.json")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    report["report_path"] = report_path
    return report


def _frame_rate(
    source: tfds.core.DatasetBuilder, fps: float | None, min_seconds: float
) -> tuple[float | None, str | None, str]:
    """`(dataset fps, per-video fps feature, description)`: where video lengths come from.

    Priority: the `--fps` override, a per-video `fps` feature, `info.metadata['fps']`.

    Raises:
      ValueError: min_seconds > 0 and the dataset records no frame rate.
    """
    if fps is not None:
        return float(fps), None, f"--fps {fps:g}"
    if FPS_FEATURE in source.info.features:
        return None, FPS_FEATURE, f"feature {FPS_FEATURE!r}"
    recorded = (source.info.metadata or {}).get("fps")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and recorded > 0:
        return float(recorded), None, f"metadata fps {recorded:g}"
    if min_seconds > 0:
        raise ValueError(
            f"{source.info.full_name} records no frame rate (no {FPS_FEATURE!r} feature, no "
            f"positive info.metadata['fps']), so videos shorter than --min_seconds "
            f"{min_seconds:g} cannot be found: give the rate with --fps, or --min_seconds 0 to "
            "skip the length rule"
        )
    return None, None, "none (length rule off)"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="source NAME[/CONFIG][:VERSION]")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", required=True, help="classifier's experiments/X.py:variant")
    parser.add_argument("--workdir", required=True, help="classifier's run (checkpoints/)")
    parser.add_argument("--checkpoint", type=int, default=None, help="step (default: latest)")
    parser.add_argument("--split", default="", help="comma-separated splits (default: all)")
    parser.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument(
        "--min_seconds", type=float, default=DEFAULT_MIN_SECONDS,
        help="drop videos shorter than this before the classifier (0: off)",
    )  # fmt: skip
    parser.add_argument("--fps", type=float, default=None, help="the source's frame rate")
    parser.add_argument("--image_size", type=int, default=0)
    parser.add_argument("--video_key", default="video")
    parser.add_argument("--label_key", default="label")
    parser.add_argument("--class_map", default="", help="JSON list: dataset label -> class")
    parser.add_argument("--output_name", default=None)
    parser.add_argument("--report", default=None)
    parser.add_argument("--records_per_shard", type=int, default=64)
    parser.add_argument("--beam_pipeline_options", default=None)
    from common import console

    args = console.parse_quietly(parser, argv)
    logging.basicConfig(level=logging.INFO)
    factory = CheckpointClassifier(
        args.config, os.path.abspath(args.workdir), step=args.checkpoint,
        image_size=args.image_size,
    )  # fmt: skip
    report = curate(
        args.dataset, os.path.expanduser(args.data_dir), _Factory(factory),
        splits=[s for s in args.split.split(",") if s] or None, num_frames=args.num_frames,
        threshold=args.threshold, min_seconds=args.min_seconds, fps=args.fps,
        video_key=args.video_key, label_key=args.label_key,
        class_map=json.loads(args.class_map) if args.class_map else None,
        output_name=args.output_name, report_path=args.report,
        records_per_shard=args.records_per_shard,
        beam_pipeline_options=args.beam_pipeline_options,
        classifier_name=f"{args.config} @ {args.workdir}",
    )  # fmt: skip
    for split, s in report["splits"].items():
        print(
            f"{split}: kept {s['kept']}, dropped {s['dropped']} ({s['dropped_short']} shorter "
            f"than {args.min_seconds:g} s, {s['dropped_classifier']} by the classifier)"
        )
    print(f"filtered dataset: {report['output']} in {args.data_dir}")
    print(f"report: {report['report_path']}")


@dataclasses.dataclass(frozen=True)
class _Factory:
    """A picklable factory returning a fresh copy of a classifier (one per worker)."""

    classifier: CheckpointClassifier

    def __call__(self):
        import copy

        return copy.copy(self.classifier)


if __name__ == "__main__":
    from vito import curate as _curate

    _curate.main()
