"""The per-layer budget planner: which layers to adapt with ID-LoRA, and each one's (k, r),
under a trainable-parameter budget.

Input: one `LayerCurve` per candidate layer (its shape and the cluster-wise ID relative
Frobenius error at every scanned (k, r)); `curves_from_table` reads them from a sweep / scan
table (columns layer, m, n, k, r, rel_fro_error, feasible, selection). Objective, minimised
(docs/THEORY.md, "The budget planner"):

    J = sum_l  w_l * e_l,   w_l = m_l n_l / sum_j m_j n_j,
    e_l = rel_fro_error of layer l at its (k, r)   (1.0 when the layer is not adapted)

subject to sum_l trainable_params("idlora", m_l, n_l, r_l, k=k_l) <= budget (the formulas of
`adapters/budget.py`). This is a multiple-choice knapsack. `exact_plan` solves it exactly by
dynamic programming over the budget in units of the gcd of the layers' costs; `greedy_plan`
takes marginal-gain steps along each layer's convex hull and states a proven lower bound on
the optimum (the LP relaxation), so its gap is known; `brute_force_plan` enumerates (tests,
3-4 layers); `plan_budget` is exact whenever the DP table is small (every scan of the
embedded models), else the better of greedy and a DP with costs rounded up (never over
budget, gap stated); `plan_curve` plans many budgets from one DP table. `uniform_plan` is the
reference: one (k, r) on every layer.
Deterministic; no torch. The YAML side is `plan_targets` (one TargetConfig per layer).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np

from idlora_core.adapters.budget import trainable_params
from idlora_core.config import TargetConfig
from idlora_core.layers import block_index

NOT_ADAPTED_ERROR = 1.0  # a layer left alone: no update in its row space (see the module)
MAX_DP_CELLS = 20_000_000  # layers x budget cells of the exact DP (int16 choices: 40 MB)
MAX_BRUTE_FORCE = 2_000_000  # plans brute_force_plan enumerates at most
BUDGET_EXAMPLE = "e.g. 40000 (parameters) or 0.5xlora@8 (half of LoRA's count at r = 8)"


@dataclass(frozen=True)
class LayerCurve:
    """One candidate layer: name, shape (m = out_features, n = in_features) and the relative
    Frobenius error of its cluster-wise ID at each scanned (k, r)."""

    name: str
    m: int
    n: int
    errors: Mapping[tuple[int, int], float] = field(hash=False)

    def __post_init__(self) -> None:
        for what, value in (("m", self.m), ("n", self.n)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"layer {self.name!r}: {what} must be a positive integer, got {value!r}")
        for (k, r), err in self.errors.items():
            if min(k, r) < 1:
                raise ValueError(f"layer {self.name!r}: k and r must be >= 1, got (k={k}, r={r})")
            if not (math.isfinite(err) and err >= 0):
                raise ValueError(f"layer {self.name!r}: error at (k={k}, r={r}) must be finite "
                                 f"and >= 0, got {err!r}")

    @property
    def size(self) -> int:
        """Elements of the weight, m*n: the layer's share of the objective."""
        return self.m * self.n


@dataclass(frozen=True)
class Option:
    """One choice for one layer: (k, r), its trainable parameters and error; k = r = 0 means
    "not adapted" (0 parameters, error NOT_ADAPTED_ERROR)."""

    k: int
    r: int
    params: int
    error: float

    @property
    def choice(self) -> tuple[int, int] | None:
        """(k, r), or None when the layer is not adapted."""
        return (self.k, self.r) if self.r else None


SKIP = Option(0, 0, 0, NOT_ADAPTED_ERROR)


@dataclass(frozen=True)
class Plan:
    """A per-layer allocation. `choices[layer]` is (k, r) or None (not adapted), in the order of
    the curves; `params` its trainable parameters (budget formulas), `objective` J (module
    docstring); `lower_bound` a proven lower bound on the optimum at this budget (equal to
    `objective` when the plan is exact); `method` the algorithm that made it."""

    choices: dict[str, tuple[int, int] | None]
    errors: dict[str, float]
    params: int
    objective: float
    budget: int
    method: str
    lower_bound: float

    @property
    def gap_bound(self) -> float:
        """objective - lower_bound: how far above the optimum this plan can be (0 when exact)."""
        return max(0.0, self.objective - self.lower_bound)

    @property
    def adapted(self) -> dict[str, tuple[int, int]]:
        """The adapted layers and their (k, r), in order."""
        return {name: c for name, c in self.choices.items() if c is not None}


