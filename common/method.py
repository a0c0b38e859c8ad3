"""The Method contract and the list of methods.

A method says only what makes it different from the others:

* its config defaults (`Method.default_config`, merged under `config.method_kwargs`),
* its networks (`build_networks`: name -> Flax module, e.g. `online` and `target`),
* which networks are trained by the optimiser (`trainable_networks`) and which follow another by
  EMA (`ema_networks`: ema name -> source name, with the tau schedule from `tau`),
* how a batch becomes a loss (`loss`), pooling and mask sources included.

The trainer (`common.train`) owns everything else: the mesh, the data, photometric augmentation,
the optimiser, the EMA update, the online linear monitor, checkpoints and metrics. It never branches
on a method's name: it looks the method up here and calls this interface.

Adding a method: a package with a `Method` subclass, a line in `METHODS` (so that
`--config.method=name` finds it; the class is imported on first use), and a config file in
`experiments/`. Methods with BYOL's online/target shape subclass `common.two_tower.TwoTowerMethod`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
PyTree = Any

# The one list of methods: `config.method` name -> "module:Class". A method is imported on first
# use, so that `common` never imports the method packages (they import `common`).
METHODS = {
    "byol": "baselines.byol:BYOL",
    "simclr": "baselines.simclr:SimCLR",
    "moclr": "baselines.moclr:MoCLR",
    "supervised": "baselines.supervised:Supervised",
    "detcon_b": "detcon.method:DetConB",
    "detcon_s": "detcon.method:DetConS",
    "odin": "odin.method:Odin",
    "vito": "vito.method:VITO",
}


def get_method(name: str) -> type[Method]:
    """Returns the method class called `name` in `METHODS` (importing its module)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    module, _, attr = METHODS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    cls.name = name
    return cls


class Networks:
    """Applies named networks inside a loss function and collects their new BatchNorm statistics.

    The loss of a method is a pure function of parameters; BatchNorm statistics are threaded
    through this object: each call uses the statistics left by the previous call of the same
    network (as Haiku's state threading does) and `new_batch_stats` holds the final ones, which the
    trainer returns from the differentiated function as auxiliary output.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        params: Mapping[str, PyTree],
        batch_stats: Mapping[str, PyTree],
        *,
        train: bool = True,
    ):
        self.modules = modules
        self.params = params
        self.new_batch_stats = dict(batch_stats)
        self.train = train

    def __call__(self, name: str, *args, **kwargs) -> Any:
        variables = {"params": self.params[name]}
        stats = self.new_batch_stats.get(name)
        if stats:
            variables["batch_stats"] = stats
        if not self.train or not stats:
            return self.modules[name].apply(variables, *args, train=self.train, **kwargs)
        out, updates = self.modules[name].apply(
            variables, *args, train=True, mutable=["batch_stats"], **kwargs
        )
        self.new_batch_stats[name] = updates["batch_stats"]
        return out


class Method:
    """Base class of every self-supervised method. Subclasses override the marked members."""

    name: ClassVar[str] = ""  # its `METHODS` key, set by `get_method`
    # Networks updated by the optimiser. Their outputs feed the loss with gradients.
    trainable_networks: ClassVar[tuple[str, ...]] = ("online",)
    # EMA networks: name -> the trainable network it follows. Their parameters never get
    # gradients (the trainer passes them through stop_gradient).
    ema_networks: ClassVar[Mapping[str, str]] = {}
    # Keys of the batch that carry images to be photometrically augmented on device, with the
    # config field (under `config.augment`) naming each one's preset.
    augmented_views: ClassVar[Mapping[str, str]] = {"view1": "view1", "view2": "view2"}

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """Method-specific options, found at `config.method_kwargs` (override in subclasses)."""
        return ml_collections.ConfigDict()

    def build_networks(self) -> dict[str, nn.Module]:
        """Returns every network by name; each is called as `module(images, ..., train=...)`."""
        raise NotImplementedError

    def init_args(self, network: str, batch: Mapping[str, Array]) -> tuple[tuple, dict]:
        """Example positional and keyword arguments to initialise `network` (default: view1)."""
        del network
        return (batch["view1"],), {}

    def loss(
        self, nets: Networks, batch: Mapping[str, Array], rng: Array, step: Array
    ) -> tuple[Array, dict[str, Any]]:
        """Computes the training loss of one global batch.

        Args:
          nets: applies a named network, e.g. `nets("online", images)`; EMA networks' parameters
            are already stop-gradient.
          batch: the global batch, views augmented and normalised: `view1`, `view2` `[B,S,S,3]`
            and whatever the data pipeline emits (`mask1`, `box1`, `label`, ...).
          rng: a key for this step (already folded with the step).
          step: the current step (int32 scalar).

        Returns:
          `(loss, aux)` with `aux['embedding']` `[B, C]` (online features of view1 for the linear
          monitor; the trainer stops its gradient), `aux['projection']` `[N, D]` (projections
          whose spread tells collapse) and optionally `aux['metrics']` (name -> scalar).
        """
        raise NotImplementedError

    def save_pictures(
        self, nets: Networks, batch: Mapping[str, Any], rng: Array, path: str
    ) -> bool:
        """Writes a PNG of what the method sees on `batch` to `path`; returns whether it did.

        Called by the trainer on process 0 every `config.pictures_every_steps` (and by the
        pictures command) with inference-mode networks and a host batch (views in [0, 1], not
        augmented). Default: nothing to show.
        """
        del nets, batch, rng, path
        return False

    def tau(self, ema_name: str, step: Array, total_steps: int) -> Array:
        """The EMA decay of `ema_name` at `step` (BYOL's cosine schedule from `config.ema`)."""
        from common import optim  # local import keeps this module free of optimiser code

        del ema_name
        return optim.ema_tau(step, base_tau=self.config.ema.base_tau, total_steps=total_steps)


def two_view_outputs(
    nets: Networks, batch: Mapping[str, Array], network: str, **kwargs
) -> tuple[dict, dict]:
    """Runs `network` on both views (one call each, as BYOL does) and returns both outputs.

    kwargs ending in `1`/`2` are routed to the matching view, e.g. `masks1=..., masks2=...`
    become `masks=` of each call.
    """
    outs = []
    for v in ("1", "2"):
        view_kwargs = {k[:-1]: a for k, a in kwargs.items() if k.endswith(v)}
        shared = {k: a for k, a in kwargs.items() if k[-1:] not in ("1", "2")}
        outs.append(nets(network, batch["view" + v], **view_kwargs, **shared))
    return outs[0], outs[1]


def flatten_projection(*projections: Array) -> Array:
    """Stacks `[B, R, D]` projections into `[N, D]` rows for the collapse metrics."""
    return jnp.concatenate([p.reshape(-1, p.shape[-1]) for p in projections], axis=0)
