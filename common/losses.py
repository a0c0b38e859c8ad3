"""Self-supervised losses: BYOL regression, SimCLR NT-Xent, DetCon contrastive detection.

All functions are pure, take l2-*unnormalised* vectors, cast to float32 and normalise inside
(DeepMind's `helpers.l2_normalize`: `x * rsqrt(max(|x|^2, 1e-12))`), and return a scalar.

They are written for the **global** batch: under `jax.jit` on a mesh with the batch axis sharded,
XLA's SPMD partitioner inserts the collectives that DeepMind's pmap code wrote by hand
(`all_gather` of the targets, `axis_index` to locate "this image"). No axis names appear here.

Gradient convention (METHODS.md §2, §5.6, §5.7):
* `byol_loss` stop-gradients its targets itself (BYOL never wants target gradients).
* `contrastive_detection_loss` and `nt_xent` do **not** stop-gradient anything. DetCon_B / MoCLR /
  Odin / VITO callers pass `jax.lax.stop_gradient(target_projection)`; DetCon_S passes the online
  projections on both sides so gradients flow through queries and keys alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# DeepMind's mask value ("infinity_proxy"); finite so that a fully masked row stays NaN-free.
_NEG = -1e9
# The loss matmuls are tiny next to the encoder; HIGHEST keeps them float32-exact on GPU/TPU (no
# TF32/bf16 passes), which with logits scaled by 1/T = 10 matters for reproducibility.
_PRECISION = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    """l2-normalises `x` along `axis` in float32 (DeepMind `helpers.l2_normalize`).

    Args:
      x: any shape `[..., D]`.
      axis: the axis to normalise.
      epsilon: lower bound on the squared norm (zero vectors stay zero).

    Returns:
      float32 array of `x`'s shape.
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, epsilon))


def byol_loss(
    pred1: jax.Array, pred2: jax.Array, target1: jax.Array, target2: jax.Array
) -> jax.Array:
    """BYOL's symmetric regression loss (METHODS.md §2).

    `L = mean[2 - 2 cos(pred1, target2)] + mean[2 - 2 cos(pred2, target1)]`, i.e. the sum of both
    directions, each averaged over the batch (and over the R slots when present).

    Args:
      pred1: online predictions of view 1, `[B, D]` or `[B, R, D]`.
      pred2: online predictions of view 2, same shape.
      target1: target projections of view 1, same shape (stop-gradient applied here).
      target2: target projections of view 2, same shape (stop-gradient applied here).

    Returns:
      float32 scalar.
    """
    target1 = jax.lax.stop_gradient(target1)
    target2 = jax.lax.stop_gradient(target2)

    def direction(p, t):
        cos = jnp.sum(l2_normalize(p) * l2_normalize(t), axis=-1)
        return jnp.mean(2.0 - 2.0 * cos)

    return direction(pred1, target2) + direction(pred2, target1)


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature: float, precision=_PRECISION) -> jax.Array:
    """SimCLR's NT-Xent loss (METHODS.md §3).

    The 2B projections are l2-normalised; anchor i's positive is the other view of the same
    image, its negatives the other 2B - 2 projections (itself excluded from the softmax). The
    loss is the mean over all 2B anchors. No stop-gradient: both views receive gradients.

    Args:
      z1: projections of view 1, `[B, D]`.
      z2: projections of view 2, `[B, D]`.
      temperature: softmax temperature T (cosine / T).
      precision: matmul precision of the similarity matrix.

    Returns:
      float32 scalar.
    """
    b = z1.shape[0]
    z = l2_normalize(jnp.concatenate([z1, z2], axis=0))  # [2B, D]
    logits = jnp.einsum("id,jd->ij", z, z, precision=precision) / temperature  # [2B, 2B]
    idx = jnp.arange(2 * b)
    logits = jnp.where(idx[:, None] == idx[None, :], _NEG, logits)  # drop self-similarity
    partner = (idx + b) % (2 * b)
    pos = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)


