"""Top-1 of the online linear monitor (trained during pretraining) on a held-out split."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import register_evaluator
from common.eval.features import apply_frozen, eval_batches, network_variables, to_global


@register_evaluator("monitor")
class MonitorEvaluator:
    """Accuracy of the stop-gradient linear classifier that pretraining trains alongside.

    Options (`config.evals.monitor`): `split` (default `validation`), `batch_size` (global).
    """

    def __init__(self, config, eval_config):
        self.config = config
        self.split = eval_config.get("split", "validation")
        self.batch_size = eval_config.get("batch_size", 64)

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
        def counts(variables, classifier, batch):
            emb = apply_frozen(setup.modules["online"], variables, batch["image"])["embedding"]
            logits = setup.classifier.apply({"params": classifier}, emb)
            valid = batch["_valid"]
            hits = (jnp.argmax(logits, -1) == batch["label"]) & valid
            return jnp.stack([hits.sum(), valid.sum()])

        variables = network_variables(state, "online")
        total = jnp.zeros(2, jnp.int32)
        for batch in eval_batches(self.config, self.split, self.batch_size):
            batch = {k: batch[k] for k in ("image", "label", "_valid")}
            total = total + counts(variables, state.params["classifier"], to_global(batch, mesh))
        correct, count = (int(x) for x in jax.device_get(total))
        return {"top1": correct / max(count, 1), "num_examples": float(count)}
