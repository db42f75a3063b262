"""The Studies page's trade-off figure plots the held-out test metric when the runs report it."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.figures import study_lr_figure as lr_figure
from app.figures import study_tradeoff_figure as tradeoff_figure


def _summary(with_test: bool) -> pd.DataFrame:
    rows = [("idlora", 8, 38018, 0.76, 0.74, 0.78, 0.73, 0.71, 0.75),
            ("lora", 4, 37634, 0.75, 0.73, 0.77, 0.74, 0.72, 0.76),
            ("head-only", None, 770, 0.63, 0.61, 0.65, 0.61, 0.60, 0.62)]
    table = pd.DataFrame(rows, columns=["method", "r", "trainable", "metric_mean", "metric_ci95_low",
                                        "metric_ci95_high", "test_mean", "test_ci95_low", "test_ci95_high"])
    if not with_test:
        table[["test_mean", "test_ci95_low", "test_ci95_high"]] = math.nan
    return table.assign(k=None, pareto=True, best_learning_rate=0.01, n_seeds=5)


@pytest.mark.parametrize("with_test", [True, False])
def test_tradeoff_plots_test_means_and_intervals_when_present(with_test):
    summary = _summary(with_test)
    fig = tradeoff_figure(summary, "eval_rotten_tomatoes_accuracy")
    points = {t.name: t for t in fig.data if t.name != "Pareto frontier"}
    prefix = "test" if with_test else "metric"
    for _, row in summary.iterrows():
        trace = points[row["method"]]
        assert list(trace.y) == [row[f"{prefix}_mean"]]
        assert trace.error_y.array[0] == pytest.approx(row[f"{prefix}_ci95_high"] - row[f"{prefix}_mean"])
    title = fig.layout.yaxis.title.text
    assert title.startswith("test_rotten_tomatoes_accuracy (held-out test") == with_test
    # the frontier joins the plotted means (test: LoRA r=4 beats ID-LoRA with fewer parameters)
    front = next(t for t in fig.data if t.name == "Pareto frontier")
    assert list(front.y) == ([0.61, 0.74] if with_test else [0.63, 0.75, 0.76])


def test_score_intervals_stay_within_0_and_1_and_lr_ticks_read_as_values():
    summary = _summary(True)
    summary.loc[0, ["test_ci95_low", "test_ci95_high"]] = [-0.23, 1.46]  # 2 seeds can do this
    fig = tradeoff_figure(summary, "eval_x_accuracy")
    idlora = next(t for t in fig.data if t.name == "idlora")
    assert idlora.error_y.array[0] == pytest.approx(1 - 0.73)
    assert idlora.error_y.arrayminus[0] == pytest.approx(0.73)
    trials = pd.DataFrame({"state": "COMPLETE", "method": "lora", "r": 4, "k": None,
                           "learning_rate": [0.003, 0.003, 0.03, 0.03], "eval_x_accuracy": [0.7, 0.8, 0.6, 0.5]})
    fig = lr_figure(trials, "eval_x_accuracy")
    assert list(fig.layout.xaxis.ticktext) == ["0.003", "0.03"]
    assert list(fig.data[0].y) == pytest.approx([0.75, 0.55])
