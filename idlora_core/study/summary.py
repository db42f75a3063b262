"""Study tables: trials -> one summary row per budget (method, r, k) with the best learning rate,
mean, standard deviation and 95 % t-interval over seeds, and the Pareto frontier.

Pure pandas + SciPy: the CLI, `compare`, the app and the tests share it. The best learning
rate is chosen on the mean over seeds; the statistics are those of that learning rate's seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_COLUMNS: list[str] = ["method", "r", "k", "trainable", "best_learning_rate", "metric_mean",
                              "metric_std", "metric_ci95_low", "metric_ci95_high", "n_seeds", "pareto"]
GROUP_KEYS: list[str] = ["method", "r", "k"]


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Return (mean, sample std, CI low, CI high) of `values` with a Student-t interval; std and
    the interval are NaN for fewer than 2 values (no spread can be estimated from one seed)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def pareto_mask(trainable: np.ndarray, metric: np.ndarray, maximize: bool = True) -> np.ndarray:
    """Return a boolean mask of the points not dominated in (fewer trainable parameters, better
    metric): a point is dominated when another has <= trainable and >= metric (maximize) with at
    least one of the two strictly better. NaN metrics are never on the frontier."""
    trainable = np.asarray(trainable, dtype=float)
    score = np.asarray(metric, dtype=float) * (1 if maximize else -1)
    keep = np.zeros(len(score), dtype=bool)
    for i in range(len(score)):
        if not np.isfinite(score[i]):
            continue
        other = np.isfinite(score)
        dominated = other & (trainable <= trainable[i]) & (score >= score[i]) & (
            (trainable < trainable[i]) | (score > score[i]))
        keep[i] = not dominated.any()
    return keep


def _group_keys(trials: pd.DataFrame) -> list[str]:
    """(method, r, k) plus any other grid column that varies (selection, rb_splits, steps)."""
    extra = [c for c in ("selection", "rb_splits", "steps")
             if c in trials and trials[c].dropna().nunique() > 1]
    return GROUP_KEYS + extra


def summarize(trials: pd.DataFrame, metric: str = "value", direction: str = "maximize",
              methods: list[str] | None = None) -> pd.DataFrame:
    """Return one row per budget (SUMMARY_COLUMNS, plus varying grid columns after k) from a
    trials table with columns method, r, k, learning_rate, seed, trainable_params, state and
    `metric`. Only trials in state COMPLETE count; rows are sorted by method (in the order of
    `methods`, else of first appearance), then trainable."""
    maximize = direction == "maximize"
    done = trials[trials["state"] == "COMPLETE"].copy() if "state" in trials else trials.copy()
    done = done[pd.to_numeric(done[metric], errors="coerce").notna()]
    keys = _group_keys(done)
    if done.empty:
        return pd.DataFrame(columns=keys + SUMMARY_COLUMNS[3:])
    rows = []
    filled = done.assign(**{k: done[k].astype(object).where(done[k].notna(), "-") for k in keys},
                         learning_rate=done["learning_rate"].astype(object).where(done["learning_rate"].notna(), "-"))
    for key, group in filled.groupby(keys, sort=False, dropna=False):
        by_lr = group.groupby("learning_rate", sort=True)[metric].mean()
        best_lr = by_lr.idxmax() if maximize else by_lr.idxmin()
        values = group.loc[group["learning_rate"] == best_lr, metric].astype(float).to_numpy()
        mean, std, low, high = t_interval(values)
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row = {k: (None if v == "-" else v) for k, v in row.items()}
        row.update(trainable=int(group["trainable_params"].median()),
                   best_learning_rate=None if best_lr == "-" else float(best_lr),
                   metric_mean=mean, metric_std=std, metric_ci95_low=low, metric_ci95_high=high,
                   n_seeds=len(values))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["pareto"] = pareto_mask(table["trainable"], table["metric_mean"], maximize)
    order = {m: i for i, m in enumerate(dict.fromkeys([*(methods or []), *done["method"]]))}
    table = table.sort_values(["method", "trainable"], key=lambda c: c.map(order) if c.name == "method" else c)
    for col in ("r", "k"):
        table[col] = table[col].astype("Int64")
    return table[keys + SUMMARY_COLUMNS[3:]].reset_index(drop=True)


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """Return `table` as a GitHub Markdown table (floats to `digits` significant digits)."""
    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
