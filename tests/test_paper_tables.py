"""The paper tables' machinery: equal budgets across rows, the efficiency gain, the markdown.

The table commands themselves train several methods for minutes each; they are run by hand and
their results committed (experiments/paper_tables/results/), not in CI.
"""

import json
import math
import statistics

import pytest

from experiments import base
from experiments.paper_tables import (
    beats_random,
    detcon_efficiency,
    local_recipe,
    object_comparison,
    odin_discovery,
    report,
    runs,
    vito_video,
)


def test_steps_to_reach_interpolates_the_crossing():
    curve = [(100, 0.2), (200, 0.4), (300, 0.5)]
    # 0.3 lies halfway between the evaluations at 100 and 200 steps.
    assert runs.steps_to_reach(curve, 0.3) == pytest.approx(150.0)
    assert runs.steps_to_reach(curve, 0.5) == pytest.approx(300.0)
    assert runs.steps_to_reach(curve, 0.1) == 100.0  # met at the first evaluation
    assert runs.steps_to_reach(curve, 0.6) is None


def test_efficiency_gain_as_in_the_paper():
    byol = [(100, 0.2), (200, 0.3), (300, 0.35), (600, 0.5)]
    # DetCon at 200 steps scores 0.35: BYOL needs 300 steps, 1.5x.
    assert runs.efficiency_gain(byol, 200, 0.35) == (pytest.approx(1.5), "exact")
    # A score BYOL never reaches within 600 steps: a lower bound of 600 / 200 = 3 ("> 3x").
    assert runs.efficiency_gain(byol, 200, 0.9) == (pytest.approx(3.0), "more")
    # A score BYOL already has at its first evaluation (100 steps): at most 100 / 200.
    assert runs.efficiency_gain(byol, 200, 0.1) == (pytest.approx(0.5), "at_most")
    assert report.gain(3.0, "more") == "> 3.0x"
    assert report.gain(1.5, "exact") == "1.5x"
    assert report.gain(0.5, "at_most") == "<= 0.5x"


def _budget_fields(config):
    return (
        config.total_steps,
        config.batch_size,
        config.seed,
        config.data.image_size,
        config.model.backbone,
        json.dumps(config.model.to_dict()["backbone_kwargs"], sort_keys=True),
    )


def _optimiser(config):
    o = config.optimizer
    return o.name, o.base_lr, o.weight_decay, o.warmup_steps, o.lr_multipliers


@pytest.mark.parametrize("quick", [True, False])
def test_every_row_of_a_table_gets_the_same_compute(quick):
    tables = {
        "efficiency": ([detcon_efficiency.BYOL, detcon_efficiency.DETCON_B],
                       detcon_efficiency.budget(quick, 0)[0]),
        "comparison": (list(object_comparison.RUNS), object_comparison.budget(quick, 0)),
        "discovery": ([odin_discovery.DETCON_B, odin_discovery.SUPERVISED, odin_discovery.ODIN],
                      odin_discovery.budget(quick, 0)),
        "vito": ([vito_video.MOCLR_IMAGES, vito_video.MOCLR_FRAMES, vito_video.VITO],
                 vito_video.budget(quick, 0)),
        "beats_random": (list(beats_random.RUNS), beats_random.budget(quick, 0)),
    }  # fmt: skip
    for name, (rows, budget) in tables.items():
        configs = [runs.configure(run, budget) for run in rows]
        fields = {_budget_fields(c) for c in configs}
        assert len(fields) == 1, (name, fields)
        assert configs[0].total_steps == budget.steps
        # One optimiser for every pretraining method (the `local` recipe's); the supervised
        # reference keeps its own.
        optimisers = {_optimiser(c) for c in configs if c.method != "supervised"}
        assert optimisers == {_optimiser(base.base_config("byol", "local"))}, (name, optimisers)
        for config in configs:
            assert set(config.evals) == set(budget.evals), name
            assert config.eval_every_steps == budget.eval_every_steps
            # Identical evaluator options across rows, dataset and network aside.
            for evaluator in budget.evals:
                ours = config.evals[evaluator].to_dict()
                first = configs[0].evals[evaluator].to_dict()
                for key in set(ours) - {"dataset", "network"}:
                    assert ours[key] == first[key], (name, evaluator, key)
    odin = runs.configure(odin_discovery.ODIN, odin_discovery.budget(False, 0, network="discovery"))
    assert odin.evals.discovery.network == "discovery"


