"""Effective rank of the frozen pooled features (RankMe), a label-free health check of SSL.

RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank", ICML): for the embeddings `Z [N, C]` of N images,
with singular values `s_1..s_C`,

    p_k = s_k / sum(s) + eps,    RankMe(Z) = exp(-sum_k p_k log p_k),    eps = 1e-7.

It lies in [1, min(N, C)]: equal to r when Z has r equal non-zero singular values, and it falls
when training collapses the representation onto a few directions (dimensional collapse), which
the paper shows lowers downstream accuracy. No labels are read, so it can be watched during a run
and compared with the random network's.

Two figures:
* `rankme`: as in the paper, of `Z` as it is, neither centred nor standardised;
* `rankme_standardized`: of `Z` with every channel centred and divided by its standard deviation,
  which is what the kNN and the (standardising) linear probe see. The two can disagree: a random
  network's channels differ in scale by orders of magnitude (its BatchNorm statistics are still
  the initial ones), which lowers its plain RankMe, while a trained network's channels can have
  equal scales yet move together (measured on the `local` BYOL run, docs/results.md).

The singular values are the square roots of the eigenvalues of the Gram matrix `Z^T Z [C, C]`
(for the standardised figure: of the correlation matrix, the same up to a factor RankMe ignores),
summed batch by batch on the devices, so the evaluator scales to any number of images and hosts
like the other probes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.eval import Evaluator, register_evaluator
from common.eval.discovery import eval_data_config, limit_split
from common.eval.linear_probe import probe_batches

EPS = 1e-7  # the paper's epsilon


def rankme(singular_values: np.ndarray, eps: float = EPS) -> float:
    """RankMe of a representation given its singular values `[K]` (any order, >= 0)."""
    s = np.asarray(singular_values, np.float64)
    p = s / max(s.sum(), np.finfo(np.float64).tiny) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def gram_singular_values(gram: np.ndarray) -> np.ndarray:
    """Singular values of Z from its Gram matrix `Z^T Z [C, C]` (tiny negative eigenvalues of a
    rounded Gram matrix count as 0)."""
    eigenvalues = np.linalg.eigvalsh(np.asarray(gram, np.float64))
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def correlation(gram: np.ndarray, total: np.ndarray, count: int) -> np.ndarray:
    """Correlation matrix `[C, C]` of the channels from `Z^T Z`, the column sums of Z and N.

    Channels that never vary (dead units) get a zero row and column: they add no direction.
    """
    mean = np.asarray(total, np.float64) / count
    cov = np.asarray(gram, np.float64) / count - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    scale = np.where(std > 1e-6 * max(std.max(), 1e-30), 1.0 / np.maximum(std, 1e-30), 0.0)
    return cov * np.outer(scale, scale)


@register_evaluator("rank")
class RankEvaluator(Evaluator):
    """RankMe of the pooled features of `split` (the same features as the kNN / linear probe).

    Options (`config.evals.rank`): see `defaults`.
    """

    defaults = {
        "dataset": "",  # TFDS name; empty: config.data.name
        "data_dir": "",
        "split": "validation",
        "examples": 0,  # > 0: only the first ones of split (all if it is smaller)
        "batch_size": 256,  # global
        "network": "online",
        "feature": "embedding",
    }

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        o = self.options
        data = eval_data_config(self.config, o)
        split = limit_split(data, o.split, int(o.examples))

        @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
        def sums(x, valid):
            x = jnp.where(valid[:, None], x.astype(jnp.float32), 0.0)
            gram = jnp.einsum("nc,nd->cd", x, x, precision=jax.lax.Precision.HIGHEST)
            return gram, x.sum(0), valid.sum()

        gram, total, count = 0.0, 0.0, 0
        for item in probe_batches(self, setup, state, mesh, split):
            g, t, n = sums(item["x"], item["_valid"])
            gram, total, count = gram + g, total + t, count + n
        count = int(count)
        if count == 0:
            raise ValueError(f"rank: no valid examples in split {split!r} of {data.name}")
        gram, total = (np.asarray(v) for v in jax.device_get((gram, total)))
        return {
            "rankme": rankme(gram_singular_values(gram)),
            "rankme_standardized": rankme(gram_singular_values(correlation(gram, total, count))),
            "num_examples": count,
        }
