"""Run a study: create (or join) the Optuna study, start N worker processes, write the tables.

  prepare_study   validate, expand the grid, write DIR/study.yaml + study.json, create/join
  run_study       lock the folder, prepare, run the workers (N processes; one per GPU when there
                  are several; each dies with this process), check that every cell is done
  trials_table    one row per run from the storage (grid values, trainable, final metrics, state)
  export_tables   DIR/trials.csv and DIR/summary.csv
The command line is `__main__.py`; the worker loop is `worker.py`; cell states `status.py`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from sqlalchemy.exc import SQLAlchemyError

from idlora_core.config import ConfigError
from idlora_core.models import error_line
from idlora_core.study.config import StudyConfig, dumps_study
from idlora_core.study.grid import GRID_KEYS, budget_key, expand_grid
from idlora_core.study.status import cell_states, failure_of, unfinished_line
from idlora_core.study.storage import (
    StudyLock,
    default_storage,
    load_optuna_study,
    open_storage,
    read_study_folder,
    write_study_folder,
)
from idlora_core.study.summary import summarize

TRIALS_FILE = "trials.csv"
SUMMARY_FILE = "summary.csv"


def study_hash(study: StudyConfig) -> str:
    """Return a short hash of the study's grid, base config and metric (what defines its trials)."""
    return hashlib.sha256(dumps_study(study.model_copy(update={"name": None})).encode()).hexdigest()[:16]


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Return the dotted keys whose values differ between two plain YAML trees; a key present on
    one side only (a field added to the schema since) does not count, nor does `name`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in old.keys() & new.keys() if key != "name" or path
                for k in changed_keys(old[key], new[key], f"{path}.{key}" if path else str(key))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new, strict=True)) for k in changed_keys(a, b, f"{path}.{i}")]
    return [] if old == new else [path or "(top level)"]


def prepare_study(study: StudyConfig, out_dir: str | Path, storage: str | None = None) -> dict[str, Any]:
    """Write the study folder and create the Optuna study, or join it when it exists with the same
    grid; return the folder metadata (name, storage, cells, ...). Raises ConfigError when the
    storage holds a different study under this name or the grid is empty."""
    out = Path(out_dir)
    name = study.name or out.resolve().name
    cells, notes = expand_grid(study)
    if not cells:
        raise ConfigError(["the grid is empty after leaving out invalid combinations: " + "; ".join(notes)])
    url = storage or default_storage(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"--out {out}: cannot create the study folder ({exc.strerror or exc}); "
                           "choose a folder you can write to"]) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        created = optuna.create_study(study_name=name, storage=open_storage(url), load_if_exists=True,
                                      direction=study.direction)
    except (OSError, SQLAlchemyError) as exc:  # not a database / journal file, a folder, /proc/...
        raise ConfigError([f"--storage {url}: cannot open it as an Optuna storage ({error_line(exc)}); "
                           "give a new or existing study database (sqlite:///PATH.db) or journal "
                           "file (journal:PATH)"]) from None
    stored = created.user_attrs.get("study_yaml")
    if stored is None:
        created.set_user_attr("study_hash", study_hash(study))
        created.set_user_attr("study_yaml", dumps_study(study))
        created.set_user_attr("cells", cells)
    else:
        changed = changed_keys(yaml.safe_load(stored), yaml.safe_load(dumps_study(study)))
        if changed:
            raise ConfigError([f"the storage {url} already holds a study named {name!r} whose settings differ at "
                               f"{', '.join(changed[:5])}; use another --out folder or set `name:` in the study YAML"])
        cells = created.user_attrs.get("cells", cells)  # the joined study's own cells and their order
    write_study_folder(study, out, url, name, cells)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return {"name": name, "storage": url, "cells": cells, "metric": study.metric,
            "direction": study.direction, "tpe": study.grid.tpe}


