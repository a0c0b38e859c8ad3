"""FH masks on a real distributed engine: Apache Beam's Dask runner on a dask.distributed cluster.

The test starts a scheduler and two worker processes on localhost (`dask scheduler`, `dask
worker`), as on a real cluster, and runs the FH pipeline through
`common.data.beam_dask.DaskRunner` (Beam's runner, keeping `finish_bundle` outputs, which TFDS's
writer needs). Needs the `dask` extra (`pip install -e ".[dask]"`, part of `all`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed")

import apache_beam as beam  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from common.data import fh_masks  # noqa: E402
from tests import helpers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    """Address of a scheduler with two single-threaded worker processes on localhost."""
    root = tmp_path_factory.mktemp("dask")
    scheduler_file = str(root / "scheduler.json")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
    log = open(root / "cluster.log", "w")
    procs = [
        subprocess.Popen(
            [*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", scheduler_file],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(scheduler_file):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no scheduler"
            time.sleep(0.2)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [*worker, "--scheduler-file", scheduler_file, "--nworkers", "1",
                     "--nthreads", "1", "--no-dashboard"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        with open(scheduler_file) as f:
            address = json.load(f)["address"]
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        log.close()


def _in_a_fresh_process(fn, *args):
    """`fn(*args)` in a spawned process: Beam's Dask runner leaves its `distributed` client and
    IO-loop thread in the process that ran the pipeline, which must not be the test session."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _top_on_dask(address: str, runner: str, out: str) -> list:
    options = PipelineOptions([f"--runner={runner}", f"--dask_client_address={address}"])
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | beam.Create([3, 9, 5])
            | beam.combiners.Top.Largest(1)
            | beam.Map(lambda top: open(out, "w").write(json.dumps(top)))
        )
    with open(out) as f:
        return json.load(f)


def _build_fh_on_dask(data_dir: str, address: str) -> str:
    """Builds the FH dataset of the photo folder through the Dask cluster; its full name."""
    options = (
        f"runner=common.data.beam_dask.DaskRunner,dask_client_address={address},"
        "dask_partition_size=1"  # one shard per Dask partition: spread over the workers
    )
    return fh_masks.build_fh_dataset(
        "folder_images/photos",
        data_dir,
        fh_settings=helpers.FH_SETTINGS,
        use_beam=True,
        beam_pipeline_options=options,
        records_per_shard=1,
    ).info.full_name


def test_finish_bundle_outputs_reach_the_next_transform(dask_scheduler, tmp_path):
    # Beam's own runner loses them (the reason for common.data.beam_dask); if this starts to
    # fail, Beam fixed it and beam_dask.DaskRunner can go.
    upstream = "apache_beam.runners.dask.dask_runner.DaskRunner"
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert _in_a_fresh_process(_top_on_dask, dask_scheduler, upstream, a) == []
    ours = "common.data.beam_dask.DaskRunner"
    assert _in_a_fresh_process(_top_on_dask, dask_scheduler, ours, b) == [9]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return str(root), helpers.photo_folder(str(root))


@pytest.mark.slow
def test_fh_masks_on_a_dask_cluster_equal_the_local_run(photos, dask_scheduler, tmp_path):
    root, originals = photos
    built = {}
    for engine in ("local", "dask"):
        data_dir = str(tmp_path / engine)
        helpers.prepare_photo_folder(data_dir, root)
    built["local"] = fh_masks.build_fh_dataset(
        "folder_images/photos",
        str(tmp_path / "local"),
        fh_settings=helpers.FH_SETTINGS,
        use_beam=False,
        records_per_shard=1,
    )
    name, config, version = _in_a_fresh_process(
        _build_fh_on_dask, str(tmp_path / "dask"), dask_scheduler
    ).rsplit("/", 2)
    built["dask"] = tfds.builder(f"{name}/{config}:{version}", data_dir=str(tmp_path / "dask"))
    local, dask = (helpers.records_by_name(built[e]) for e in ("local", "dask"))
    assert sorted(dask) == sorted(local) == sorted(originals)
    for name, record in local.items():
        assert record.keys() == dask[name].keys()
        for key in record:
            np.testing.assert_array_equal(dask[name][key], record[key], err_msg=f"{name} {key}")
    source = tfds.builder("folder_images/photos", data_dir=str(tmp_path / "dask"))
    helpers.check_fh_exact(built["dask"], source, originals)
    assert built["dask"].info.metadata["fh_dtype"] == built["local"].info.metadata["fh_dtype"]
