"""Felzenszwalb (FH) masks for any TFDS image dataset, written as a derived TFDS dataset.

DetCon trains with FH segment ids computed once per image, offline, on the full-resolution image
(`skimage.segmentation.felzenszwalb`, docs/METHODS.md §5.2). This module turns a prepared TFDS
dataset `NAME[/CONFIG][:VERSION]` into a derived dataset `NAME_fh/<CONFIG->fh<scale>-<min_size>...`
(same version) that holds every feature of the source record unchanged plus

  fh_masks  Tensor (n_fh, H, W) uint8 or uint16: one channel per (scale, min_size) pair.

Image features are copied as their encoded bytes (no JPEG re-encoding), and FH runs on the image
decoded by the source's own TFDS feature, i.e. exactly the pixels a training pipeline sees.

Command::

  python -m common.data.fh_masks --dataset imagenet2012 --data_dir ~/tensorflow_datasets \\
      [--split train,validation] [--fh 1000:1000,500:500] [--fh_dtype auto|uint8|uint16] \\
      [--beam_pipeline_options="direct_num_workers=0,direct_running_mode=multi_processing"] \\
      [--local] [--manual_dir DIR] [--work_dir DIR] [--records_per_shard 256]

Generation has two stages, both resumable:

1. FH per shard (a range of `records_per_shard` source records) into a work directory
   (default `<data_dir>/downloads/fh_work/<derived name>/<config>/<version>/`): one `.npz` per
   shard, written to a temporary name and renamed into place, so a shard file is complete or
   absent. A restarted run (with the same `--records_per_shard`, which names the shards) skips
   every shard whose file exists. With `--fh_dtype auto` (default)
   this stage runs first over every shard, and its per-record maximum ids decide the storage
   dtype (uint8 if every id < 256, else uint16; more than 65,536 segments is an error naming the
   record) before the feature spec of the derived dataset is fixed.
2. The derived TFDS dataset, through TFDS's Apache Beam support: `_generate_examples` returns a
   Beam `PTransform` that reads each shard's source records and FH file (computing it if
   missing) and emits the records. TFDS writes into an `incomplete.*` directory and renames it
   only at the end, so a killed run never leaves a dataset that reads as prepared. The work
   directory is deleted after success unless `--keep_work_dir`.

Beam runs locally on all cores by default (`direct_num_workers=0,
direct_running_mode=multi_processing`, executed by the FnApiRunner, the DirectRunner's batch
engine; see `common.data.build_tools.beam_runner` for why it is named explicitly); any runner's
options (Dataflow, Flink, Spark: `runner=DataflowRunner,project=...,temp_location=gs://...`) go
through `--beam_pipeline_options` (comma-separated `key=value`; the work directory must then be on
storage every worker sees, e.g. `gs://`, and the workers need this package, e.g.
`setup_file=./setup.py`). `--local` computes the same thing without Beam, in this
process (`--num_workers N` for a process pool in stage 1).

Sources: a prepared dataset is read as it is (e.g. `coco/2017`, which must have been prepared
with `tfds build coco/2017`). Manual-download datasets (`imagenet2012`) are prepared first from
`--manual_dir` (default `<data_dir>/downloads/manual`); a missing or empty manual directory is an
error naming it. The embedded datasets (`synthetic_scenes`, ...) are generated if needed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import os
import types
import uuid
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from common.data import build_tools, segmentation, tfds_compat
from common.data.shards import Shard, plan_source_shards

del tfds_compat  # imported for its fix to TFDS (see the module)

FEATURE = "fh_masks"
DEFAULT_RECORDS_PER_SHARD = 256
_FORMAT_VERSION = 1  # of the work-directory shard files


# ---------------------------------------------------------------------------------------------
# Jobs and shards: everything a (possibly remote) worker needs, picklable.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FhJob:
    """What to compute, for the driver and for every worker.

    Attributes:
      source_name: full name of the source (`name/config/version`), for messages.
      source_dir: the prepared source's data directory (workers read it with
        `tfds.builder_from_directory`, which needs no builder code).
      image_key: the source feature FH runs on.
      fh_settings: `(scale, min_size)` pairs.
      work_dir: where the per-shard FH files go.
      name_key: an optional Text feature (e.g. a file name) quoted in error messages.
    """

    source_name: str
    source_dir: str
    image_key: str
    fh_settings: tuple[tuple[float, int], ...]
    work_dir: str
    name_key: str | None = None


# ---------------------------------------------------------------------------------------------
# Reading source records (worker side).
# ---------------------------------------------------------------------------------------------

_SOURCE_CACHE: dict[str, tfds.core.DatasetBuilder] = {}


def _source_builder(job: FhJob) -> tfds.core.DatasetBuilder:
    # One read-only builder per process: workers handle many shards.
    if job.source_dir not in _SOURCE_CACHE:
        _SOURCE_CACHE[job.source_dir] = tfds.builder_from_directory(job.source_dir)
    return _SOURCE_CACHE[job.source_dir]


def read_records(job: FhJob, shard: Shard) -> Iterator[tuple[int, dict]]:
    """Yields `(index in split, record)` for the shard, images left encoded (bytes)."""
    builder = _source_builder(job)
    decoders = build_tools.skip_decoders(builder.info.features)
    dataset = builder.as_dataset(
        split=shard.tfds_split,
        decoders=decoders,
        shuffle_files=False,
        # One file at a time: records come in split order, so record i is index start + i.
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    # The shard's encoded records are read whole before any is yielded: a live tf.data iterator
    # keeps background threads busy while its consumer computes, which took about a third of a
    # core from FH (measured: FH on one pinned core 1.5x slower with the iterator open) and, with
    # one worker per core, made the workers slow each other down. A shard is a few hundred
    # encoded images (tens of MB).
    records = list(tfds.as_numpy(dataset))
    count = len(records)
    if count != shard.end - shard.start:
        raise RuntimeError(
            f"{job.source_name} split {shard.split}[{shard.start}:{shard.end}] gave {count} "
            "records; the source changed since the shards were planned"
        )
    for offset, record in enumerate(records):
        yield shard.start + offset, record


def decode_image(job: FhJob, encoded: bytes) -> np.ndarray:
    """Decodes an image with the source's own TFDS feature: the pixels a pipeline will see."""
    import tensorflow as tf

    feature = _source_builder(job).info.features[job.image_key]
    return feature.decode_example(tf.constant(encoded)).numpy()


