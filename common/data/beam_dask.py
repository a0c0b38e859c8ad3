"""Apache Beam's Dask runner, with the outputs of `DoFn.finish_bundle` kept.

Beam 2.77's `DaskRunner` runs each `ParDo` bundle in `transform_evaluator.apply_dofn_to_bundle`,
which takes the bundle's outputs before it calls `finish_bundle`, so everything a `DoFn` emits
there is lost. Beam's own `Top.Largest` emits its per-bundle heaps from `finish_bundle`
(`_TopPerBundle`), so on that runner `Create([3, 9, 5]) | Top.Largest(1)` yields `[]`, and
TFDS's Beam writer, which takes `Top.Largest(1)` of the example keys as a side input of its
shard assignment, fails with `IndexError` in `_assign_shard` (`largest_key[0]`). Everything else
the FH pipeline uses (Create, ParDo/Map, GroupByKey, Flatten, combiners, side inputs) runs
correctly there.

`DaskRunner` here is Beam's runner whose bundles call `finish_bundle` before collecting the
outputs: nothing else changes. Name it in the Beam options of `common.data.fh_masks`:

    python -m common.data.fh_masks ... --beam_pipeline_options=\\
        "runner=common.data.beam_dask.DaskRunner,dask_client_address=tcp://SCHEDULER:8786"

Workers must be able to import this repository (installed, or on their `PYTHONPATH`): the
bundle function is sent to them by reference to this module.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from apache_beam.runners.common import DoFnInvoker
from apache_beam.runners.dask import dask_runner, transform_evaluator

_swap_lock = threading.Lock()


def apply_dofn_to_bundle(items, invoker_args, invoker_kwargs, receivers) -> list:
    """Runs a DoFn over one bundle (a Dask partition): its outputs, `finish_bundle`'s included."""
    invoker = DoFnInvoker.create_invoker(*invoker_args, **invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()  # may emit (Top's per-bundle heaps): before collecting
    invoker.invoke_teardown()
    return [output.value for output in receivers.values]


@contextlib.contextmanager
def _bundles_keep_finish_bundle_outputs() -> Iterator[None]:
    # Beam's ParDo translation looks the bundle function up by its module name when it builds
    # the Dask graph (inside `run_pipeline`, in this process), so swapping it for that time is
    # enough: the graph holds a reference to this module's function, which workers import.
    with _swap_lock:
        original = transform_evaluator.apply_dofn_to_bundle
        transform_evaluator.apply_dofn_to_bundle = apply_dofn_to_bundle
        try:
            yield
        finally:
            transform_evaluator.apply_dofn_to_bundle = original


class DaskRunner(dask_runner.DaskRunner):
    """`apache_beam.runners.dask.dask_runner.DaskRunner` keeping `finish_bundle` outputs."""

    def run_pipeline(self, pipeline, options):
        with _bundles_keep_finish_bundle_outputs():
            return super().run_pipeline(pipeline, options)
