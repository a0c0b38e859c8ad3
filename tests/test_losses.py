"""Tests for common/losses.py against independent, loop-based numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import losses
from tests.helpers import logsumexp, normalize, random_detcon_case, ref_detcon

# One compilation per shape instead of eager op-by-op dispatch (keeps the tests fast).
_detcon = jax.jit(
    losses.contrastive_detection_loss, static_argnames=("temperature", "local_negatives")
)


@pytest.mark.parametrize(
    "seed,b,r,num_ids,local_negatives,invalid",
    [
        (0, 3, 4, 3, True, 0.0),  # many duplicates, most slots have partners
        (1, 2, 5, 6, True, 0.0),  # many slots without partners
        (2, 4, 3, 4, False, 0.0),
        (3, 3, 4, 3, True, 0.25),  # some invalid (-1) slots
    ],
)
def test_detcon_matches_loop_reference(seed, b, r, num_ids, local_negatives, invalid):
    (p1, p2, t1, t2), (i1, i2) = random_detcon_case(seed, b, r, 8, num_ids, invalid)
    got = _detcon(p1, p2, t1, t2, i1, i2, temperature=0.2, local_negatives=local_negatives)
    want = ref_detcon(p1, p2, t1, t2, i1, i2, 0.2, local_negatives)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_detcon_hand_counts_equal_vectors():
    """All vectors equal: every logit is the same, so CE = log(#candidates) (hand-counted)."""
    x = np.ones((2, 2, 3), np.float32)
    ids1 = np.array([[0, 1], [3, 3]], np.int32)
    ids2 = np.array([[1, 2], [3, 4]], np.int32)
    got = _detcon(x, x, x, x, ids1, ids2, temperature=0.1)
    # View 1: (0,0) no partner; (0,1) 7 candidates; (1,0),(1,1) 6 candidates, weight 1/2 each.
    # View 2: (0,0) 7 candidates; (1,0) two positives, 7 candidates; (0,1),(1,1) no partner.
    want = (math.log(7) + math.log(6)) / 4 + (2 * math.log(7)) / 4
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    got = _detcon(x, x, x, x, ids1, ids2, temperature=0.1, local_negatives=False)
    want = 2 * math.log(5) / 4 + (math.log(5) + math.log(6)) / 4
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_detcon_hand_computed_logits():
    """B=2, R=2, T=1 with unit vectors e1/e2 so every logit is 0 or 1 (worked out by hand)."""
    e1, e2 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    p = np.broadcast_to(e1, (2, 2, 2)).copy()
    t1 = np.broadcast_to(e2, (2, 2, 2)).copy()
    t2 = t1.copy()
    t2[0, 0] = e1
    ids1 = np.array([[0, 1], [3, 3]], np.int32)
    ids2 = np.array([[1, 2], [3, 4]], np.int32)
    got = _detcon(p, p, t1, t2, ids1, ids2, temperature=1.0)
    e = math.e
    l1 = (math.log(e + 6) - 1 + math.log(e + 5)) / 4
    l2 = (math.log(7) + math.log(e + 6)) / 4
    np.testing.assert_allclose(float(got), l1 + l2, rtol=1e-6)


def test_detcon_r1_is_moclr_infonce():
    """R=1 with one full-image id is MoCLR's InfoNCE (docs/METHODS.md §4), written out here."""
    rng = np.random.default_rng(7)
    b, d, temp = 5, 6, 0.1
    p1, p2, t1, t2 = (rng.normal(size=(b, d)) for _ in range(4))
    ids = np.zeros((b, 1), np.int32)
    got = _detcon(
        *(x[:, None].astype(np.float32) for x in (p1, p2, t1, t2)), ids, ids, temperature=temp
    )

    def infonce(q, k_other_view, k_same_view):
        q, kx, ks = normalize(q), normalize(k_other_view), normalize(k_same_view)
        out = []
        for i in range(b):
            pos = q[i] @ kx[i] / temp
            negs = [q[i] @ kx[j] / temp for j in range(b) if j != i]
            negs += [q[i] @ ks[j] / temp for j in range(b) if j != i]
            out.append(-(pos - logsumexp([pos, *negs])))
        return np.mean(out)

    want = infonce(p1, t2, t1) + infonce(p2, t1, t2)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_detcon_sharded_equals_single_device():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 CPU devices"
    (p1, p2, t1, t2), (i1, i2) = random_detcon_case(11, 8, 4, 16, 5)
    fn = jax.jit(lambda *a: losses.contrastive_detection_loss(*a, temperature=0.1))
    single = jax.device_put((p1, p2, t1, t2, i1, i2), devices[0])
    want = fn(*single)
    sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
    sharded = jax.device_put((p1, p2, t1, t2, i1, i2), sharding)
    assert len(sharded[0].sharding.device_set) == 8
    got = fn(*sharded)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(want), ref_detcon(p1, p2, t1, t2, i1, i2, 0.1), rtol=2e-5)


