"""Conversion between Haiku ResNet checkpoints (DeepMind BYOL / DetCon) and our Flax `ResNet`.

Haiku layout (`hk.transform_with_state` of `hk.nets.ResNet50` or DetCon's `networks.ResNet50`):

* params: `{'<prefix>initial_conv': {'w': [7, 7, 3, 64]},
  '<prefix>initial_batchnorm': {'scale': [1, 1, 1, C], 'offset': [1, 1, 1, C]},
  '<prefix>block_group_0/~/block_0/~/conv_0': {'w': ...}, ...}` with `<prefix>` e.g.
  `'res_net50/~/'` (the default module name of `ResNet50`; DetCon's checkpoints may carry another
  one, hence `prefix=None` auto-detection from the key that ends in `initial_conv`).
* state: `{'<prefix>initial_batchnorm/~/mean_ema': {'average', 'hidden', 'counter'},
  '.../var_ema': ...}`.

Our `ResNet` mirrors the module names, so the conversion is a renaming (`w` -> `kernel`,
`offset` -> `bias`, `mean_ema` -> `mean`, `var_ema` -> `var`) and a reshape of the BN vectors from
`[1, 1, 1, C]` to `[C]`.

BatchNorm statistics: Haiku's `ExponentialMovingAverage` is zero-debiased: it stores `hidden`
(the raw EMA) and `average = hidden / (1 - decay**counter)`, and normalises with `average`. We
import `average` (what Haiku uses at inference). Flax's EMA is not debiased, so after the import
the next training update equals Haiku's only once `decay**counter` is negligible, i.e. for any
checkpoint trained more than ~200 steps. On export we write `hidden = average` and a large
`counter`, which makes Haiku's debiasing an exact no-op.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from common import safe_pickle

SEP = "/~/"
# Haiku module leaves that have no counterpart in the encoder: the classification head.
_IGNORED_MODULES = ("logits",)
_PARAM_TO_FLAX = {"w": "kernel", "scale": "scale", "offset": "bias"}
_PARAM_TO_HAIKU = {v: k for k, v in _PARAM_TO_FLAX.items()}
_STATE_TO_FLAX = {"mean_ema": "mean", "var_ema": "var"}
_STATE_TO_HAIKU = {v: k for k, v in _STATE_TO_FLAX.items()}
# 1 - 0.9**counter == 1 exactly in float32 for counter >= ~160.
DEFAULT_EXPORT_COUNTER = 1_000_000


def detect_prefix(params: Mapping[str, Any]) -> str:
    """Finds the module-name prefix of a Haiku ResNet in a flat Haiku params dict.

    Args:
      params: Haiku params (`{module_name: {param_name: array}}`).

    Returns:
      The prefix, including the trailing `'/~/'` (e.g. `'res_net50/~/'`), or `''`.

    Raises:
      ValueError: if there is no `initial_conv` or several ResNets (pass `prefix` explicitly).
    """
    candidates = sorted(
        k[: -len("initial_conv")]
        for k in params
        if k == "initial_conv" or k.endswith(SEP + "initial_conv")
    )
    if len(candidates) != 1:
        raise ValueError(
            "Cannot auto-detect the ResNet prefix: expected exactly one module ending in "
            f"'initial_conv', found {candidates}. Pass prefix= explicitly."
        )
    return candidates[0]


def _relative_path(key: str, prefix: str) -> tuple[str, ...] | None:
    if not key.startswith(prefix):
        return None
    return tuple(key[len(prefix) :].split(SEP))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    if path[-1] in tree:
        raise ValueError(f"Duplicate entry for {'/'.join(path)}")
    tree[path[-1]] = value


def split_params_and_state(tree: Mapping[str, Any]) -> tuple[dict, dict]:
    """Splits a flat Haiku dict holding both params and state (BN `mean_ema`/`var_ema`).

    Args:
      tree: `{module_name: {name: array}}` mixing params and state modules.

    Returns:
      `(params, state)`.
    """
    params, state = {}, {}
    for key, value in tree.items():
        last = key.rsplit(SEP, 1)[-1]
        (state if last in _STATE_TO_FLAX else params)[key] = value
    return params, state


def haiku_to_flax(
    params: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    prefix: str | None = None,
) -> dict[str, dict]:
    """Converts a Haiku ResNet (v1 or v2) to our `ResNet`'s variables.

    Args:
      params: Haiku params. Modules outside `prefix` (projector, predictor, classifier, ...) and
        the ResNet's own `logits` head are ignored.
      state: Haiku state with the BN moving averages; `None` if they are mixed into `params`
        (they are then split out by name).
      prefix: module-name prefix of the ResNet including the trailing `'/~/'` (e.g.
        `'res_net50/~/'`); `None` to auto-detect it (`detect_prefix`).

    Returns:
      `{'params': ..., 'batch_stats': ...}` as nested dicts of numpy arrays, ready for
      `ResNet(depth=...).apply`. BN vectors are `[C]`; conv kernels keep the `[kh, kw, Cin, Cout]`
      layout (the same in both libraries).

    Raises:
      ValueError: unknown parameter names, or a prefix that cannot be detected.
    """
    if state is None:
        params, state = split_params_and_state(params)
    if prefix is None:
        prefix = detect_prefix(params)
    flax_params: dict = {}
    for key, leaves in params.items():
        path = _relative_path(key, prefix)
        if path is None or path[-1] in _IGNORED_MODULES:
            continue
        for name, value in leaves.items():
            if name not in _PARAM_TO_FLAX:
                raise ValueError(f"Unexpected Haiku parameter {key}/{name}")
            value = np.asarray(value)
            if name != "w":
                value = value.reshape(-1)
            _set(flax_params, path + (_PARAM_TO_FLAX[name],), value)
    batch_stats: dict = {}
    for key, leaves in state.items():
        path = _relative_path(key, prefix)
        if path is None:
            continue
        if path[-1] not in _STATE_TO_FLAX:
            raise ValueError(f"Unexpected Haiku state {key}")
        value = np.asarray(leaves["average"]).reshape(-1)
        _set(batch_stats, path[:-1] + (_STATE_TO_FLAX[path[-1]],), value)
    return {"params": flax_params, "batch_stats": batch_stats}


def flax_to_haiku(
    variables: Mapping[str, Any],
    *,
    prefix: str = "res_net50/~/",
    counter: int = DEFAULT_EXPORT_COUNTER,
) -> tuple[dict, dict]:
    """Converts our `ResNet` variables to a Haiku ResNet's `(params, state)`.

    Args:
      variables: `{'params': ..., 'batch_stats': ...}` of a `ResNet` (FrozenDict or dict).
      prefix: Haiku module-name prefix including the trailing `'/~/'`; `'res_net50/~/'` is what
        `hk.nets.ResNet50()` / DetCon's `networks.ResNet50()` use by default.
      counter: value of the EMA `counter` written to the state. Large by default so that Haiku's
        zero-debiasing divides by exactly 1 and uses our statistics unchanged.

    Returns:
      `(params, state)`: flat Haiku dicts of numpy arrays; BN params and statistics have Haiku's
      `[1, 1, 1, C]` shape.
    """
    params: dict = {}
    for path, value in _flatten(variables["params"]):
        module, name = path[:-1], path[-1]
        value = np.asarray(value)
        if name != "kernel":
            value = value.reshape(1, 1, 1, -1)
        params.setdefault(prefix + SEP.join(module), {})[_PARAM_TO_HAIKU[name]] = value
    state: dict = {}
    for path, value in _flatten(variables.get("batch_stats", {})):
        module, name = path[:-1], path[-1]
        value = np.asarray(value).reshape(1, 1, 1, -1)
        key = prefix + SEP.join(module + (_STATE_TO_HAIKU[name],))
        state[key] = {
            "counter": np.asarray(counter, np.int32),
            "hidden": value,
            "average": value.copy(),
        }
    return params, state


# Field order of the NamedTuples DeepMind's trainers pickle as their experiment state. Pickle
# stores a NamedTuple as its class's import path plus its values in order, without field names;
# the class is never imported (`safe_pickle` reads it as an inert stand-in), so the names come
# from this table.
KNOWN_EXPERIMENT_STATES = {
    # byol/byol_experiment.py: byol.utils.checkpointing pickles (with dill, protocol 2)
    # {'experiment_state': _ByolExperimentState(...), 'step': int, 'rng': array}.
    "_ByolExperimentState": (
        "online_params", "target_params", "online_state", "target_state", "opt_state",
    ),
}  # fmt: skip


def _read_checkpoint_file(path: str) -> Any:
    """The object a `.npy` (np.save of a dict) or a pickle holds, read by `safe_pickle`."""
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"  # np.save's magic string; anything else is a pickle
        if not is_npy:
            f.seek(0)
            return safe_pickle.load(f, source=path)
    tree = safe_pickle.load_npy(path)
    if tree.dtype != object:
        raise ValueError(f"{path} holds a plain {tree.dtype} array, not a pickled checkpoint dict")
    if tree.shape == ():
        tree = tree.item()
    return tree


def _as_mapping(obj: Any, what: str) -> Mapping:
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "_asdict"):  # the NamedTuple itself (its package is importable)
        return dict(obj._asdict())
    if isinstance(obj, safe_pickle.StandIn):
        fields = KNOWN_EXPERIMENT_STATES.get(type(obj).__name__)
        if fields is not None and len(obj.args) == len(fields):
            return dict(zip(fields, obj.args))
        raise ValueError(
            f"{what} is a {obj!r} with {len(obj.args)} values whose field names are unknown; "
            f"install the package that defines it, or add its fields to KNOWN_EXPERIMENT_STATES"
        )
    if hasattr(obj, "__dict__"):
        return vars(obj)
    raise ValueError(f"{what} is a {type(obj).__name__}, not a dict of Haiku modules")


def load_haiku_checkpoint(
    path: str, *, network: str = "online"
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Loads a Haiku checkpoint saved with `np.save` (pickled dict) or `pickle`/`dill`.

    Accepted layouts (the first that matches):

    * BYOL's checkpoint (`byol.utils.checkpointing`, e.g. the released `pretrain_res50x1.pkl`):
      `{'experiment_state': _ByolExperimentState(online_params, target_params, online_state,
      target_state, opt_state), 'step', 'rng'}`. The `byol` package is not needed (nor
      imported): its classes are read as inert `safe_pickle.StandIn`s and the experiment
      state's fields are named from `KNOWN_EXPERIMENT_STATES`.
    * `{'<network>_params', '<network>_state', ...}` (an experiment state as a dict);
    * `{'params', 'state'}`;
    * a flat dict of Haiku modules, params and state mixed (what DetCon's released
      `resnet50_detcon_b_imagenet_1k.npy` is read as when it has neither of the above: its
      exact layout could not be checked offline, so every likely one is accepted).

    Args:
      path: a `.npy` written by `np.save` of a dict, or a pickle (`.pkl`, dill protocol 2).
      network: which network of an experiment state to take (`'online'` or `'target'`).

    Returns:
      `(params, state)` flat Haiku dicts, for `haiku_to_flax`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a file that holds no such layout, or an experiment state without `network`.
      safe_pickle.UnsafePickleError: the pickle names a global outside `safe_pickle`'s
        allow-list (e.g. `os.system`); nothing of it was executed.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Haiku checkpoint {path} does not exist")
    tree = _as_mapping(_read_checkpoint_file(path), path)
    if "experiment_state" in tree:
        tree = _as_mapping(tree["experiment_state"], f"{path}: experiment_state")
    for p_key, s_key in ((f"{network}_params", f"{network}_state"), ("params", "state")):
        if p_key in tree:
            return dict(tree[p_key]), dict(tree.get(s_key) or {})
    if any(k.endswith("_params") for k in tree):
        networks = sorted(k[: -len("_params")] for k in tree if k.endswith("_params"))
        raise ValueError(f"{path} has no network {network!r}; it has {networks}")
    return split_params_and_state(tree)


def _flatten(tree: Mapping[str, Any], path: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, path + (key,))
        else:
            yield path + (key,), value