def _record_name(job: FhJob, split: str, index: int, record: dict | None = None) -> str:
    name = f"{job.source_name} {split}[{index}]"
    if record is not None and job.name_key and job.name_key in record:
        value = record[job.name_key]
        name += f" ({value.decode() if isinstance(value, bytes) else value})"
    return name


# ---------------------------------------------------------------------------------------------
# Stage 1: FH per shard, resumable through atomic files.
# ---------------------------------------------------------------------------------------------


def _narrow(ids: np.ndarray) -> np.ndarray:
    top = int(ids.max()) if ids.size else 0
    for dtype in (np.uint8, np.uint16):
        if top <= np.iinfo(dtype).max:
            return ids.astype(dtype)
    return ids.astype(np.int32)


def _write_atomic(path: epath.Path, arrays: dict[str, np.ndarray]) -> None:
    # Temporary name unique per writer (a runner may retry a bundle while the first try still
    # runs); the rename is atomic on a local file system and the final name never holds a
    # partial file on object stores either (they write objects whole).
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)


def shard_file(job: FhJob, shard: Shard) -> epath.Path:
    return epath.Path(job.work_dir) / shard.file_name


def compute_shard(job: FhJob, shard: Shard) -> str:
    """Computes the FH file of `shard` unless it exists; returns its path.

    The file holds, per record `i` of the shard, `ids_i` (`[n_fh, H, W]`, the smallest unsigned
    dtype that holds them) and the arrays `index`, `max_id` (`[n, n_fh]`), `crc` (CRC-32 of the
    encoded image, checked when the record is written out) and `settings`.
    """
    path = shard_file(job, shard)
    if path.exists():
        return os.fspath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, indices, max_ids, crcs = {}, [], [], []
    for i, (index, record) in enumerate(read_records(job, shard)):
        encoded = record[job.image_key]
        ids = segmentation.felzenszwalb_ids(decode_image(job, encoded), job.fh_settings)
        arrays[f"ids_{i}"] = _narrow(ids)
        indices.append(index)
        max_ids.append(ids.reshape(len(job.fh_settings), -1).max(axis=1))
        crcs.append(zlib.crc32(encoded))
    arrays.update(
        index=np.asarray(indices, dtype=np.int64),
        max_id=np.asarray(max_ids, dtype=np.int64).reshape(-1, len(job.fh_settings)),
        crc=np.asarray(crcs, dtype=np.int64),
        settings=np.asarray(job.fh_settings, dtype=np.float64),
        format_version=np.asarray(_FORMAT_VERSION),
    )
    _write_atomic(path, arrays)
    return os.fspath(path)


