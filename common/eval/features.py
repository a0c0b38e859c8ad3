"""Frozen features of a trained network, for every evaluator.

Evaluation batches are global arrays on the mesh like training batches, so an evaluator written
with jitted reductions (`sum over valid rows`) works unchanged on one host or many: every result
leaves the device as a replicated scalar, never as a host copy of a sharded array.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import augment


def network_variables(state, network: str = "online") -> dict:
    """Params and BatchNorm statistics of `network` from a train state (trainable or EMA)."""
    params = state.params.get(network)
    if params is None:
        params = state.ema_params[network]
    return {"params": params, "batch_stats": state.batch_stats.get(network, {})}


def apply_frozen(module, variables, images: jax.Array) -> dict:
    """`images [B,S,S,3] in [0,1]` -> network outputs in inference mode (running BatchNorm
    statistics, as the BYOL linear-evaluation protocol freezes them). Call inside jit."""
    out = module.apply(variables, augment.normalize(images), train=False)
    out.pop("features", None)
    return out


def to_global(batch: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded on `data` (`_valid` included)."""
    sharding = NamedSharding(mesh, P("data"))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype == np.int64:
            value = value.astype(np.int32)
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def eval_batches(config, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Padded evaluation batches of `split` for this process (`batch_size` is global)."""
    from common.data import pipeline

    return pipeline.make_eval_iterator(
        config.data,
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
