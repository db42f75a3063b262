"""Tables of training runs for the UI: one row per run folder, read from its metrics and status.

The processes themselves are started, cancelled and listed by `idlora_core.jobs.runs`.
No Streamlit here: the app, notebooks and tests share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from idlora_core.config import load_config
from idlora_core.training import run_files
from idlora_core.training.run_files import (
    METRIC_KEYS,
    RunState,
    read_run_json,
    read_status,
    run_state_of,
)


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Return the whole `metrics.jsonl` of a run as a DataFrame (empty when absent): one row
    per logged step, the `MetricRow` keys first in their order, then the eval_* extras."""
    frame = pd.DataFrame(run_files.read_metrics(run_dir))
    return frame[[c for c in METRIC_KEYS if c in frame] + [c for c in frame if c not in METRIC_KEYS]]


def _method_of(run_dir: Path, summary: dict[str, Any]) -> str:
    cfg = summary.get("config") or {}
    method = (cfg.get("adapter") or {}).get("method")
    if method:
        return method
    try:
        return load_config(run_dir / "config.yaml").adapter.method
    except Exception:  # noqa: BLE001 - an unreadable config just leaves the method unknown
        return "?"


def run_summary(run_dir: str | Path, metrics: pd.DataFrame | None = None) -> dict[str, Any]:
    """Return one row describing a run: name, method, state (a RunState; "unknown" for a folder
    with neither status.json nor run.json), last step, last/final loss, trainable and total
    parameters, mean step seconds, and any final eval_* metrics (`metrics`: the run's
    metrics.jsonl rows, `run_files.MetricRow`, as a DataFrame)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir) if metrics is None else metrics
    summary = read_run_json(run_dir)
    status = read_status(run_dir)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "method": _method_of(run_dir, summary),
        "state": run_state_of(status) if status else (RunState.finished if summary else "unknown"),
        "step": None,
        "loss": None,
        "trainable_params": None,
        "total_params": None,
        "step_seconds": None,
    }
    if not metrics.empty:
        train = metrics[metrics["loss"].notna()] if "loss" in metrics else metrics.iloc[0:0]
        if not train.empty:
            row["step"] = int(train["step"].iloc[-1])
            row["loss"] = float(train["loss"].iloc[-1])
        for col in ("trainable_params", "total_params"):
            if col in metrics and metrics[col].notna().any():
                row[col] = int(metrics[col].dropna().iloc[-1])
        if "step_seconds" in metrics and metrics["step_seconds"].notna().any():
            row["step_seconds"] = float(metrics["step_seconds"].dropna().mean())
        for col in metrics.columns:
            if col.startswith("eval_") and metrics[col].notna().any():
                row[col] = metrics[col].dropna().iloc[-1]
    return row


def runs_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Return one `run_summary` row per run folder, in the given order."""
    return pd.DataFrame([run_summary(d) for d in run_dirs])
