"""Frozen features of a trained network, for every evaluator.

Evaluation batches are global arrays on the mesh like training batches, so an evaluator written
with jitted reductions (`sum over valid rows`) works unchanged on one host or many: every result
leaves the device as a replicated scalar, never as a host copy of a sharded array.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import augment


def network_variables(state, network: str = "online") -> dict:
    """Params and BatchNorm statistics of `network` from a train state (trainable or EMA)."""
    params = state.params.get(network)
    if params is None:
        if network not in state.ema_params:
            known = sorted(set(state.params) - {"classifier"} | set(state.ema_params))
            raise ValueError(
                f"evaluator network {network!r} is not in this model; it has {known} "
                "(e.g. Odin with discovery_mode=target has no 'discovery' network: evaluate "
                "'target')"
            )
        params = state.ema_params[network]
    return {"params": params, "batch_stats": state.batch_stats.get(network, {})}


def apply_frozen(module, variables, images: jax.Array) -> dict:
    """`images [B,S,S,3] in [0,1]` -> network outputs in inference mode (running BatchNorm
    statistics, as the BYOL linear-evaluation protocol freezes them). Call inside jit."""
    out = module.apply(variables, augment.normalize(images), train=False)
    out.pop("features", None)
    return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def extract_dense(module, layer: str, variables, images: jax.Array) -> jax.Array:
    """Jitted `frozen_dense`, compiled once per (network, layer, batch shape) and shared by every
    evaluator and evaluation round (Linen modules hash by value)."""
    return frozen_dense(module, variables, images, layer)


@functools.partial(jax.jit, static_argnums=(0, 1))
def extract_vector(module, key: str, variables, images: jax.Array) -> jax.Array:
    """Jitted `frozen_vector`, shared like `extract_dense`."""
    return frozen_vector(module, variables, images, key)


def frozen_dense(module, variables, images: jax.Array, layer: str = "out") -> jax.Array:
    """`images [B,S,S,3] in [0,1]` -> float32 dense map `[B,h,w,C]` of `layer` in inference mode:
    `out`/`dense` (the network's dense output) or a backbone stage (`stage3`, ...). Call inside
    jit."""
    out = module.apply(variables, augment.normalize(images), train=False)
    if layer in ("out", "dense"):
        return out["dense"].astype(jnp.float32)
    stages = out.get("features", {})
    if layer not in stages:
        raise ValueError(f"feature layer {layer!r} unknown; available: dense, {sorted(stages)}")
    return stages[layer].astype(jnp.float32)


def frozen_vector(module, variables, images: jax.Array, key: str = "embedding") -> jax.Array:
    """`images [B,S,S,3] in [0,1]` -> float32 `[B,C]`: the network output `key` in inference mode
    (`embedding`: spatial mean of the dense map; `pooled`/`projection`: their first region)."""
    out = module.apply(variables, augment.normalize(images), train=False)
    if key not in out:
        raise ValueError(f"feature {key!r} unknown; available: {sorted(out)}")
    x = out[key].astype(jnp.float32)
    return x[:, 0] if x.ndim == 3 else x


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
    return data_batches(config.data, split, batch_size)


def data_batches(data_config, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """`eval_batches` of any data config (e.g. another dataset than the pretraining one)."""
    from common.data import pipeline

    return pipeline.make_eval_iterator(
        data_config,
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


# Feature passes shared between the evaluators of one evaluation round (the linear probe and the
# kNN read the same pooled features): keyed by what determines the features, for one state.
_SHARED: dict = {"state": None, "batches": {}}


def shared_batches(state, key, make: Callable[[], FeatureBatches]) -> FeatureBatches:
    """The `FeatureBatches` made by `make` for `key` and this `state`, made once per round.

    Cleared by `clear_shared` (which `run_evaluators` calls when a round ends), so features do
    not stay on device between rounds.
    """
    ref = _SHARED["state"]
    if ref is None or ref() is not state:
        _SHARED["state"], _SHARED["batches"] = weakref.ref(state), {}
    if key not in _SHARED["batches"]:
        _SHARED["batches"][key] = make()
    return _SHARED["batches"][key]


def clear_shared() -> None:
    _SHARED["state"], _SHARED["batches"] = None, {}


class FeatureBatches:
    """Frozen features of one pass over a split, as global arrays: computed on the first pass and
    kept on device (`cache=True`), or recomputed on every pass (large datasets).

    Each item is the dict `extract(variables, batch)` returns (global arrays, sharded like the
    batch), e.g. features with their labels and `_valid`. Every process iterates the same number
    of batches in the same order, so jitted steps over the items stay in lockstep across hosts.
    """

    def __init__(self, host_batches, extract, variables, mesh, *, keys, cache: bool = True):
        """Args:
        host_batches: a callable returning a fresh iterator of host batches (numpy dicts).
        extract: jitted `(variables, global batch) -> dict of arrays`.
        variables: the frozen network's variables.
        mesh: the mesh the batches are put on.
        keys: the host batch keys `extract` reads.
        cache: keep the extracted items after the first pass.
        """
        self._host_batches = host_batches
        self._extract = extract
        self._variables = variables
        self._mesh = mesh
        self._keys = keys
        self._cache_enabled = cache
        self._cache: list[dict] | None = None

    def __iter__(self):
        if self._cache is not None:
            yield from self._cache
            return
        items = []
        for host in self._host_batches():
            batch = to_global({k: host[k] for k in self._keys if k in host}, self._mesh)
            item = self._extract(self._variables, batch)
            if self._cache_enabled:
                items.append(item)
            yield item
        if self._cache_enabled:
            self._cache = items

    def epoch(self, seed: int):
        """The items in a random batch order when cached (the same on every host), else in
        reading order."""
        if self._cache is None:
            yield from self
            return
        order = np.random.default_rng(seed).permutation(len(self._cache))
        for i in order:
            yield self._cache[i]