def test_configs_are_cached_by_content(tmp_path):
    budget = object_comparison.budget(True, 0)
    byol = runs.configure(object_comparison.RUNS[1], budget)
    again = runs.configure(object_comparison.RUNS[1], budget)
    other_seed = runs.configure(object_comparison.RUNS[1], object_comparison.budget(True, 1))
    assert runs.run_key(byol) == runs.run_key(again) != runs.run_key(other_seed)
    path = runs.workdir_of(str(tmp_path), object_comparison.RUNS[3], byol)
    assert path.startswith(str(tmp_path / "detcon_b_"))


def test_the_recipe_sweep_varies_only_the_optimiser_and_scores_on_validation():
    budget = local_recipe.budget(False, 0)
    configs = [
        runs.configure(local_recipe._run("BYOL", "experiments/byol.py:local", name, (0.08, 1.0)),
                       budget)
        for name, _ in local_recipe.OPTIMISERS
    ]  # fmt: skip
    plain = [c.to_dict() for c in configs]
    for d in plain:
        d.pop("optimizer")
    assert all(d == plain[0] for d in plain)
    assert {(c.optimizer.name, c.optimizer.base_lr) for c in configs} == {
        ("lars", 0.4), ("lars", 3.2), ("lars", 6.4), ("adamw", 4e-3), ("adamw", 1.2e-2)
    }  # fmt: skip
    # The result file says whether the `local` configs use the choice: the grid knows theirs.
    assert local_recipe.configured_optimiser() in dict(local_recipe.OPTIMISERS)
    # The recipe is chosen on validation; the tables report test figures.
    assert {c.evals[e].split for c in configs for e in c.evals} == {"validation"}
    table = runs.configure(object_comparison.RUNS[1], object_comparison.budget(False, 0))
    assert {table.evals[e].split for e in table.evals} == {"test"}
    random = {key: 0.1 for key, _ in local_recipe.METRICS}
    better = {key: 0.1 + 0.02 * i for i, (key, _) in enumerate(local_recipe.METRICS)}
    assert local_recipe.gain(better, random) == pytest.approx(0.03)


def test_a_mistyped_override_is_an_error():
    run = runs.Run("x", "experiments/byol.py:local", (("optimizer.base_lrr", 1.0),))
    with pytest.raises(KeyError, match="optimizer.base_lrr"):
        runs.configure(run, object_comparison.budget(True, 0))
    with pytest.raises(ValueError, match="experiments/<name>.py"):
        runs.load_config("byol:local")


