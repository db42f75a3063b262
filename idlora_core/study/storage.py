"""Where a study lives: the Optuna storage (SQLite in the study folder by default, any RDB URL, or
an Optuna journal file) and the study folder's own files (study.yaml, study.json).

Several processes, on one machine or many, join one study by opening the same storage; the
folder files only let a later command (or the app) find the storage again.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import optuna

from idlora_core.cache import write_text_atomic
from idlora_core.config import ConfigError
from idlora_core.study.config import StudyConfig, dumps_study, load_study

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
STUDY_FILE = "study.yaml"
META_FILE = "study.json"
DB_FILE = "study.db"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
HEARTBEAT_S = int(os.environ.get("IDLORA_STUDY_HEARTBEAT_S", "20"))


def default_storage(out_dir: str | Path) -> str:
    """Return the default storage URL of a study folder: SQLite file `DIR/study.db`."""
    return f"sqlite:///{Path(out_dir).resolve() / DB_FILE}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Return the Optuna storage at `url`: a journal file (`journal:PATH` or a path ending in .log /
    .journal / .jsonl) or an RDB URL (sqlite:///, postgresql://, mysql://). RDB storages get a
    heartbeat, so a trial whose worker died is marked failed and retried once."""
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError([f"--storage {url!r}: expected an RDB URL (sqlite:///path.db, "
                           "postgresql://user@host/db) or a journal file (journal:PATH or *.log)"])
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def write_study_folder(study: StudyConfig, out_dir: str | Path, storage_url: str, name: str,
                       cells: list[dict[str, Any]]) -> None:
    """Write DIR/study.yaml (the resolved study) and DIR/study.json (name, storage, cells)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / STUDY_FILE, dumps_study(study))
    write_text_atomic(out / META_FILE, json.dumps(
        {"name": name, "storage": storage_url, "metric": study.metric, "direction": study.direction,
         "tpe": study.grid.tpe, "cells": cells}, indent=1))


def read_study_folder(out_dir: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """Return (StudyConfig, study.json contents) of a study folder; ConfigError when it is none."""
    out = Path(out_dir)
    if not (out / STUDY_FILE).is_file() or not (out / META_FILE).is_file():
        raise ConfigError([f"{out} is not a study folder (no {STUDY_FILE} / {META_FILE}); run "
                           f"`python -m idlora_core.study STUDY.yaml --out {out}` first"])
    study = load_study(out / STUDY_FILE)  # bounded YAML: the folder may come from anyone
    return study, json.loads((out / META_FILE).read_text(encoding="utf-8"))


def load_optuna_study(storage: str | optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Return the existing Optuna study `name` in `storage` (a URL for `open_storage`, or a
    storage it opened)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str):
        storage = open_storage(storage)
    return optuna.load_study(study_name=name, storage=storage)
