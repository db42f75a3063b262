"""Training runs for the UI: start, cancel, list and read `python -m idlora_core.train` runs.

A run is a folder under a chosen runs root holding `config.yaml` (written here),
`metrics.jsonl` (one JSON object per logging step), `run.json` (summary at the end),
`status.json` (state, message, pid, last step) and `train.log` (the process output).
Processes start from an argument list, never through a shell; the training CLI picks
the GPU by itself when one is present (`train.device: auto`).

Pure Python and pandas: no Streamlit here, so the app, notebooks and tests share it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from idlora_core.config import RunConfig, save_config
from idlora_core.training import run_files
from idlora_core.training.run_files import (
    ACTIVE_STATES,
    FINAL_STATES,
    MetricsTail,  # noqa: F401 - re-exported: the pages tail metrics through this module
    read_run_json,
    read_status,
    write_status,
)
from idlora_core.training.run_folder import pid_alive

REPO_ROOT = Path(__file__).resolve().parents[1]


class RunPathError(ValueError):
    """An output path that would leave the chosen runs folder."""


def safe_run_dir(runs_root: str | Path, name: str) -> Path:
    """Return the absolute folder `runs_root/name`; raises RunPathError when it would escape.

    Absolute names, `..` parts and names resolving outside the root (through links) are refused.
    """
    root = Path(runs_root).expanduser().resolve()
    rel = Path(str(name).strip())
    if not str(rel) or str(rel) == "." or rel.is_absolute() or ".." in rel.parts:
        raise RunPathError(
            f"run name {name!r} must be a plain relative folder name inside {root} "
            "(no '..', no absolute path)"
        )
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise RunPathError(f"run folder {target} is outside the runs folder {root}")
    return target


def new_run_name(method: str) -> str:
    """Return a fresh, unique run folder name like `20261128-161502-idlora-3f9a1c`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunHandle:
    """A run started by this process: its folder, method and (while alive) its process."""

    run_dir: Path
    method: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name


def train_command(config_path: Path, overrides: list[str] | None = None) -> list[str]:
    """Return the argument list that trains `config_path` in a fresh Python process."""
    cmd = [sys.executable, "-m", "idlora_core.train", str(config_path), "--no-progress"]
    for item in overrides or []:
        cmd += ["--set", item]
    return cmd


def start_run(
    config: RunConfig,
    runs_root: str | Path,
    name: str | None = None,
    overrides: list[str] | None = None,
) -> RunHandle:
    """Write `config` into a new run folder under `runs_root` and start training it.

    The config's `output_dir` is replaced by that folder, so two runs (or two browser tabs)
    never share one. Returns the handle; the process writes `train.log` in the folder.
    """
    run_dir = safe_run_dir(runs_root, name or new_run_name(config.adapter.method))
    run_dir.mkdir(parents=True, exist_ok=False)
    config = config.model_copy(update={"output_dir": str(run_dir)})
    cfg_path = save_config(config, run_dir / "config.yaml")
    write_status(run_dir, "starting", "process starting", pid=None)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(run_dir / "train.log", "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - argument list, no shell
            train_command(cfg_path, overrides),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return RunHandle(run_dir=run_dir, method=config.adapter.method, process=process)


def cancel_run(handle: RunHandle) -> bool:
    """Ask the run's process to stop after its current step (SIGTERM); True when it was alive.

    The training CLI keeps its metrics and a checkpoint when it stops this way.
    """
    proc = handle.process
    if proc is None or proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    return True


def wait_run(handle: RunHandle, timeout_s: float) -> int | None:
    """Wait up to `timeout_s` seconds for the run's process; return its exit code or None."""
    if handle.process is None:
        return None
    try:
        return handle.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def run_state(handle: RunHandle) -> str:
    """Return 'starting' | 'running' | 'finished' | 'cancelled' | 'failed' for a run we started.

    The process exit code wins over a stale `status.json` (a crash cannot update the file).
    """
    found = read_status(handle.run_dir)
    status = found.get("state", "starting")
    proc = handle.process
    if proc is None:  # started elsewhere (the server's run queue): the recorded pid must live
        pid = found.get("pid")
        if status in ACTIVE_STATES and isinstance(pid, int) and not pid_alive(pid):
            return "failed"
        return status
    code = proc.poll()
    if code is None:
        return status if status in ACTIVE_STATES else "running"
    if status in FINAL_STATES:
        return status
    return "finished" if code == 0 else ("cancelled" if code in (-15, 143, 130) else "failed")


def log_tail(run_dir: str | Path, max_chars: int = 2000) -> str:
    """Return the last `max_chars` characters of the run's `train.log` ('' when absent)."""
    path = Path(run_dir) / "train.log"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Return the whole `metrics.jsonl` of a run as a DataFrame (empty when absent)."""
    return pd.DataFrame(run_files.read_metrics(run_dir))


def is_run_dir(path: str | Path) -> bool:
    """True when `path` looks like a training run folder (has a config or metrics file)."""
    path = Path(path)
    return path.is_dir() and any(
        (path / f).is_file() for f in ("config.yaml", "metrics.jsonl", "run.json", "status.json")
    )


def list_runs(runs_root: str | Path) -> list[Path]:
    """Return the run folders directly under `runs_root`, newest first ([] when absent)."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if is_run_dir(p)]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def _method_of(run_dir: Path, summary: dict[str, Any]) -> str:
    cfg = summary.get("config") or {}
    method = (cfg.get("adapter") or {}).get("method")
    if method:
        return method
    try:
        from idlora_core.config import load_config

        return load_config(run_dir / "config.yaml").adapter.method
    except Exception:  # noqa: BLE001 - an unreadable config just leaves the method unknown
        return "?"


def run_summary(run_dir: str | Path, metrics: pd.DataFrame | None = None) -> dict[str, Any]:
    """Return one row describing a run: name, method, state, last step, last/final loss,
    trainable and total parameters, mean step seconds, and any final eval_* metrics."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir) if metrics is None else metrics
    summary = read_run_json(run_dir)
    status = read_status(run_dir)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "method": _method_of(run_dir, summary),
        "state": status.get("state", "finished" if summary else "unknown"),
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
