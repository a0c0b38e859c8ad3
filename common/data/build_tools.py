"""What the dataset tools share: worker pools, Apache Beam, and TFDS records kept encoded.

Used by the embedded builders (`synthetic_scenes`, `synthetic_videos`: rendering in a process
pool), the FH tool (`common.data.fh_masks`) and video curation (`vito.curate`), which read a
prepared TFDS dataset shard by shard (`common.data.shards`) and write a derived one, locally or
through Beam. TFDS and Beam are imported inside the functions that need them, so that importing
this module (as a spawned worker re-running a build script does) stays light.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

DEFAULT_BEAM_OPTIONS = "direct_num_workers=0,direct_running_mode=multi_processing"


# ---------------------------------------------------------------------------------------------
# Local worker pools.


@contextlib.contextmanager
def worker_pool(num_workers: int):
    """A `ProcessPoolExecutor` of `num_workers` spawned processes, or None when `num_workers <= 1`.

    Spawned rather than forked: the parent has TensorFlow's threads running, and forking a
    multi-threaded process can deadlock the child. One pool serves every split of a build because
    starting one costs about a second per worker (each imports NumPy, scikit-image and PIL).
    An executor rather than `multiprocessing.Pool`: when a worker dies (killed for memory, or a
    script without a `__main__` guard that every spawned worker re-runs), the executor fails
    (`ordered_map` then says why) where a `Pool` replaces the worker and waits forever. Leaving
    the block on an error cancels the work not yet started instead of finishing it.
    """
    if num_workers <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(fn, items, *, pool=None, chunksize: int = 32):
    """`map(fn, items)` in order, in `pool` (a `worker_pool`) when one is given (`fn` must then
    be picklable). A worker that dies raises a RuntimeError that names the likely causes."""
    if pool is None:
        return map(fn, items)
    return _results_or_explain(pool.map(fn, items, chunksize=chunksize))


def _results_or_explain(results):
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool as e:
        raise RuntimeError(
            "a worker process of the dataset build died before finishing its work. If the build "
            "runs from a script, put the call under `if __name__ == '__main__':` (the workers "
            "are spawned and re-import the script, so an unguarded build starts again in every "
            "worker); otherwise look for a worker killed for memory (dmesg), or build with "
            "num_workers=1 to see the error in this process"
        ) from e


class WorkerPoolBuilder:
    """Mixin for a `tfds.core.GeneratorBasedBuilder` that renders its splits locally.

    Every split is generated inside one `download_and_prepare` call (no Beam), so one
    `worker_pool` of `num_workers` processes (default: all cores) serves them all; a split's
    generator maps its render function with `self.render(fn, num_examples, chunksize)`. The
    builder's config gives the split sizes (`num_train`, `num_validation`, `num_test`; split ids
    0, 1, 2). List it before the TFDS base class.
    """

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """Builder; `num_workers` processes render the examples (default: all cores)."""
        self._num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        self._pool = None
        super().__init__(**kwargs)

    def _download_and_prepare(self, dl_manager, download_config):
        with worker_pool(self._num_workers) as pool:
            self._pool = pool
            try:
                super()._download_and_prepare(dl_manager, download_config)
            finally:
                self._pool = None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        sizes = {
            "train": config.num_train,
            "validation": config.num_validation,
            "test": config.num_test,
        }
        return {
            name: self._generate_examples(split_id=i, num_examples=n)
            for i, (name, n) in enumerate(sizes.items())
        }

    def render(self, fn, num_examples: int, chunksize: int = 32):
        """`fn(index)` for every index of a split, in order, in the build's pool."""
        return ordered_map(fn, range(num_examples), pool=self._pool, chunksize=chunksize)

    @classmethod
    def build_command(cls, argv: Sequence[str] | None = None) -> None:
        """Command line: `python -m <builder module> --data_dir D [--config NAME]
        [--num_workers N]` builds one config of the builder."""
        import argparse
        import time

        parser = argparse.ArgumentParser(description=f"Builds a config of {cls.__name__}.")
        parser.add_argument("--data_dir", required=True)
        parser.add_argument("--config", default="default")
        parser.add_argument("--num_workers", type=int, default=None)
        from common import console

        args = console.parse_quietly(parser, argv)
        start = time.perf_counter()
        builder = cls(config=args.config, data_dir=args.data_dir, num_workers=args.num_workers)
        builder.download_and_prepare()
        elapsed = time.perf_counter() - start
        print(f"{builder.info.full_name} ready in {builder.data_dir} ({elapsed:.1f} s)")


# ---------------------------------------------------------------------------------------------
# Apache Beam.