@contextlib.contextmanager
def _open_shard(job: FhJob, shard: Shard):
    """The shard's FH file as an `NpzFile` (members are read on access), checked and closed."""
    path = shard_file(job, shard)
    with path.open("rb") as f, np.load(f) as data:
        settings = np.asarray(job.fh_settings, dtype=np.float64)
        if not np.array_equal(data["settings"], settings):
            raise ValueError(
                f"{path} holds FH settings {data['settings'].tolist()}, not "
                f"{settings.tolist()}; remove the work directory {job.work_dir}"
            )
        yield data


def shard_max_ids(job: FhJob, shard: Shard) -> tuple[int, int]:
    """`(largest id, index of the record that has it)` of a computed shard."""
    with _open_shard(job, shard) as data:
        max_id, indices = data["max_id"].max(axis=1), data["index"]
    i = int(np.argmax(max_id))
    return int(max_id[i]), int(indices[i])


def shard_examples(job: FhJob, shard: Shard, dtype: str) -> Iterator[tuple[int, dict]]:
    """Stage 2 for one shard: `(index, record + fh_masks)` with ids cast to `dtype`."""
    compute_shard(job, shard)
    features = _source_builder(job).info.features
    with _open_shard(job, shard) as data:
        indices, crcs = data["index"], data["crc"]
        for i, (index, record) in enumerate(read_records(job, shard)):
            name = _record_name(job, shard.split, index, record)
            if int(indices[i]) != index or int(crcs[i]) != zlib.crc32(record[job.image_key]):
                raise ValueError(
                    f"FH file {shard_file(job, shard)} does not match source record {name}: "
                    f"the source changed; remove the work directory {job.work_dir}"
                )
            example = build_tools.encodable(features, record)
            example[FEATURE] = segmentation.cast_ids(data[f"ids_{i}"], dtype, record=name)
            yield index, example


def _compute_shard_element(shard: Shard, job: FhJob) -> str:
    return compute_shard(job, shard)


# ---------------------------------------------------------------------------------------------
# The derived TFDS dataset.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class FhConfig(tfds.core.BuilderConfig):
    """Config of a derived `<source>_fh` dataset.

    Attributes:
      job: the FH job (source, image feature, settings, work directory).
      shards: the shards of every split to write.
      fh_dtype: `uint8` or `uint16` (fixed before generation, see the module docstring).
      use_beam: generate through Beam (`_generate_examples` returns a PTransform) or locally.
    """

    job: FhJob | None = None
    shards: tuple[Shard, ...] = ()
    fh_dtype: str = "uint8"
    use_beam: bool = True


def config_name(source_config: str | None, fh_settings) -> str:
    """`[<source config>-]fh<scale>-<min_size>[_<scale>-<min_size>...]`, e.g. `2017-fh1000-1000`."""

    def number(x: float) -> str:
        return (f"{x:g}").replace(".", "p")

    settings = "_".join(f"{number(s)}-{int(m)}" for s, m in fh_settings)
    return f"{source_config}-fh{settings}" if source_config else f"fh{settings}"


