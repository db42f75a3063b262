"""Studies for the UI as tables: presets, a study built from Fine-tune choices, its run count and
time estimate, and the live trials / summary tables of a study folder.

The time estimate rests on this server's measured runs (`idlora_core.jobs.throughput`).
Starting, stopping and listing study processes is `idlora_core.jobs.studies`; the trade-off and
learning-rate figures are `app.figures`. No Streamlit here: the app, notebooks, docs and tests share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from idlora_core.config import RunConfig
from idlora_core.jobs.throughput import Estimate, estimate_run_seconds
from idlora_core.study.config import StudyConfig, parse_study
from idlora_core.study.defaults import DEFAULT_LEARNING_RATES
from idlora_core.study.grid import cell_config, expand_grid
from idlora_core.study.runner import summary_table, trials_table
from idlora_core.study.storage import read_study_folder
from idlora_core.study.summary import budget_label

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "configs" / "studies"
DEFAULT_LR = DEFAULT_LEARNING_RATES  # measured by preset (a); see idlora_core/study/defaults.py

def list_presets() -> dict[str, Path]:
    """Return {preset name: YAML path} of the study presets in configs/studies/."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def build_study(base: RunConfig, methods: list[str], ranks: list[int], ks: list[int],
                learning_rates: dict[str, list[float]], seeds: list[int], metric: str,
                direction: str = "maximize", name: str | None = None,
                heads: list[int] | None = None) -> StudyConfig:
    """Return the StudyConfig of a grid built from Fine-tune choices: `ks` ID-LoRA's clusters,
    `heads` HydraLoRA's heads N (None: `ks`, as before they had their own list);
    `learning_rates` gives each method its own list (missing methods use DEFAULT_LR)."""
    lrs = {m: learning_rates.get(m) or [DEFAULT_LR.get(m, 1e-3)] for m in methods}
    return parse_study({"name": name, "base": base.model_dump(mode="json"),
                        "grid": {"method": methods, "r": ranks, "k": ks, "heads": heads, "learning_rates": lrs,
                                 "seed": seeds, "learning_rate": [base.train.learning_rate]},
                        "metric": metric, "direction": direction})


def run_count(study: StudyConfig) -> int:
    """Return the number of training runs the study makes (TPE: trials x seeds per budget)."""
    cells, _ = expand_grid(study)
    return len(cells) * (study.grid.learning_rate.trials if study.grid.tpe else 1)


def estimate_study(study: StudyConfig, workers: int, runs_root: str | Path | None = None, *,
                   param_count: int | None = None) -> tuple[float, dict[str, Estimate]]:
    """Return (seconds, {method: Estimate of its longest run}): the study's wall-clock estimate,
    runs x per-run estimate / workers, each run estimated from the runs this server finished in
    `runs_root` (`idlora_core.jobs.throughput`; the default guess where none matches)."""
    cells, _ = expand_grid(study)
    memo: dict[tuple, Estimate] = {}
    per: list[float] = []
    longest: dict[str, Estimate] = {}
    for cell in cells:
        key = (cell["method"], cell.get("steps"))
        if key not in memo:
            config = cell_config(study.base, cell, "estimate")
            memo[key] = estimate_run_seconds(config, runs_root, param_count=param_count)
        found = memo[key]
        per.append(found.seconds)
        if cell["method"] not in longest or found.seconds > longest[cell["method"]].seconds:
            longest[cell["method"]] = found
    seconds = sum(per) * run_count(study) / max(len(cells), 1) / max(workers, 1)
    return seconds, longest


def estimate_seconds(study: StudyConfig, workers: int, runs_root: str | Path | None = None) -> float:
    """Return the study's wall-clock estimate in seconds (`estimate_study`)."""
    return estimate_study(study, workers, runs_root)[0]


def study_tables(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Return (trials, summary, meta) of a study folder, read live from its Optuna storage."""
    cfg, meta = read_study_folder(out_dir)
    trials = trials_table(out_dir)
    return trials, summary_table(out_dir, trials), {**meta, "config": cfg}


def budget_choices(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Return {label: budget selector} of the summary's rows, e.g. {"lora:r4": {"method": "lora",
    "r": 4, "k": None}}: every budget column (those before `trainable`), so each selects one row."""
    keys = list(summary.columns[: summary.columns.get_loc("trainable")]) if "trainable" in summary else []
    selectors = [{k: None if pd.isna(row[k]) else row[k] for k in keys} for _, row in summary.iterrows()]
    return {budget_label(sel): sel for sel in selectors}