def beam_options(options: str | Sequence[str] | None):
    """`PipelineOptions` from `"key=value,key=value"` (or a list of `--key=value`)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if options is None:
        options = DEFAULT_BEAM_OPTIONS
    if isinstance(options, str):
        options = [f"--{item.strip().lstrip('-')}" for item in options.split(",") if item.strip()]
    return PipelineOptions(list(options))


def beam_runner(options):
    """The runner to use: the options' own, else the local FnApiRunner.

    Without a runner, Beam's DirectRunner (2.6x+) first tries the Prism runner, which downloads a
    binary at run time (impossible offline) and does not honour `direct_num_workers`; the
    FnApiRunner is the engine DirectRunner falls back to for batch pipelines, and it runs them
    on `direct_num_workers` processes in `direct_running_mode`.
    """
    if options.get_all_options().get("runner"):
        return None  # Beam resolves the named runner from the options
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return fn_runner.FnApiRunner()


def make_importable_by_workers() -> None:
    """Puts this repository on `PYTHONPATH`, for the worker processes Beam starts.

    DirectRunner's multi-processing workers are new Python processes: they import this package
    by name to unpickle the functions, so it must be on their path even when not installed.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])


# ---------------------------------------------------------------------------------------------
# TFDS sources and records kept encoded.


def _import_local_builders() -> None:
    # Registers the builders of this package so `--dataset synthetic_scenes/tiny` resolves.
    import common.data.folder_builders  # noqa: F401
    import common.data.synthetic_scenes  # noqa: F401
    import common.data.synthetic_videos  # noqa: F401


def load_source(
    dataset: str, data_dir: str, *, manual_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """The prepared source builder; prepares manual-download and embedded datasets if needed.

    Raises:
      FileNotFoundError: a manual-download dataset whose manual directory is missing or empty
        (the message names the directory), or a dataset that is neither prepared nor
        preparable here (e.g. `coco/2017` never built with `tfds build`).
    """
    import tensorflow_datasets as tfds
    from etils import epath

    _import_local_builders()
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except ValueError as e:  # e.g. a folder dataset's config that was never built
        raise FileNotFoundError(
            f"{dataset} is neither prepared in {data_dir} nor a known builder config ({e}). "
            "Folder datasets are built with `python -m common.data.folder_builders` first."
        ) from e
    if builder.is_prepared():
        return builder
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual = epath.Path(manual_dir or os.path.join(data_dir, "downloads", "manual"))
        if not manual.exists() or not any(manual.iterdir()):
            raise FileNotFoundError(
                f"{builder.info.full_name} is not prepared in {data_dir} and needs a manual "
                f"download, but the manual directory {manual} is missing or empty. Put the "
                f"files there (or pass --manual_dir):\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual))
        )
        return builder
    if getattr(builder, "LOCAL_GENERATION", False):
        builder.download_and_prepare()
        return builder
    raise FileNotFoundError(
        f"{builder.info.full_name} is not prepared in {data_dir}: prepare it first "
        f"(`tfds build {dataset} --data_dir {data_dir}`), then run this again"
    )


def skip_decoders(feature):
    """Decoders that leave every Image/Video leaf encoded (bytes), None where nothing to skip."""
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Image):
        return tfds.decode.SkipDecoding()
    if isinstance(feature, tfds.features.Sequence):  # includes Video (a Sequence of Image)
        return skip_decoders(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict):
        decoders = {k: skip_decoders(v) for k, v in feature.items()}
        decoders = {k: v for k, v in decoders.items() if v is not None}
        return decoders or None
    return None


def encodable(feature, value):
    """Turns a record read with `skip_decoders` back into what `encode_example` takes.

    Encoded images become file objects (TFDS then stores their bytes as they are); every other
    leaf is a NumPy value that its feature encodes back exactly (ints, floats as float32, text as
    bytes, class labels as ints, boxes as `[4]` float32).
    """
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Image):
        return io.BytesIO(bytes(value))
    if isinstance(feature, tfds.features.Sequence):
        inner = feature.feature
        if isinstance(inner, tfds.features.FeaturesDict):
            return {k: _encodable_sequence(inner[k], v) for k, v in value.items()}
        return _encodable_sequence(inner, value)
    if isinstance(feature, tfds.features.FeaturesDict):
        return {k: encodable(feature[k], v) for k, v in value.items()}
    return value


def _encodable_sequence(inner, values):
    import tensorflow_datasets as tfds

    if isinstance(inner, (tfds.features.Image, tfds.features.Sequence, tfds.features.FeaturesDict)):
        return [encodable(inner, v) for v in values]
    return values