def test_detcon_gradients_follow_caller_stop_gradient():
    (p1, p2, t1, t2), (i1, i2) = random_detcon_case(5, 3, 4, 8, 3)

    def loss_b(p1, p2, t1, t2):  # DetCon_B: caller stop-grads the targets.
        sg = jax.lax.stop_gradient
        return losses.contrastive_detection_loss(p1, p2, sg(t1), sg(t2), i1, i2)

    g = jax.jit(jax.grad(loss_b, argnums=(0, 1, 2, 3)))(p1, p2, t1, t2)
    assert float(jnp.abs(g[0]).sum()) > 0 and float(jnp.abs(g[1]).sum()) > 0
    assert float(jnp.abs(g[2]).sum()) == 0 and float(jnp.abs(g[3]).sum()) == 0

    def loss_s(z1, z2):  # DetCon_S: projections on both sides, gradients through both.
        return losses.contrastive_detection_loss(z1, z2, z1, z2, i1, i2)

    gs = jax.jit(jax.grad(loss_s, argnums=(0, 1)))(p1, p2)
    g_pred_only = jax.jit(
        jax.grad(
            lambda z1, z2: losses.contrastive_detection_loss(
                z1, z2, jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2), i1, i2
            ),
            argnums=(0, 1),
        )
    )(p1, p2)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in gs)
    assert not np.allclose(gs[0], g_pred_only[0])  # the key side contributes


def ref_byol(p1, p2, t1, t2):
    def one(p, t):
        p, t = normalize(p).reshape(-1, p.shape[-1]), normalize(t).reshape(-1, t.shape[-1])
        return np.mean([2 - 2 * p[i] @ t[i] for i in range(len(p))])

    return one(p1, t2) + one(p2, t1)


@pytest.mark.parametrize("shape", [(4, 8), (3, 5, 8)])
def test_byol_loss_reference_and_stop_gradient(shape):
    rng = np.random.default_rng(0)
    p1, p2, t1, t2 = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
    got = losses.byol_loss(p1, p2, t1, t2)
    np.testing.assert_allclose(float(got), ref_byol(p1, p2, t1, t2), rtol=1e-5)
    g_t = jax.grad(losses.byol_loss, argnums=(2, 3))(p1, p2, t1, t2)
    assert float(jnp.abs(g_t[0]).sum()) == 0 and float(jnp.abs(g_t[1]).sum()) == 0
    # Identical directions give 0 loss.
    np.testing.assert_allclose(float(losses.byol_loss(p1, p2, 2 * p2, 3 * p1)), 0.0, atol=1e-5)


def test_nt_xent_reference():
    rng = np.random.default_rng(3)
    b, temp = 5, 0.5
    z1, z2 = (rng.normal(size=(b, 7)).astype(np.float32) for _ in range(2))
    z = normalize(np.concatenate([z1, z2]))
    out = []
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        denom = [z[i] @ z[k] / temp for k in range(2 * b) if k != i]
        out.append(-(z[i] @ z[j] / temp - logsumexp(denom)))
    got = losses.nt_xent(z1, z2, temperature=temp)
    np.testing.assert_allclose(float(got), np.mean(out), rtol=1e-5)
