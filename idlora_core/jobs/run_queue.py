"""The lab server's one run queue: runs from every session wait in one FIFO under one limit (`idlora_core.jobs.slots`).

The queue lives on disk, in `RUNS_ROOT/.queue/`, not in any browser session: closing a tab
does not lose or stall its queued runs, a restarted server finds them again, and two server
processes on one runs folder share it. Layout:
  waiting/<ns-time>-<id>.json   a run to start (config, run folder, label, owner, and its
                                `throughput.RunShape` for wait estimates); FIFO by file name;
                                written once, never changed
  active/<id>.json              a started run: its folder, process id, owner, shape, memory cap
  seen/<owner hash>             touched while the owner's page is open (its heartbeat)
  lock                          flock'ed while the queue is changed
`QueueWorker` (one thread per server process) calls `pump()` every second: while fewer
runs are alive than `slots.max_runs()`, the oldest waiting run is started with
`idlora_core.jobs.runs.start_run` under the server's memory cap, and waiting runs whose owner
has not been seen for the ticket lifetime are dropped. Sessions `submit` (at most their
share: `idlora_core.jobs.limits`), `withdraw` their own tickets and ask for `places()`.
A started run's folder gets `owner.json` (`idlora_core.jobs.owners`): who may list it later.
`cancel(id, owner)` refuses another owner's run (PermissionError) unless `instructor=True`.

Reading the queue costs one directory listing: a ticket file is parsed once per process (its
name is unique and its content never changes), so a page that shows places for 1,000
tickets reads each file once, then none. No Streamlit here; the Fine-tune page shows the places.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idlora_core.cache import write_text_atomic
from idlora_core.config import RunConfig, loads_config, parse_config
from idlora_core.jobs import limits, owners, runs, slots, throughput
from idlora_core.training.run_files import RunState, write_status
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
    `idlora_core.jobs.runs.start_run` under the server's memory cap, IDLORA_MAX_RUN_MEMORY_GB).
    ttl_s: seconds a waiting ticket outlives its owner's last heartbeat (default
    IDLORA_TICKET_TTL_MINUTES); tickets without an owner never expire.
    """

    def __init__(self, runs_root: str | Path, limit: int | None = None,
                 launcher: Callable[..., runs.RunHandle] | None = None,
                 ttl_s: float | None = None) -> None:
        self.root = Path(runs_root).expanduser().resolve()
        self.dir = self.root / QUEUE_DIR
        self.limit = limit
        self.launcher = launcher or self._start_capped
        self.ttl_s = ttl_s
        self._children: dict[str, subprocess.Popen] = {}  # processes this object started
        self._parsed: dict[str, dict[str, Any] | None] = {}  # waiting file name -> entry sans config
        self._parse_lock = threading.Lock()
        self.reads = 0  # ticket files this object has parsed (each at most once)
        self.expired = 0  # waiting tickets dropped because their owner was gone

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for sub in ("waiting", "active", "seen"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _start_capped(self, config: RunConfig, root: Path, name: str) -> runs.RunHandle:
        return runs.start_run(config, root, name, memory_cap_gb=limits.server_limits().run_memory_gb,
                              threads=slots.threads_per_run())

    def _read(self, path: Path) -> dict[str, Any] | None:
        self.reads += 1
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # removed meanwhile, or written by hand: not ours to start
        return data if isinstance(data, dict) and "id" in data and "run_dir" in data else None

    def _active(self) -> list[tuple[Path, dict[str, Any]]]:
        found = []
        for path in sorted((self.dir / "active").glob("*.json")):
            entry = self._read(path)
            if entry is not None:
                found.append((path, entry))
        return found

    def _waiting_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir / "waiting") if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def waiting(self) -> list[dict[str, Any]]:
        """Return the waiting entries, first in line first (id, run_dir, label, owner, submitted,
        file): one directory listing; each ticket file is parsed once per RunQueue object."""
        names = self._waiting_files()
        with self._parse_lock:
            for name in names:
                if name not in self._parsed:
                    entry = self._read(self.dir / "waiting" / name)
                    self._parsed[name] = None if entry is None else (
                        {k: v for k, v in entry.items() if k != "config"} | {"file": name})
            if len(self._parsed) > len(names):  # forget tickets that left the queue
                keep = set(names)
                self._parsed = {n: e for n, e in self._parsed.items() if n in keep}
            return [e for e in (self._parsed.get(n) for n in names) if e is not None]

    def places(self) -> dict[str, int]:
        """Return {ticket id: 1-based place} of every waiting run, from one read of the queue."""
        return {entry["id"]: i for i, entry in enumerate(self.waiting(), 1)}

    def place(self, ticket_id: str) -> int | None:
        """Return the 1-based place of `ticket_id` among all waiting runs, or None when not waiting
        (a whole-queue read: call `places()` once for several tickets)."""
        return self.places().get(ticket_id)

    def owned(self, owner: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return (waiting entries, live running entries) of `owner`."""
        return ([e for e in self.waiting() if e.get("owner") == owner],
                [e for e in self.running() if e.get("owner") == owner])

    def submit(self, config: RunConfig, *, label: str = "", owner: str = "",
               name: str | None = None) -> Ticket:
        """Queue `config` to train in a new folder `runs_root/name`; return its Ticket."""
        return self.submit_many([(label, config)], owner=owner, names=[name])[0]

    def submit_many(self, planned: list[tuple[str, RunConfig]], *, owner: str = "",
                    share: int | None = None, names: list[str | None] | None = None) -> list[Ticket]:
        """Queue every (label, config) of `planned` at once, in order; return their Tickets.

        share: the most runs `owner` may have queued or running (IDLORA_MAX_QUEUED_PER_USER on
        the lab server); when this submission would pass it, nothing is queued and
        limits.LimitError says so in one line. Raises runs.RunPathError for a taken folder name.
        """
        names = names or [None] * len(planned)
        with self._locked():
            waiting = self.waiting()
            if share is not None:
                mine = sum(e.get("owner") == owner for e in waiting) + sum(
                    e.get("owner") == owner for e in self.running())
                limits.check_share(mine, len(planned), share, "runs", "IDLORA_MAX_QUEUED_PER_USER")
            taken = {e["run_dir"] for e in waiting}
            tickets = []
            for (label, config), name in zip(planned, names, strict=True):
                run_dir = runs.safe_run_dir(self.root, name or runs.new_run_name(config.adapter.method))
                if run_dir.exists() or str(run_dir) in taken:
                    raise runs.RunPathError(f"run folder {run_dir} already exists or is queued")
                taken.add(str(run_dir))
                ticket = Ticket(uuid.uuid4().hex[:12], run_dir, label or run_dir.name, config.adapter.method)
                entry = {"id": ticket.id, "run_dir": str(run_dir), "label": ticket.label, "owner": owner,
                         "method": ticket.method, "submitted": time.time(),
                         "shape": asdict(throughput.RunShape.of(config)),  # for the wait estimates
                         "config": config.model_dump(mode="json")}  # JSON: 100x faster than YAML
                write_text_atomic(self.dir / "waiting" / f"{time.time_ns():020d}-{ticket.id}.json",
                                  json.dumps(entry))
                tickets.append(ticket)
        if owner:
            self.touch(owner)
        return tickets

    def _seen_path(self, owner: str) -> Path:
        return self.dir / "seen" / hashlib.sha1(owner.encode()).hexdigest()[:20]

    def touch(self, owner: str) -> None:
        """Record that `owner`'s page is open now (its heartbeat keeps its waiting runs queued)."""
        path = self._seen_path(owner)
        try:
            path.touch()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def _last_seen(self, owner: str) -> float:
        try:
            return self._seen_path(owner).stat().st_mtime
        except OSError:
            return 0.0

    def expire(self, now: float | None = None) -> int:
        """Drop the waiting runs whose owner's heartbeat (or, without one, its submission) is older
        than the ticket lifetime; return how many were dropped. Runs without an owner stay."""
        ttl = self.ttl_s if self.ttl_s is not None else limits.server_limits().ticket_ttl_minutes * 60
        now = time.time() if now is None else now
        seen: dict[str, float] = {}
        gone = 0
        for entry in self.waiting():
            owner = entry.get("owner")
            if not owner:
                continue
            if owner not in seen:
                seen[owner] = self._last_seen(owner)
            if now - max(seen[owner], float(entry.get("submitted") or 0)) > ttl:
                (self.dir / "waiting" / entry["file"]).unlink(missing_ok=True)
                gone += 1
        self.expired += gone
        return gone

    def running(self) -> list[dict[str, Any]]:
        """Return the started runs whose process is still alive (run_dir, pid, label, owner, ...)."""
        self._reap()
        return [e for _, e in self._active() if pid_alive(e.get("pid"))]

    def slots_in_use(self) -> int:
        """Return how many training processes hold a slot of the server's limit: this queue's
        live runs, runs started by hand in the runs folder, and the workers of running studies."""
        return slots.slots_in_use(self.root, [Path(e["run_dir"]) for e in self.running()])

    def _reap(self) -> None:
        for key, proc in list(self._children.items()):
            if proc.poll() is not None:  # ended: reaped, so its pid no longer looks alive
                del self._children[key]

    def _waiting_file(self, ticket_id: str) -> Path | None:
        suffix = f"-{ticket_id}.json"
        name = next((n for n in self._waiting_files() if n.endswith(suffix)), None)
        return None if name is None else self.dir / "waiting" / name

    def withdraw(self, ticket_id: str, owner: str) -> bool:
        """Take `owner`'s waiting run `ticket_id` out of the queue; True when it was waiting and
        theirs (another user's ticket is never touched)."""
        with self._locked():
            path = self._waiting_file(ticket_id)
            entry = None if path is None else self._read(path)
            if entry is None or entry.get("owner") != owner:
                return False
            path.unlink(missing_ok=True)
            return True

    def cancel(self, ticket_id: str, owner: str | None = None, *, instructor: bool = False) -> bool:
        """Withdraw a waiting run, or ask a started one to stop (SIGTERM); True when found.

        owner: the user asking; a run of another owner raises PermissionError unless `instructor`
        (None: the server itself asks, e.g. a class study after its own check)."""
        with self._locked():
            path = self._waiting_file(ticket_id)
            entry = None if path is None else self._read(path)
            live = None
            if entry is None:
                live = next((e for _, e in self._active() if e.get("id") == ticket_id and pid_alive(e.get("pid"))),
                            None)
            found = entry or live
            if found is None:
                return False
            if owner is not None and not instructor and found.get("owner") != owner:
                raise PermissionError(f"run {found.get('label') or ticket_id!r} belongs to another user: only "
                                      "its owner or the instructor can cancel it")
            if entry is not None:
                path.unlink(missing_ok=True)
            else:
                os.kill(live["pid"], signal.SIGTERM)
            return True

    def pump(self) -> list[runs.RunHandle]:
        """Start the oldest waiting runs while fewer than the limit are alive; return their handles.

        Also closes the books on started runs whose process died without a final status
        (`runs.settle_run`: "out of memory under the server's cap" when that was the cause) and
        drops waiting runs whose owner is gone (`expire`).
        """
        limit = self.limit or slots.max_runs()
        started: list[runs.RunHandle] = []
        with self._locked():
            self._reap()
            for path, entry in self._active():
                if pid_alive(entry.get("pid")):
                    continue
                runs.settle_run(entry["run_dir"], entry.get("memory_cap_gb"))
                path.unlink(missing_ok=True)
            self.expire()
            alive = self.slots_in_use()
            for entry in self.waiting():
                if alive >= limit:
                    break
                path = self.dir / "waiting" / entry["file"]
                full = self._read(path)
                path.unlink(missing_ok=True)
                if full is None:
                    continue
                run_dir = Path(entry["run_dir"])
                try:
                    raw = full["config"]  # a mapping; YAML text in tickets of older versions
                    config = parse_config(raw) if isinstance(raw, dict) else loads_config(raw)
                    handle = self.launcher(config, self.root, run_dir.name)
                except (OSError, ValueError) as exc:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    write_status(run_dir, RunState.failed, f"could not start: {exc}", pid=None)
                    self._record_owner(run_dir, entry)
                    continue
                self._record_owner(run_dir, entry)
                pid = getattr(handle.process, "pid", None)
                if handle.process is not None:
                    self._children[entry["id"]] = handle.process
                write_text_atomic(self.dir / "active" / f"{entry['id']}.json", json.dumps(
                    {"id": entry["id"], "run_dir": str(run_dir), "label": entry.get("label", ""),
                     "owner": entry.get("owner", ""), "pid": pid, "started": time.time(),
                     "shape": entry.get("shape"), "method": entry.get("method", ""),
                     "memory_cap_gb": getattr(handle, "memory_cap_gb", None)}))
                started.append(handle)
                alive += 1
        return started

    @staticmethod
    def _record_owner(run_dir: Path, entry: dict[str, Any]) -> None:
        """Write owner.json into a started run's folder (who may list it: idlora_core.jobs.owners)."""
        if entry.get("owner") and run_dir.is_dir():
            with contextlib.suppress(OSError):  # a full disk: the run trains, unlisted to its owner
                owners.write_owner(run_dir, entry["owner"], entry.get("label", ""))


def free_run_slots(runs_root: str | Path) -> int:
    """Return how many more processes may train now under the server's global run limit
    (`slots.max_runs()`): the limit minus queued runs alive, runs started by hand in the runs
    folder and the workers of studies still running."""
    return slots.max_runs() - RunQueue(runs_root).slots_in_use()


def ticket_state(queue: RunQueue, ticket: Ticket) -> tuple[RunState | str, int | None]:
    """Return (state, place) of a ticket: ('queued', place in line) while waiting (a queue
    state, not a RunState), else the run folder's RunState (starting until its folder appears)
    and None."""
    place = queue.places().get(ticket.id)
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
