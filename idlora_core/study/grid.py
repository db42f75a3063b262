"""Grid expansion: a StudyConfig -> the list of distinct trials (cells), and a cell -> a RunConfig.

`grid.variants` arms are cells of their own (`variant_cells`): each carries its adapter section,
which replaces the base's in `cell_config`.

A parameter that a method does not use collapses for that method (k for LoRA, r for
head-only, everything but the seed for base), so no two cells train the same thing. Cells
are plain dicts so that they travel through Optuna's storage as JSON.

`cluster_seed` (ID-LoRA only) is the adapter seed of a cell, crossed with the training
`seed`; a cell without it (every cell of a study that does not list it, and every non-ID-LoRA
cell) takes adapter.seed = the training seed, as before.
"""

from __future__ import annotations

import itertools
from typing import Any

from idlora_core.config import ALL_METHODS, METHOD_FIELDS, RunConfig, uses_clusters, uses_heads
from idlora_core.study.config import StudyConfig

GRID_KEYS: tuple[str, ...] = ("method", "r", "k", "selection", "rb_splits", "steps", "learning_rate",
                              "cluster_seed", "seed")
GRID_KEYS += ("variant",)  # the name of a grid.variants arm; None for the method cells
# The target field each grid axis sets, per method: the `k` axis is ID-LoRA's clusters and
# HydraLoRA's heads (`TargetConfig.heads`), whose values come from `grid.heads` when the study
# lists them (`method_values`); which method uses which comes from METHOD_FIELDS.
_TARGET_AXES: tuple[str, ...] = ("r", "k", "selection", "rb_splits")


def axis_field(method: str, axis: str) -> str:
    """Return the TargetConfig field that grid axis `axis` sets for `method` (k -> heads for
    HydraLoRA; the axis name otherwise)."""
    return "heads" if axis == "k" and uses_heads(method) else axis


def uses(method: str) -> frozenset[str]:
    """Return the grid parameters `method` uses (the others collapse to None): its target
    fields (METHOD_FIELDS), cluster_seed for a method that clusters (ID-LoRA), steps /
    learning_rate / seed for every trained method, only the seed for `base`."""
    if method == "base":
        return frozenset({"seed"})
    fields = METHOD_FIELDS.get(method, frozenset())
    return frozenset({a for a in _TARGET_AXES if axis_field(method, a) in fields}
                     | ({"cluster_seed"} if uses_clusters(method) else set())
                     | {"steps", "learning_rate", "seed"})


# Which grid parameters each method uses; the others collapse to None.
USES: dict[str, frozenset[str]] = {m: uses(m) for m in ALL_METHODS}


def method_values(study: StudyConfig, method: str) -> dict[str, list[Any]]:
    """Return the values each grid parameter takes for `method` ([None] = collapsed or not varied;
    the learning rate is [None] in TPE mode, where Optuna samples it)."""
    g = study.grid
    lrs = None if g.tpe else ((g.learning_rates or {}).get(method) or g.learning_rate)
    counts = (g.heads or g.k) if uses_heads(method) else g.k  # HydraLoRA: grid.heads, else k
    given = {"r": (g.ranks or {}).get(method) or g.r, "k": counts, "selection": g.selection, "rb_splits": g.rb_splits, "steps": g.steps,
             "learning_rate": lrs, "cluster_seed": g.cluster_seed, "seed": g.seed}
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
    k_base = getattr(first, axis_field(method, "k"))
    k = (cell["k"] if cell["k"] is not None else k_base) if "k" in USES[method] else None
    return method, r, k


def cell_config(base: RunConfig, cell: dict[str, Any], output_dir: str) -> RunConfig:
    """Return the RunConfig of one cell: the base config with the cell's values set (on every
    target for r, k, selection, rb_splits), train.seed = the cell's seed, adapter.seed = its
    cluster_seed when it has one, else its seed."""
    data = base.model_dump(mode="json")
    if cell.get("variant") is not None:  # a grid.variants arm: its adapter section replaces the base's
        data["adapter"] = dict(cell["adapter"])
    data["adapter"]["method"] = cell["method"]
    for target in data["adapter"]["targets"]:
        for key in _TARGET_AXES:
            if cell.get(key) is not None:
                target[axis_field(cell["method"], key)] = cell[key]
        if cell.get("rb_splits") is None and cell["method"] == "idlora" and target["r"] % target["rb_splits"]:
            target["rb_splits"] = 1
    if cell.get("r") is not None or cell.get("k") is not None or cell["method"] != "idlora" \
            or cell.get("cluster_seed") is not None:
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
    if cell.get("cluster_seed") is not None:  # the k-means seed, apart from the training seed
        data["adapter"]["seed"] = cell["cluster_seed"]
    data["output_dir"] = output_dir
    return RunConfig.model_validate(data)


def cell_name(number: int, cell: dict[str, Any]) -> str:
    """Return the run-folder name of a cell, e.g. `0007-lora-r8-lr0.003-s1` (`-c2`: cluster seed 2;
    a variant's name follows the method: `0040-idlora-planned-lr0.01-s0`)."""
    parts = [f"{number:04d}", cell["method"]]
    parts += [cell["variant"]] if cell.get("variant") else []
    short = {"r": "r", "k": "k", "selection": "", "rb_splits": "p", "steps": "n", "learning_rate": "lr",
             "cluster_seed": "c", "seed": "s"}
    for key, tag in short.items():
        value = cell.get(key)
        if value is not None:
            parts.append(f"{tag}{value:g}" if isinstance(value, float) else f"{tag}{value}")
    return "-".join(parts)
