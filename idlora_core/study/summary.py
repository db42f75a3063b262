"""Study tables: trials -> one summary row per budget (method, r, k) with the best learning rate,
mean, standard deviation and 95 % t-interval over seeds, and the Pareto frontier; the paired
comparison of two budgets seed by seed.

Pure pandas + SciPy: the CLI, `compare`, the app and the tests share it. The best learning
rate is chosen on the VALIDATION mean over seeds (`eval_*`); the statistics are those of that
learning rate's seeds, on the validation metric (`metric_*`) and on the held-out test metric
(`test_*`, the same name with `test_` for `eval_`). Nothing is ever chosen on test.

A study with a `cluster_seed` axis (ID-LoRA's k-means seed, crossed with the training seed)
gets `CLUSTER_COLUMNS` too: the spread over training seeds and over cluster seeds, apart
(metric_std / test_std are then over all the budget's runs at its learning rate).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_COLUMNS: list[str] = ["method", "r", "k", "trainable", "best_learning_rate", "metric_mean",
                              "metric_std", "metric_ci95_low", "metric_ci95_high", "test_mean", "test_std",
                              "test_ci95_low", "test_ci95_high", "n_seeds", "seeds_missing", "pareto",
                              "pareto_confident"]
# Added when the trials have a cluster_seed column with values: n_cluster_seeds, and the sample
# std across training seeds of the per-training-seed means (seed_std) and across cluster seeds
# of the per-cluster-seed means (cluster_std), on the validation metric and on test.
CLUSTER_COLUMNS: list[str] = ["n_cluster_seeds", "seed_std", "cluster_std", "test_seed_std",
                              "test_cluster_std"]
GROUP_KEYS: list[str] = ["method", "r", "k"]
EXTRA_KEYS: tuple[str, ...] = ("selection", "rb_splits", "steps")
BUDGET_FORM = ("METHOD, METHOD:rN, METHOD:rN:kM or METHOD:kM (e.g. idlora:r8:k4), any of them "
               "@VARIANT for a grid.variants arm (e.g. idlora@planned)")
_BUDGET_RE = re.compile(r"(?P<method>[A-Za-z0-9_-]+)(?::r(?P<r>\d+))?(?::k(?P<k>\d+))?"
                        r"(?:@(?P<variant>[A-Za-z0-9_-]+))?")
VARIANT_KEY = "variant"  # a grid.variants arm: a budget of its own whenever the study has one


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


def test_metric_name(metric: str) -> str | None:
    """Return the test-split name of a validation metric (`eval_x` -> `test_x`), None otherwise."""
    return "test_" + metric.removeprefix("eval_") if metric.startswith("eval_") else None


test_metric_name.__test__ = False  # a library function, not a pytest test


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


def pareto_confident_mask(trainable: np.ndarray, mean: np.ndarray, low: np.ndarray, high: np.ndarray,
                          maximize: bool = True) -> np.ndarray:
    """Return a boolean mask of the points not beaten with confidence: a point is off only when
    another point with <= trainable has an interval wholly better (maximize: its low > this
    point's high; minimize: its high < this point's low). A NaN interval (one seed) is the point
    [mean, mean]; a NaN mean is never on the mask and beats nothing."""
    trainable = np.asarray(trainable, dtype=float)
    mean = np.asarray(mean, dtype=float)
    low = np.where(np.isnan(np.asarray(low, dtype=float)), mean, np.asarray(low, dtype=float))
    high = np.where(np.isnan(np.asarray(high, dtype=float)), mean, np.asarray(high, dtype=float))
    worst, best = (low, high) if maximize else (-high, -low)  # in "higher is better" units
    finite = np.isfinite(mean)
    keep = np.zeros(len(mean), dtype=bool)
    for i in np.flatnonzero(finite):
        beaten = finite & (np.arange(len(mean)) != i) & (trainable <= trainable[i]) & (worst > best[i])
        keep[i] = not beaten.any()
    return keep


def _group_keys(trials: pd.DataFrame) -> list[str]:
    """(method, r, k) plus any other grid column that varies (selection, rb_splits, steps)."""
    extra = [c for c in EXTRA_KEYS if c in trials and trials[c].dropna().nunique() > 1]
    variant = [VARIANT_KEY] if VARIANT_KEY in trials and trials[VARIANT_KEY].notna().any() else []
    return GROUP_KEYS + extra + variant


def _complete(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The COMPLETE trials with a numeric `metric` (the metric column made float)."""
    done = trials[trials["state"] == "COMPLETE"].copy() if "state" in trials else trials.copy()
    done[metric] = pd.to_numeric(done[metric], errors="coerce")
    return done[done[metric].notna()]


