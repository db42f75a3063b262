"""Studies for the UI: presets, a study built from Fine-tune choices, start one in the background,
list past ones, read their live tables, and draw the trade-off and learning-rate figures.

A study runs as `python -m idlora_core.study` in its own process session, so it keeps running
when the browser tab closes; its folder (`RUNS/studies/NAME`) holds the Optuna storage the
tables are read from. No Streamlit here: the app, notebooks, docs and tests share it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from idlora_core.cache import write_text_atomic
from idlora_core.config import RunConfig
from idlora_core.study.config import StudyConfig, dumps_study, parse_study
from idlora_core.study.defaults import DEFAULT_LEARNING_RATES
from idlora_core.study.grid import expand_grid
from idlora_core.study.summary import budget_label, pareto_mask, test_metric_name
from idlora_core.training.run_folder import pid_alive

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "configs" / "studies"
STUDIES_DIR = "studies"
LAUNCH_FILE = "launcher.json"
DEFAULT_LR = DEFAULT_LEARNING_RATES  # measured by preset (a); see idlora_core/study/defaults.py
COLORS: dict[str, str] = {"idlora": "#d62728", "lora": "#1f77b4", "dora": "#2ca02c", "hydralora": "#9467bd",
                          "full": "#8c564b", "head-only": "#7f7f7f", "base": "#000000"}


def list_presets() -> dict[str, Path]:
    """Return {preset name: YAML path} of the study presets in configs/studies/."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def build_study(base: RunConfig, methods: list[str], ranks: list[int], ks: list[int],
                learning_rates: dict[str, list[float]], seeds: list[int], metric: str,
                direction: str = "maximize", name: str | None = None) -> StudyConfig:
    """Return the StudyConfig of a grid built from Fine-tune choices: `learning_rates` gives each
    method its own list (missing methods use DEFAULT_LR)."""
    lrs = {m: learning_rates.get(m) or [DEFAULT_LR.get(m, 1e-3)] for m in methods}
    return parse_study({"name": name, "base": base.model_dump(mode="json"),
                        "grid": {"method": methods, "r": ranks, "k": ks, "learning_rates": lrs, "seed": seeds,
                                 "learning_rate": [base.train.learning_rate]},
                        "metric": metric, "direction": direction})


def run_count(study: StudyConfig) -> int:
    """Return the number of training runs the study makes (TPE: trials x seeds per budget)."""
    cells, _ = expand_grid(study)
    return len(cells) * (study.grid.learning_rate.trials if study.grid.tpe else 1)


def estimate_seconds(study: StudyConfig, workers: int, seconds_per_step: float = 0.6,
                     overhead_s: float = 10.0) -> float:
    """Return a rough wall-clock estimate in seconds: runs x (steps x seconds_per_step + overhead)
    / workers. The defaults are MiniLM on a shared 2-core CPU (preset (a)); GPUs are faster."""
    cells, _ = expand_grid(study)
    per = [(c.get("steps") or study.base.train.steps) * (0 if c["method"] == "base" else seconds_per_step)
           + overhead_s for c in cells]
    return sum(per) * run_count(study) / max(len(cells), 1) / max(workers, 1)


def study_dir(runs_root: str | Path, name: str) -> Path:
    """Return the folder RUNS/studies/NAME of a study name; raises RunPathError unless the name is
    one plain folder name (a name such as `a/b`, `` or `.` made a study the page never listed
    and the run limit never counted)."""
    from analysis.runs import RunPathError, safe_run_dir

    text = str(name).strip()
    if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise RunPathError(f"study name {name!r} must be one folder name (no '/', not empty, not '.'), "
                           "e.g. my-study")
    return safe_run_dir(Path(runs_root), f"{STUDIES_DIR}/{text}")