@dataclass(frozen=True)
class Budget:
    """A trainable-parameter budget: an absolute `count`, or `fraction` x LoRA's count at rank
    `lora_r` on the same candidate layers (`parse_budget` reads both from text)."""

    count: int | None = None
    fraction: Fraction | None = None
    lora_r: int | None = None

    def params(self, curves: Sequence[LayerCurve]) -> int:
        """Return the budget in trainable parameters for these candidate layers (rounded down)."""
        if self.count is not None:
            return self.count
        lora = sum(trainable_params("lora", c.m, c.n, self.lora_r) for c in curves)
        return math.floor(self.fraction * lora)

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{float(self.fraction):g}xlora@{self.lora_r}"


_LORA_BUDGET = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)xlora@([0-9]+)$", re.IGNORECASE)


def parse_budget(text: str | int) -> Budget:
    """Return the Budget of `text`: a parameter count ("40000", "40_000") or FRACTIONxlora@R
    ("0.5xlora@8": half of LoRA's trainable parameters at rank 8 on the candidate layers).
    Raises ValueError (one line, with an example) for anything else."""
    if isinstance(text, bool):
        raise ValueError(f"budget {text!r} is not a number; {BUDGET_EXAMPLE}")
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"budget must be at least 1 parameter, got {text}; {BUDGET_EXAMPLE}")
        return Budget(count=text)
    raw = str(text)
    compact = raw.strip().replace(" ", "")
    if re.fullmatch(r"[0-9][0-9_,]*", compact):
        count = int(compact.replace("_", "").replace(",", ""))
        if count < 1:
            raise ValueError(f"budget must be at least 1 parameter, got {raw!r}; {BUDGET_EXAMPLE}")
        return Budget(count=count)
    match = _LORA_BUDGET.match(compact)
    if not match:
        raise ValueError(f"budget {raw[:60]!r} is not a parameter count or FRACTIONxlora@R; "
                         f"{BUDGET_EXAMPLE}")
    fraction, r = Fraction(match.group(1)), int(match.group(2))
    if fraction <= 0 or fraction > 1000:
        raise ValueError(f"budget fraction must be in (0, 1000], got {match.group(1)} in {raw!r}; "
                         f"{BUDGET_EXAMPLE}")
    if not 1 <= r <= 65_536:
        raise ValueError(f"budget rank must be in 1..65536, got {r} in {raw!r}; {BUDGET_EXAMPLE}")
    return Budget(fraction=fraction, lora_r=r)


def curves_from_table(table: Any, selection: str | None = None) -> list[LayerCurve]:
    """Return one LayerCurve per layer of a sweep / scan table (a pandas DataFrame with columns
    layer, m, n, k, r, rel_fro_error; feasible and selection when present), in table order.

    selection: keep only that skeleton-row selection's rows; None needs the table to hold one.
    Infeasible rows and rows without an error are left out; an older table's `strategy` column
    is read as `selection`. Raises ValueError naming what is missing."""
    missing = [c for c in ("layer", "m", "n", "k", "r", "rel_fro_error") if c not in table.columns]
    if missing:
        raise ValueError(f"not a sweep table: missing columns {', '.join(missing)}")
    if "strategy" in table.columns and "selection" not in table.columns:  # a table of before the
        table = table.rename(columns={"strategy": "selection"})  # one vocabulary (VOCABULARY.md)
    if "selection" in table.columns:
        present = list(dict.fromkeys(table["selection"]))
        if selection is None and len(present) > 1:
            raise ValueError(f"the table holds selections {', '.join(present)}: name one")
        if selection is not None:
            if selection not in present:
                raise ValueError(f"the table holds no {selection!r} rows (it has {', '.join(present)})")
            table = table[table["selection"] == selection]
    curves = []
    for name, rows in table.groupby("layer", sort=False):
        m, n = int(rows["m"].iloc[0]), int(rows["n"].iloc[0])
        if "feasible" in rows.columns:
            rows = rows[rows["feasible"].astype(bool)]
        rows = rows[np.isfinite(rows["rel_fro_error"].to_numpy(dtype=float))]
        errors = {(int(k), int(r)): float(e)
                  for k, r, e in zip(rows["k"], rows["r"], rows["rel_fro_error"], strict=True)}
        curves.append(LayerCurve(str(name), m, n, errors))
    if not curves:
        raise ValueError("the table has no layers")
    return curves


