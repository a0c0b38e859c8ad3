"""Frozen features of a trained network, for every evaluator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


def make_apply_fn(setup, state, *, mesh, network: str = "online") -> Callable:
    """A jitted `images [B,S,S,3] in [0,1] -> network outputs` in inference mode (running BN
    statistics, as the BYOL linear-evaluation protocol freezes them), batch on the mesh."""
    module = setup.modules[network]
    variables = network_variables(state, network)
    batch_sharding = NamedSharding(mesh, P("data"))

    @jax.jit
    def apply(variables, images):
        out = module.apply(variables, augment.normalize(images), train=False)
        out.pop("features", None)
        return out

    def fn(images: np.ndarray):
        images = jax.make_array_from_process_local_data(batch_sharding, np.asarray(images))
        return apply(variables, images)

    return fn


def eval_batches(config, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    from common.data import pipeline

    return pipeline.make_eval_iterator(
        config.data,
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
