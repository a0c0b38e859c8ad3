"""Training and evaluation runs of the paper tables: equal compute, cached per configuration.

Every row of a table is a `Run`: an experiment config (`experiments/<file>.py:<arg>`) plus
overrides. `configure` gives each run of a table the same budget (steps, batch size, view
resolution and backbone come from the `local` configs, which share them) and the same
evaluators, so rows differ only in what the method does. `train` runs the ordinary trainer
(`common.train.main`) in this process; its workdir is named by a hash of the full config and of
the dataset's version and builder config (`dataset_identity`), so a
table command that is interrupted, or a second table that needs the same run, reuses every run
already finished (a workdir with `final_eval.json`) and resumes a half-finished one from its
checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of a table.

    Attributes:
      label: the row name, as in the paper's table.
      experiment: `experiments/<file>.py:<arg>` (the argument as on the trainer's command line).
      overrides: `(dotted.key, value)` pairs applied to the config, e.g. `("data.name", ...)`.
    """

    label: str
    experiment: str
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Budget:
    """The compute every run of a table gets, and how it is evaluated.

    Attributes:
      steps: training steps.
      batch_size: global batch size.
      eval_every_steps: evaluate during training every this many steps (0: at the end only).
      evals: evaluator name -> option overrides; evaluators of the config not named here are
        disabled, so every row is measured by the same evaluators with the same options.
      seed: the run seed.
    """

    steps: int
    batch_size: int
    eval_every_steps: int
    evals: Mapping[str, Mapping[str, Any]]
    seed: int = 0


# Labels of the runs this process found finished and reused (the table's header says so: its
# wall time then does not include their training).
REUSED: list[str] = []


def load_config(experiment: str) -> ml_collections.ConfigDict:
    """`experiments/byol.py:local,x=1` -> that file's `get_config('local,x=1')` (unlocked)."""
    path, _, arg = experiment.partition(":")
    if not (path.startswith("experiments/") and path.endswith(".py")):
        raise ValueError(f"expected experiments/<name>.py[:<arg>], got {experiment!r}")
    module = importlib.import_module(path[: -len(".py")].replace("/", "."))
    config = module.get_config(arg or None)
    config.unlock()
    return config


