"""Evaluators: plug-ins called at the end of (and during) training and from the standalone command.

An evaluator is a class registered with `@register_evaluator(name)`; `config.evals` lists the ones a
run uses, each with its own options: `config.evals.<name> = ConfigDict(...)`. It is constructed
as `Evaluator(config, eval_config)` and called as `evaluator.run(setup, state, mesh=mesh)`, which
returns `dict[str, float]`. Before `run`, `run_evaluators` sets `evaluator.workdir` (None when
the caller has no workdir), where evaluators that draw pictures write them.

Evaluators (`_KNOWN_MODULES`, imported on first use):
  monitor       top-1 of the online linear monitor trained during pretraining
  discovery     object discovery: k-means of frozen dense features, ABO^i / ABO^c / OR
  seg_probe     linear (1x1 conv) segmentation probe on frozen dense features, mIoU
  linear_probe  linear classifier on frozen pooled features (BYOL protocol, cheap variant)
  knn           weighted k-nearest-neighbour classifier on frozen pooled features (DINO)
  rank          effective rank of the frozen pooled features (RankMe), no labels
  label_propagation  first-frame masks propagated through videos (DAVIS J & F)

Multi-host: evaluation batches become global arrays on the mesh (`features.to_global`) and every
result leaves the device as a replicated jitted reduction, so an evaluator runs unchanged on one
host or many.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import ml_collections

_EVALUATORS: dict[str, type] = {}
_KNOWN_MODULES = {
    "monitor": "common.eval.monitor",
    "discovery": "common.eval.discovery",
    "seg_probe": "common.eval.seg_probe",
    "linear_probe": "common.eval.linear_probe",
    "knn": "common.eval.knn",
    "rank": "common.eval.rank",
    "label_propagation": "common.eval.label_propagation",
}


def register_evaluator(name: str):
    def wrap(cls):
        _EVALUATORS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_evaluator(name: str) -> type:
    if name not in _EVALUATORS and name in _KNOWN_MODULES:
        importlib.import_module(_KNOWN_MODULES[name])
    if name not in _EVALUATORS:
        raise ValueError(
            f"config.evals: unknown evaluator {name!r}; known: {sorted(_KNOWN_MODULES)}"
        )
    return _EVALUATORS[name]


def evaluator_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """Every option of evaluator `name` with its default, updated by `overrides`.

    Experiment configs use it so that each option exists in the (locked) config and can be set
    from the command line: `--config.evals.discovery.num_clusters=16`.
    """
    cls = get_evaluator(name)
    defaults = getattr(cls, "defaults", None)
    if defaults is not None:
        defaults = {**getattr(cls, "common_defaults", {}), **defaults}
    options = dict(defaults) if defaults is not None else {}
    unknown = set(overrides) - set(options) if defaults is not None else set()
    if unknown:
        raise ValueError(f"evaluator {name!r}: unknown option(s) {sorted(unknown)}")
    options.update(overrides)
    return ml_collections.ConfigDict(options)


class Evaluator:
    """Base class of option-driven evaluators: `defaults` lists every option and its default;
    `self.options` holds them merged with `config.evals.<name>` (unknown options are an error,
    so a typo does not silently fall back to a default)."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    # Options every evaluator has: `enabled=False` leaves it out of the rounds of the trainer
    # (e.g. `--config.evals.seg_probe.enabled=False`); naming it explicitly still runs it.
    common_defaults: ClassVar[Mapping[str, Any]] = {"enabled": True}

    def __init__(self, config: ml_collections.ConfigDict, eval_config: Mapping | None = None):
        self.config = config
        given = eval_config or {}
        given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
        defaults = {**self.common_defaults, **self.defaults}
        unknown = set(given) - set(defaults)
        if unknown:
            raise ValueError(
                f"config.evals.{self.name}: unknown option(s) {sorted(unknown)}; "
                f"valid: {sorted(defaults)}"
            )
        self.options = ml_collections.ConfigDict({**defaults, **given})
        self.workdir: str | None = None

    def run(self, setup, state, *, mesh) -> dict[str, float]:
        raise NotImplementedError


def run_evaluators(
    setup,
    state,
    *,
    mesh,
    workdir: str | None = None,
    names: Sequence[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Runs the evaluators of `setup.config.evals` (those not `enabled=False`), or `names` (with
    their configured options or their defaults), as one round; results are prefixed with the
    evaluator's name. `timings`, if given, receives each evaluator's seconds."""
    configured = setup.config.get("evals", {}) or {}
    if names is None:
        names = [n for n in configured if (configured[n] or {}).get("enabled", True)]
    names = list(names)
    from common.eval import features

    results: dict[str, float] = {}
    try:
        for name in names:
            start = time.perf_counter()
            evaluator = get_evaluator(name)(setup.config, configured.get(name, {}))
            evaluator.workdir = workdir
            for key, value in evaluator.run(setup, state, mesh=mesh).items():
                results[f"{name}/{key}"] = float(value)
            if timings is not None:
                timings[name] = time.perf_counter() - start
    finally:
        features.clear_shared()  # features shared within the round leave the devices
    return results
