"""Top-1 of the online linear monitor (trained during pretraining) on a held-out split."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import Evaluator, register_evaluator
from common.eval.discovery import eval_data_config
from common.eval.linear_probe import pooled_feature_batches


@register_evaluator("monitor")
class MonitorEvaluator(Evaluator):
    """Accuracy of the stop-gradient linear classifier that pretraining trains alongside.

    Options: `split`, `batch_size` (global), `dataset`/`data_dir` (default: the pretraining
    data; VITO pretrains on videos and monitors on the embedded images), `enabled`.
    """

    name = "monitor"
    defaults = {"dataset": "", "data_dir": "", "split": "validation", "batch_size": 64}

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
        def counts(classifier, item):
            logits = setup.classifier.apply({"params": classifier}, item["x"])
            valid = item["_valid"]
            hits = (jnp.argmax(logits, -1) == item["label"]) & valid
            return jnp.stack([hits.sum(), valid.sum()])

        # The online embeddings of the split, shared with the linear probe and the kNN when they
        # read the same split at the same batch size (one forward pass for the three).
        o = self.options
        data = eval_data_config(self.config, o)
        batches = pooled_feature_batches(
            setup, state, mesh, data=data, split=o.split, batch_size=int(o.batch_size)
        )
        total = jnp.zeros(2, jnp.int32)
        for item in batches:
            total = total + counts(state.params["classifier"], item)
        correct, count = (int(x) for x in jax.device_get(total))
        return {"top1": correct / max(count, 1), "num_examples": float(count)}