def set_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """`config.<key> = value` for a dotted key that must already exist (a typo is an error)."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise KeyError(f"config has no field {key!r} (no {part!r})")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"config has no field {key!r}")
    node[leaf] = value


def configure(run: Run, budget: Budget) -> ml_collections.ConfigDict:
    """The run's config under the table's budget (locked).

    The optimiser stays the config's own: the `local` recipe (experiments/base.py, chosen on
    the validation split by `local_recipe.py`) for every method, the supervised reference's
    own AdamW recipe for it.
    """
    from common.eval import evaluator_config

    config = load_config(run.experiment)
    for key, value in run.overrides:
        set_path(config, key, value)
    config.seed = budget.seed
    config.total_steps = budget.steps
    config.num_epochs = 0
    config.batch_size = budget.batch_size
    config.eval_every_steps = budget.eval_every_steps
    # Checkpoints at the evaluations: an interrupted table resumes a run where it stopped.
    config.checkpoint.every_steps = budget.eval_every_steps or budget.steps
    config.pictures_every_steps = 0
    # The tables score the random initialisation as a row of their own.
    config.random_init_baseline = False
    evals = ml_collections.ConfigDict()
    for name, options in budget.evals.items():
        base = config.evals[name] if name in config.evals else evaluator_config(name)
        merged = ml_collections.ConfigDict(base.to_dict())
        merged.update(dict(options))
        evals[name] = merged
    config.evals = evals
    config.lock()
    return config


def optimiser_text(config: ml_collections.ConfigDict) -> str:
    """How a run's config trains, for a table's header: `AdamW at peak rate 0.003 (base 0.012
    per 256 images), weight decay 0.0001`."""
    o = config.optimizer
    name = {"lars": "LARS", "adamw": "AdamW"}.get(o.name, o.name)
    peak = o.base_lr * config.batch_size / 256
    return (
        f"{name} at peak rate {peak:.3g} (base {o.base_lr:g} per 256 images), "
        f"weight decay {o.weight_decay:g}"
    )


def dataset_identity(data_config: ml_collections.ConfigDict) -> str:
    """`name:version` and the builder config of the dataset a run trains on.

    Part of the run key: a dataset name alone does not name the data (`synthetic_scenes` was the
    colour-coded 1.0.0 scenes before 3.0.0), and a run trained on other data must not be reused.
    """
    from common.data import loading

    builder = loading.get_builder(data_config)
    return f"{builder.info.full_name}|{builder.builder_config!r}"


def run_key(config: ml_collections.ConfigDict) -> str:
    """A short hash of the config and of the dataset's identity: equal ones share a workdir."""
    text = json.dumps(
        {"config": config.to_dict(), "data": dataset_identity(config.data)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def workdir_of(root: str, run: Run, config: ml_collections.ConfigDict) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in run.label.lower()).strip("_")
    return os.path.join(root, f"{slug}_{run_key(config)}")


def train(run: Run, budget: Budget, root: str) -> dict[int, dict[str, float]]:
    """Trains and evaluates `run` (or reuses a finished workdir); returns `{step: results}`
    for every evaluation (during training and the final one)."""
    from common import train as trainer

    config = configure(run, budget)
    workdir = workdir_of(root, run, config)
    final = os.path.join(workdir, "final_eval.json")
    if not os.path.exists(final):
        print(f"[tables] training {run.label}: {workdir}", flush=True)
        trainer.main(config, workdir)
    else:
        print(f"[tables] reusing {run.label}: {workdir}", flush=True)
        REUSED.append(run.label)
    return evaluations(workdir, budget.steps)


def evaluate_init(run: Run, budget: Budget, root: str) -> dict[str, float]:
    """The evaluators on the run's freshly initialised networks (the random-init row)."""
    from common import evaluate

    config = configure(run, budget)
    workdir = workdir_of(root, run, config) + "_init"
    path = os.path.join(workdir, "eval_init.json")
    if not os.path.exists(path):
        print(f"[tables] evaluating the initialisation of {run.label}: {workdir}", flush=True)
        evaluate.evaluate(config, workdir, initial=True)
    with open(path) as f:
        return json.load(f)["results"]


def evaluations(workdir: str, final_step: int) -> dict[int, dict[str, float]]:
    """`{step: {evaluator/key: value}}` from a workdir's metrics.jsonl and final_eval.json."""
    from common import metrics

    out: dict[int, dict[str, float]] = {}
    for row in metrics.read_jsonl(workdir):
        values = {k[len("eval/") :]: v for k, v in row.items() if k.startswith("eval/")}
        if values:
            out.setdefault(int(row["step"]), {}).update(values)
    with open(os.path.join(workdir, "final_eval.json")) as f:
        out.setdefault(final_step, {}).update(json.load(f))
    return dict(sorted(out.items()))


def curve(evals: Mapping[int, Mapping[str, float]], key: str) -> list[tuple[int, float]]:
    """`[(step, value)]` of one metric, in step order."""
    return [(step, values[key]) for step, values in sorted(evals.items()) if key in values]


def steps_to_reach(points: Sequence[tuple[int, float]], target: float) -> float | None:
    """The first step at which a curve reaches `target`, linearly interpolated between the two
    evaluations around the crossing; None if it never does. A curve that already meets the target
    at its first evaluation is credited that evaluation's step."""
    previous = None
    for step, value in points:
        if value >= target:
            if previous is None:
                return float(step)
            (s0, v0), (s1, v1) = previous, (step, value)
            return s0 + (target - v0) / (v1 - v0) * (s1 - s0)
        previous = (step, value)
    return None


def efficiency_gain(
    baseline: Sequence[tuple[int, float]], method_step: int, method_score: float
) -> tuple[float, str]:
    """How many times more steps the baseline needs to reach the method's score at
    `method_step` (the papers' efficiency gain: epochs BYOL needs / epochs DetCon needs).

    Returns:
      `(gain, kind)`: kind `"exact"` (the crossing lies between two evaluations), `"more"` (the
      baseline never reaches the score: the gain is more than `last baseline step /
      method_step`) or `"at_most"` (the baseline already meets it at its first evaluation: the
      gain is at most `first step / method_step`).
    """
    steps = steps_to_reach(baseline, method_score)
    if steps is None:
        return baseline[-1][0] / method_step, "more"
    if steps == baseline[0][0]:
        return steps / method_step, "at_most"
    return steps / method_step, "exact"
