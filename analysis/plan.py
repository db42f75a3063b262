"""The budget planner on a model: scan the candidate layers, plan (k, r) per layer under a
trainable-parameter budget (`idlora_core.planner`), write the run config.

    python -m analysis.plan --model minilm --budget 0.5xlora@8 --targets query,value --out plan.yaml
    python -m idlora_core.train plan.yaml          # or: accelerate launch ... -m idlora_core.train plan.yaml

The scan is the sweep of `analysis.sweep` on each candidate layer (one weight read at a time,
through the cache: a second plan of the same model costs no decomposition). The YAML carries
one ID-LoRA target per adapted layer (its full name, its block, its own k and r) and, by
default, the very skeleton rows whose error the plan minimised (`adapter.skeletons`), so
training does not cluster again. DataFrame-level helpers for the Budget planner page:
`planner_curves`, `budget_curve`, `plan_cells`. No Streamlit here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from analysis.sweep import SweepSpec, add_retired_flag, parse_grid, sweep_layer, tidy_table
from idlora_core.adapters.budget import trainable_params
from idlora_core.config import (
    AdapterConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    load_config,
    save_config,
)
from idlora_core.layers import block_index, layer_kind
from idlora_core.linalg.validation import SELECTIONS
from idlora_core.planner import (
    LayerCurve,
    Plan,
    curves_from_table,
    parse_budget,
    plan_budget,
    plan_curve,
    plan_targets,
    uniform_plan,
)
from idlora_core.weights import WeightReader, open_weights

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
DEFAULT_RANKS: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
DEFAULT_KINDS: tuple[str, ...] = ("q", "v")  # no --targets: the query and value projections
DEFAULT_TASK = {"encoder": "rotten_tomatoes", "causal-lm": "arithmetic"}
ScanProgress = Callable[[int, int, str, bool], None]  # (done, total, layer, from_cache)


def candidate_layers(weights: WeightReader, targets: Sequence[str] | None = None) -> list[str]:
    """Return the linear layers whose name is, or ends with "." + , one of `targets` (module-name
    suffixes such as "query" or "attention.self.query"), in module order; None: the q and v
    projections. Raises ValueError naming a suffix that matches nothing (with the model's own)."""
    names = list(weights.linear)
    if targets is None:
        chosen = [n for n in names if layer_kind(n) in DEFAULT_KINDS]
        if not chosen:
            raise ValueError("the model has no query / value projections: name the layers with "
                             "--targets, e.g. --targets dense")
        return chosen
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise ValueError("--targets names no layer; e.g. --targets query,value")
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            known = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ValueError(f"target {t!r} matches no linear layer; this model's layer suffixes: "
                             f"{', '.join(known[:12])}")
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def scan_layers(weights: WeightReader, layers: Sequence[str], spec: SweepSpec,
                progress: ScanProgress | None = None) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """Return (sweep table of `layers`, {layer: clusterings}) — each weight read alone, swept
    through the cache (`analysis.sweep.sweep_layer`, the scan's own unit of work) and released;
    clusterings hold the skeleton rows behind every row. progress(done, total, layer, cached)."""
    found = _scan(weights, layers, spec, progress, lookup_only=False)
    assert found is not None  # computing never comes back empty-handed
    return found


def stored_scan(weights: WeightReader, layers: Sequence[str],
                spec: SweepSpec) -> tuple[pd.DataFrame, dict[str, list[dict]]] | None:
    """Return what `scan_layers` returns when every layer is in the cache, else None; computes
    nothing (one cache lookup per layer)."""
    return _scan(weights, layers, spec, None, lookup_only=True)


def _scan(weights: WeightReader, layers: Sequence[str], spec: SweepSpec, progress: ScanProgress | None,
          lookup_only: bool) -> tuple[pd.DataFrame, dict[str, list[dict]]] | None:
    tables, clusterings = [], {}
    for done, name in enumerate(layers, 1):
        result = sweep_layer(weights.weight(name), spec, layer=name, cache=True, lookup_only=lookup_only)
        if result is None:
            return None
        tables.append(result.table)
        clusterings[name] = result.clusterings
        if progress is not None:
            progress(done, len(layers), name, result.from_cache)
    return tidy_table(pd.concat(tables, ignore_index=True)), clusterings


def planner_curves(table: pd.DataFrame, selection: str = "id") -> list[LayerCurve]:
    """Return the planner's per-layer error curves of one selection from a sweep / scan table."""
    return curves_from_table(table, selection)


def make_plan(curves: Sequence[LayerCurve], budget: str | int) -> Plan:
    """Return the plan for a budget given as text ("0.5xlora@8", "40000") or a count."""
    return plan_budget(curves, parse_budget(budget).params(curves))


def lora_params(curves: Sequence[LayerCurve], r: int) -> int:
    """Return LoRA's trainable parameters at rank r on every candidate layer (the budget unit)."""
    return sum(trainable_params("lora", c.m, c.n, r) for c in curves)


def budget_curve(curves: Sequence[LayerCurve], budgets: Sequence[int]) -> pd.DataFrame:
    """Return one row per budget: the plan's and the best uniform (k, r)'s objective and
    parameters. Columns: budget, plan_objective, plan_params, plan_layers, gap_bound, method,
    uniform_objective, uniform_params, uniform_k, uniform_r (0 when no uniform choice fits)."""
    rows = []
    for budget, plan in zip(budgets, plan_curve(curves, [int(b) for b in budgets]), strict=True):
        uniform = uniform_plan(curves, int(budget))
        k, r = next(iter(uniform.adapted.values()), (0, 0))
        rows.append({"budget": int(budget), "plan_objective": plan.objective,
                     "plan_params": plan.params, "plan_layers": len(plan.adapted),
                     "gap_bound": plan.gap_bound, "method": plan.method,
                     "uniform_objective": uniform.objective, "uniform_params": uniform.params,
                     "uniform_k": k, "uniform_r": r})
    return pd.DataFrame(rows)


def plan_cells(plan: Plan, curves: Sequence[LayerCurve]) -> pd.DataFrame:
    """Return one row per candidate layer: layer, block (-1 outside the blocks), type, m, n,
    k, r (0 when not adapted), params, error (relative, 1.0 when not adapted), label."""
    rows = []
    for c in curves:
        k, r = plan.choices[c.name] or (0, 0)
        block = block_index(c.name)
        rows.append({"layer": c.name, "block": -1 if block is None else block,
                     "type": layer_kind(c.name), "m": c.m, "n": c.n, "k": k, "r": r,
                     "params": trainable_params("idlora", c.m, c.n, r, k=k) if r else 0,
                     "error": plan.errors[c.name],
                     "label": f"r={r} k={k}" if r else "not adapted"})
    return pd.DataFrame(rows)


def plan_skeletons(plan: Plan, clusterings: dict[str, list[dict]], selection: str) -> dict[str, list[list[int]]]:
    """Return {layer: k lists of r row indices}: the skeleton rows the scan measured for each
    adapted layer's (k, r, selection)."""
    out = {}
    for name, (k, r) in plan.adapted.items():
        for clustering in clusterings[name]:
            if clustering["k"] != k:
                continue
            for sel in clustering["selections"]:
                if sel["r"] == r and sel["selection"] == selection:
                    out[name] = [[int(i) for i in rows] for rows in sel["skeleton"]]
        if name not in out:
            raise ValueError(f"the scan holds no skeleton for {name} at k={k}, r={r}, {selection}")
    return out


def plan_config(plan: Plan, model: str, *, model_kind: str = "encoder", base: RunConfig | None = None,
                selection: str = "id", seed: int = 0, normalize_rows: bool = False,
                skeletons: dict[str, list[list[int]]] | None = None,
                output_dir: str | None = None) -> RunConfig:
    """Return the run config of `plan`: `base`'s model head, tasks and training (default: the
    model kind's default task, the schema's training defaults at ID-LoRA's learning rate), with
    the plan's targets, the scan's seed and skeleton rows. Raises ValueError when the plan
    adapts no layer (the budget is below the cheapest adapter)."""
    if not plan.adapted:
        raise ValueError(f"the budget ({plan.budget:,} parameters) is below the cheapest adapter of "
                         "the candidate layers: raise it")
    from idlora_core.study.defaults import default_learning_rate

    adapter = AdapterConfig(method="idlora", seed=seed, skeletons=skeletons or None,
                            targets=plan_targets(plan, selection=selection,
                                                 normalize_rows=normalize_rows))
    if base is None:
        base = RunConfig(tasks=[TaskConfig(name=DEFAULT_TASK.get(model_kind, "arithmetic"))],
                         train=TrainConfig(learning_rate=default_learning_rate("idlora")))
    model_config = base.model.model_copy(update={"name": model})
    return base.model_copy(update={
        "model": model_config, "adapter": adapter,
        "output_dir": output_dir or (base.output_dir if base.output_dir != "runs/default"
                                     else "runs/budget-plan")})


def plan_summary(plan: Plan, curves: Sequence[LayerCurve]) -> str:
    """Return a few lines describing the plan (for the command line)."""
    lines = [f"{len(plan.adapted)} of {len(curves)} layers adapted, {plan.params:,} trainable "
             f"parameters (budget {plan.budget:,}); objective {plan.objective:.4f} ({plan.method}"
             + (f", at most {plan.gap_bound:.2g} above the optimum)" if plan.gap_bound else ", optimal)")]
    for name, (k, r) in plan.adapted.items():
        lines.append(f"  {name}: k={k} r={r} error {plan.errors[name]:.3f}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"error: {message} (see python -m analysis.plan --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m analysis.plan`."""
    parser = _Parser(
        prog="python -m analysis.plan",
        description="Choose, per candidate layer, whether to adapt it with ID-LoRA and its (k, r), "
        "minimising the size-weighted cluster-wise ID error under a trainable-parameter budget; "
        "write the run config (YAML) that python -m idlora_core.train reads.")
    parser.add_argument("--model", default="minilm",
                        help="minilm (default), smollm2-135m, a local model folder or .gguf file")
    parser.add_argument("--budget", default="0.5xlora@8",
                        help="trainable parameters: a count (40000) or FRACTIONxlora@R, a fraction "
                        "of LoRA's count at rank R on the same layers (default 0.5xlora@8)")
    parser.add_argument("--targets", help="layer-name suffixes, comma-separated, e.g. query,value "
                        "or q_proj,v_proj (default: the query and value projections)")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="cluster counts k to consider")
    parser.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)), help="ranks r to consider")
    parser.add_argument("--selection", default="id", choices=list(SELECTIONS),
                        help="skeleton-row selection (default id)")
    add_retired_flag(parser, "--strategy", "--selection", choices=list(SELECTIONS))
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (also the adapter seed)")
    parser.add_argument("--normalize-rows", action="store_true", help="cosine clustering geometry")
    parser.add_argument("--base", help="a run config whose model head, tasks and training the plan "
                        "keeps (default: the model kind's default task and training)")
    parser.add_argument("--output-dir", help="the run's output_dir in the YAML (default runs/budget-plan)")
    parser.add_argument("--no-skeletons", action="store_true",
                        help="leave the skeleton rows out (training clusters again)")
    parser.add_argument("--out", required=True, help="YAML file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad request)."""
    from analysis.scan import ProgressPrinter
    from analysis.sweep_cli import output_problem
    from idlora_core.models import model_kind, set_hub_defaults

    set_hub_defaults()
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if not 0 <= args.seed <= 2**32 - 1:
            raise ValueError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
        budget = parse_budget(args.budget)
        spec = SweepSpec(parse_grid(args.ks, "--ks"), parse_grid(args.ranks, "--ranks"),
                         (args.selection,), seed=args.seed, normalize_rows=args.normalize_rows)
        base = load_config(args.base) if args.base else None
        problem = output_problem(args.out, "--out")
        if problem:
            raise ValueError(problem)
        weights = open_weights(args.model)
        layers = candidate_layers(weights, args.targets.split(",") if args.targets else None)
        print(f"scanning {len(layers)} layers of {args.model} (k in {list(spec.ks)}, r in "
              f"{list(spec.ranks)}, {args.selection})", file=sys.stderr)
        table, clusterings = scan_layers(weights, layers, spec, ProgressPrinter())
        curves = planner_curves(table, args.selection)
        plan = plan_budget(curves, budget.params(curves))
        skeletons = None if args.no_skeletons else plan_skeletons(plan, clusterings, args.selection)
        config = plan_config(plan, args.model, model_kind=model_kind(weights.config), base=base,
                             selection=args.selection, seed=args.seed,
                             normalize_rows=args.normalize_rows, skeletons=skeletons,
                             output_dir=args.output_dir)
    except (ValueError, OSError) as exc:  # ConfigError, ModelNotFoundError are ValueErrors
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
        print(f"error: {'; '.join(lines)}", file=sys.stderr)  # one line, even for a ConfigError
        return 2
    try:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_config(config, out)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(plan_summary(plan, curves), file=sys.stderr)
    print(f"plan ({budget} = {plan.budget:,} parameters) -> {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
