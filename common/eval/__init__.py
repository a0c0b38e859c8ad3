"""Evaluators: plug-ins called at the end of (and during) training and from the standalone command.

An evaluator is a class registered with `@register_evaluator(name)`; `config.evals` lists the ones a
run uses, each with its own options: `config.evals.<name> = ConfigDict(...)`. It is constructed
as `Evaluator(config, eval_config)` and called as `evaluator.run(setup, state, mesh=mesh)`, which
returns `dict[str, float]`.
"""

from __future__ import annotations

import importlib

_EVALUATORS: dict[str, type] = {}
_KNOWN_MODULES = {"monitor": "common.eval.monitor"}


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


def run_evaluators(setup, state, *, mesh) -> dict[str, float]:
    """Runs every evaluator in `setup.config.evals`; results are prefixed with its name."""
    results: dict[str, float] = {}
    for name, eval_config in setup.config.get("evals", {}).items():
        evaluator = get_evaluator(name)(setup.config, eval_config)
        for key, value in evaluator.run(setup, state, mesh=mesh).items():
            results[f"{name}/{key}"] = float(value)
    return results
