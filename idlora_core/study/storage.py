"""Where a study lives: the Optuna storage (SQLite in the study folder by default, any RDB URL, or
an Optuna journal file) and the study folder's own files (study.yaml, study.json).

Several processes, on one machine or many, join one study by opening the same storage; the
folder files only let a later command (or the app) find the storage again. One coordinator at a
time owns a study folder: `StudyLock` (an flock on DIR/.study.lock, held for the process's life).

Dead workers: each worker writes a `heartbeat` user attr on its running trial every
`heartbeat_seconds()` (any storage), and RDB storages also get Optuna's own heartbeat
(`heartbeat_interval`, `grace_period`, `fail_stale_trials`). A trial whose heartbeat stops for
`grace_seconds()` is failed by any other worker, on any host (worker.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
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
LOCK_FILE = ".study.lock"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
LOST = "worker lost (no heartbeat)"  # the failure of a trial whose worker stopped beating
FAILURE_ATTR = "failure:{}"  # study user attr: why trial N failed when another process failed it


def heartbeat_seconds() -> int:
    """Return the seconds between two heartbeats of a running trial (IDLORA_STUDY_HEARTBEAT_S, default 20)."""
    text = os.environ.get("IDLORA_STUDY_HEARTBEAT_S", "20")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError([f"IDLORA_STUDY_HEARTBEAT_S={text!r}: expected a whole number of seconds >= 1, e.g. 20"])
    return value


def grace_seconds() -> int:
    """Return how long (seconds) a trial's heartbeat may stay unchanged before it counts as lost:
    three heartbeats."""
    return 3 * heartbeat_seconds()


def is_journal(url: str) -> bool:
    """Return True when `url` names an Optuna journal file rather than an RDB."""
    return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)


def record_failure(study: optuna.Study, number: int, reason: str) -> None:
    """Note on the study (a study user attr) why trial `number` failed, for a trial that another
    process fails: Optuna offers no public way to set a finished trial's own attrs."""
    study.set_user_attr(FAILURE_ATTR.format(number), reason)


def _stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat-stale callback (RDB storages): note why the trial failed; the worker
    loop queues the cell again (worker.requeue), so every cell ends done once."""
    record_failure(study, trial.number, LOST)


def default_storage(out_dir: str | Path) -> str:
    """Return the default storage URL of a study folder: SQLite file `DIR/study.db`."""
    return f"sqlite:///{Path(out_dir).resolve() / DB_FILE}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Return the Optuna storage at `url`: a journal file (`journal:PATH` or a path ending in .log /
    .journal / .jsonl) or an RDB URL (sqlite:///, postgresql://, mysql://). RDB storages get a
    heartbeat too (Optuna's: `fail_stale_trials` fails a trial silent for grace_seconds())."""
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError([f"--storage {url!r}: expected an RDB URL (sqlite:///path.db, "
                           "postgresql://user@host/db) or a journal file (journal:PATH or *.log)"])
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_seconds(), grace_period=grace_seconds(),
        heartbeat_stale_trial_callback=_stale_trial,
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


def load_optuna_study(storage: str | optuna.storages.BaseStorage, name: str,
                      sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Return the existing Optuna study `name` in `storage` (a URL for `open_storage`, or a
    storage it opened), with `sampler`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str):
        storage = open_storage(storage)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


class StudyBusyError(ConfigError):
    """Another coordinator holds the study folder (its message is the one line to print)."""

    def __init__(self, line: str) -> None:
        self.errors = [line]
        ValueError.__init__(self, line)


class StudyLock:
    """The exclusive right of one coordinator to a study folder: a non-blocking `fcntl.flock` on
    DIR/.study.lock, held while the process lives (the kernel drops it when the process dies,
    however it dies). The file records the holder (pid, host, start time) for the refusal."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StudyLock:
        """Take the lock; raises StudyBusyError (one line naming the holder) when another process
        has it, ConfigError when the folder cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError([f"--out {self.path.parent}: cannot create the study folder's lock "
                               f"({exc.strerror or exc}); choose a folder you can write to"]) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StudyBusyError(f"the study folder {self.path.parent} is in use by another study command, "
                                 f"{holder}: wait for it to finish or stop it (SIGTERM), or choose another "
                                 "--out") from None
        except OSError as exc:  # a file system without locks (some network mounts): go on unguarded
            print(f"warning: cannot lock {self.path} ({exc.strerror or exc}): a second study command on "
                  "this folder would not be refused", flush=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    started = data.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {data.get('pid', '?')} on host {data.get('host', '?')} (since {when})"