def test_markdown_table_and_percent():
    text = report.table(["a", "b"], [["x", report.pct(0.1234)], ["y", report.pct(None)]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x | 12.3 |", "| y | - |"]
    assert not math.isnan(float(report.pct(0.5)))
    argv = ["/x/experiments/paper_tables/odin_discovery.py", "--quick"]
    head = report.header("T", argv, 90, "abc123")
    assert "`python -m experiments.paper_tables.odin_discovery --quick`" in head
    assert "1.5 min" in head and "- commit: `abc123`" in head
    reused = report.header("T", argv, 0, "abc", reused=["BYOL", "Odin", "BYOL", "BYOL"])
    assert "(not counting BYOL x3, Odin: trained by an earlier run of a table)" in reused


def test_mean_and_standard_error_over_seeds():
    values = [0.30, 0.34, 0.41]
    mean, se = beats_random.mean_and_se(values)
    assert mean == pytest.approx(statistics.fmean(values))
    assert se == pytest.approx(statistics.stdev(values) / math.sqrt(3))
    diff, se_diff = beats_random.margin([0.5, 0.6], [0.1, 0.3])
    assert diff == pytest.approx(0.35)
    # SE of each: 0.05 and 0.1; of the difference: their root sum of squares.
    assert se_diff == pytest.approx(math.sqrt(0.05**2 + 0.1**2))
    with pytest.raises(ValueError, match="at least 2"):
        beats_random.mean_and_se([0.1])


def test_beats_random_table_reports_spread_and_verdicts(monkeypatch):
    """The table's arithmetic on made-up scores: a method far above the random row in every
    metric beats it on all four; one whose seeds straddle the random row beats it on none."""
    keys = [key for key, _ in beats_random.METRICS]

    def fake_train(run, budget, root):
        base = {"BYOL": 0.6}.get(run.label, 0.2)
        return {budget.steps: {k: base + 0.01 * budget.seed for k in keys}}

    def fake_init(run, budget, root):
        return {k: 0.2 + 0.02 * (budget.seed % 2) for k in keys}

    monkeypatch.setattr(runs, "train", fake_train)
    monkeypatch.setattr(runs, "evaluate_init", fake_init)
    text = beats_random.build(False, "unused", (0, 1, 2))
    assert "| Random init | 20.7 ± 0.7 |" in text
    assert "| BYOL | 61.0 ± 0.6 |" in text
    byol = next(line for line in text.splitlines() if line.startswith("| BYOL | +"))
    assert byol.endswith("| 4 of 4 |")
    simclr = next(line for line in text.splitlines() if line.startswith("| SimCLR | +"))
    assert simclr.endswith("| 0 of 4 |")


def test_object_comparison_reuses_the_beats_random_runs(monkeypatch):
    """Same runs, same workdirs: a root holding beats_random's runs makes the comparison free."""
    ours = {run.label: run for run in beats_random.RUNS}
    for seed in (0, 1):
        for run in object_comparison.RUNS:
            config = runs.configure(run, object_comparison.budget(False, seed))
            other = ours[run.label]
            same = runs.configure(other, beats_random.budget(False, seed))
            assert runs.workdir_of("r", run, config) == runs.workdir_of("r", other, same)
    keys = [key for key, _ in object_comparison.METRICS]
    order = [label for label, *_ in object_comparison.PAPER_ROWS]

    def fake_train(run, budget, root):  # the paper's order, seeds 0.01 apart
        return {budget.steps: {k: 0.1 * order.index(run.label) + 0.01 * budget.seed for k in keys}}

    monkeypatch.setattr(runs, "train", fake_train)
    text = object_comparison.build(False, "unused", (0, 1, 2))
    assert "| Odin | no | 42.9 | 38.4 | 43.8 | 39.1 | 41.0 ± 0.6 |" in text
    assert text.count("10 of 10 pairs in the paper's order") == len(keys)
    # The random network's figures: in the beats_random file of the same budget.
    assert "are in `beats_random.md`" in text
    assert "are in `beats_random_quick.md`" in object_comparison.build(True, "unused", (0, 1))


def test_table_headers_name_the_optimiser_the_runs_train_with():
    """The header text is read from the configured run: the `local` recipe for a method (peak
    rate = base x batch / 256), the supervised reference's own AdamW recipe."""
    b = beats_random.budget(False, 0)
    byol = runs.configure(beats_random.RUNS[1], b)
    assert byol.optimizer.name == "adamw"
    assert runs.optimiser_text(byol) == (
        "AdamW at peak rate 0.003 (base 0.012 per 256 images), weight decay 0.0001"
    )
    supervised = runs.configure(odin_discovery.SUPERVISED, odin_discovery.budget(False, 0))
    assert runs.optimiser_text(supervised) == (
        "AdamW at peak rate 0.00125 (base 0.005 per 256 images), weight decay 0.0001"
    )
