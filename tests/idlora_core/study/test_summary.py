"""Summary statistics on hand-made trial tables, checked against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from idlora_core.study.summary import (
    SUMMARY_COLUMNS,
    paired_difference,
    pareto_confident_mask,
    pareto_mask,
    parse_budget,
    summarize,
    t_interval,
    to_markdown,
)
from idlora_core.study.summary import test_metric_name as metric_on_test


def test_t_interval_matches_scipy():
    values = np.array([0.81, 0.86, 0.79, 0.9])
    mean, std, low, high = t_interval(values)
    ref_low, ref_high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (low, high) == pytest.approx((ref_low, ref_high), rel=1e-12)
    assert std == pytest.approx(np.std(values, ddof=1)) and mean == pytest.approx(0.84)
    one = t_interval(np.array([0.7]))
    assert one[0] == 0.7 and all(math.isnan(v) for v in one[1:])


def brute_force_pareto(points, maximize=True):
    keep = []
    for i, (t, m) in enumerate(points):
        s = m if maximize else -m
        keep.append(not any((t2 <= t and (m2 if maximize else -m2) >= s) and (t2 < t or (m2 if maximize else -m2) > s)
                            for j, (t2, m2) in enumerate(points) if j != i))
    return keep


@pytest.mark.parametrize("maximize", [True, False])
def test_pareto_against_brute_force(maximize):
    rng = np.random.default_rng(0)
    for _ in range(30):
        t = rng.integers(0, 6, 12).astype(float)
        m = rng.integers(0, 5, 12) / 4
        assert list(pareto_mask(t, m, maximize)) == brute_force_pareto(list(zip(t, m, strict=True)), maximize)
    # hand-made: base (0, .5) and head (770, .6) are on the frontier, a bigger worse point is not
    assert list(pareto_mask([0, 770, 1000, 2000], [0.5, 0.6, 0.55, 0.9])) == [True, True, False, True]


def test_summary_picks_best_lr_on_mean_and_reports_its_seeds():
    rows = []
    table = {("lora", 8, 1e-3): [0.70, 0.72, 0.74], ("lora", 8, 3e-3): [0.90, 0.80, 0.85],
             ("idlora", 8, 1e-3): [0.88, 0.87, 0.81], ("idlora", 8, 3e-3): [0.95, 0.60, 0.70]}
    trainable = {"lora": 1000, "idlora": 500}
    for (method, r, lr), values in table.items():
        for seed, v in enumerate(values):
            rows.append({"method": method, "r": r, "k": 4 if method == "idlora" else None, "learning_rate": lr,
                         "seed": seed, "trainable_params": trainable[method], "state": "COMPLETE", "acc": v})
    rows.append({"method": "lora", "r": 8, "k": None, "learning_rate": 1e-2, "seed": 0, "trainable_params": 1000,
                 "state": "FAIL", "acc": None})
    rows.append({"method": "base", "r": None, "k": None, "learning_rate": None, "seed": 0, "trainable_params": 0,
                 "state": "COMPLETE", "acc": 0.5})
    out = summarize(pd.DataFrame(rows), "acc", "maximize")
    assert list(out.columns) == SUMMARY_COLUMNS
    lora = out[out.method == "lora"].iloc[0]
    assert lora.best_learning_rate == 3e-3 and lora.n_seeds == 3
    lo, hi = stats.t.interval(0.95, 2, loc=0.85, scale=stats.sem([0.90, 0.80, 0.85]))
    assert (lora.metric_mean, lora.metric_ci95_low, lora.metric_ci95_high) == pytest.approx((0.85, lo, hi))
    idl = out[out.method == "idlora"].iloc[0]
    assert idl.best_learning_rate == 1e-3 and idl.metric_mean == pytest.approx(0.8533, abs=1e-4)  # > 0.75
    # idlora (500, .853) dominates lora (1000, .85)
    assert dict(zip(out.method, out.pareto, strict=True)) == {"lora": False, "idlora": True, "base": True}
    # minimize flips the choice of learning rate
    low = summarize(pd.DataFrame(rows), "acc", "minimize")
    assert low[low.method == "lora"].iloc[0].best_learning_rate == 1e-3
    md = to_markdown(out)
    assert md.splitlines()[0].startswith("| method | r | k | trainable") and len(md.splitlines()) == 5


def test_summary_of_each_budget_independently():
    rng = np.random.default_rng(1)
    rows = [{"method": m, "r": r, "k": None, "learning_rate": lr, "seed": s, "trainable_params": r * 100,
             "state": "COMPLETE", "v": float(rng.normal())}
            for m, r, lr, s in itertools.product(["lora", "dora"], [2, 4], [0.1, 0.2], range(4))]
    df = pd.DataFrame(rows)
    out = summarize(df, "v", "maximize")
    for row in out.itertuples():
        sub = df[(df.method == row.method) & (df.r == row.r)]
        means = sub.groupby("learning_rate").v.mean()
        assert row.best_learning_rate == means.idxmax()
        assert row.metric_mean == pytest.approx(means.max())


# --- validation picks, test reports ---------------------------------------------------------

# per (method, lr): (validation, test) accuracies over seeds 0..4. Validation prefers lr 1e-2 for
# both methods; test would prefer 1e-3: the two splits disagree about the best learning rate.
SPLITS = {
    ("lora", 1e-3): ([0.70, 0.72, 0.71, 0.69, 0.73], [0.90, 0.88, 0.91, 0.89, 0.92]),
    ("lora", 1e-2): ([0.80, 0.82, 0.79, 0.83, 0.81], [0.70, 0.74, 0.69, 0.75, 0.72]),
    ("idlora", 1e-3): ([0.60, 0.61, 0.59, 0.62, 0.58], [0.95, 0.93, 0.96, 0.94, 0.97]),
    ("idlora", 1e-2): ([0.85, 0.86, 0.84, 0.87, 0.83], [0.81, 0.79, 0.84, 0.78, 0.80]),
}
BUDGET = {"lora": (4, None, 1000), "idlora": (8, 4, 600)}  # r, k, trainable


def split_trials(splits=SPLITS, budget=BUDGET) -> pd.DataFrame:
    rows = []
    for (method, lr), (val, test) in splits.items():
        r, k, trainable = budget[method]
        for seed, (v, t) in enumerate(zip(val, test, strict=True)):
            rows.append({"method": method, "r": r, "k": k, "learning_rate": lr, "seed": seed,
                         "trainable_params": trainable, "state": "COMPLETE", "eval_x_accuracy": v,
                         "test_x_accuracy": t})
    return pd.DataFrame(rows)


def test_metric_name_on_test():
    assert metric_on_test("eval_x_accuracy") == "test_x_accuracy" and metric_on_test("eval_loss") == "test_loss"
    assert metric_on_test("final_train_loss") is None and metric_on_test("value") is None


def test_summary_chooses_on_validation_and_reports_test_at_that_lr():
    trials = split_trials()
    out = summarize(trials, "eval_x_accuracy", "maximize")
    assert list(out.columns) == ["method", "r", "k", "trainable", "best_learning_rate", "metric_mean", "metric_std",
                                 "metric_ci95_low", "metric_ci95_high", "test_mean", "test_std", "test_ci95_low",
                                 "test_ci95_high", "n_seeds", "seeds_missing", "pareto", "pareto_confident"]
    assert out.seeds_missing.isna().all()  # no grid seed count given: nothing to flag against
    for row in out.itertuples():
        sub = trials[trials.method == row.method]
        by_val = sub.groupby("learning_rate").eval_x_accuracy.mean()
        by_test = sub.groupby("learning_rate").test_x_accuracy.mean()
        assert by_val.idxmax() == 1e-2 != by_test.idxmax()  # the splits disagree
        assert row.best_learning_rate == 1e-2
        test = np.array(SPLITS[(row.method, 1e-2)][1])
        lo, hi = stats.t.interval(0.95, len(test) - 1, loc=test.mean(), scale=stats.sem(test))
        assert (row.test_mean, row.test_std, row.test_ci95_low, row.test_ci95_high) == pytest.approx(
            (test.mean(), np.std(test, ddof=1), lo, hi), rel=1e-12)
        val = np.array(SPLITS[(row.method, 1e-2)][0])
        assert (row.metric_mean, row.n_seeds) == (pytest.approx(val.mean()), 5)


def test_summary_test_columns_nan_without_test_metric():
    trials = split_trials()
    for table in (trials.drop(columns="test_x_accuracy"), trials.assign(test_x_accuracy=np.nan)):
        out = summarize(table, "eval_x_accuracy", "maximize")
        assert out[["test_mean", "test_std", "test_ci95_low", "test_ci95_high"]].isna().all().all()
        assert out.metric_mean.notna().all()
    assert summarize(trials, "eval_x_accuracy").equals(summarize(trials, "eval_x_accuracy", "maximize"))
    # a metric without an eval_ prefix has no test counterpart
    assert summarize(trials.rename(columns={"eval_x_accuracy": "acc"}), "acc").test_mean.isna().all()


def brute_force_confident(trainable, mean, low, high, maximize=True):
    keep = []
    for i in range(len(mean)):
        if math.isnan(mean[i]):
            keep.append(False)
            continue
        lo_i, hi_i = (mean[i], mean[i]) if math.isnan(low[i]) else (low[i], high[i])
        beaten = False
        for j in range(len(mean)):
            if j == i or math.isnan(mean[j]) or trainable[j] > trainable[i]:
                continue
            lo_j, hi_j = (mean[j], mean[j]) if math.isnan(low[j]) else (low[j], high[j])
            beaten |= lo_j > hi_i if maximize else hi_j < lo_i
        keep.append(not beaten)
    return keep


@pytest.mark.parametrize("maximize", [True, False])
def test_pareto_confident_mask_against_brute_force(maximize):
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = 8
        trainable = rng.integers(0, 4, n).astype(float)
        mean = rng.integers(0, 6, n) / 5
        half = rng.integers(0, 3, n) / 10
        low, high = mean - half, mean + half
        low[rng.random(n) < 0.2] = np.nan  # one seed: the point [mean, mean]
        high[np.isnan(low)] = np.nan
        mean[rng.random(n) < 0.1] = np.nan
        assert list(pareto_confident_mask(trainable, mean, low, high, maximize)) == brute_force_confident(
            trainable, mean, low, high, maximize)


def test_pareto_confident_mask_hand_made():
    # B costs more and has a lower mean, but its interval overlaps A's: both stay
    assert list(pareto_confident_mask([100, 200], [0.80, 0.78], [0.75, 0.70], [0.85, 0.86])) == [True, True]
    # C's interval lies wholly below the cheaper A's: off; the cheaper point is never beaten by a dearer one
    assert list(pareto_confident_mask([100, 300], [0.80, 0.50], [0.75, 0.45], [0.85, 0.55])) == [True, False]
    assert list(pareto_confident_mask([300, 100], [0.90, 0.50], [0.85, 0.45], [0.95, 0.55])) == [True, True]
    # one seed (NaN interval) is the point: 0.74 < A's low 0.75; a NaN mean is never on it
    assert list(pareto_confident_mask([100, 200, 50], [0.80, 0.74, np.nan], [0.75, np.nan, np.nan],
                                      [0.85, np.nan, np.nan])) == [True, False, False]
    # minimize: C's loss interval lies wholly above A's
    assert list(pareto_confident_mask([100, 300], [1.0, 2.0], [0.9, 1.9], [1.1, 2.1], maximize=False)) == [True, False]


def confident_trials() -> pd.DataFrame:
    # A (100 params), B (200, overlaps A on test), C (300, test wholly below A but validation overlaps)
    spec = {"a": (100, [0.80, 0.82, 0.78, 0.81], [0.80, 0.83, 0.77, 0.80]),
            "b": (200, [0.79, 0.80, 0.78, 0.79], [0.74, 0.86, 0.72, 0.84]),
            "c": (300, [0.60, 0.95, 0.70, 0.90], [0.50, 0.52, 0.49, 0.51])}
    return pd.DataFrame([{"method": m, "r": None, "k": None, "learning_rate": 0.01, "seed": s, "trainable_params": t,
                          "state": "COMPLETE", "eval_x_accuracy": v, "test_x_accuracy": te}
                         for m, (t, val, test) in spec.items() for s, (v, te) in enumerate(zip(val, test, strict=True))])


def test_summary_pareto_confident_uses_the_test_interval():
    trials = confident_trials()
    out = summarize(trials, "eval_x_accuracy", "maximize").set_index("method")
    assert dict(out.pareto) == {"a": True, "b": False, "c": False}  # a dominates b and c on the means
    assert dict(out.pareto_confident) == {"a": True, "b": True, "c": False}
    a, c = out.loc["a"], out.loc["c"]
    assert c.test_ci95_high < a.test_ci95_low and c.metric_ci95_high > a.metric_ci95_low  # test decides
    # without the test metric the validation interval decides: c's overlaps a's, so c stays
    val = summarize(trials.drop(columns="test_x_accuracy"), "eval_x_accuracy", "maximize").set_index("method")
    assert dict(val.pareto_confident) == {"a": True, "b": True, "c": True}


def pair_trials() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for (method, r, k, trainable), lr, seed in itertools.product(
            [("idlora", 8, 4, 600), ("lora", 4, None, 1000), ("lora", 8, None, 2000)], [1e-3, 1e-2], range(5)):
        shift = {("idlora", 1e-2): 0.10, ("lora", 1e-3): 0.08}.get((method, lr), 0.0)
        rows.append({"method": method, "r": r, "k": k, "learning_rate": lr, "seed": seed, "trainable_params": trainable,
                     "state": "COMPLETE", "eval_x_accuracy": 0.7 + shift + rng.normal(0, 0.01),
                     "test_x_accuracy": 0.6 + shift + 0.02 * seed + rng.normal(0, 0.005)})
    rows.append({"method": "lora", "r": 4, "k": None, "learning_rate": 1e-3, "seed": 9, "trainable_params": 1000,
                 "state": "FAIL", "eval_x_accuracy": None, "test_x_accuracy": None})
    return pd.DataFrame(rows)


def test_paired_difference_against_scipy():
    trials = pair_trials()
    res = paired_difference(trials, "eval_x_accuracy", {"method": "idlora", "r": 8}, {"method": "lora", "r": 4})
    # independent: each side's validation-best lr, then the test metric by seed
    sides = []
    for method, r in (("idlora", 8), ("lora", 4)):
        sub = trials[(trials.method == method) & (trials.r == r) & (trials.state == "COMPLETE")]
        lr = sub.groupby("learning_rate").eval_x_accuracy.mean().idxmax()
        sides.append((lr, sub[sub.learning_rate == lr].set_index("seed").test_x_accuracy.sort_index()))
    (lr_a, a), (lr_b, b) = sides
    assert (lr_a, lr_b) == (1e-2, 1e-3) and (res.a_learning_rate, res.b_learning_rate) == (lr_a, lr_b)
    assert (res.a, res.b, res.metric, res.on_test, res.n) == ("idlora:r8:k4", "lora:r4", "test_x_accuracy", True, 5)
    assert res.table.seed.tolist() == list(range(5))
    diff = a.to_numpy() - b.to_numpy()
    assert res.table["diff"].to_numpy() == pytest.approx(diff, rel=1e-12)
    ref = stats.ttest_rel(a.to_numpy(), b.to_numpy())
    lo, hi = ref.confidence_interval(0.95)
    assert (res.mean, res.std, res.ci95_low, res.ci95_high) == pytest.approx(
        (diff.mean(), diff.std(ddof=1), lo, hi), rel=1e-10)
    assert ref.statistic == pytest.approx(res.mean / (res.std / math.sqrt(res.n)))
    expected = "A is better" if lo > 0 else "B is better" if hi < 0 else "no difference"
    assert res.verdict.startswith(expected) and lo > 0  # shift 0.10 vs 0.08 plus noise: A wins here
    # minimize reads the same interval the other way round (and picks other learning rates)
    low = paired_difference(trials, "eval_x_accuracy", {"method": "idlora"}, {"method": "lora", "r": 4}, "minimize")
    assert (low.a_learning_rate, low.b_learning_rate) == (1e-3, 1e-2)
    want = "A is better" if low.ci95_high < 0 else "B is better" if low.ci95_low > 0 else "no difference"
    assert low.verdict.startswith(want)


def test_paired_difference_verdicts_and_fallback():
    base = {"method": "m", "k": None, "learning_rate": 0.01, "state": "COMPLETE"}
    a = [0.80, 0.82, 0.79, 0.81]
    rows = [{**base, "r": 1, "trainable_params": 10, "seed": s, "eval_y": v} for s, v in enumerate(a)]
    rows += [{**base, "r": 2, "trainable_params": 20, "seed": s, "eval_y": v - 0.1} for s, v in enumerate(a)]
    rows += [{**base, "r": 3, "trainable_params": 30, "seed": s, "eval_y": v + d}
             for s, (v, d) in enumerate(zip(a, [0.05, -0.04, 0.03, -0.02], strict=True))]
    trials = pd.DataFrame(rows)
    res = paired_difference(trials, "eval_y", {"method": "m", "r": 1}, {"method": "m", "r": 2})
    assert (res.metric, res.on_test) == ("eval_y", False) and "validation" in res.note and "test_y" in res.note
    assert res.mean == pytest.approx(0.1) and res.verdict.startswith("A is better")
    assert paired_difference(trials, "eval_y", {"r": 2}, {"r": 1}).verdict.startswith("B is better")
    assert paired_difference(trials, "eval_y", {"r": 2}, {"r": 1}, "minimize").verdict.startswith("A is better")
    assert paired_difference(trials, "eval_y", {"r": 1}, {"r": 3}).verdict.startswith("no difference detected at 95 %")
    # one common seed: no interval, no verdict
    lone = trials[(trials.r == 1) | ((trials.r == 2) & (trials.seed == 0))]
    one = paired_difference(lone, "eval_y", {"r": 1}, {"r": 2})
    assert one.n == 1 and math.isnan(one.ci95_low) and "too few paired seeds" in one.verdict


@pytest.mark.parametrize(("a", "b", "match"), [
    ({"method": "lora"}, {"method": "idlora"}, "matches 2 budgets"),
    ({"method": "dora"}, {"method": "idlora"}, "matches no budget"),
    ({"method": "idlora"}, {"method": "idlora", "r": 8}, "same budget"),
    ({"method": "idlora", "steps": 3}, {"method": "lora", "r": 4}, "not a budget key"),
])
def test_paired_difference_bad_selectors(a, b, match):
    with pytest.raises(ValueError, match=match) as err:
        paired_difference(pair_trials(), "eval_x_accuracy", a, b)
    assert "\n" not in str(err.value)
    if "budgets available" in str(err.value):
        assert "idlora:r8:k4, lora:r4, lora:r8" in str(err.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("idlora", {"method": "idlora"}),
    ("lora:r4", {"method": "lora", "r": 4}),
    ("idlora:r8:k4", {"method": "idlora", "r": 8, "k": 4}),
    ("hydralora:k2", {"method": "hydralora", "k": 2}),
    ("head-only", {"method": "head-only"}),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "idlora:8", "idlora:r8:k", "idlora:k4:r8", "lora:rx", ":r4", "lora r4",
                                  "lora:r4:k4:k2"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="expected METHOD, METHOD:rN, METHOD:rN:kM or METHOD:kM") as err:
        parse_budget(text)
    assert repr(text) in str(err.value)


def test_summary_flags_budgets_with_fewer_seeds_than_the_grid():
    # issue 18 #9: a cell lost with its worker left a budget with 1 of 3 seeds, silently averaged
    rows = []
    for method, seeds in (("lora", [0, 1, 2]), ("idlora", [0])):
        for seed in seeds:
            rows.append({"method": method, "r": 8, "k": None, "learning_rate": 1e-3, "seed": seed,
                         "trainable_params": 100 if method == "idlora" else 200, "state": "COMPLETE",
                         "acc": 0.5 + seed / 10})
    rows.append({"method": "idlora", "r": 8, "k": None, "learning_rate": 1e-3, "seed": 1, "trainable_params": 100,
                 "state": "FAIL", "acc": None})
    out = summarize(pd.DataFrame(rows), "acc", "maximize", grid_seeds=3).set_index("method")
    assert out.loc["lora", "n_seeds"] == 3 and out.loc["lora", "seeds_missing"] == 0
    assert out.loc["idlora", "n_seeds"] == 1 and out.loc["idlora", "seeds_missing"] == 2
    assert out.loc["idlora", "metric_mean"] == pytest.approx(0.5)  # the one seed it has