def _detcon_direction(
    query: jax.Array,
    key_cross: jax.Array,
    key_same: jax.Array,
    ids_q: jax.Array,
    ids_cross: jax.Array,
    *,
    temperature: float,
    local_negatives: bool,
    precision,
) -> jax.Array:
    """One direction of the DetCon loss: queries of view a against keys of views b and a.

    Args:
      query: normalised online predictions of view a, `[B, R, D]`.
      key_cross: normalised target projections of view b, `[B, R, D]`.
      key_same: normalised target projections of view a, `[B, R, D]`.
      ids_q: ids of view a, `[B, R]` (also the ids of `key_same`).
      ids_cross: ids of view b, `[B, R]`.
      temperature: softmax temperature.
      local_negatives: keep other masks of the same image as negatives.
      precision: matmul precision.

    Returns:
      float32 scalar `mean_{b,r}(w * CE)`.
    """
    bsz = query.shape[0]
    valid_q = ids_q >= 0  # [B, R]
    valid_x = ids_cross >= 0

    # The candidate set of a query (b, r) is every slot (u, v) of both views of every image.
    # It is split into "other images" (u != b: always candidates, one big matmul masked by an
    # iota comparison that SPMD partitions cleanly) and "same image" (u == b: the small
    # [B, R, R] blocks carrying all the id logic), and the two log-sum-exps are combined. This
    # keeps every mask except a broadcast [B, 1, B, 1] comparison at [B, R, R] size.
    img = jnp.arange(bsz)
    other = (img[:, None] != img[None, :])[:, None, :, None]  # [B, 1, B, 1]
    logits_x = jnp.einsum("brd,uvd->bruv", query, key_cross, precision=precision) / temperature
    logits_s = jnp.einsum("brd,uvd->bruv", query, key_same, precision=precision) / temperature
    lse_other_x = jax.nn.logsumexp(
        jnp.where(other & valid_x[None, None], logits_x, _NEG), axis=(2, 3)
    )
    lse_other_s = jax.nn.logsumexp(
        jnp.where(other & valid_q[None, None], logits_s, _NEG), axis=(2, 3)
    )

    # Same-image blocks [B, R, R] (query slot r, key slot v).
    diag_x = jnp.einsum("brd,bvd->brv", query, key_cross, precision=precision) / temperature
    diag_s = jnp.einsum("brd,bvd->brv", query, key_same, precision=precision) / temperature
    same_id_x = ids_q[:, :, None] == ids_cross[:, None, :]
    same_id_s = ids_q[:, :, None] == ids_q[:, None, :]
    # Positives: other-view slots of the same image with the query's id (§5.6). Slots with a
    # negative id (no valid mask, e.g. an image whose view holds no id) are never positives.
    pos = same_id_x & valid_q[:, :, None] & valid_x[:, None, :]
    # Cross-view same-image candidates: all valid slots, or only the positives when
    # local_negatives=False (DeepMind subtracts 1e9 from the non-positive ones).
    # Same-view same-image candidates: never the query's own id (incl. itself and duplicates);
    # none at all without local negatives.
    if local_negatives:
        cand_x = jnp.broadcast_to(valid_x[:, None, :], pos.shape)
        cand_s = valid_q[:, None, :] & ~same_id_s
    else:
        cand_x = pos
        cand_s = jnp.zeros_like(pos)
    lse_same_x = jax.nn.logsumexp(jnp.where(cand_x, diag_x, _NEG), axis=-1)
    lse_same_s = jax.nn.logsumexp(jnp.where(cand_s, diag_s, _NEG), axis=-1)
    lse = jnp.logaddexp(
        jnp.logaddexp(lse_other_x, lse_other_s), jnp.logaddexp(lse_same_x, lse_same_s)
    )  # [B, R]

    # Uniform target distribution over the positives (duplicates share the mass).
    num_pos = jnp.sum(pos, axis=-1)  # [B, R]
    pos_logit = jnp.sum(jnp.where(pos, diag_x, 0.0), axis=-1) / jnp.maximum(num_pos, 1)
    ce = lse - pos_logit
    # Weight 1[|P| > 0] / n_dup: a mask id sampled k times counts once in total (the code's
    # `obj_area` is this duplicate count, METHODS.md §11.4).
    n_dup = jnp.sum(same_id_s, axis=-1)  # >= 1 (the slot itself)
    weight = (num_pos > 0).astype(jnp.float32) / n_dup
    # Mean over all B*R slots, zero-weight ones included (DeepMind `manual_cross_entropy`).
    return jnp.mean(weight * ce)


def contrastive_detection_loss(
    pred1: jax.Array,
    pred2: jax.Array,
    target1: jax.Array,
    target2: jax.Array,
    ids1: jax.Array,
    ids2: jax.Array,
    *,
    temperature: float = 0.1,
    local_negatives: bool = True,
    precision=_PRECISION,
) -> jax.Array:
    """DetCon's contrastive detection loss (DeepMind `byol_nce_detcon`, METHODS.md §5.6).

    For each query slot (b, r) of view 1 (view 2 symmetric):
    * logits = `cos(pred1[b,r], target{1,2}[u,v]) / T` for every slot (u, v) of both views of
      every image of the (global) batch;
    * same-view entries of image b whose id equals `ids1[b,r]` (itself and duplicates) are
      removed from the softmax;
    * positives P = slots v of view 2 of image b with `ids2[b,v] == ids1[b,r]`; the target
      distribution is uniform over P; CE = logsumexp(logits) - mean_P(logits);
    * weight = `1[|P| > 0] / n_dup`, n_dup = number of view-1 slots of image b with that id;
    * `L_1 = mean over all B*R slots of weight * CE`, and `L = L_1 + L_2`.

    MoCLR (METHODS.md §4) is the special case R = 1 with one full-image id (e.g. all zeros).

    Extension (no effect when every id is >= 0, as in DeepMind's code): a negative id marks an
    invalid slot (an image/view without any valid mask, see `common.masks.sample_ids`); such a
    slot gets weight 0, is never a positive and is removed from every softmax.

    Gradients: nothing is stop-gradiented here. For DetCon_B (and MoCLR, Odin, VITO) pass
    `jax.lax.stop_gradient(target*)` so only online parameters are trained; for DetCon_S pass the
    online projections as both `pred*` and `target*` so gradients flow through both sides.

    Args:
      pred1: online predictions (queries) of view 1, `[B, R, D]`.
      pred2: online predictions of view 2, `[B, R, D]`.
      target1: target projections (keys) of view 1, `[B, R, D]`.
      target2: target projections of view 2, `[B, R, D]`.
      ids1: int mask ids of view 1's slots, `[B, R]` (shared by `pred1` and `target1`).
      ids2: int mask ids of view 2's slots, `[B, R]`.
      temperature: softmax temperature T (DetCon: 0.1).
      local_negatives: if False, other masks of the same image are not negatives (only other
        images are), as DeepMind's `local_negatives=False`.
      precision: matmul precision of the logits.

    Returns:
      float32 scalar.
    """
    p1, p2 = l2_normalize(pred1), l2_normalize(pred2)
    t1, t2 = l2_normalize(target1), l2_normalize(target2)
    kw = dict(temperature=temperature, local_negatives=local_negatives, precision=precision)
    loss_1 = _detcon_direction(p1, t2, t1, ids1, ids2, **kw)
    loss_2 = _detcon_direction(p2, t1, t2, ids2, ids1, **kw)
    return loss_1 + loss_2
