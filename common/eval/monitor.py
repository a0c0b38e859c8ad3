"""Top-1 of the online linear monitor (trained during pretraining) on a held-out split."""

from __future__ import annotations

import numpy as np

from common.eval import register_evaluator
from common.eval.features import eval_batches, make_apply_fn


@register_evaluator("monitor")
class MonitorEvaluator:
    """Accuracy of the stop-gradient linear classifier that pretraining trains alongside.

    Options (`config.evals.monitor`): `split` (default `validation`), `batch_size`.
    """

    def __init__(self, config, eval_config):
        self.config = config
        self.split = eval_config.get("split", "validation")
        self.batch_size = eval_config.get("batch_size", 64)

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        apply = make_apply_fn(setup, state, mesh=mesh)
        classifier = {"params": state.params["classifier"]}
        correct = total = 0
        for batch in eval_batches(self.config, self.split, self.batch_size):
            emb = apply(batch["image"])["embedding"]
            logits = setup.classifier.apply(classifier, emb)
            hits = np.asarray(np.argmax(np.asarray(logits), -1) == batch["label"])
            valid = np.asarray(batch["_valid"], bool)
            correct += int(hits[valid].sum())
            total += int(valid.sum())
        return {"top1": correct / max(total, 1), "num_examples": float(total)}
