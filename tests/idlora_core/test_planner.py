"""The budget planner (`idlora_core.planner`): exact against brute force on constructed scans
whose optimum is known, greedy's stated gap, parameter counts from the budget formulas
(computed here by hand: m*r + k*r), never over budget, budget parsing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from idlora_core import planner as P
from idlora_core.planner import LayerCurve


def idlora(m: int, k: int, r: int) -> int:
    return m * r + k * r  # docs/ADAPTERS.md, independent of adapters/budget.py


def params_by_hand(curves, choices) -> int:
    return sum(idlora(c.m, *choices[c.name]) for c in curves if choices[c.name] is not None)


def J_by_hand(curves, choices) -> float:
    total = sum(c.m * c.n for c in curves)
    return sum(c.m * c.n / total * (1.0 if choices[c.name] is None else c.errors[choices[c.name]])
               for c in curves)


# Three 10 x 10 layers (costs: (1,1) = 11, (1,2) = 22, (1,4) = 44). With 44 parameters the
# optimum adapts A alone (J = 1/3 (0 + 1 + 1)); greedy is lured by B's cheaper first step
# (0.4 per 11 beats A's 1.0 per 44), then A no longer fits: J = 1/3 (1 + 0.55 + 0.9).
TRAP = [LayerCurve("A", 10, 10, {(1, 4): 0.0}),
        LayerCurve("B", 10, 10, {(1, 1): 0.6, (1, 2): 0.55}),
        LayerCurve("C", 10, 10, {(1, 1): 0.9})]

# Four layers of three shapes, every (k, r) of a small grid; the optimum at each budget was
# worked out by hand from the 4 x 5 x 5 x 3 table (see each case).
FOUR = [
    LayerCurve("encoder.layer.0.attention.self.query", 16, 8,
               {(1, 1): 0.8, (1, 2): 0.6, (2, 2): 0.5, (2, 4): 0.2}),
    LayerCurve("encoder.layer.0.attention.self.value", 16, 8,
               {(1, 1): 0.7, (1, 2): 0.65, (2, 2): 0.64, (2, 4): 0.6}),
    LayerCurve("encoder.layer.1.attention.self.query", 32, 8,
               {(1, 1): 0.9, (1, 2): 0.5, (2, 2): 0.45, (2, 4): 0.1}),
    LayerCurve("encoder.layer.1.attention.self.value", 8, 8, {(1, 1): 0.5, (2, 2): 0.3}),
]


def test_the_trap_exact_equals_the_known_optimum_and_greedy_states_its_gap():
    known = {"A": (1, 4), "B": None, "C": None}
    for plan in (P.brute_force_plan(TRAP, 44), P.exact_plan(TRAP, 44), P.plan_budget(TRAP, 44)):
        assert plan.choices == known
        assert plan.objective == pytest.approx(2 / 3) and plan.params == 44
        assert plan.gap_bound == 0
    greedy = P.greedy_plan(TRAP, 44)
    assert greedy.choices == {"A": None, "B": (1, 2), "C": (1, 1)}
    assert greedy.objective == pytest.approx((1 + 0.55 + 0.9) / 3) and greedy.params == 33
    # the LP bound: B's first step, then 33 of A's 44 parameters taken fractionally
    assert greedy.lower_bound == pytest.approx((1 + 0.6 + 1) / 3 - (1 / 3) * 33 / 44)
    assert greedy.objective - 2 / 3 <= greedy.gap_bound + 1e-12  # its stated gap holds


@pytest.mark.parametrize("budget, known", [
    # weights 128, 128, 256, 64 (/ 576); costs q0, v0: 17, 34, 36, 72; q1: 33, 66, 68, 136;
    # v1: 9, 20. With 24 no two layers fit (9 + 17 = 26): the best single drop is v1 at (2, 2),
    # 64 * 0.7 = 44.8, against v0 (1, 1) 38.4, v1 (1, 1) 32 and q0 (1, 1) 25.6
    (24, {"encoder.layer.1.attention.self.value": (2, 2)}),
    # 26: v0 (1, 1) + v1 (1, 1) = 38.4 + 32 = 70.4, more than any other pair or single that fits
    (26, {"encoder.layer.0.attention.self.value": (1, 1),
          "encoder.layer.1.attention.self.value": (1, 1)}),
    # everything at its least error: 72 + 72 + 136 + 20 = 300
    (300, {"encoder.layer.0.attention.self.query": (2, 4),
           "encoder.layer.0.attention.self.value": (2, 4),
           "encoder.layer.1.attention.self.query": (2, 4),
           "encoder.layer.1.attention.self.value": (2, 2)}),
])
def test_four_layers_plan_equals_the_hand_worked_optimum(budget, known):
    expected = {c.name: known.get(c.name) for c in FOUR}
    brute = P.brute_force_plan(FOUR, budget)
    assert brute.choices == expected
    for plan in (P.exact_plan(FOUR, budget), P.plan_budget(FOUR, budget)):
        assert plan.choices == expected and plan.objective == brute.objective
    assert brute.objective == pytest.approx(J_by_hand(FOUR, expected))
    assert brute.params == params_by_hand(FOUR, expected) <= budget


def test_greedy_is_provably_optimal_when_its_steps_fill_the_budget():
    # budget = B's first step + A's step: every step taken fits, the LP bound is the plan itself
    plan = P.greedy_plan(TRAP, 55)
    assert plan.gap_bound == 0 and plan.lower_bound == plan.objective
    assert plan.choices == P.brute_force_plan(TRAP, 55).choices == {"A": (1, 4), "B": (1, 1), "C": None}


def _random_curves(rng: random.Random, layers: int) -> list[LayerCurve]:
    curves = []
    for i in range(layers):
        m, n = rng.choice([8, 12, 16, 24]), rng.choice([6, 8, 10])
        errors = {}
        for k in (1, 2, 3):
            err = 1.0
            for r in (1, 2, 3, 4):
                err *= rng.uniform(0.4, 1.0)
                if k * r <= m and r <= n and rng.random() < 0.85:
                    errors[(k, r)] = err * rng.uniform(0.8, 1.0) ** (k - 1)
        curves.append(LayerCurve(f"encoder.layer.{i // 2}.x{i % 2}", m, n, errors))
    return curves


def test_random_scans_exact_equals_brute_force_and_greedy_stays_within_its_gap():
    rng = random.Random(19)
    worst = 0.0
    for _ in range(150):
        curves = _random_curves(rng, rng.choice([3, 4]))
        budget = rng.randint(0, 250)
        brute = P.brute_force_plan(curves, budget)
        exact, greedy = P.exact_plan(curves, budget), P.greedy_plan(curves, budget)
        coarse = P.plan_budget(curves, budget, max_cells=12)  # forced off the exact path
        assert exact.objective == pytest.approx(brute.objective, abs=1e-12)
        for plan in (brute, exact, greedy, coarse):
            assert plan.params == params_by_hand(curves, plan.choices) <= budget
            assert plan.objective == pytest.approx(J_by_hand(curves, plan.choices))
            assert plan.lower_bound <= brute.objective + 1e-12  # a true lower bound
            assert plan.objective - brute.objective <= plan.gap_bound + 1e-12
        worst = max(worst, greedy.objective - brute.objective)
    assert worst > 0  # greedy alone is not exact on these scans: that is why the DP exists


def test_exact_plan_on_a_real_sweep_table_and_its_budget():
    from analysis.sweep import SweepSpec, sweep_layer

    rng = np.random.default_rng(0)
    tables = [sweep_layer(rng.standard_normal((24, 16)) @ np.diag(np.linspace(1, 0.1, 16)),
                          SweepSpec([1, 2, 4], [2, 4, 8], ["id", "random"]),
                          layer=f"encoder.layer.{b}.attention.self.query").table for b in range(3)]
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    with pytest.raises(ValueError, match="selections id, random: name one"):
        P.curves_from_table(table)
    curves = P.curves_from_table(table, "id")
    assert [c.name for c in curves] == [f"encoder.layer.{b}.attention.self.query" for b in range(3)]
    assert (4, 8) not in curves[0].errors  # infeasible (k*r = 32 > 24 rows) rows are left out
    budget = P.parse_budget("0.5xlora@4").params(curves)
    assert budget == math.floor(0.5 * 3 * 4 * (24 + 16))
    plan = P.plan_budget(curves, budget)
    assert plan.method == "exact (DP)" and plan.params <= budget
    assert plan.choices == P.brute_force_plan(curves, budget).choices
    assert plan.objective <= P.uniform_plan(curves, budget).objective  # uniform is one feasible plan
    assert plan.objective == pytest.approx(J_by_hand(curves, plan.choices))


def test_uniform_plan_is_one_choice_everywhere_that_fits():
    uniform = P.uniform_plan(FOUR, 200)
    choices = set(uniform.choices.values())
    assert len(choices) == 1 and None not in choices  # only (1,1) and (2,2) are on every layer
    assert uniform.params == params_by_hand(FOUR, uniform.choices) <= 200
    assert choices == {(2, 2)}  # 2*(18+18+34+10) = 160 fits, and beats (1,1)
    nothing = P.uniform_plan(FOUR, 10)
    assert nothing.adapted == {} and nothing.objective == 1.0 and nothing.params == 0


def test_plan_curve_reads_every_budget_off_one_table():
    curves = _random_curves(random.Random(7), 4)
    budgets = [0, 15, 40, 90, 160, 250]
    for plan, budget in zip(P.plan_curve(curves, budgets), budgets, strict=True):
        alone = P.plan_budget(curves, budget)
        assert plan.budget == budget and plan.params <= budget
        assert plan.objective == alone.objective and plan.choices == alone.choices
    forced = P.plan_curve(curves, budgets, max_cells=40)  # too large: one plan_budget each
    assert [p.params <= b for p, b in zip(forced, budgets, strict=True)] == [True] * len(budgets)


def test_plans_are_deterministic():
    curves = _random_curves(random.Random(3), 4)
    assert P.plan_budget(curves, 120) == P.plan_budget(curves, 120)
    assert P.greedy_plan(curves, 120) == P.greedy_plan(curves, 120)


def test_plan_targets_one_per_layer_with_its_block_k_and_r():
    plan = P.exact_plan(FOUR, 26)
    targets = P.plan_targets(plan, selection="id")
    assert [(t.pattern, t.layers, t.k, t.r, t.selection) for t in targets] == [
        ("encoder.layer.0.attention.self.value", [0], 1, 1, "id"),
        ("encoder.layer.1.attention.self.value", [1], 1, 1, "id")]


def test_exact_refuses_a_table_too_large_and_plan_budget_falls_back():
    curves = _random_curves(random.Random(5), 4)
    with pytest.raises(ValueError, match="exact DP needs"):
        P.exact_plan(curves, 200, max_cells=50)
    plan = P.plan_budget(curves, 200, max_cells=50)
    assert plan.method in ("greedy", "rounded DP") and plan.params <= 200


@pytest.mark.parametrize("text, count", [("40000", 40000), ("40_000", 40000), (" 1,000 ", 1000), (7, 7)])
def test_budget_counts(text, count):
    assert P.parse_budget(text).params(FOUR) == count


def test_budget_as_a_fraction_of_lora():
    lora8 = sum(8 * (c.m + c.n) for c in FOUR)
    assert P.parse_budget("0.5xlora@8").params(FOUR) == lora8 // 2
    assert P.parse_budget("1.5XLoRA@2").params(FOUR) == math.floor(1.5 * sum(2 * (c.m + c.n) for c in FOUR))
    assert str(P.parse_budget("0.25xlora@16")) == "0.25xlora@16"


@pytest.mark.parametrize("bad", ["", "abc", "0xlora@8", "-5", "0", "0.5xlora@0", "0.5xlora", "1.5",
                                 "0.5xdora@8", "2000xlora@8", True, 0])
def test_bad_budgets_raise_one_line_naming_the_value_and_an_example(bad):
    with pytest.raises(ValueError) as info:
        P.parse_budget(bad)
    message = str(info.value)
    assert "\n" not in message and "0.5xlora@8" in message


def test_bad_curves_raise():
    with pytest.raises(ValueError, match="m must be a positive integer"):
        LayerCurve("x", 0, 4, {})
    with pytest.raises(ValueError, match="finite"):
        LayerCurve("x", 4, 4, {(1, 1): float("nan")})
    with pytest.raises(ValueError, match="appears twice"):
        P.exact_plan([TRAP[0], TRAP[0]], 10)
    with pytest.raises(ValueError, match="no candidate layers"):
        P.greedy_plan([], 10)
    with pytest.raises(ValueError, match="budget must be"):
        P.exact_plan(TRAP, -1)