def layer_options(curve: LayerCurve, *, prune: bool = True) -> list[Option]:
    """Return the layer's choices, "not adapted" first, then by (params, error, r, k).

    Only (k, r) that ID-LoRA can build (k*r <= m, r <= n) count. prune: drop dominated ones
    (no fewer parameters and no lower error than a cheaper choice): no optimum needs them."""
    opts = sorted(
        (Option(k, r, trainable_params("idlora", curve.m, curve.n, r, k=k), float(err))
         for (k, r), err in curve.errors.items() if k * r <= curve.m and r <= curve.n),
        key=lambda o: (o.params, o.error, o.r, o.k),
    )
    if not prune:
        return [SKIP, *opts]
    kept = [SKIP]
    for o in opts:
        if o.error < kept[-1].error and o.params > kept[-1].params:
            kept.append(o)
    return kept


def _weights(curves: Sequence[LayerCurve]) -> list[float]:
    total = sum(c.size for c in curves)
    return [c.size / total for c in curves]


def _check_curves(curves: Sequence[LayerCurve]) -> list[LayerCurve]:
    curves = list(curves)
    if not curves:
        raise ValueError("no candidate layers to plan")
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"layer {dup!r} appears twice among the candidates")
    return curves


def _check_budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a parameter count >= 0, got {budget!r}")
    return int(budget)


def objective(curves: Sequence[LayerCurve], choices: Mapping[str, tuple[int, int] | None]) -> float:
    """Return J for a per-layer assignment {layer: (k, r) or None} (a layer not named: None)."""
    curves = _check_curves(curves)
    terms = []
    for w, c in zip(_weights(curves), curves, strict=True):
        choice = choices.get(c.name)
        terms.append(w * (NOT_ADAPTED_ERROR if choice is None else c.errors[tuple(choice)]))
    return math.fsum(terms)


def _plan(curves: Sequence[LayerCurve], picks: Sequence[Option], budget: int, method: str,
          lower_bound: float | None = None) -> Plan:
    choices = {c.name: o.choice for c, o in zip(curves, picks, strict=True)}
    value = objective(curves, choices)
    return Plan(choices=choices, errors={c.name: o.error for c, o in zip(curves, picks, strict=True)},
                params=sum(o.params for o in picks), objective=value, budget=budget, method=method,
                lower_bound=value if lower_bound is None else min(lower_bound, value))


def brute_force_plan(curves: Sequence[LayerCurve], budget: int) -> Plan:
    """Return an optimal plan by enumerating every combination of every layer's choices
    (unpruned): the check of the other algorithms, for a few layers. Ties: fewer parameters,
    then the first in enumeration order. Raises ValueError past MAX_BRUTE_FORCE plans."""
    curves, budget = _check_curves(curves), _check_budget(budget)
    per_layer = [layer_options(c, prune=False) for c in curves]
    count = math.prod(len(o) for o in per_layer)
    if count > MAX_BRUTE_FORCE:
        raise ValueError(f"{count:,} plans to enumerate (at most {MAX_BRUTE_FORCE:,}): use exact_plan")
    weights = _weights(curves)
    best, best_key = None, None
    for picks in itertools.product(*per_layer):
        params = sum(o.params for o in picks)
        if params > budget:
            continue
        key = (math.fsum(w * o.error for w, o in zip(weights, picks, strict=True)), params)
        if best_key is None or key < best_key:
            best, best_key = picks, key
    return _plan(curves, best, budget, "brute force")


