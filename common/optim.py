"""Optimiser and schedules of the DeepMind BYOL/DetCon recipe (docs/METHODS.md §1.3-1.5).

* `lars`: LARS with DeepMind's ordering (weight decay -> trust ratio -> momentum -> lr), which
  differs from `optax.lars` (lr applied *before* the momentum trace) whenever the lr varies.
* `warmup_cosine_schedule`: DeepMind `schedules.learning_schedule`.
* `ema_tau` / `ema_update`: the target-network EMA (`schedules.target_ema`).
* `epochs_to_steps` / `detcon_warmup_steps`: step counts exactly as `detcon_b_config.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

ExcludeFn = Callable[[tuple[str, ...]], bool]


def default_exclude(path: tuple[str, ...]) -> bool:
    """True for parameters excluded from weight decay and the trust ratio.

    DeepMind's `exclude_bias_and_norm` excludes leaves named `b` (Haiku biases) and leaves whose
    parent module name contains `norm`. In Flax names the same set is: leaves named `bias`, and
    every leaf under a module whose name contains `norm` (`BatchNorm_0`, `LayerNorm_0`, ...) or
    `bn` (conventional hand-given BatchNorm names such as `bn1`, `proj_bn`), case-insensitively.

    Args:
      path: the parameter's key path as strings, e.g. `('projector', 'Dense_0', 'kernel')`.

    Returns:
      Whether the leaf is excluded.
    """
    if not path:
        return False
    if path[-1] == "bias":
        return True
    return any("norm" in p.lower() or "bn" in p.lower() for p in path[:-1])


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """Converts a `jax.tree_util` key path into a tuple of strings (dict keys, attr names)."""
    return tuple(_key_name(k) for k in path)


def _map_with_exclusion(fn, exclude: ExcludeFn, updates, params):
    """`fn(update, param)` on included leaves; excluded leaves pass through unchanged.

    The exclusion is a static property of each path, so it is decided in Python (no masking
    arithmetic in the compiled graph).
    """
    if params is None:
        raise ValueError("LARS needs `params` in `update(updates, state, params)`.")
    return jax.tree_util.tree_map_with_path(
        lambda path, u, w: u if exclude(path_names(path)) else fn(u, w), updates, params
    )


def add_weight_decay(weight_decay: float, exclude: ExcludeFn) -> optax.GradientTransformation:
    """Step 1 of docs/METHODS.md §1.4: `u = g + wd * w` for non-excluded leaves."""

    def update_fn(updates, state, params=None):
        return _map_with_exclusion(
            lambda g, w: g + weight_decay * w, exclude, updates, params
        ), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def scale_by_trust_ratio(eta: float, exclude: ExcludeFn) -> optax.GradientTransformation:
    """Step 2 of docs/METHODS.md §1.4: `u *= eta * |w| / |u|`, ratio 1 if either norm is 0.

    Norms are Frobenius norms of the whole leaf, computed in float32.
    """

    def adapt(u, w):
        w_norm = jnp.linalg.norm(w.astype(jnp.float32))
        u_norm = jnp.linalg.norm(u.astype(jnp.float32))
        ok = (w_norm > 0) & (u_norm > 0)
        ratio = jnp.where(ok, eta * w_norm / jnp.where(ok, u_norm, 1.0), 1.0)
        return u * ratio.astype(u.dtype)

    def update_fn(updates, state, params=None):
        return _map_with_exclusion(adapt, exclude, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def lars(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float,
    eta: float = 1e-3,
    momentum: float = 0.9,
    exclude: ExcludeFn = default_exclude,
) -> optax.GradientTransformation:
    """LARS exactly as DeepMind's `utils/optimizers.lars` (docs/METHODS.md §1.4).

    Per leaf, with g the (global-batch) gradient and w the parameter:
    1. `u = g + weight_decay * w` (skipped for excluded leaves);
    2. `u *= eta * |w| / |u|`, 1 if |w| = 0 or |u| = 0 (skipped for excluded leaves);
    3. `m = momentum * m + u` (heavy ball: the *un-scaled* update is accumulated);
    4. `update = -lr_t * m`.
    `optax.lars` instead traces `-lr_t * u`, so with a varying lr the two differ.

    Args:
      learning_rate: a float, or a schedule `step -> lr` evaluated at the update count
        (0 at the first update, as DeepMind's `lr_schedule(global_step)`).
      weight_decay: weight-decay coefficient.
      eta: trust coefficient.
      momentum: heavy-ball momentum.
      exclude: `path -> bool`, True for leaves without weight decay and trust ratio; the path
        is the Flax param-tree path as strings.

    Returns:
      An `optax.GradientTransformation`; `update` requires `params`.
    """
    return optax.chain(
        add_weight_decay(weight_decay, exclude),
        scale_by_trust_ratio(eta, exclude),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def parse_lr_multipliers(spec: str) -> dict[str, float]:
    """`'predictor=10,backbone=0.5'` -> `{'predictor': 10.0, 'backbone': 0.5}`; `''` -> `{}`.

    Raises:
      ValueError: naming the malformed item, a repeated name, or a multiplier that is not a
        positive number.
    """
    multipliers: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            factor = float(value) if sep and name else None
        except ValueError:
            factor = None
        if factor is None or not math.isfinite(factor) or factor <= 0:
            raise ValueError(
                f"config.optimizer.lr_multipliers: {item!r} is not 'module=positive number' "
                f"(e.g. 'predictor=10,backbone=0.5')"
            )
        if name in multipliers:
            raise ValueError(f"config.optimizer.lr_multipliers: {name!r} given twice")
        multipliers[name] = factor
    return multipliers


def scale_by_module(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies the updates of every leaf under a module named in `multipliers` by its factor.

    Chained after an optimiser whose last step is `-lr * (...)` (LARS, AdamW with its decoupled
    weight decay), this is that module's learning rate times the factor. A leaf's path is matched
    component by component (`('online', 'predictor', 'Dense_0', 'kernel')` is under `predictor`);
    the first named component found from the root wins. A name that matches no leaf is an error
    at `init`, so a mistyped module does not silently train at the base rate.
    """

    def factor_of(path) -> float | None:
        for part in path_names(path):
            if part in multipliers:
                return multipliers[part]
        return None

    def init_fn(params):
        paths = [path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        missing = sorted(set(multipliers) - {part for path in paths for part in path})
        if missing:
            top = sorted({"/".join(path[:2]) for path in paths})
            raise ValueError(
                f"config.optimizer.lr_multipliers: no parameters under {missing}; "
                f"the parameter tree's modules: {top}"
            )
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u if (f := factor_of(path)) is None else u * jnp.asarray(f, u.dtype),
            updates,
        ), state

    return optax.GradientTransformation(init_fn, update_fn)


def warmup_cosine_schedule(
    *, base_lr: float, batch_size: int, total_steps: int, warmup_steps: int
) -> optax.Schedule:
    """DeepMind `schedules.learning_schedule` (docs/METHODS.md §1.5).

    `peak = base_lr * batch_size / 256`; `lr = peak * step / warmup_steps` for
    `step < warmup_steps`, then `0.5 * peak * (1 + cos(pi * k / (total - warmup)))` with
    `k = min(step - warmup, total - warmup)`, so the lr reaches 0 at `total_steps` and stays 0.

    Args:
      base_lr: learning rate per 256 examples.
      batch_size: global batch size.
      total_steps: total number of optimiser steps.
      warmup_steps: linear warm-up length (0 = start at the peak).

    Returns:
      `schedule(step) -> float32 lr`.
    """
    peak = base_lr * batch_size / 256.0
    # DeepMind divides by (total - warmup) unguarded; the guard only matters for degenerate
    # configs with total_steps == warmup_steps (then lr = peak at the last step).
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / warmup_steps if warmup_steps > 0 else jnp.full_like(step, peak)
        k = jnp.minimum(step - warmup_steps, decay_steps)
        cosine = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * k / decay_steps))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def ema_tau(step, *, base_tau: float, total_steps: int) -> jax.Array:
    """Target EMA rate `1 - (1 - base_tau) * (cos(pi k / K) + 1) / 2`, `k = min(step, K)`.

    Goes from `base_tau` at step 0 to 1 at `total_steps` (docs/METHODS.md §1.3).

    Args:
      step: current step (int or scalar array).
      base_tau: tau at step 0 (DetCon: 0.996).
      total_steps: K.

    Returns:
      float32 scalar.
    """
    k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
    return 1.0 - (1.0 - base_tau) * (jnp.cos(jnp.pi * k / total_steps) + 1.0) / 2.0


