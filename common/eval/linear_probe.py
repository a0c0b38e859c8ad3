"""Linear classification probe on frozen pooled features (BYOL's protocol, cheap variant).

BYOL's linear evaluation [CODE: byol/configs/eval.py, docs/METHODS.md §8]: frozen backbone with
BatchNorm in inference mode, a linear classifier trained with SGD, Nesterov momentum 0.9, a cosine
learning-rate schedule and no weight decay, on the pooled representation.

Cheap variant (documented deviation): no augmentation. BYOL trains on random crops and flips of
every epoch; here each training image is centre-cropped once (`make_eval_iterator`), so the
features of the training split are computed once, kept on device, and the classifier makes
`epochs` passes over them. It measures the same thing (linear separability of the frozen
features) at a small fraction of the cost, and reads a few points lower than the augmented
protocol on ImageNet.

`standardize` (default on) whitens each feature dimension with the mean and std of the training
features before the linear layer. A linear map of standardised features is still a linear map of
the features, so the probe's capacity is unchanged, but one learning rate then suits networks
whose feature scales differ by orders of magnitude (a random init and a trained network).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import Evaluator, register_evaluator
from common.eval.discovery import eval_data_config, limit_split
from common.eval.features import (
    FeatureBatches,
    data_batches,
    extract_vector,
    network_variables,
    shared_batches,
)


def pooled_feature_batches(
    setup, state, mesh, *, data, split: str, batch_size: int, network: str = "online",
    feature: str = "embedding",
) -> FeatureBatches:  # fmt: skip
    """Frozen `feature` vectors `x` `[b, C]` of a split (`make_eval_iterator`: centre crops) with
    `label` and `_valid`, computed once per evaluation round and shared by the evaluators that
    ask for the same ones (monitor, linear probe, kNN).

    Args:
      setup: the run's `Setup` (networks).
      state: the train state.
      mesh: the evaluation mesh.
      data: data config (dict) of the dataset to read.
      split: TFDS split.
      batch_size: global batch size (also the items' size).
      network: which network of the state.
      feature: which output of the network.
    """
    module = setup.modules[network]

    def extract(variables, batch):
        x = extract_vector(module, feature, variables, batch["image"])
        return {"x": x, "label": batch["label"], "_valid": batch["_valid"]}

    def make():
        return FeatureBatches(
            lambda: data_batches(data, split, batch_size),
            extract, network_variables(state, network), mesh,
            keys=("image", "label", "_valid"),
        )  # fmt: skip

    key = ("pooled", network, feature, json.dumps(data, sort_keys=True), split, batch_size)
    return shared_batches(state, key, make)


def probe_batches(evaluator: Evaluator, setup, state, mesh, split: str) -> FeatureBatches:
    """`pooled_feature_batches` with an evaluator's options."""
    o = evaluator.options
    return pooled_feature_batches(
        setup, state, mesh, data=eval_data_config(evaluator.config, o), split=split,
        batch_size=int(o.batch_size), network=o.network, feature=o.feature,
    )  # fmt: skip


def moments(batches, mesh, axes: tuple[int, ...] = (0,)) -> tuple[jax.Array, jax.Array]:
    """Mean and std `[C]` of `x` over the valid rows (and `axes`) of every item (replicated)."""

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def sums(x, valid):
        w = valid.astype(jnp.float32).reshape(valid.shape + (1,) * (x.ndim - 1))
        w = jnp.broadcast_to(w, x.shape[:-1] + (1,))
        return jnp.stack([(w * x).sum(axes), (w * x * x).sum(axes)]), w.sum()

    total, count = 0.0, 0.0
    for item in batches:
        s, c = sums(item["x"], item["_valid"])
        total, count = total + s, count + c
    mean = total[0] / jnp.maximum(count, 1.0)
    var = jnp.maximum(total[1] / jnp.maximum(count, 1.0) - mean * mean, 0.0)
    return mean, jnp.sqrt(var) + 1e-6


@register_evaluator("linear_probe")
class LinearProbeEvaluator(Evaluator):
    """Top-1 of a linear classifier trained on frozen pooled features of `train_split`.

    Options (`config.evals.linear_probe`): see `defaults`.
    """

    defaults = {
        "dataset": "",  # TFDS name; empty: config.data.name
        "data_dir": "",
        "train_split": "train",
        "train_examples": 0,  # > 0: only the first ones of train_split (all if it is smaller)
        "split": "validation",
        "examples": 0,  # > 0: only the first ones of split (all if it is smaller)
        "batch_size": 256,  # global; also the probe's SGD batch
        "network": "online",
        "feature": "embedding",  # network output: embedding (mean of the dense map), pooled
        "num_classes": 0,  # 0: config.num_classes
        "epochs": 30,
        "learning_rate": 0.2,  # peak of the cosine schedule (BYOL sweeps 0.05..0.4 x B/256)
        "momentum": 0.9,
        "nesterov": True,
        "standardize": True,
        "seed": 0,
    }

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        o = self.options
        num_classes = int(o.num_classes or self.config.num_classes)
        data = eval_data_config(self.config, o)
        train_split = limit_split(data, o.train_split, int(o.train_examples))
        train = probe_batches(self, setup, state, mesh, train_split)
        val_split = limit_split(data, o.split, int(o.examples))
        val = probe_batches(self, setup, state, mesh, val_split)
        num_batches = sum(1 for _ in train)  # the first pass extracts and caches
        mean, std = moments(train, mesh) if o.standardize else (0.0, 1.0)
        params, top1_train = train_linear(
            train, mesh, num_classes=num_classes, mean=mean, std=std,
            epochs=int(o.epochs),
            optimizer=optax.sgd(
                optax.cosine_decay_schedule(float(o.learning_rate), int(o.epochs) * num_batches),
                momentum=float(o.momentum), nesterov=bool(o.nesterov),
            ),
            seed=int(o.seed),
        )  # fmt: skip
        correct, count = accuracy(val, params, mean, std, mesh)
        return {"top1": correct / max(count, 1), "train_top1": top1_train, "num_examples": count}


def _logits(params, x, mean, std):
    return ((x - mean) / std) @ params["w"] + params["b"]


def train_linear(
    batches: FeatureBatches,
    mesh,
    *,
    num_classes: int,
    mean,
    std,
    epochs: int,
    optimizer: optax.GradientTransformation,
    seed: int,
) -> tuple[dict, float]:
    """Trains `softmax(x W + b)` on the cached items by cross-entropy (valid rows only).

    Returns the parameters (replicated) and the training top-1 of the last epoch.
    """
    replicated = NamedSharding(mesh, P())
    first = next(iter(batches))
    dim = first["x"].shape[-1]
    params = jax.device_put(
        {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}, replicated
    )
    opt_state = jax.jit(optimizer.init, out_shardings=replicated)(params)

    @functools.partial(jax.jit, out_shardings=replicated, donate_argnums=(0, 1))
    def step(params, opt_state, item):
        valid = item["_valid"].astype(jnp.float32)
        labels = jnp.maximum(item["label"], 0)

        def loss_fn(p):
            logits = _logits(p, item["x"], mean, std)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            hits = (jnp.argmax(logits, -1) == labels) * valid
            return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1.0), hits.sum()

        (_, hits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([hits, valid.sum()])

    counts = jnp.zeros(2)
    for epoch in range(epochs):
        counts = jnp.zeros(2)
        for item in batches.epoch(seed + epoch):
            params, opt_state, c = step(params, opt_state, item)
            counts = counts + c
    hits, total = (float(v) for v in jax.device_get(counts))
    return params, hits / max(total, 1.0)


def accuracy(batches, params, mean, std, mesh) -> tuple[int, int]:
    """(correct, valid examples) of the linear classifier on the items."""

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def counts(params, item):
        valid = item["_valid"]
        pred = jnp.argmax(_logits(params, item["x"], mean, std), -1)
        return jnp.stack([jnp.sum((pred == item["label"]) & valid), jnp.sum(valid)])

    total = jnp.zeros(2, jnp.int32)
    for item in batches:
        total = total + counts(params, item)
    correct, count = (int(v) for v in np.asarray(jax.device_get(total)))
    return correct, count
