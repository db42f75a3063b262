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
    pareto_mask,
    summarize,
    t_interval,
    to_markdown,
)


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