def ema_update(target_tree, online_tree, tau):
    """`target + (1 - tau) * (online - target)` on every matching leaf (docs/METHODS.md §1.3).

    Args:
      target_tree: EMA parameters.
      online_tree: online parameters with the same structure.
      tau: EMA rate (scalar).

    Returns:
      The new target tree (leaf dtypes of `target_tree` kept).
    """
    return jax.tree_util.tree_map(
        lambda t, o: (t + (1.0 - tau) * (o - t)).astype(t.dtype), target_tree, online_tree
    )


def epochs_to_steps(num_epochs: float, num_examples: int, batch_size: int) -> int:
    """`floor(num_epochs * num_examples / batch_size)`, as `max_steps` in `detcon_b_config.py`.

    ImageNet (1,281,167 images) at batch 4096: 100 -> 31,278; 300 -> 93,835; 1000 -> 312,784.
    """
    if isinstance(num_epochs, int):
        return num_epochs * num_examples // batch_size  # exact integer arithmetic
    return int(math.floor(num_epochs * num_examples / batch_size))


def detcon_warmup_steps(num_epochs: int, num_examples: int, batch_size: int) -> int:
    """DetCon's actual warm-up: `(num_epochs // 100) * num_examples // batch_size`.

    The DetCon config's `warmup_epochs=10` is never read; the value used is one warm-up epoch
    per 100 training epochs (docs/METHODS.md §1.5, §11.2). ImageNet at batch 4096: 100 -> 312;
    300 -> 938; 1000 -> 3,127. Below 100 epochs there is no warm-up at all.
    """
    return (int(num_epochs) // 100) * num_examples // batch_size
