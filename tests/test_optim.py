"""Tests for common/optim.py: LARS ordering vs a numpy loop, schedules at known points."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import optim


def _params():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    return {
        "Dense_0": {"kernel": f(3, 4), "bias": f(4)},
        "BatchNorm_0": {"scale": f(4), "bias": f(4)},
        "block": {"proj_bn": {"scale": f(4)}, "Conv_0": {"kernel": f(2, 2, 3, 4)}},
        "zero": {"kernel": np.zeros((5,), np.float32)},
    }


EXCLUDED = {
    ("Dense_0", "bias"),
    ("BatchNorm_0", "scale"),
    ("BatchNorm_0", "bias"),
    ("block", "proj_bn", "scale"),
}


def test_default_exclude():
    for path in EXCLUDED:
        assert optim.default_exclude(path), path
    assert optim.default_exclude(("LayerNorm_3", "scale"))
    assert optim.default_exclude(("encoder", "BN1", "mean"))
    assert not optim.default_exclude(("Dense_0", "kernel"))
    assert not optim.default_exclude(("block", "Conv_0", "kernel"))
    assert not optim.default_exclude(("Embed_0", "embedding"))
    assert not optim.default_exclude(())


def _flat(tree):
    return {
        optim.path_names(p): np.asarray(v, np.float64)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def numpy_lars(params, grads_seq, lrs, wd, eta, mom):
    """The 4 steps of docs/METHODS.md §1.4 on plain float64 numpy arrays, leaf by leaf."""
    w = _flat(params)
    m = {k: np.zeros_like(v) for k, v in w.items()}
    history = []
    for g_tree, lr in zip(grads_seq, lrs):
        g = _flat(g_tree)
        for k in w:
            u = g[k].copy()
            if k not in EXCLUDED:
                u = u + wd * w[k]
                wn, un = np.linalg.norm(w[k]), np.linalg.norm(u)
                u = u * (eta * wn / un if wn > 0 and un > 0 else 1.0)
            m[k] = mom * m[k] + u
            w[k] = w[k] - lr * m[k]
        history.append({k: v.copy() for k, v in w.items()})
    return history


def _run(tx, params, grads_seq):
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for g in grads_seq:
        upd, state = step(g, state, params)
        params = optax.apply_updates(params, upd)
        out.append(_flat(params))
    return out


def _grads(n, seed=1):
    rng = np.random.default_rng(seed)
    seq = []
    for _ in range(n):
        g = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), _params())
        g["zero"]["kernel"] = rng.normal(size=(5,)).astype(np.float32)
        seq.append(g)
    return seq


def test_lars_matches_numpy_loop_with_varying_lr():
    params, grads = _params(), _grads(5)
    sched = lambda count: 0.5 * (count + 1.0)  # strongly varying lr
    lrs = [sched(i) for i in range(5)]
    wd, eta, mom = 0.1, 1e-2, 0.9
    got = _run(optim.lars(sched, weight_decay=wd, eta=eta, momentum=mom), params, grads)
    want = numpy_lars(params, grads, lrs, wd, eta, mom)
    for g_step, w_step in zip(got, want):
        for k in w_step:
            np.testing.assert_allclose(g_step[k], w_step[k], rtol=1e-5, atol=1e-6, err_msg=k)

    # optax.lars traces -lr*u instead of u: equal for a constant lr, different otherwise.
    mask = lambda p: jax.tree_util.tree_map_with_path(
        lambda path, _: not optim.default_exclude(optim.path_names(path)), p
    )

    def optax_lars(lr):
        return optax.lars(
            lr,
            weight_decay=wd,
            weight_decay_mask=mask,
            trust_coefficient=eta,
            trust_ratio_mask=mask,
            momentum=mom,
        )

    theirs = _run(optax_lars(sched), params, grads)
    key = ("Dense_0", "kernel")
    assert not np.allclose(theirs[-1][key], got[-1][key], rtol=1e-4, atol=1e-6)
    const_ours = _run(optim.lars(0.3, weight_decay=wd, eta=eta, momentum=mom), params, grads)
    const_theirs = _run(optax_lars(0.3), params, grads)
    np.testing.assert_allclose(const_ours[-1][key], const_theirs[-1][key], rtol=1e-5)


def test_lars_excluded_leaves_are_plain_momentum_sgd():
    params, grads = _params(), _grads(3, seed=2)
    got = _run(optim.lars(0.1, weight_decay=0.5, eta=1e-3), params, grads)
    w0 = _flat(params)
    for k in EXCLUDED:
        m = np.zeros_like(w0[k])
        w = w0[k].copy()
        for g in grads:
            m = 0.9 * m + _flat(g)[k]
            w = w - 0.1 * m
        np.testing.assert_allclose(got[-1][k], w, rtol=1e-5, atol=1e-6, err_msg=str(k))


def test_lars_zero_norms():
    params = {"Dense_0": {"kernel": jnp.zeros((3,)), "other": jnp.ones((3,))}}
    grads = {"Dense_0": {"kernel": jnp.full((3,), 2.0), "other": jnp.zeros((3,))}}
    tx = optim.lars(1.0, weight_decay=0.0)
    upd, _ = tx.update(grads, tx.init(params), params)
    # |w| = 0 -> ratio 1 -> update = -lr * g; |u| = 0 -> ratio 1 -> update 0, no NaN.
    np.testing.assert_allclose(upd["Dense_0"]["kernel"], -2.0 * np.ones(3))
    np.testing.assert_array_equal(upd["Dense_0"]["other"], np.zeros(3))
    with pytest.raises(ValueError):
        tx.update(grads, tx.init(params), None)


def test_warmup_cosine_schedule_known_points():
    total, warm = 31_278, 312
    s = optim.warmup_cosine_schedule(
        base_lr=0.2, batch_size=4096, total_steps=total, warmup_steps=warm
    )
    peak = 3.2
    np.testing.assert_allclose(float(s(0)), 0.0)
    np.testing.assert_allclose(float(s(warm // 2)), peak * (warm // 2) / warm, rtol=1e-6)
    np.testing.assert_allclose(float(s(warm - 1)), peak * (warm - 1) / warm, rtol=1e-6)
    np.testing.assert_allclose(float(s(warm)), peak, rtol=1e-6)  # end of warm-up
    mid = warm + (total - warm) // 2
    np.testing.assert_allclose(float(s(mid)), peak / 2, rtol=1e-4)
    np.testing.assert_allclose(float(s(total)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(s(total + 1000)), 0.0, atol=1e-6)
    # DeepMind's learning_schedule written out, at arbitrary steps (also inside jit).
    steps = np.array([1, 100, 311, 312, 313, 5000, 20000, 31277])
    want = np.where(
        steps < warm,
        steps / warm * peak,
        peak * 0.5 * (1 + np.cos(np.pi * np.minimum(steps - warm, total - warm) / (total - warm))),
    )
    np.testing.assert_allclose(np.asarray(jax.jit(s)(steps)), want, rtol=1e-5, atol=1e-6)
    no_warm = optim.warmup_cosine_schedule(
        base_lr=0.3, batch_size=512, total_steps=10, warmup_steps=0
    )
    np.testing.assert_allclose(float(no_warm(0)), 0.6, rtol=1e-6)


@pytest.mark.parametrize(
    "epochs,steps,warmup", [(100, 31_278, 312), (300, 93_835, 938), (1000, 312_784, 3_127)]
)
def test_detcon_step_counts(epochs, steps, warmup):
    assert optim.epochs_to_steps(epochs, 1_281_167, 4096) == steps
    assert optim.detcon_warmup_steps(epochs, 1_281_167, 4096) == warmup


def test_step_helpers_small():
    assert optim.detcon_warmup_steps(50, 1000, 10) == 0  # < 100 epochs: no warm-up
    assert optim.epochs_to_steps(0.5, 1000, 100) == 5


def test_ema_tau_and_update():
    base, k = 0.996, 1000
    np.testing.assert_allclose(float(optim.ema_tau(0, base_tau=base, total_steps=k)), base)
    np.testing.assert_allclose(
        float(optim.ema_tau(k // 2, base_tau=base, total_steps=k)), 1 - (1 - base) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(float(optim.ema_tau(k, base_tau=base, total_steps=k)), 1.0)
    np.testing.assert_allclose(float(optim.ema_tau(5 * k, base_tau=base, total_steps=k)), 1.0)
    q = 250
    want = 1 - (1 - base) * (math.cos(math.pi * q / k) + 1) / 2
    np.testing.assert_allclose(float(optim.ema_tau(q, base_tau=base, total_steps=k)), want)

    target = {"a": jnp.array([0.0, 1.0]), "b": {"c": jnp.array(2.0)}}
    online = {"a": jnp.array([1.0, 1.0]), "b": {"c": jnp.array(4.0)}}
    new = optim.ema_update(target, online, 0.75)
    np.testing.assert_allclose(new["a"], [0.25, 1.0])
    np.testing.assert_allclose(new["b"]["c"], 2.5)


def test_vit_backbones_get_the_adamw_preset_and_it_steps_as_written_out():
    """`backbone=vit_*` (Odin, the one method offering it) trains with MoCo v3's AdamW recipe
    (experiments/base.py `VIT_OPTIMIZER`); ResNet-50 keeps DetCon_B's LARS. The optimiser that
    `train.build` makes from the preset, checked against AdamW written out: with the same
    gradient g twice, Adam's bias-corrected moments are g and g^2, so the second update is
    `-lr_1 * (g / (|g| + eps) + wd * w)` on every leaf (MoCo v3 decays biases too); the first is 0
    (the warm-up starts at lr 0)."""
    from common import train
    from experiments import base, odin

    n, batch = base.IMAGENET_TRAIN_EXAMPLES, 4096
    vit = odin.get_config("imagenet,backbone=vit_b8")
    assert (vit.optimizer.name, vit.optimizer.base_lr, vit.optimizer.weight_decay) == (
        "adamw", 1.5e-4, 0.1,
    )  # fmt: skip
    assert train.warmup_steps_of(vit, None) == 40 * n // batch
    resnet = odin.get_config("imagenet,backbone=resnet50")
    assert resnet.optimizer.name == "lars"
    assert train.warmup_steps_of(resnet, None) == optim.detcon_warmup_steps(1000, n, batch)

    setup = train.build(vit)
    warmup = 40 * n // batch
    assert float(setup.learning_rate(warmup)) == pytest.approx(1.5e-4 * batch / 256, rel=1e-6)
    params = {k: {kk: jnp.asarray(v) for kk, v in d.items()} for k, d in _params().items()
              if k in ("Dense_0", "BatchNorm_0")}  # fmt: skip
    grads = jax.tree_util.tree_map(lambda w: jnp.sin(3.0 * w) + 0.1, params)
    state = setup.optimizer.init(params)
    first, state = setup.optimizer.update(grads, state, params)
    for leaf in jax.tree_util.tree_leaves(first):
        np.testing.assert_array_equal(leaf, 0.0)
    second, _ = setup.optimizer.update(grads, state, params)
    lr1 = float(setup.learning_rate(1))
    want = jax.tree_util.tree_map(
        lambda g, w: -lr1 * (g / (jnp.abs(g) + 1e-8) + 0.1 * w), grads, params
    )
    chex.assert_trees_all_close(second, want, rtol=1e-5, atol=1e-12)


def test_lr_multipliers_parse_and_reject_malformed_items():
    assert optim.parse_lr_multipliers("") == {}
    assert optim.parse_lr_multipliers(" predictor=10, backbone=0.5 ") == {
        "predictor": 10.0,
        "backbone": 0.5,
    }
    for bad in ("predictor", "predictor=", "=2", "predictor=ten", "predictor=0", "backbone=-1",
                "predictor=nan"):  # fmt: skip
        with pytest.raises(ValueError, match="lr_multipliers"):
            optim.parse_lr_multipliers(bad)
    with pytest.raises(ValueError, match="given twice"):
        optim.parse_lr_multipliers("predictor=2,predictor=3")


def test_module_multiplier_is_that_modules_learning_rate_times_the_factor():
    """LARS with `block=4` equals LARS at 4x the rate on the leaves under `block` and LARS at
    the base rate on the others, over several steps of a varying rate (LARS is linear in the
    rate after its trust ratio, and the momentum trace holds un-scaled updates)."""
    params, grads = _params(), _grads(4)
    sched = optim.warmup_cosine_schedule(base_lr=1.0, batch_size=256, total_steps=4,
                                         warmup_steps=1)  # fmt: skip
    scaled = optax.chain(optim.lars(sched, weight_decay=0.1), optim.scale_by_module({"block": 4.0}))
    got = _run(scaled, params, grads)
    base = _run(optim.lars(sched, weight_decay=0.1), params, grads)
    fast = _run(optim.lars(lambda s: 4.0 * sched(s), weight_decay=0.1), params, grads)
    for g, b, f in zip(got, base, fast, strict=True):
        for path in g:
            want = f[path] if path[0] == "block" else b[path]
            np.testing.assert_allclose(g[path], want, rtol=1e-6, atol=1e-7, err_msg=str(path))
    # ...and the factor did act: the last step's `block` leaves differ from the base rate's.
    assert all(np.abs(got[-1][p] - base[-1][p]).max() > 1e-6 for p in got[-1] if p[0] == "block")


def test_module_multiplier_naming_no_parameter_fails_at_init():
    with pytest.raises(ValueError, match=r"no parameters under \['predictr'\]"):
        optim.scale_by_module({"predictr": 10.0}).init(_params())


def test_config_lr_multipliers_reach_the_trainers_optimiser():
    """`--config.optimizer.lr_multipliers=predictor=10` on BYOL `local`: the predictor's first
    nonzero update is 10x the one without it, the backbone's is the same."""
    from common import train
    from experiments import byol

    def updates(spec):
        config = byol.get_config("local")
        with config.unlocked():
            config.optimizer.lr_multipliers = spec
        setup = train.build(config, num_examples=1000)
        online = {"predictor": {"Dense_0": {"kernel": jnp.ones((3, 2))}},
                  "backbone": {"Conv_0": {"kernel": jnp.ones((3, 3, 3, 2))}}}  # fmt: skip
        params = {"online": online}
        grads = jax.tree_util.tree_map(lambda w: 0.01 * w, params)
        state = setup.optimizer.init(params)
        for _ in range(2):  # the first step is at lr 0 (warm-up)
            out, state = setup.optimizer.update(grads, state, params)
        return out["online"]

    plain, fast = updates(""), updates("predictor=10")
    pred = lambda u: np.asarray(u["predictor"]["Dense_0"]["kernel"])  # noqa: E731
    back = lambda u: np.asarray(u["backbone"]["Conv_0"]["kernel"])  # noqa: E731
    assert np.abs(pred(plain)).min() > 0
    np.testing.assert_allclose(pred(fast), 10.0 * pred(plain), rtol=1e-6)
    np.testing.assert_array_equal(back(fast), back(plain))
