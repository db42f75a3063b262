"""The lab server's one run queue: runs from every session wait in one FIFO under one limit (`idlora_core.jobs.slots`).

The queue lives on disk, in `RUNS_ROOT/.queue/`, not in any browser session: closing a tab
does not lose or stall its queued runs, a restarted server finds them again, and two server
processes on one runs folder share it. Layout:
  waiting/<ns-time>-<id>.json   a run to start (config YAML, run folder, label, owner); FIFO
                                by file name
  active/<id>.json              a started run: its folder and process id
  lock                          flock'ed while the queue is changed
`QueueWorker` (one thread per server process) calls `pump()` every second: while fewer
runs are alive than `slots.max_runs()`, the oldest waiting run is started with
`idlora_core.jobs.runs.start_run`. Sessions only `submit`, `cancel` and ask for their `place`.

No Streamlit here; the Fine-tune page shows the places.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idlora_core.cache import write_text_atomic
from idlora_core.config import RunConfig, dumps_config, loads_config
from idlora_core.jobs import runs, slots
from idlora_core.training.run_files import ACTIVE_STATES, RunState, read_status, write_status
from idlora_core.training.run_folder import pid_alive

QUEUE_DIR = ".queue"


@dataclass(frozen=True)
class Ticket:
    """A submitted run: its queue id, the folder it will train in, its label and method."""

    id: str
    run_dir: Path
    label: str
    method: str = ""


class RunQueue:
    """The on-disk FIFO of runs under `runs_root` with at most `limit` (default `slots.max_runs()`) alive.

    launcher(config, runs_root, name) starts one run and returns its RunHandle (default
    `idlora_core.jobs.runs.start_run`).
    """

    def __init__(self, runs_root: str | Path, limit: int | None = None,
                 launcher: Callable[..., runs.RunHandle] = runs.start_run) -> None:
        self.root = Path(runs_root).expanduser().resolve()
        self.dir = self.root / QUEUE_DIR
        self.limit = limit
        self.launcher = launcher
        self._children: dict[str, subprocess.Popen] = {}  # processes this object started

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for sub in ("waiting", "active"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _entries(self, sub: str) -> list[tuple[Path, dict[str, Any]]]:
        found = []
        for path in sorted((self.dir / sub).glob("*.json")):
            try:
                found.append((path, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue  # removed meanwhile, or written by hand: not ours to start
        return found

    def submit(self, config: RunConfig, *, label: str = "", owner: str = "",
               name: str | None = None) -> Ticket:
        """Queue `config` to train in a new folder `runs_root/name`; return its Ticket."""
        run_dir = runs.safe_run_dir(self.root, name or runs.new_run_name(config.adapter.method))
        ticket = Ticket(uuid.uuid4().hex[:12], run_dir, label or run_dir.name, config.adapter.method)
        entry = {"id": ticket.id, "run_dir": str(run_dir), "label": ticket.label, "owner": owner,
                 "submitted": time.time(), "config": dumps_config(config)}
        with self._locked():
            if run_dir.exists() or any(e["run_dir"] == str(run_dir) for _, e in self._entries("waiting")):
                raise runs.RunPathError(f"run folder {run_dir} already exists or is queued")
            write_text_atomic(self.dir / "waiting" / f"{time.time_ns():020d}-{ticket.id}.json",
                              json.dumps(entry))
        return ticket

    def waiting(self) -> list[dict[str, Any]]:
        """Return the waiting entries, first in line first (id, run_dir, label, owner, submitted)."""
        return [{k: v for k, v in e.items() if k != "config"} for _, e in self._entries("waiting")]

    def place(self, ticket_id: str) -> int | None:
        """Return the 1-based place of `ticket_id` among all waiting runs, or None when not waiting."""
        ids = [e["id"] for e in self.waiting()]
        return ids.index(ticket_id) + 1 if ticket_id in ids else None

    def running(self) -> list[dict[str, Any]]:
        """Return the started runs whose process is still alive (run_dir, pid, label, ...)."""
        self._reap()
        return [e for _, e in self._entries("active") if pid_alive(e.get("pid"))]

    def slots_in_use(self) -> int:
        """Return how many training processes hold a slot of the server's limit: this queue's
        live runs, runs started by hand in the runs folder, and the workers of running studies."""
        return slots.slots_in_use(self.root, [Path(e["run_dir"]) for e in self.running()])

    def _reap(self) -> None:
        for key, proc in list(self._children.items()):
            if proc.poll() is not None:  # ended: reaped, so its pid no longer looks alive
                del self._children[key]

    def cancel(self, ticket_id: str) -> bool:
        """Withdraw a waiting run, or ask a started one to stop (SIGTERM); True when found."""
        with self._locked():
            for path, entry in self._entries("waiting"):
                if entry.get("id") == ticket_id:
                    path.unlink(missing_ok=True)
                    return True
            for _, entry in self._entries("active"):
                if entry.get("id") == ticket_id and pid_alive(entry.get("pid")):
                    os.kill(entry["pid"], signal.SIGTERM)
                    return True
        return False

    def pump(self) -> list[runs.RunHandle]:
        """Start the oldest waiting runs while fewer than the limit are alive; return their handles.

        Also closes the books on started runs whose process died without a final status.
        """
        limit = self.limit or slots.max_runs()
        started: list[runs.RunHandle] = []
        with self._locked():
            self._reap()
            for path, entry in self._entries("active"):
                if pid_alive(entry.get("pid")):
                    continue
                status = read_status(entry["run_dir"])
                if status.get("state") in ACTIVE_STATES:  # crashed before writing its end
                    write_status(entry["run_dir"], RunState.failed, "the training process ended without a "
                                 "final status (see train.log)", pid=None)
                path.unlink(missing_ok=True)
            alive = self.slots_in_use()
            for path, entry in self._entries("waiting"):
                if alive >= limit:
                    break
                path.unlink(missing_ok=True)
                run_dir = Path(entry["run_dir"])
                try:
                    config = loads_config(entry["config"])
                    handle = self.launcher(config, self.root, run_dir.name)
                except (OSError, ValueError) as exc:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    write_status(run_dir, RunState.failed, f"could not start: {exc}", pid=None)
                    continue
                pid = getattr(handle.process, "pid", None)
                if handle.process is not None:
                    self._children[entry["id"]] = handle.process
                write_text_atomic(self.dir / "active" / f"{entry['id']}.json", json.dumps(
                    {"id": entry["id"], "run_dir": str(run_dir), "label": entry.get("label", ""),
                     "owner": entry.get("owner", ""), "pid": pid, "started": time.time()}))
                started.append(handle)
                alive += 1
        return started


def free_run_slots(runs_root: str | Path) -> int:
    """Return how many more processes may train now under the server's global run limit
    (`slots.max_runs()`): the limit minus queued runs alive, runs started by hand in the runs
    folder and the workers of studies still running."""
    return slots.max_runs() - RunQueue(runs_root).slots_in_use()


def ticket_state(queue: RunQueue, ticket: Ticket) -> tuple[RunState | str, int | None]:
    """Return (state, place) of a ticket: ('queued', place in line) while waiting (a queue
    state, not a RunState), else the run folder's RunState (starting until its folder appears)
    and None."""
    place = queue.place(ticket.id)
    if place is not None:
        return "queued", place
    if not ticket.run_dir.exists():
        return RunState.starting, None
    return runs.recorded_state(ticket.run_dir), None


_WORKERS: list[QueueWorker] = []


class QueueWorker(threading.Thread):
    """A daemon thread that pumps one RunQueue every `interval` seconds until `stop()` (or until
    its runs folder disappears)."""

    def __init__(self, queue: RunQueue, interval: float = 1.0) -> None:
        super().__init__(name=f"run-queue {queue.root}", daemon=True)
        self.queue, self.interval = queue, interval
        self._halt = threading.Event()
        self.errors: list[str] = []
        _WORKERS.append(self)

    def run(self) -> None:
        while not self._halt.is_set() and self.queue.root.is_dir():  # ends with its runs folder
            try:
                self.queue.pump()
            except Exception as exc:  # noqa: BLE001 - keep serving; the last errors are kept
                self.errors = (self.errors + [f"{type(exc).__name__}: {exc}"])[-5:]
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Ask the thread to end after its current pump."""
        self._halt.set()


def stop_workers() -> int:
    """Stop every QueueWorker of this process (tests, shutdown); return how many were running."""
    alive = [w for w in _WORKERS if w.is_alive()]
    for worker in alive:
        worker.stop()
    for worker in alive:
        worker.join(5)
    _WORKERS.clear()
    return len(alive)
