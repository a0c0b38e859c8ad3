"""Weighted k-nearest-neighbour classification on frozen pooled features (DINO / solo-learn).

Protocol (Wu et al. 2018 as used by DINO's `eval_knn.py` and solo-learn's `WeightedKNNClassifier`):
features l2-normalised; for each validation image the `k` (20) training images of highest cosine
similarity vote for their labels with weight `exp(similarity / temperature)` (T = 0.07); the
prediction is the class with the largest total vote.

The training features form one bank `[N, C]` (a global array, sharded over the devices like the
batches); each validation batch computes its similarities to the whole bank in one jitted call,
so nothing leaves the devices but the replicated hit counts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common import kmeans
from common.eval import Evaluator, register_evaluator
from common.eval.discovery import eval_data_config, limit_split
from common.eval.linear_probe import probe_batches


def knn_votes(
    queries: jax.Array,
    bank: jax.Array,
    bank_labels: jax.Array,
    bank_valid: jax.Array,
    *,
    k: int,
    temperature: float,
    num_classes: int,
) -> jax.Array:
    """Class votes `[b, num_classes]` of the weighted kNN classifier.

    Args:
      queries: `[b, C]` l2-normalised.
      bank: `[N, C]` l2-normalised training features.
      bank_labels: int `[N]`.
      bank_valid: bool `[N]` (False rows never vote).
      k: neighbours (static; clipped to N).
      temperature: T of the `exp(sim / T)` weights.
      num_classes: number of classes (static).
    """
    sims = jnp.einsum("bc,nc->bn", queries, bank, precision=jax.lax.Precision.HIGHEST)
    sims = jnp.where(bank_valid[None], sims, -jnp.inf)
    top, idx = jax.lax.top_k(sims, min(k, bank.shape[0]))
    weights = jnp.where(jnp.isfinite(top), jnp.exp(top / temperature), 0.0)
    onehot = jax.nn.one_hot(bank_labels[idx], num_classes)  # labels -1 -> zero row
    return jnp.einsum("bk,bkc->bc", weights, onehot)


@register_evaluator("knn")
class KNNEvaluator(Evaluator):
    """Top-1 of the weighted kNN classifier (train split bank, validation queries).

    Options (`config.evals.knn`): see `defaults`.
    """

    defaults = {
        "dataset": "",  # TFDS name; empty: config.data.name
        "data_dir": "",
        "train_split": "train",
        "train_examples": 0,  # > 0: only the first ones of train_split (all if it is smaller)
        "split": "validation",
        "examples": 0,  # > 0: only the first ones of split (all if it is smaller)
        "batch_size": 256,  # global
        "network": "online",
        "feature": "embedding",
        "num_classes": 0,  # 0: config.num_classes
        "k": 20,
        "temperature": 0.07,
    }

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        o = self.options
        num_classes = int(o.num_classes or self.config.num_classes)
        data = eval_data_config(self.config, o)
        train_split = limit_split(data, o.train_split, int(o.train_examples))
        train = probe_batches(self, setup, state, mesh, train_split)
        items = list(train)
        sharded = NamedSharding(mesh, P("data"))

        @functools.partial(jax.jit, out_shardings=(sharded, sharded, sharded))
        def make_bank(xs, labels, valid):
            bank = kmeans.l2_normalize(jnp.concatenate(xs))
            return bank, jnp.concatenate(labels), jnp.concatenate(valid)

        bank = make_bank(
            [i["x"] for i in items], [i["label"] for i in items], [i["_valid"] for i in items]
        )
        del items

        @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
        def counts(bank, item):
            votes = knn_votes(
                kmeans.l2_normalize(item["x"]), *bank, k=int(o.k),
                temperature=float(o.temperature), num_classes=num_classes,
            )  # fmt: skip
            valid = item["_valid"]
            hits = (jnp.argmax(votes, -1) == item["label"]) & valid
            return jnp.stack([hits.sum(), valid.sum()])

        total = jnp.zeros(2, jnp.int32)
        split = limit_split(data, o.split, int(o.examples))
        for item in probe_batches(self, setup, state, mesh, split):
            total = total + counts(bank, item)
        correct, count = (int(v) for v in np.asarray(jax.device_get(total)))
        return {"top1": correct / max(count, 1), "num_examples": count}
