"""Where a study stands, cell by cell: done, running (host, heartbeat age), stale, failed, pending.

`cell_states(DIR)` reads the Optuna storage of a study folder; `python -m idlora_core.study DIR
--status` prints it (`status_text`), and the study command refuses to exit 0 unless every cell
is done (`unfinished_line`). A grid study has one row per cell; a TPE study one per budget
(done once `trials` learning rates finished). Reading only: nothing here changes the study.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from idlora_core.study.grid import cell_name
from idlora_core.study.storage import (
    FAILURE_ATTR,
    grace_seconds,
    load_optuna_study,
    open_storage,
    read_study_folder,
)

STATES = ("done", "running", "stale", "failed", "pending")
COLUMNS = ["cell", "name", "state", "complete", "trial", "host", "pid", "heartbeat_age_s", "failure"]


def cell_of(trial: optuna.trial.FrozenTrial) -> Any:
    """Return the grid cell index a trial runs (its `cell` param, its queued fixed params, or its
    `cell` user attr); None when it never got that far."""
    if "cell" in trial.params:
        return trial.params["cell"]
    return (trial.system_attrs.get("fixed_params") or {}).get("cell", trial.user_attrs.get("cell"))


def failure_of(trial: optuna.trial.FrozenTrial, study_attrs: dict[str, Any]) -> str | None:
    """Return why a trial failed: its own `failure` attr, else the note another process left on
    the study when it failed the trial (`storage.record_failure`); None when neither says."""
    return trial.user_attrs.get("failure") or study_attrs.get(FAILURE_ATTR.format(trial.number))


def _row(cell: int | None, name: str, trials: list[optuna.trial.FrozenTrial], attrs: dict[str, Any],
         needed: int, now: float) -> dict[str, Any]:
    """The state of one cell (or TPE budget) from its trials; `needed` finished trials make it done."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    row: dict[str, Any] = {"cell": cell, "name": name, "complete": len(complete), "trial": None, "host": None,
                           "pid": None, "heartbeat_age_s": None, "failure": None}
    if len(complete) >= needed:
        return {**row, "state": "done", "trial": complete[-1].number, "host": complete[-1].user_attrs.get("host")}
    if running:
        t = running[-1]
        beat = t.user_attrs.get("heartbeat")
        age = now - beat if isinstance(beat, (int, float)) else (
            now - t.datetime_start.timestamp() if t.datetime_start else None)
        return {**row, "state": "stale" if age is not None and age > grace_seconds() else "running",
                "trial": t.number, "host": t.user_attrs.get("host"), "pid": t.user_attrs.get("pid"),
                "heartbeat_age_s": None if age is None else round(age, 1)}
    if any(t.state == TrialState.WAITING for t in trials) or not failed:
        return {**row, "state": "pending"}
    t = failed[-1]
    return {**row, "state": "failed", "trial": t.number, "host": t.user_attrs.get("host"),
            "failure": failure_of(t, attrs) or "the trial failed (no reason recorded)"}


def cell_states(out_dir: str | Path) -> pd.DataFrame:
    """Return one row per grid cell (per budget for a TPE study) of the study in `out_dir`:
    cell, name, state (done / running / stale / failed / pending), complete (finished trials),
    trial (the one shown), host, pid, heartbeat_age_s (seconds since the running trial's last
    heartbeat, on the writer's clock: 'stale' past grace_seconds()), failure (why it failed)."""
    cfg, meta = read_study_folder(out_dir)
    now = time.time()
    rows = []
    if meta.get("tpe"):
        groups: dict[str, None] = {}
        for cell in meta["cells"]:
            groups.setdefault(cell_name(0, {**cell, "seed": None})[5:], None)
        names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(meta["storage"]))}
        for group in groups:
            full = f"{meta['name']}/{group}"
            study = load_optuna_study(meta["storage"], full) if full in names else None
            trials = study.get_trials(deepcopy=False) if study else []
            rows.append(_row(None, group, trials, study.user_attrs if study else {},
                             cfg.grid.learning_rate.trials, now))
    else:
        study = load_optuna_study(meta["storage"], meta["name"])
        by_cell: dict[Any, list[optuna.trial.FrozenTrial]] = {}
        for t in study.get_trials(deepcopy=False):
            by_cell.setdefault(cell_of(t), []).append(t)
        attrs = study.user_attrs
        for index, cell in enumerate(meta["cells"]):
            rows.append(_row(index, cell_name(index, cell), by_cell.get(index, []), attrs, 1, now))
    table = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("cell", "complete", "trial", "pid"):
        table[col] = table[col].astype("Int64")
    return table


def _detail(row) -> str:
    if row.state in ("running", "stale"):
        age = "?" if pd.isna(row.heartbeat_age_s) else f"{row.heartbeat_age_s:.0f} s ago"
        return f"trial {row.trial} on {row.host or '?'} pid {row.pid if not pd.isna(row.pid) else '?'}, heartbeat {age}"
    if row.state == "failed":
        return f"trial {row.trial}: {row.failure}"
    if row.state == "done" and row.complete > 1:
        return f"{row.complete} finished trials"
    return ""


def status_text(out_dir: str | Path, table: pd.DataFrame | None = None) -> str:
    """Return the --status report: a count line, then one line per cell (name, state, detail)."""
    _, meta = read_study_folder(out_dir)
    table = cell_states(out_dir) if table is None else table
    counts = table["state"].value_counts()
    what = "budgets" if meta.get("tpe") else "cells"
    lines = [f"study {meta['name']!r} ({meta['storage']}): {len(table)} {what}: "
             + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATES)]
    width = max((len(n) for n in table["name"]), default=0)
    for row in table.itertuples(index=False):
        lines.append(f"  {row.name:<{width}}  {row.state:<7}  {_detail(row)}".rstrip())
    return "\n".join(lines) + "\n"


def unfinished_line(table: pd.DataFrame, limit: int = 6) -> str | None:
    """Return one line naming the cells that are not done (with their state), or None when all are."""
    left = table[table["state"] != "done"]
    if left.empty:
        return None
    shown = "; ".join(f"{r.name} {r.state}" + (f" ({_detail(r)})" if _detail(r) else "")
                      for r in left.head(limit).itertuples(index=False))
    more = f"; and {len(left) - limit} more" if len(left) > limit else ""
    return (f"{len(left)} of {len(table)} cells not done: {shown}{more}; `python -m idlora_core.study DIR "
            "--status` lists them, running the study command again resumes")