def worker_env(index: int, workers: int) -> dict[str, str]:
    """Return the environment of worker `index`: its GPU when there are several
    (CUDA_VISIBLE_DEVICES), and an equal share of the CPU threads."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gpus = gpu_count()
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def gpu_count() -> int:
    """Return the GPUs this process may use (CUDA_VISIBLE_DEVICES when set, else torch's count; 0 without CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU workers
        return 0


def die_with_parent(parent: int) -> None:
    """`preexec_fn` of a worker (bind the coordinator's pid with functools.partial): on Linux,
    ask the kernel (prctl PR_SET_PDEATHSIG) to send the worker SIGTERM when the coordinator
    dies, however it dies (kill -9 included); the worker then stops after its current step like
    on any SIGTERM. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the coordinator died before the prctl took effect
        os._exit(143)


def run_study(study: StudyConfig, out_dir: str | Path, storage: str | None = None, workers: int = 1) -> int:
    """Run the study with `workers` processes until every trial is done (or a stop), then write
    trials.csv and summary.csv; return the exit code (0 = every cell done, 130 = stopped, 1 =
    cells failed or not done). The folder is locked for this process's life: a second study
    command on it fails at once (StudyBusyError), whatever its settings."""
    with StudyLock(out_dir):
        return _run_locked(study, out_dir, storage, workers)


def _run_locked(study: StudyConfig, out_dir: str | Path, storage: str | None, workers: int) -> int:
    meta = prepare_study(study, out_dir, storage)
    total = len(meta["cells"])
    if unfinished_line(cell_states(out_dir)) is None:  # a finished study: nothing to start
        print(f"study {meta['name']!r}: all {total} cells are done", flush=True)
        workers = 0
    else:
        print(f"study {meta['name']!r}: {total} cells, storage {meta['storage']}, {workers} worker(s)", flush=True)
    cmd = [sys.executable, "-m", "idlora_core.study", "--worker", str(Path(out_dir).resolve())]
    procs = [subprocess.Popen(cmd, env=worker_env(i, workers) | {"IDLORA_WORKER": str(i)},  # noqa: S603
                              preexec_fn=functools.partial(die_with_parent, os.getpid()))  # no threads here
             for i in range(workers)]
    stopped = False

    def forward(signum, _frame):
        nonlocal stopped
        stopped = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    trials, summary = export_tables(out_dir)
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    print(f"trials: {states}; wrote {Path(out_dir) / TRIALS_FILE} and {Path(out_dir) / SUMMARY_FILE}")
    short = summary[summary["seeds_missing"].fillna(0) > 0] if "seeds_missing" in summary else summary.iloc[:0]
    if len(short):
        print(f"warning: {len(short)} budget(s) rest on fewer seeds than the grid's (column seeds_missing "
              "of summary.csv)", file=sys.stderr)
    if stopped or any(c == 130 for c in codes):
        return 130
    line = unfinished_line(cell_states(out_dir))
    if line:
        print(f"error: {line} (see the failure column of trials.csv)", file=sys.stderr)
    return 1 if line else 0


def _grid_rows(study: optuna.Study, meta: dict[str, Any], cfg: StudyConfig) -> list[dict[str, Any]]:
    rows = []
    attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.WAITING:
            continue
        index = t.params.get("cell", t.user_attrs.get("cell"))
        cell = meta["cells"][index] if index is not None else {}
        rows.append(_row(t, cell, t.user_attrs, cfg, index, attrs))
    return rows


def _tpe_rows(storage: str, meta: dict[str, Any], cfg: StudyConfig) -> list[dict[str, Any]]:
    rows = []
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))
             if s.study_name.startswith(meta["name"] + "/")]
    for name in sorted(names):
        study = load_optuna_study(storage, name)
        attrs = study.user_attrs
        for t in study.get_trials(deepcopy=False):
            for run in t.user_attrs.get("runs", []):
                rows.append(_row(t, run["cell"], run, cfg, None, attrs))
    return rows


def _row(t, cell: dict[str, Any], record: dict[str, Any], cfg: StudyConfig, index,
         study_attrs: dict[str, Any]) -> dict[str, Any]:
    final = record.get("final", {})
    method, r, k = budget_key(cell, cfg.base) if cell else (None, None, None)
    row = {"trial": t.number, "cell": index, "state": t.state.name, **{key: cell.get(key) for key in GRID_KEYS},
           "r": r, "k": k, "method": method,
           "learning_rate": cell.get("learning_rate") if cell.get("learning_rate") is not None
           else (cfg.base.train.learning_rate if method not in (None, "base") else None),
           "trainable_params": final.get("trainable_params"), "seconds": record.get("seconds"),
           "run_dir": record.get("run_dir"), "run_state": record.get("run_state"),
           "failure": failure_of(t, study_attrs) or (record.get("message") if t.state.name == "FAIL" else None),
           "host": t.user_attrs.get("host"),
           "retry_of": t.user_attrs.get("retry_of"), "duplicate_of": t.user_attrs.get("duplicate_of")}
    row.update({k: v for k, v in sorted(final.items()) if k.startswith(("eval_", "test_", "final_"))})
    return row


def trials_table(out_dir: str | Path) -> pd.DataFrame:
    """Return one row per run of the study in `out_dir`, read from its storage: trial, cell,
    state (COMPLETE / FAIL / PRUNED / RUNNING), the grid values, trainable_params, seconds,
    run_dir (relative to the folder), the final train and eval metrics."""
    cfg, meta = read_study_folder(out_dir)
    if meta.get("tpe"):
        rows = _tpe_rows(meta["storage"], meta, cfg)
    else:
        rows = _grid_rows(load_optuna_study(meta["storage"], meta["name"]), meta, cfg)
    table = pd.DataFrame(rows)
    for col in ("cell", "r", "k", "rb_splits", "steps", "seed", "trainable_params", "retry_of", "duplicate_of"):
        if col in table:
            table[col] = table[col].astype("Int64")
    return table


def summary_table(out_dir: str | Path, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return the summary (one row per method, r, k) of the study in `out_dir`; `seeds_missing`
    counts against the grid's seeds."""
    cfg, _ = read_study_folder(out_dir)
    trials = trials_table(out_dir) if trials is None else trials
    if trials.empty or cfg.metric not in trials:
        return summarize(pd.DataFrame(columns=["method", "r", "k", "learning_rate", "trainable_params",
                                               "state", cfg.metric]), cfg.metric, cfg.direction)
    return summarize(trials, cfg.metric, cfg.direction, list(cfg.grid.method), len(set(cfg.grid.seed)))


def export_tables(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write DIR/trials.csv and DIR/summary.csv from the storage; return both tables."""
    from idlora_core.cache import write_text_atomic

    trials = trials_table(out_dir)
    summary = summary_table(out_dir, trials)
    write_text_atomic(Path(out_dir) / TRIALS_FILE, trials.to_csv(index=False))
    write_text_atomic(Path(out_dir) / SUMMARY_FILE, summary.to_csv(index=False))
    return trials, summary