class _FhDerivedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the derived builders; `derived_builder_cls` makes one class per source."""

    SOURCE_INFO: tfds.core.DatasetInfo
    LOCAL_GENERATION = True

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        source = self.SOURCE_INFO
        features = {}
        for key, feature in source.features.items():
            if key == FEATURE:
                # The derived dataset is "the source with these FH masks": an existing
                # `fh_masks` feature (e.g. of synthetic_scenes) is replaced.
                continue
            # A deep copy keeps what a JSON round trip would lose (e.g. class names).
            features[key] = copy.deepcopy(feature)
        image_shape = source.features[config.job.image_key].shape
        features[FEATURE] = tfds.features.Tensor(
            shape=(len(config.job.fh_settings), image_shape[0], image_shape[1]),
            dtype=np.dtype(config.fh_dtype).type,
            encoding=tfds.features.Encoding.ZLIB,
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"{source.full_name} with Felzenszwalb masks `{FEATURE}` "
                f"[n_fh, H, W] {config.fh_dtype} for (scale, min_size) = "
                f"{list(config.job.fh_settings)} (skimage felzenszwalb, sigma 0.8)."
            ),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=source.supervised_keys,
            homepage=source.homepage,
            citation=source.citation,
            metadata=tfds.core.MetadataDict(
                source=source.full_name,
                fh_settings=[list(s) for s in config.job.fh_settings],
                fh_dtype=config.fh_dtype,
                image_key=config.job.image_key,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        splits = dict.fromkeys(s.split for s in self.builder_config.shards)
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split: str):
        config = self.builder_config
        shards = [s for s in config.shards if s.split == split]
        if config.use_beam:
            beam = tfds.core.lazy_imports.apache_beam
            return (
                beam.Create(shards)
                # Reshuffle: spread the shards over the workers (Create makes one bundle).
                | beam.Reshuffle()
                | beam.FlatMap(_beam_shard_examples, job=config.job, dtype=config.fh_dtype)
            )
        return _local_examples(config.job, shards, config.fh_dtype)


def _beam_shard_examples(shard: Shard, job: FhJob, dtype: str):
    return shard_examples(job, shard, dtype)


def _local_examples(job: FhJob, shards: Sequence[Shard], dtype: str):
    for shard in shards:
        yield from shard_examples(job, shard, dtype)


_DERIVED_CLASSES: dict[str, type] = {}


def derived_builder_cls(source: tfds.core.DatasetBuilder) -> type:
    """The builder class of `<source name>_fh` (unregistered; one per source version)."""
    key = f"{source.info.full_name}"
    if key not in _DERIVED_CLASSES:
        version = str(source.info.version)
        namespace = {
            "name": f"{source.name}_fh",
            "VERSION": tfds.core.Version(version),
            "RELEASE_NOTES": {version: f"FH masks of {source.info.full_name}."},
            "SOURCE_INFO": source.info,
            "__module__": __name__,
        }
        # Unregistered: several sources may share a name (folder configs), and a prepared
        # derived dataset loads from its files by name (`tfds.builder("coco_fh/...")`) anyway.
        _DERIVED_CLASSES[key] = types.new_class(
            f"Fh_{source.name}",
            (_FhDerivedBuilder,),
            {"skip_registration": True},
            lambda ns: ns.update(namespace),
        )
    return _DERIVED_CLASSES[key]


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------


def _default_name_key(features) -> str | None:
    for key, feature in features.items():
        if isinstance(feature, tfds.features.Text) and "file" in key:
            return key
    return None


def build_fh_dataset(
    dataset: str,
    data_dir: str,
    *,
    splits: Sequence[str] | None = None,
    fh_settings: Sequence[tuple[float, int]] = (segmentation.DETCON_FH_SETTING,),
    fh_dtype: str = "auto",
    image_key: str = "image",
    use_beam: bool = True,
    beam_pipeline_options: str | Sequence[str] | None = None,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    work_dir: str | None = None,
    manual_dir: str | None = None,
    keep_work_dir: bool = False,
    num_workers: int = 1,
) -> tfds.core.DatasetBuilder:
    """Writes `<dataset>_fh`: the source records plus their FH masks (see the module doc).

    Args:
      dataset: source `NAME[/CONFIG][:VERSION]`.
      data_dir: TFDS data directory of the source, and of the derived dataset.
      splits: source splits to process (default: all).
      fh_settings: `(scale, min_size)` pairs.
      fh_dtype: `auto` (from the computed ids), `uint8` or `uint16`.
      image_key: the source image feature.
      use_beam: Apache Beam (True) or the plain local path (False).
      beam_pipeline_options: `"key=value,..."`; default: local, all cores, worker processes.
      records_per_shard: source records per work unit and FH file.
      work_dir: directory of the per-shard FH files (default under `data_dir/downloads`).
      manual_dir: manual download directory for sources like `imagenet2012`.
      keep_work_dir: keep the FH files after success.
      num_workers: processes for stage 1 on the local path.

    Returns:
      The prepared derived builder.
    """
    fh_settings = tuple((float(s), int(m)) for s, m in fh_settings)
    if fh_dtype not in ("auto", "uint8", "uint16"):
        raise ValueError(f"fh_dtype must be auto, uint8 or uint16, got {fh_dtype!r}")
    source = build_tools.load_source(dataset, data_dir, manual_dir=manual_dir)
    features = source.info.features
    if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
        raise ValueError(
            f"{source.info.full_name} has no Image feature {image_key!r} "
            f"(features: {list(features)}); pass --image_key"
        )
    splits, shards = plan_source_shards(source, splits, records_per_shard)

    cls = derived_builder_cls(source)
    name = config_name(source.builder_config.name if source.builder_config else None, fh_settings)
    version = str(source.info.version)
    existing = epath.Path(data_dir) / cls.name / name / version
    if (existing / "dataset_info.json").exists():
        # Already written (the rename into place is the last step): nothing to recompute.
        logging.info("FH dataset %s/%s/%s exists in %s", cls.name, name, version, data_dir)
        return tfds.builder_from_directory(existing)
    if work_dir is None:
        work_dir = os.path.join(data_dir, "downloads", "fh_work", cls.name, name, version)
    job = FhJob(
        source_name=source.info.full_name,
        source_dir=os.fspath(source.data_dir),
        image_key=image_key,
        fh_settings=fh_settings,
        work_dir=os.fspath(work_dir),
        name_key=_default_name_key(features),
    )
    if use_beam:
        build_tools.make_importable_by_workers()
        options = build_tools.beam_options(beam_pipeline_options)

    if fh_dtype == "auto":
        compute_all_shards(job, shards, use_beam, options if use_beam else None, num_workers)
        fh_dtype = _choose_dtype(job, shards).name

    config = FhConfig(
        name=name,
        description=f"FH {list(fh_settings)} of {source.info.full_name}",
        job=job,
        shards=tuple(shards),
        fh_dtype=fh_dtype,
        use_beam=use_beam,
    )
    derived = cls(config=config, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(
        beam_runner=build_tools.beam_runner(options) if use_beam else None,
        beam_options=options if use_beam else None,
        # Records that failed in a killed run are re-generated; TFDS's own statistics pass would
        # read the whole dataset once more for nothing DetCon uses.
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    derived.download_and_prepare(download_config=download_config)
    if not keep_work_dir:
        epath.Path(work_dir).rmtree(missing_ok=True)
    return derived


def compute_all_shards(job, shards, use_beam, options, num_workers, pool=None) -> None:
    """Computes every shard file not yet on disk: through Beam, or locally in `num_workers`
    processes (a started `pool` of them may be given, e.g. to reuse one across calls)."""
    pending = [s for s in shards if not shard_file(job, s).exists()]
    logging.info("FH: %d of %d shards to compute", len(pending), len(shards))
    if not pending:
        return
    if use_beam:
        import apache_beam as beam

        with beam.Pipeline(runner=build_tools.beam_runner(options), options=options) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(pending)
                | "Spread" >> beam.Reshuffle()
                | "FH" >> beam.Map(_compute_shard_element, job=job)
            )
        return
    fn = functools.partial(_compute_shard_element, job=job)
    if pool is not None:
        for _ in build_tools.ordered_map(fn, pending, pool=pool, chunksize=1):
            pass
        return
    with build_tools.worker_pool(num_workers) as pool:
        for _ in build_tools.ordered_map(fn, pending, pool=pool, chunksize=1):
            pass


def _choose_dtype(job: FhJob, shards: Sequence[Shard]) -> np.dtype:
    top, where = -1, None
    for shard in shards:
        max_id, index = shard_max_ids(job, shard)
        if max_id > top:
            top, where = max_id, (shard.split, index)
    try:
        return segmentation.dtype_for_num_ids(top + 1)
    except segmentation.FhOverflowError as e:
        raise segmentation.FhOverflowError(
            f"record {_record_name(job, *where)} has {top + 1} FH segments, more than uint16 "
            "holds; use a larger min_size"
        ) from e


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    import argparse

    parser = argparse.ArgumentParser(
        description="FH masks of a TFDS image dataset as a derived TFDS dataset."
    )
    parser.add_argument("--dataset", required=True, help="NAME[/CONFIG][:VERSION]")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", default="", help="comma-separated splits (default: all)")
    parser.add_argument("--fh", default="1000:1000", help="SCALE:MIN_SIZE[,SCALE:MIN_SIZE...]")
    parser.add_argument("--fh_dtype", default="auto", choices=["auto", "uint8", "uint16"])
    parser.add_argument("--image_key", default="image")
    parser.add_argument("--beam_pipeline_options", default=None)
    parser.add_argument("--local", action="store_true", help="no Beam: compute in this process")
    parser.add_argument("--num_workers", type=int, default=1, help="processes with --local")
    parser.add_argument("--records_per_shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--manual_dir", default=None)
    parser.add_argument("--keep_work_dir", action="store_true")
    from common import console

    args = console.parse_quietly(parser, argv)
    logging.basicConfig(level=logging.INFO)
    derived = build_fh_dataset(
        args.dataset,
        os.path.expanduser(args.data_dir),
        splits=[s for s in args.split.split(",") if s] or None,
        fh_settings=segmentation.parse_fh_settings(args.fh),
        fh_dtype=args.fh_dtype,
        image_key=args.image_key,
        use_beam=not args.local,
        beam_pipeline_options=args.beam_pipeline_options,
        records_per_shard=args.records_per_shard,
        work_dir=args.work_dir,
        manual_dir=args.manual_dir,
        keep_work_dir=args.keep_work_dir,
        num_workers=args.num_workers,
    )
    info = derived.info
    print(f"{info.full_name} ready in {derived.data_dir}: {FEATURE} {info.metadata['fh_dtype']}")
    for split, split_info in info.splits.items():
        print(f"  {split}: {split_info.num_examples} records")


if __name__ == "__main__":
    from common.data import fh_masks

    fh_masks.main()
