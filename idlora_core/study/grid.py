"""Grid expansion: a StudyConfig -> the list of distinct trials (cells), and a cell -> a RunConfig.

`grid.variants` arms are cells of their own (`variant_cells`): each carries its adapter section,
which replaces the base's in `cell_config`.

A parameter that a method does not use collapses for that method (k for LoRA, r for
head-only, everything but the seed for base), so no two cells train the same thing. Cells
are plain dicts so that they travel through Optuna's storage as JSON.
"""

from __future__ import annotations

import itertools
from typing import Any

from idlora_core.config import METHOD_FIELDS, RunConfig
from idlora_core.study.config import StudyConfig

GRID_KEYS: tuple[str, ...] = ("method", "r", "k", "selection", "rb_splits", "steps", "learning_rate",
                              "seed")
GRID_KEYS += ("variant",)  # the name of a grid.variants arm; None for the method cells
# Which grid parameters each method uses; the others collapse to None.
USES: dict[str, frozenset[str]] = {
    "idlora": frozenset({"r", "k", "selection", "rb_splits", "steps", "learning_rate", "seed"}),
    "lora": frozenset({"r", "steps", "learning_rate", "seed"}),
    "dora": frozenset({"r", "steps", "learning_rate", "seed"}),
    "adalora": frozenset({"r", "steps", "learning_rate", "seed"}),
    "hydralora": frozenset({"r", "k", "steps", "learning_rate", "seed"}),
    "full": frozenset({"steps", "learning_rate", "seed"}),
    "head-only": frozenset({"steps", "learning_rate", "seed"}),
    "base": frozenset({"seed"}),
}


def method_values(study: StudyConfig, method: str) -> dict[str, list[Any]]:
    """Return the values each grid parameter takes for `method` ([None] = collapsed or not varied;
    the learning rate is [None] in TPE mode, where Optuna samples it)."""
    g = study.grid
    lrs = None if g.tpe else ((g.learning_rates or {}).get(method) or g.learning_rate)
    given = {"r": (g.ranks or {}).get(method) or g.r, "k": g.k, "selection": g.selection, "rb_splits": g.rb_splits, "steps": g.steps,
             "learning_rate": lrs, "seed": g.seed}
    values = {key: (list(values) if values and key in USES[method] else [None])
              for key, values in given.items()}
    return values | {"variant": [None]}  # variant cells come from `variant_cells`


def expand_grid(study: StudyConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Return (cells, notes): every distinct trial of the study as a dict over GRID_KEYS (None =
    the base config's value), in a stable order, and one note per combination left out
    (e.g. rank boosting p that does not divide r)."""
    cells: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    notes: list[str] = []
    base_r = [t.r for t in study.base.adapter.targets]
    for method in dict.fromkeys(study.grid.method):
        values = method_values(study, method)
        keys = [k for k in GRID_KEYS if k != "method"]
        for combo in itertools.product(*(values[k] for k in keys)):
            cell = {"method": method, **dict(zip(keys, combo, strict=True))}
            key = tuple(cell[k] for k in GRID_KEYS)
            if key in seen:
                continue
            seen.add(key)
            p = cell["rb_splits"]
            ranks = [cell["r"]] if cell["r"] is not None else base_r
            if p is not None and any(r % p for r in ranks):
                notes.append(f"skipped {method} r={ranks} rb_splits={p}: p must divide r")
                continue
            cells.append(cell)
    return cells + variant_cells(study), notes


def variant_cells(study: StudyConfig) -> list[dict[str, Any]]:
    """Return the cells of the study's `grid.variants`: for each named adapter section, one cell
    per steps x learning rate (its method's) x seed, r / k / selection / rb_splits None (the
    section holds them); each cell carries the section as `adapter` (cells travel as JSON)."""
    cells = []
    for name, adapter in (study.grid.variants or {}).items():
        values = method_values(study, adapter.method)
        keys = ("steps", "learning_rate", "seed")
        for combo in itertools.product(*(values[k] for k in keys)):
            cells.append({**dict.fromkeys(GRID_KEYS), "method": adapter.method, "variant": name,
                          **dict(zip(keys, combo, strict=True)), "adapter": adapter.model_dump(mode="json")})
    return cells


def budget_key(cell: dict[str, Any], base: RunConfig) -> tuple[str, int | None, int | None]:
    """Return (method, r, k) of a cell as the summary groups it: the base config's first-target
    value where the grid leaves r / k unset, None where the method does not use it."""
    method = cell["method"]
    if cell.get("variant") is not None:  # its own targets: their r / k when all share one
        shared = {key: {t.get(key) for t in cell["adapter"]["targets"]} for key in ("r", "k")}
        r, k = (next(iter(shared[key])) if len(shared[key]) == 1 and key in USES[method] else None
                for key in ("r", "k"))
        return method, r, k
    first = base.adapter.targets[0]
    r = (cell["r"] if cell["r"] is not None else first.r) if "r" in USES[method] else None
    k = (cell["k"] if cell["k"] is not None else first.k) if "k" in USES[method] else None
    return method, r, k


def cell_config(base: RunConfig, cell: dict[str, Any], output_dir: str) -> RunConfig:
    """Return the RunConfig of one cell: the base config with the cell's values set (on every
    target for r, k, selection, rb_splits), train.seed = adapter.seed = the cell's seed."""
    data = base.model_dump(mode="json")
    if cell.get("variant") is not None:  # a grid.variants arm: its adapter section replaces the base's
        data["adapter"] = dict(cell["adapter"])
    data["adapter"]["method"] = cell["method"]
    for target in data["adapter"]["targets"]:
        for key in ("r", "k", "selection", "rb_splits"):
            if cell.get(key) is not None:
                target[key] = cell[key]
        if cell.get("rb_splits") is None and cell["method"] == "idlora" and target["r"] % target["rb_splits"]:
            target["rb_splits"] = 1
    if cell.get("r") is not None or cell.get("k") is not None or cell["method"] != "idlora":
        data["adapter"]["skeletons"] = None  # resolved for other r / k: cluster again
    if cell["method"] in METHOD_FIELDS:  # drop the target fields the cell's method does not use
        keep = METHOD_FIELDS[cell["method"]] | {"pattern", "regex", "layers"}
        data["adapter"]["targets"] = [{k: v for k, v in t.items() if k in keep}
                                      for t in data["adapter"]["targets"]]
    if cell["method"] != "idlora":
        data["adapter"]["compile_adapters"] = False
    for key in ("learning_rate", "steps", "seed"):
        if cell.get(key) is not None:
            data["train"][key] = cell[key]
    if cell.get("seed") is not None:
        data["adapter"]["seed"] = cell["seed"]
    data["output_dir"] = output_dir
    return RunConfig.model_validate(data)


def cell_name(number: int, cell: dict[str, Any]) -> str:
    """Return the run-folder name of a cell, e.g. `0007-lora-r8-lr0.003-s1` (a variant's name
    follows the method: `0040-idlora-planned-lr0.01-s0`)."""
    parts = [f"{number:04d}", cell["method"]]
    parts += [cell["variant"]] if cell.get("variant") else []
    short = {"r": "r", "k": "k", "selection": "", "rb_splits": "p", "steps": "n", "learning_rate": "lr",
             "seed": "s"}
    for key, tag in short.items():
        value = cell.get(key)
        if value is not None:
            parts.append(f"{tag}{value:g}" if isinstance(value, float) else f"{tag}{value}")
    return "-".join(parts)