def start_study(study: StudyConfig, runs_root: str | Path, name: str, workers: int = 1) -> Path:
    """Write the study into RUNS/studies/NAME and start it in a new process session (it survives
    the browser tab); return the folder. The process output goes to study.log.

    Raises ValueError when the name is not one folder name, when a study of that name is still
    running, or when the folder holds a study with other settings (the same settings resume it:
    finished trials are never repeated)."""
    out = study_dir(runs_root, name)
    spec = out / "input.yaml"
    text = dumps_study(study)
    if study_running(out):
        raise ValueError(f"study {name!r} is running; choose another name, or wait for it to finish")
    if spec.is_file() and spec.read_text(encoding="utf-8") != text:
        raise ValueError(f"a study with other settings is named {name!r}; choose another name "
                         "(the same settings resume it)")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec, text)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(out / "study.log", "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            [sys.executable, "-m", "idlora_core.study", str(spec), "--out", str(out), "--workers", str(workers)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    write_text_atomic(out / LAUNCH_FILE, json.dumps({"pid": proc.pid, "workers": workers}))
    return out


def study_running(out_dir: str | Path) -> bool:
    """Return True while the study process started for `out_dir` is alive."""
    path = Path(out_dir) / LAUNCH_FILE
    if not path.is_file():
        return False
    pid = json.loads(path.read_text(encoding="utf-8")).get("pid")
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    return pid_alive(pid)


def stop_study(out_dir: str | Path) -> bool:
    """Ask the study started for `out_dir` to stop: SIGTERM to its process group (the coordinator
    and its workers, which finish their current step, keep its checkpoint and exit; a re-start
    with the same settings resumes). Return True when a running study was signalled."""
    if not study_running(out_dir):
        return False
    pid = json.loads((Path(out_dir) / LAUNCH_FILE).read_text(encoding="utf-8")).get("pid")
    try:
        os.killpg(os.getpgid(pid), signal.SIGTERM)  # started with start_new_session: its own group
    except (ProcessLookupError, PermissionError):
        return False
    return True


def study_workers_alive(runs_root: str | Path) -> int:
    """Return the number of worker processes of the studies under `runs_root` still running."""
    busy = 0
    for folder in list_studies(runs_root):
        if study_running(folder):
            try:
                launch = json.loads((folder / LAUNCH_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                launch = {}
            busy += int(launch.get("workers", 1))
    return busy


def free_run_slots(runs_root: str | Path) -> int:
    """Return how many more processes may train now under the server's global run limit
    (`analysis.run_queue.max_runs()`): the limit minus queued runs alive, runs started by hand
    in the runs folder and the workers of studies still running."""
    from analysis.run_queue import RunQueue, max_runs

    return max_runs() - RunQueue(runs_root).slots_in_use()


def list_studies(runs_root: str | Path) -> list[Path]:
    """Return the study folders (holding study.json) under RUNS/studies, newest first."""
    root = Path(runs_root) / STUDIES_DIR
    found = [p.parent for p in root.glob("*/study.json")] if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def study_tables(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Return (trials, summary, meta) of a study folder, read live from its Optuna storage."""
    from idlora_core.study.runner import summary_table, trials_table
    from idlora_core.study.storage import read_study_folder

    cfg, meta = read_study_folder(out_dir)
    trials = trials_table(out_dir)
    return trials, summary_table(out_dir, trials), {**meta, "config": cfg}


def budget_choices(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Return {label: budget selector} of the summary's rows, e.g. {"lora:r4": {"method": "lora",
    "r": 4, "k": None}}: every budget column (those before `trainable`), so each selects one row."""
    keys = list(summary.columns[: summary.columns.get_loc("trainable")]) if "trainable" in summary else []
    selectors = [{k: None if pd.isna(row[k]) else row[k] for k in keys} for _, row in summary.iterrows()]
    return {budget_label(sel): sel for sel in selectors}


def tradeoff_figure(summary: pd.DataFrame, metric: str, direction: str = "maximize") -> go.Figure:
    """Return the trade-off plot: the TEST metric (mean over seeds at the validation-chosen
    learning rate, 95 % CI error bars) against trainable parameters when the runs report one,
    else the validation metric (log x; base at 1 parameter so it shows), one colour per method,
    the Pareto frontier of the plotted means as a dashed line; head-only and base drawn as
    reference points."""
    fig = go.Figure()
    df = summary.copy()
    on_test = "test_mean" in df and df["test_mean"].notna().any()
    prefix = "test" if on_test else "metric"
    df["y"], df["lo"], df["hi"] = df[f"{prefix}_mean"], df[f"{prefix}_ci95_low"], df[f"{prefix}_ci95_high"]
    if not metric.endswith("loss") and df["y"].dropna().between(0, 1).all():
        # a score in [0, 1]: a 2-seed t-interval can pass 1.0; draw it within the metric's range
        df["lo"], df["hi"] = df["lo"].clip(lower=0), df["hi"].clip(upper=1)
    df["x"] = df["trainable"].clip(lower=1)
    for method, part in df.groupby("method", sort=False):
        ref = method in ("head-only", "base")
        err_hi = (part["hi"] - part["y"]).fillna(0)
        err_lo = (part["y"] - part["lo"]).fillna(0)
        label = part.apply(lambda r: f"r={r['r']}" if pd.notna(r["r"]) else "", axis=1)
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["y"], mode="markers+text" if not ref else "markers", name=method,
            text=label, textposition="top center",
            marker={"size": 12 if ref else 9, "symbol": "star" if ref else "circle",
                    "color": COLORS.get(method)},
            error_y={"type": "data", "symmetric": False, "array": err_hi, "arrayminus": err_lo},
            customdata=part[["trainable", "best_learning_rate", "n_seeds"]].to_numpy(),
            hovertemplate="%{fullData.name} %{text}<br>trainable %{customdata[0]:,}<br>"
                          "best lr %{customdata[1]}<br>mean %{y:.3f} over %{customdata[2]} seeds<extra></extra>"))
    front = df[pareto_mask(df["x"], df["y"], direction == "maximize")].sort_values("x")
    if len(front):
        fig.add_trace(go.Scatter(x=front["x"], y=front["y"], mode="lines", name="Pareto frontier",
                                 line={"dash": "dash", "color": "#444"}, line_shape="hv"))
    shown = test_metric_name(metric) if on_test else metric
    note = " (held-out test; lr chosen on validation)" if on_test else ""
    fig.update_layout(xaxis_type="log", xaxis_title="trainable parameters (log; base shown at 1)",
                      yaxis_title=f"{shown}{note}, {'higher' if direction == 'maximize' else 'lower'} is better",
                      legend_title="method", margin={"t": 30})
    return fig


def lr_figure(trials: pd.DataFrame, metric: str) -> go.Figure:
    """Return metric against learning rate (log x), one line per (method, r, k) budget, mean over
    seeds with min-max bars: is every method compared at its own best learning rate?"""
    fig = go.Figure()
    done = trials[(trials["state"] == "COMPLETE") & trials["learning_rate"].notna()]
    if metric not in done:
        return fig
    order = {m: i for i, m in enumerate(COLORS)}
    done = done.assign(_m=done["method"].map(order)).sort_values(["_m", "r", "k", "learning_rate"])
    done = done.assign(budget=done.apply(lambda r: f"{r['method']}" + (f" r={r['r']}" if pd.notna(r["r"]) else "")
                                         + (f" k={r['k']}" if pd.notna(r["k"]) else ""), axis=1))
    for budget, part in done.groupby("budget", sort=False):
        stats = part.groupby("learning_rate")[metric].agg(["mean", "min", "max"]).reset_index()
        method = part["method"].iloc[0]
        fig.add_trace(go.Scatter(
            x=stats["learning_rate"], y=stats["mean"], mode="lines+markers", name=budget,
            line={"color": COLORS.get(method)},
            error_y={"type": "data", "symmetric": False, "array": stats["max"] - stats["mean"],
                     "arrayminus": stats["mean"] - stats["min"]}))
    rates = sorted(done["learning_rate"].astype(float).unique())
    fig.update_layout(xaxis_type="log", xaxis_title="learning rate (log)", yaxis_title=f"{metric} (mean over seeds)",
                      legend_title="budget", margin={"t": 30})
    fig.update_xaxes(tickvals=rates, ticktext=[f"{v:g}" for v in rates])  # 0.003 reads as 0.003, not "3"
    return fig
