"""Self-supervised losses: BYOL regression, SimCLR NT-Xent, DetCon contrastive detection.

All functions are pure, take l2-*unnormalised* vectors, cast to float32 and normalise inside
(DeepMind's `helpers.l2_normalize`: `x * rsqrt(max(|x|^2, 1e-12))`), and return a scalar.

They are written for the **global** batch: under `jax.jit` on a mesh with the batch axis sharded,
XLA's SPMD partitioner inserts the collectives that DeepMind's pmap code wrote by hand
(`all_gather` of the targets, `axis_index` to locate "this image"). No axis names appear here.

Gradient convention (docs/METHODS.md §2, §5.6, §5.7):
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
    """BYOL's symmetric regression loss (docs/METHODS.md §2).

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
    """SimCLR's NT-Xent loss (docs/METHODS.md §3).

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


# The DetCon logits are cosines / T, so they lie in [-1/T, 1/T]. Shifted by the constant 1/T their
# exponentials lie in [exp(-2/T), 1]: no overflow, and no underflow to zero while 2/T stays well
# inside float32's range (exp(-60) ~ 1e-26 > 1.2e-38). Then one fused pass (mask, exp, sum)
# replaces logsumexp's separate max and select passes over the [B, R, B, R] logits, the largest
# arrays of the loss (measured: ~25% of DetCon_B's loss time on CPU). Smaller temperatures fall
# back to logsumexp.
_MAX_SHIFTED_RANGE = 60.0


def _masked_logsumexp(
    logits: jax.Array, mask: jax.Array, shift: float | None, axis: tuple[int, ...]
) -> jax.Array:
    """`log sum exp(logits)` over the entries of `axis` where `mask` is True.

    Args:
      logits: any shape.
      mask: bool, broadcastable to `logits`.
      shift: an upper bound of the logits (their exponentials are taken after subtracting it),
        or None for `jax.nn.logsumexp` with the running max.
      axis: the reduced axes.

    Returns:
      float32 with `axis` removed. An empty set gives about `shift - 69` (with a shift) or
      `-1e9 + log n` (without): both vanish in the log-add with any other candidate.
    """
    if shift is None:
        return jax.nn.logsumexp(jnp.where(mask, logits, _NEG), axis=axis)
    total = jnp.sum(jnp.where(mask, jnp.exp(logits - shift), 0.0), axis=axis)
    # Every candidate adds at least exp(-_MAX_SHIFTED_RANGE) >> 1e-30, so the floor acts only on
    # an empty set, where it keeps the gradient finite (d log(0) would be inf * 0).
    return shift + jnp.log(jnp.maximum(total, 1e-30))


def _detcon_direction(
    lse_other: jax.Array,
    diag_x: jax.Array,
    diag_s: jax.Array,
    ids_q: jax.Array,
    ids_cross: jax.Array,
    *,
    local_negatives: bool,
) -> jax.Array:
    """One direction of the DetCon loss, given its logits: queries of view a against keys of
    views b (cross) and a (same).

    Args:
      lse_other: log-sum-exp of the query's logits against every valid slot of both views of
        the *other* images, `[B, R]`.
      diag_x: logits of query slot r against cross-view key slot v of the same image,
        `[B, R, R]`.
      diag_s: the same against same-view key slots, `[B, R, R]`.
      ids_q: ids of view a, `[B, R]` (also the ids of the same-view keys).
      ids_cross: ids of view b, `[B, R]`.
      local_negatives: keep other masks of the same image as negatives.

    Returns:
      float32 scalar `mean_{b,r}(w * CE)`.
    """
    valid_q = ids_q >= 0  # [B, R]
    valid_x = ids_cross >= 0
    # The same-image blocks [B, R, R] (query slot r, key slot v) carry all the id logic.
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
    lse = jnp.logaddexp(lse_other, jnp.logaddexp(lse_same_x, lse_same_s))  # [B, R]

    # Uniform target distribution over the positives (duplicates share the mass).
    num_pos = jnp.sum(pos, axis=-1)  # [B, R]
    pos_logit = jnp.sum(jnp.where(pos, diag_x, 0.0), axis=-1) / jnp.maximum(num_pos, 1)
    ce = lse - pos_logit
    # Weight 1[|P| > 0] / n_dup: a mask id sampled k times counts once in total (the code's
    # `obj_area` is this duplicate count, docs/METHODS.md §11.4).
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
    """DetCon's contrastive detection loss (DeepMind `byol_nce_detcon`, docs/METHODS.md §5.6).

    For each query slot (b, r) of view 1 (view 2 symmetric):
    * logits = `cos(pred1[b,r], target{1,2}[u,v]) / T` for every slot (u, v) of both views of
      every image of the (global) batch;
    * same-view entries of image b whose id equals `ids1[b,r]` (itself and duplicates) are
      removed from the softmax;
    * positives P = slots v of view 2 of image b with `ids2[b,v] == ids1[b,r]`; the target
      distribution is uniform over P; CE = logsumexp(logits) - mean_P(logits);
    * weight = `1[|P| > 0] / n_dup`, n_dup = number of view-1 slots of image b with that id;
    * `L_1 = mean over all B*R slots of weight * CE`, and `L = L_1 + L_2`.

    MoCLR (docs/METHODS.md §4) is the special case R = 1 with one full-image id (e.g. all zeros).

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
    # Keys identical to the queries (DetCon_S passes its projections as both): the view-1 x
    # view-2 logits serve both directions, one transposed, so one of the four big matmuls (and
    # its gradients) is skipped. Detected by identity, so the results are the same either way.
    shared = pred1 is target1 and pred2 is target2
    p1, p2 = l2_normalize(pred1), l2_normalize(pred2)
    t1, t2 = (p1, p2) if shared else (l2_normalize(target1), l2_normalize(target2))
    shift = 1.0 / temperature if 2.0 / temperature <= _MAX_SHIFTED_RANGE else None
    # 1/T applied to the [B, R, D] queries rather than to the [B, R, B, R] logits.
    q1, q2 = p1 * (1.0 / temperature), p2 * (1.0 / temperature)
    valid1, valid2 = ids1 >= 0, ids2 >= 0

    # The candidates of a query (b, r) are every slot (u, v) of both views of every image. They
    # are split into "other images" (u != b: always candidates when valid; one big matmul per
    # pair of views, masked by an iota comparison that SPMD partitions cleanly) and "same image"
    # (u == b: the small [B, R, R] blocks carrying all the id logic), and the log-sum-exps are
    # combined. This keeps every mask except a broadcast [B, 1, B, 1] comparison at [B, R, R].
    img = jnp.arange(pred1.shape[0])
    other = (img[:, None] != img[None, :])[:, None, :, None]  # [B, 1, B, 1]

    def big(q, k):  # [B, R, D] x [B, R, D] -> [B, R, B, R]
        return jnp.einsum("brd,uvd->bruv", q, k, precision=precision)

    def small(q, k):  # same image only -> [B, R, R]
        return jnp.einsum("brd,bvd->brv", q, k, precision=precision)

    def lse(logits, key_valid, axis=(2, 3)):
        return _masked_logsumexp(logits, other & key_valid, shift, axis)

    if shared:
        logits_12 = big(q1, t2)  # [b, r, u, v]: view-1 queries (b, r), view-2 keys (u, v)
        lse_x1 = lse(logits_12, valid2[None, None])
        # View-2 queries (u, v) against view-1 keys (b, r): the same logits, reduced over (b, r).
        lse_x2 = lse(logits_12, valid1[:, :, None, None], axis=(0, 1))
    else:
        lse_x1 = lse(big(q1, t2), valid2[None, None])
        lse_x2 = lse(big(q2, t1), valid1[None, None])
    lse_s1 = lse(big(q1, t1), valid1[None, None])
    lse_s2 = lse(big(q2, t2), valid2[None, None])

    kw = dict(local_negatives=local_negatives)
    loss_1 = _detcon_direction(
        jnp.logaddexp(lse_x1, lse_s1), small(q1, t2), small(q1, t1), ids1, ids2, **kw
    )
    loss_2 = _detcon_direction(
        jnp.logaddexp(lse_x2, lse_s2), small(q2, t1), small(q2, t2), ids2, ids1, **kw
    )
    return loss_1 + loss_2