def _budgets(done: pd.DataFrame, keys: list[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """Yield ({key: value or None}, that budget's trials) in order of first appearance; the
    learning_rate of the trials that have none (base) is "-"."""
    filled = done.assign(**{k: done[k].astype(object).where(done[k].notna(), "-") for k in keys},
                         learning_rate=done["learning_rate"].astype(object).where(done["learning_rate"].notna(), "-"))
    for key, group in filled.groupby(keys, sort=False, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        yield {k: (None if v == "-" else v) for k, v in zip(keys, values, strict=True)}, group


def _best_lr(group: pd.DataFrame, metric: str, maximize: bool) -> Any:
    """The learning rate whose mean `metric` over seeds is best (the validation choice)."""
    by_lr = group.groupby("learning_rate", sort=True)[metric].mean()
    return by_lr.idxmax() if maximize else by_lr.idxmin()


def _values(rows: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None or column not in rows:
        return np.array([])
    return pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy(dtype=float)


def between_std(rows: pd.DataFrame, column: str | None, by: str) -> float:
    """Return the sample std (ddof 1), across the values of `by`, of the per-value means of
    `column` (rows without either are left out); NaN with fewer than 2 values of `by`."""
    if column is None or column not in rows or by not in rows:
        return math.nan
    values = pd.DataFrame({"by": rows[by], "v": pd.to_numeric(rows[column], errors="coerce")}).dropna()
    means = values.groupby("by")["v"].mean()
    return float(means.std(ddof=1)) if len(means) > 1 else math.nan


def _cluster_stats(at_best: pd.DataFrame, metric: str, test: str | None) -> dict[str, Any]:
    """The CLUSTER_COLUMNS of one budget's runs at its learning rate."""
    return {"n_cluster_seeds": int(at_best["cluster_seed"].dropna().nunique()),
            "seed_std": between_std(at_best, metric, "seed"),
            "cluster_std": between_std(at_best, metric, "cluster_seed"),
            "test_seed_std": between_std(at_best, test, "seed"),
            "test_cluster_std": between_std(at_best, test, "cluster_seed")}


def _n_seeds(at_best: pd.DataFrame, values) -> int:
    """The distinct training seeds behind a budget's statistics (its runs, without a seed column)."""
    return int(at_best["seed"].nunique()) if "seed" in at_best and at_best["seed"].notna().any() else len(values)


def summarize(trials: pd.DataFrame, metric: str = "value", direction: str = "maximize",
              methods: list[str] | None = None, grid_seeds: int | None = None) -> pd.DataFrame:
    """Return one row per budget (SUMMARY_COLUMNS, plus varying grid columns after k) from a
    trials table with columns method, r, k, learning_rate, seed, trainable_params, state and
    `metric`. Only trials in state COMPLETE count; rows are sorted by method (in the order of
    `methods`, else of first appearance), then trainable.

    best_learning_rate has the best mean of `metric` (validation) over seeds. At that learning
    rate: metric_* are mean, sample std and 95 % t-interval of `metric` over its n_seeds seeds;
    test_* the same of `test_metric_name(metric)` over those seeds' runs that report it (NaN when
    the trials have no such column or it is all NaN). `pareto`: not dominated in (trainable,
    metric_mean). `pareto_confident`: `pareto_confident_mask` on the TEST interval
    (test_ci95_low/high, test_mean) when any budget has a test mean, else on the VALIDATION
    interval (metric_ci95_low/high, metric_mean) — a budget without a test mean is then off it.

    With a cluster_seed column holding values (a `grid.cluster_seed` study) the runs of a
    budget at its learning rate span training seeds x cluster seeds: metric_* and test_* are
    over all of them (n_seeds counts the runs) and `CLUSTER_COLUMNS` are appended: seed_std
    (across training seeds of the means over cluster seeds), cluster_std (across cluster seeds
    of the means over training seeds), their test_ twins and n_cluster_seeds (0, with
    cluster_std NaN, for a method without k-means, e.g. LoRA).

    `seeds_missing`: `grid_seeds` (the grid's seed count) minus the budget's distinct training
    seeds (n_seeds without cluster seeds), so a budget whose
    statistics rest on fewer seeds than the grid asked for is flagged (> 0); NA without grid_seeds."""
    maximize = direction == "maximize"
    done = _complete(trials, metric)
    keys = _group_keys(done)
    clustered = "cluster_seed" in done and done["cluster_seed"].notna().any()
    extra = CLUSTER_COLUMNS if clustered else []
    if done.empty:
        return pd.DataFrame(columns=keys + SUMMARY_COLUMNS[3:])
    test = test_metric_name(metric)
    rows = []
    for budget, group in _budgets(done, keys):
        best_lr = _best_lr(group, metric, maximize)
        at_best = group[group["learning_rate"] == best_lr]
        values = _values(at_best, metric)
        mean, std, low, high = t_interval(values)
        t_mean, t_std, t_low, t_high = t_interval(_values(at_best, test))
        rows.append({**budget, "trainable": int(group["trainable_params"].median()),
                     "best_learning_rate": None if best_lr == "-" else float(best_lr),
                     "metric_mean": mean, "metric_std": std, "metric_ci95_low": low, "metric_ci95_high": high,
                     "test_mean": t_mean, "test_std": t_std, "test_ci95_low": t_low, "test_ci95_high": t_high,
                     "n_seeds": len(values),
                     "seeds_missing": None if grid_seeds is None else max(grid_seeds - _n_seeds(at_best, values), 0),
                     **(_cluster_stats(at_best, metric, test) if clustered else {})})
    table = pd.DataFrame(rows)
    table["seeds_missing"] = table["seeds_missing"].astype("Int64")
    table["pareto"] = pareto_mask(table["trainable"], table["metric_mean"], maximize)
    side = "test" if table["test_mean"].notna().any() else "metric"
    table["pareto_confident"] = pareto_confident_mask(table["trainable"], table[f"{side}_mean"],
                                                      table[f"{side}_ci95_low"], table[f"{side}_ci95_high"], maximize)
    order = {m: i for i, m in enumerate(dict.fromkeys([*(methods or []), *done["method"]]))}
    table = table.sort_values(["method", "trainable"], key=lambda c: c.map(order) if c.name == "method" else c)
    for col in ("r", "k"):
        table[col] = table[col].astype("Int64")
    return table[keys + SUMMARY_COLUMNS[3:] + extra].reset_index(drop=True)


def parse_budget(text: str) -> dict[str, Any]:
    """Return the budget selector of `text`: "idlora:r8:k4" -> {"method": "idlora", "r": 8, "k": 4},
    "idlora@planned" -> {"method": "idlora", "variant": "planned"}; accepts METHOD, METHOD:rN,
    METHOD:rN:kM and METHOD:kM, each optionally followed by @VARIANT (ValueError otherwise)."""
    match = _BUDGET_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"bad budget {text!r}: expected {BUDGET_FORM}")
    return {k: (v if k in ("method", VARIANT_KEY) else int(v))
            for k, v in match.groupdict().items() if v is not None}


def budget_label(budget: dict[str, Any]) -> str:
    """Return the short name of a budget: "idlora:r8:k4", "lora:r4", "base", a variant as
    "@name" ("idlora:k8@planned"), other grid keys as " key=value" ({"method": "lora", "r": 4,
    "steps": 60} -> "lora:r4 steps=60")."""
    def given(key: str) -> bool:
        return budget.get(key) is not None and not pd.isna(budget[key])

    label = str(budget.get("method", "?"))
    label += "".join(f":{key}{int(budget[key])}" for key in ("r", "k") if given(key))
    label += f"@{budget[VARIANT_KEY]}" if given(VARIANT_KEY) else ""
    return label + "".join(f" {key}={budget[key]}" for key in budget
                           if key not in GROUP_KEYS and key != VARIANT_KEY and given(key))


def _same(value: Any, wanted: Any) -> bool:
    if wanted is None or value is None:
        return wanted is None and value is None
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


@dataclass
class PairedDifference:
    """A − B seed by seed on one metric, each budget at its own validation-chosen learning rate.
    `table` has columns seed, a, b, diff (= a − b); the interval is NaN for n < 2."""

    a: str
    b: str
    a_learning_rate: float | None
    b_learning_rate: float | None
    metric: str
    on_test: bool
    note: str
    direction: str
    table: pd.DataFrame
    n: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float
    verdict: str

    def text(self) -> str:
        """Return the comparison as a few lines of plain text (the CLI prints it)."""
        def lr(v: float | None) -> str:
            return "-" if v is None else f"{v:g}"

        lines = [f"A: {self.a} at learning rate {lr(self.a_learning_rate)}",
                 f"B: {self.b} at learning rate {lr(self.b_learning_rate)}",
                 f"metric: {self.metric} ({self.note})",
                 f"paired seeds: {self.n}",
                 f"mean difference A - B: {self.mean:+.4g}, 95 % t-interval [{self.ci95_low:+.4g}, "
                 f"{self.ci95_high:+.4g}] (sample std {self.std:.4g})",
                 f"verdict: {self.verdict}"]
        return "\n".join(lines) + "\n"


def _verdict(a: str, b: str, n: int, low: float, high: float, maximize: bool) -> str:
    if n < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return f"too few paired seeds for an interval (n = {n}): no verdict"
    a_wins = low > 0 if maximize else high < 0
    b_wins = high < 0 if maximize else low > 0
    if a_wins or b_wins:
        winner, loser = (a, b) if a_wins else (b, a)
        side = "above" if low > 0 else "below"
        return (f"{'A' if a_wins else 'B'} is better: {winner} beats {loser} (the 95 % interval of A - B "
                f"lies wholly {side} 0)")
    return "no difference detected at 95 % (the interval of A - B contains 0)"


def paired_difference(trials: pd.DataFrame, metric: str, a: dict[str, Any], b: dict[str, Any],
                      direction: str = "maximize") -> PairedDifference:
    """Compare budgets A and B (selectors such as {"method": "idlora", "r": 8}; a key left out
    matches any value; each must match exactly one budget, else ValueError) seed by seed.

    Each side takes its own best learning rate on the validation `metric` (as `summarize`);
    the COMPLETE trials of the two at those learning rates are inner-joined on `seed` and
    diff = A − B per seed on the test metric (`test_metric_name(metric)`), or on `metric`
    itself when the trials have no such column or it is all NaN (`on_test` False, `note` says
    so). Mean, sample std and 95 % t-interval of the diffs; the verdict names the better side
    when the interval excludes 0 in the direction's sense."""
    maximize = direction == "maximize"
    if metric not in trials:
        raise ValueError(f"the trials have no {metric} column (no finished trial yet?)")
    done = _complete(trials, metric)
    if "seed" not in done:
        raise ValueError("the trials have no seed column: nothing to pair")
    keys = _group_keys(done)
    budgets = list(_budgets(done, keys))
    chosen = [_pick(budgets, sel, name, keys) for name, sel in (("A", a), ("B", b))]
    if chosen[0][0] == chosen[1][0]:
        raise ValueError(f"A and B are the same budget ({budget_label(chosen[0][0])})")
    test = test_metric_name(metric)
    rows = [g[g["learning_rate"] == _best_lr(g, metric, maximize)] for _, g in chosen]
    on_test = test is not None and any(_values(r, test).size for r in rows)
    used = test if on_test else metric
    note = ("held-out test split; learning rates chosen on " + metric if on_test else
            f"validation: the trials have no {test} values" if test else f"validation: {metric} has no test_ counterpart")
    sides = [r.assign(_v=pd.to_numeric(r[used], errors="coerce")).dropna(subset=["_v"])
             .groupby("seed")["_v"].mean() for r in rows]
    table = pd.concat({"a": sides[0], "b": sides[1]}, axis=1, join="inner").sort_index()
    table = table.rename_axis("seed").reset_index()
    table["diff"] = table["a"] - table["b"]
    mean, std, low, high = t_interval(table["diff"].to_numpy(dtype=float))
    labels = [budget_label(budget) for budget, _ in chosen]
    lrs = [None if r["learning_rate"].iloc[0] == "-" else float(r["learning_rate"].iloc[0]) for r in rows]
    return PairedDifference(a=labels[0], b=labels[1], a_learning_rate=lrs[0], b_learning_rate=lrs[1], metric=used,
                            on_test=on_test, note=note, direction=direction, table=table, n=len(table), mean=mean,
                            std=std, ci95_low=low, ci95_high=high,
                            verdict=_verdict(labels[0], labels[1], len(table), low, high, maximize))


def _pick(budgets: list[tuple[dict[str, Any], pd.DataFrame]], selector: dict[str, Any], name: str,
          keys: list[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The one budget matching `selector` (ValueError naming the budgets available otherwise)."""
    available = ", ".join(budget_label(b) for b, _ in budgets) or "none"
    unknown = sorted(set(selector) - set(keys))
    if unknown:
        raise ValueError(f"budget {name}: {', '.join(unknown)} is not a budget key of this study (keys: "
                         f"{', '.join(keys)}); budgets available: {available}")
    if VARIANT_KEY in keys and VARIANT_KEY not in selector:  # no @name: a method cell, not an arm
        selector = {**selector, VARIANT_KEY: None}
    found = [(b, g) for b, g in budgets if all(_same(b.get(k), v) for k, v in selector.items())]
    if len(found) != 1:
        what = "no budget" if not found else f"{len(found)} budgets"
        raise ValueError(f"budget {name} {budget_label(selector)!r} matches {what} with finished trials; "
                         f"budgets available: {available}")
    return found[0]


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