def _dp(curves: Sequence[LayerCurve], budget: int, unit: int,
        budgets: Sequence[int] | None = None) -> list[list[Option]]:
    # Multiple-choice knapsack over cells of `unit` parameters; costs rounded UP to whole cells,
    # so a plan that fits the cells fits the budget (exact when unit divides every cost).
    # dp[c] = least objective of the layers so far with at most c cells.  (C,)
    # One table serves every budget up to `budget`: returns the picks for each of `budgets`.
    cells = budget // unit + 1
    options = [layer_options(c) for c in curves]
    dp = np.zeros(cells)
    widest = max(len(o) for o in options)
    pick = np.zeros((len(curves), cells), dtype=np.int16 if widest < 2**15 else np.int32)  # (L, C)
    for i, (w, opts) in enumerate(zip(_weights(curves), options, strict=True)):
        new = np.full(cells, np.inf)
        for j, o in enumerate(opts):
            u = -(-o.params // unit)
            if u >= cells:
                break  # options are sorted by cost
            cand = dp[: cells - u] + w * o.error
            better = cand < new[u:]
            new[u:][better] = cand[better]
            pick[i, u:][better] = j
        dp = new
    out = []
    for end in [budget] if budgets is None else budgets:
        top = end // unit
        # the fewest cells reaching the optimum (ties within rounding: fewer parameters)
        c = int(np.flatnonzero(dp[: top + 1] <= dp[top] + 1e-12)[0])
        picks = []
        for i in range(len(curves) - 1, -1, -1):
            o = options[i][pick[i, c]]
            picks.append(o)
            c -= -(-o.params // unit)
        out.append(picks[::-1])
    return out


def exact_plan(curves: Sequence[LayerCurve], budget: int, *, max_cells: int = MAX_DP_CELLS) -> Plan:
    """Return an optimal plan (dynamic programming over the budget in units of the gcd of every
    choice's cost: exact, no rounding). Raises ValueError when layers x cells exceeds
    `max_cells` (then use `plan_budget`, which states its gap)."""
    curves, budget = _check_curves(curves), _check_budget(budget)
    unit = _gcd_unit(curves)
    cells = budget // unit + 1
    if len(curves) * cells > max_cells:
        raise ValueError(f"the exact DP needs {len(curves)} x {cells:,} cells (at most "
                         f"{max_cells:,}): use plan_budget or greedy_plan")
    return _plan(curves, _dp(curves, budget, unit)[0], budget, "exact (DP)")


def _gcd_unit(curves: Sequence[LayerCurve]) -> int:
    costs = [o.params for c in curves for o in layer_options(c) if o.params]
    return math.gcd(*costs) if costs else 1


def _hull(opts: Sequence[Option], weight: float) -> list[Option]:
    # Lower convex hull of (params, weight*error) from "not adapted": the steps greedy takes.
    hull: list[Option] = []
    for o in opts:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a -> o
            if (b.error - a.error) * (o.params - a.params) >= (o.error - a.error) * (b.params - a.params):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def greedy_plan(curves: Sequence[LayerCurve], budget: int) -> Plan:
    """Return the marginal-gain plan: every layer starts unadapted and moves along the lower
    convex hull of its (parameters, weighted error) choices; steps are taken in decreasing
    objective decrease per parameter while they fit (a step that does not fit ends that layer's
    moves; the others go on). `lower_bound` is the LP relaxation's optimum (the first step that
    did not fit, taken fractionally), a proven lower bound on the true optimum, so `gap_bound`
    bounds how far greedy is from optimal (0 when every step fitted)."""
    curves, budget = _check_curves(curves), _check_budget(budget)
    weights = _weights(curves)
    hulls = [_hull(layer_options(c), w) for c, w in zip(curves, weights, strict=True)]
    steps = sorted(
        ((w * (h[s - 1].error - h[s].error) / (h[s].params - h[s - 1].params), i, s)
         for i, (h, w) in enumerate(zip(hulls, weights, strict=True)) for s in range(1, len(h))),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    at = [0] * len(curves)
    blocked: set[int] = set()
    left = budget
    bound = None
    for _, i, s in steps:
        if i in blocked:
            continue
        a, b = hulls[i][s - 1], hulls[i][s]
        cost = b.params - a.params
        if cost <= left:
            at[i], left = s, left - cost
            continue
        blocked.add(i)
        if bound is None:  # the LP optimum: everything before this step, and a fraction of it
            now = math.fsum(w * h[j].error for w, h, j in zip(weights, hulls, at, strict=True))
            bound = now - weights[i] * (a.error - b.error) * left / cost
    return _plan(curves, [h[j] for h, j in zip(hulls, at, strict=True)], budget, "greedy", bound)


def plan_budget(curves: Sequence[LayerCurve], budget: int, *, max_cells: int = MAX_DP_CELLS) -> Plan:
    """Return the plan to use: `exact_plan` when its table fits `max_cells`, else the better of
    `greedy_plan` and a DP with costs rounded up to coarser cells (never over budget), with the
    greedy LP bound as `lower_bound` (so `gap_bound` says how close it is)."""
    curves, budget = _check_curves(curves), _check_budget(budget)
    unit = _gcd_unit(curves)
    if len(curves) * (budget // unit + 1) <= max_cells:
        return exact_plan(curves, budget, max_cells=max_cells)
    greedy = greedy_plan(curves, budget)
    coarse = max(unit, -(-budget * len(curves) // max(1, max_cells - len(curves))))
    rounded = _plan(curves, _dp(curves, budget, coarse)[0], budget, "rounded DP", greedy.lower_bound)
    best = min((greedy, rounded), key=lambda p: (p.objective, p.params))
    return replace(best, lower_bound=min(greedy.lower_bound, best.objective))


def plan_curve(curves: Sequence[LayerCurve], budgets: Sequence[int], *,
               max_cells: int = MAX_DP_CELLS) -> list[Plan]:
    """Return `plan_budget` for each of `budgets`, from ONE exact DP table when the largest
    budget's fits `max_cells` (every budget below it is read off the same table)."""
    curves = _check_curves(curves)
    budgets = [_check_budget(b) for b in budgets]
    unit, top = _gcd_unit(curves), max(budgets, default=0)
    if not budgets or len(curves) * (top // unit + 1) > max_cells:
        return [plan_budget(curves, b, max_cells=max_cells) for b in budgets]
    return [_plan(curves, picks, b, "exact (DP)")
            for b, picks in zip(budgets, _dp(curves, top, unit, budgets), strict=True)]


def uniform_plan(curves: Sequence[LayerCurve], budget: int) -> Plan:
    """Return the reference: the same (k, r) on every candidate layer, the one of least objective
    that fits the budget (ties: fewer parameters), or no layer adapted when none fits. Only
    (k, r) scanned and buildable on every layer compete."""
    curves, budget = _check_curves(curves), _check_budget(budget)
    options = [{(o.k, o.r): o for o in layer_options(c, prune=False)[1:]} for c in curves]
    common = sorted(set.intersection(*(set(o) for o in options)), key=lambda kr: (kr[1], kr[0]))
    weights = _weights(curves)
    best, best_key = [SKIP] * len(curves), (NOT_ADAPTED_ERROR, 0)
    for kr in common:
        picks = [o[kr] for o in options]
        params = sum(o.params for o in picks)
        key = (math.fsum(w * o.error for w, o in zip(weights, picks, strict=True)), params)
        if params <= budget and key < best_key:
            best, best_key = picks, key
    return _plan(curves, best, budget, "uniform")


def plan_targets(plan: Plan, *, selection: str = "id", alpha: float = 16.0,
                 normalize_rows: bool = False) -> list[TargetConfig]:
    """Return one ID-LoRA TargetConfig per adapted layer of `plan`, in order: the full layer
    name as `pattern` (it matches that layer only), its block in `layers`, its own k and r."""
    targets = []
    for name, (k, r) in plan.adapted.items():
        block = block_index(name)
        targets.append(TargetConfig(pattern=name, layers=None if block is None else [block], r=r,
                                    k=k, selection=selection, alpha=alpha,
                                    normalize_rows=normalize_rows))
    return targets


def plan_params(curves: Iterable[LayerCurve], choices: Mapping[str, tuple[int, int] | None]) -> int:
    """Return the trainable parameters of an assignment by the budget formulas (idlora m*r + k*r)."""
    return sum(trainable_params("idlora", c.m, c.n, choices[c.name][1], k=choices[c.name][0])
               for c in curves if choices.get(c.name) is not None)
