"""Top-1 of the online linear monitor (trained during pretraining) on a held-out split."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import register_evaluator
from common.eval.discovery import eval_data_config
from common.eval.linear_probe import pooled_feature_batches


@register_evaluator("monitor")
class MonitorEvaluator:
    """Accuracy of the stop-gradient linear classifier that pretraining trains alongside.

    Options (`config.evals.monitor`): `split` (default `validation`), `batch_size` (global),
    `dataset`/`data_dir` (default: the pretraining data; VITO pretrains on videos and monitors
    on the embedded images).
    """

    def __init__(self, config, eval_config):
        self.config = config
        self.split = eval_config.get("split", "validation")
        self.batch_size = eval_config.get("batch_size", 64)
        self.data_options = ml_collections.ConfigDict(
            {k: eval_config.get(k, "") for k in ("dataset", "data_dir")}
        )

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
        def counts(classifier, item):
            logits = setup.classifier.apply({"params": classifier}, item["x"])
            valid = item["_valid"]
            hits = (jnp.argmax(logits, -1) == item["label"]) & valid
            return jnp.stack([hits.sum(), valid.sum()])

        # The online embeddings of the split, shared with the linear probe and the kNN when they
        # read the same split at the same batch size (one forward pass for the three).
        data = eval_data_config(self.config, self.data_options)
        batches = pooled_feature_batches(
            setup, state, mesh, data=data, split=self.split, batch_size=self.batch_size
        )
        total = jnp.zeros(2, jnp.int32)
        for item in batches:
            total = total + counts(state.params["classifier"], item)
        correct, count = (int(x) for x in jax.device_get(total))
        return {"top1": correct / max(count, 1), "num_examples": float(count)}
