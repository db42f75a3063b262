"""Background work of the app: one bounded pool for the scans, sweeps, grid checks and UMAP
projections that pages start, off the Streamlit script thread, and who owns them.

A page submits `fn(job, ...)` with `submit(...)` and polls the returned Job on each rerun (an
`st.fragment(run_every=...)`); `fn` reports progress with `job.report(fraction, text)`, which
raises JobCancelled once the owner pressed Cancel, so a long scan stops between two layers. The
pool is bounded three ways (`idlora_core.jobs.limits`): IDLORA_BACKGROUND_WORKERS threads (at
lowered priority), at most IDLORA_MAX_BACKGROUND_JOBS jobs queued or running in the whole
server and IDLORA_MAX_JOBS_PER_SESSION per user; a submission past a bound is refused with one
line (JobRefused) instead of waiting behind dropped work. A stuck job therefore only holds its
worker: renders and /_stcore/health never wait for it.

Who is a user: the session (a random id kept in its session state), or, when the admin names a
header set by an authenticating proxy in IDLORA_USER_HEADER (e.g. X-Forwarded-User), that
header's value. The header is trusted only when named: without a proxy anyone could send it.

The maths is in `analysis/`; this file owns the executor, the job table and the identities.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from analysis.projection import umap_2d, umap_is_warm, warm_umap
from idlora_core.jobs.limits import server_limits
from idlora_core.jobs.run_queue import QueueWorker, RunQueue

__all__ = ["Job", "JobCancelled", "JobPool", "JobRefused", "keep_alive", "poll", "pool", "result_when_ready",
           "session_id", "show_job", "submit", "umap_async", "umap_is_warm", "user_id", "warm_umap_async"]

QUEUE_ROOT = "_idlora_queue_root"  # the runs folder whose queue holds this session's runs
HEARTBEAT_SECONDS = 30.0
SERVER = "server"  # owner of the server's own jobs: no per-user share
FINISHED_KEPT = 32  # finished jobs (and their results) kept per process
POLL_SECONDS = 1.0  # how often a page polls its unfinished job


class JobRefused(RuntimeError):
    """A job over the pool's bounds; the message is one line for the page."""


class JobCancelled(Exception):
    """Raised inside a job by `Job.report` once its owner asked it to stop."""


class Job:
    """One background job: its owner, kind, label and dedup key, progress, and a Future-like
    face (`done`, `result`, `exception`, `cancelled`) over the executor's Future."""

    _ids = itertools.count(1)

    def __init__(self, owner: str, kind: str, label: str, key: str | None) -> None:
        self.id = f"{kind}-{next(self._ids)}"
        self.owner, self.kind, self.label, self.key = owner, kind, label, key
        self.sharers: set[str] = set()  # other users who asked for the same key and wait for it
        self.submitted = time.time()
        self.started: float | None = None
        self.fraction, self.message = 0.0, "waiting for a free worker"
        self.future: Future = Future()
        self._stop = threading.Event()

    def report(self, fraction: float, message: str = "") -> None:
        """Record progress (0..1, one line); raises JobCancelled when the job was cancelled."""
        if self._stop.is_set():
            raise JobCancelled(f"{self.label}: cancelled")
        self.fraction, self.message = min(max(float(fraction), 0.0), 1.0), message

    def cancel(self) -> None:
        """Stop the job: withdrawn if it has not started, else at its next `report`."""
        self._stop.set()
        self.future.cancel()

    @property
    def stopping(self) -> bool:
        """True once cancel() was called."""
        return self._stop.is_set()

    @property
    def state(self) -> str:
        """'waiting' | 'running' | 'done' | 'failed' | 'cancelled'."""
        if self.future.cancelled() or (self.future.done() and isinstance(self.future.exception(), JobCancelled)):
            return "cancelled"
        if self.future.done():
            return "failed" if self.future.exception() is not None else "done"
        return "running" if self.started is not None else "waiting"

    def done(self) -> bool:
        """True when the job finished, failed or was cancelled."""
        return self.future.done()

    def cancelled(self) -> bool:
        """True when the job was cancelled."""
        return self.state == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """Return the job's result (waits up to `timeout` seconds; raises its error)."""
        return self.future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the job's error, or None (waits up to `timeout` seconds)."""
        if self.future.cancelled():
            return JobCancelled(f"{self.label}: cancelled")
        return self.future.exception(timeout)


def _lower_thread_priority() -> None:
    # Background work (scans, numba compiles, projections) must not slow the page in front of
    # the user on a small CPU: nice this worker thread (threads it starts inherit it).
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class JobPool:
    """A bounded thread pool: `workers` threads, at most `max_jobs` jobs waiting or running in all
    and `per_owner` per owner (the SERVER owner has no share of its own)."""

    def __init__(self, workers: int = 1, max_jobs: int = 8, per_owner: int = 2) -> None:
        self.max_jobs, self.per_owner = max_jobs, per_owner
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="idlora-job",
                                            initializer=_lower_thread_priority)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # id -> job, oldest first

    def _forget_finished(self) -> None:
        done = [j for j in self._jobs.values() if j.done()]
        for job in done[: max(0, len(done) - FINISHED_KEPT)]:
            del self._jobs[job.id]

    def submit(self, fn: Callable[..., Any], *args: Any, owner: str, kind: str, label: str,
               key: str | None = None, supersede: bool = False, **kwargs: Any) -> Job:
        """Run `fn(job, *args, **kwargs)` on a worker; return its Job.

        A job with the same `key` that is waiting, running or done is returned instead (a failed
        or cancelled one is retried), and the asking user becomes one of its sharers. supersede:
        first drop the owner's other unfinished jobs of this `kind` (a new layer's UMAP replaces
        the old one's): cancelled when no one else shares them, else handed to a sharer, so one
        student's new setting never cancels what another student waits for. Raises JobRefused
        when the pool or the owner's share is full.
        """
        with self._lock:
            if key is not None:
                same = next((j for j in reversed(self._jobs.values()) if j.key == key), None)
                if same is not None and same.state in ("waiting", "running", "done"):
                    if same.owner != owner:
                        same.sharers.add(owner)
                    return same
            if supersede:
                for old in self._jobs.values():
                    if old.kind != kind or old.done():
                        continue
                    old.sharers.discard(owner)
                    if old.owner == owner and old.sharers:  # others wait for it: theirs now
                        old.owner = old.sharers.pop()
                    elif old.owner == owner:
                        old.cancel()
            active = [j for j in self._jobs.values() if not j.done()]
            if len(active) >= self.max_jobs:
                raise JobRefused(f"the server's background queue is full ({self.max_jobs} jobs, "
                                 "IDLORA_MAX_BACKGROUND_JOBS): try again in a minute")
            mine = [j for j in active if j.owner == owner]
            if owner != SERVER and len(mine) >= self.per_owner:
                raise JobRefused(f"you already have {len(mine)} background job(s) waiting or running "
                                 f"({', '.join(j.label for j in mine)}); this server allows "
                                 f"{self.per_owner} per user (IDLORA_MAX_JOBS_PER_SESSION): wait or "
                                 "cancel one")
            job = Job(owner, kind, label, key)
            job.future = self._executor.submit(self._run, job, fn, args, kwargs)
            self._jobs[job.id] = job
            self._forget_finished()
            return job

    @staticmethod
    def _run(job: Job, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if job.stopping:
            raise JobCancelled(f"{job.label}: cancelled")
        job.started = time.time()
        job.message = "started"
        return fn(job, *args, **kwargs)

    def jobs(self, owner: str | None = None, kind: str | None = None) -> list[Job]:
        """Return the jobs kept (waiting, running and the last finished), oldest first."""
        with self._lock:
            return [j for j in self._jobs.values()
                    if (owner is None or j.owner == owner) and (kind is None or j.kind == kind)]

    def cancel(self, job_id: str, owner: str) -> bool:
        """Cancel `owner`'s unfinished job `job_id`; True when it was theirs and unfinished."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != owner or job.done():
            return False
        job.cancel()
        return True

    def busy(self) -> int:
        """Return how many jobs are waiting or running."""
        with self._lock:
            return sum(not j.done() for j in self._jobs.values())

    def shutdown(self) -> None:
        """Cancel the waiting jobs and stop the workers after their current job (tests)."""
        for job in self.jobs():
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


_POOL: JobPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> JobPool:
    """Return this server process's pool, sized by the server's limits on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            lim = server_limits()
            _POOL = JobPool(lim.background_workers, lim.background_jobs, lim.jobs_per_session)
        return _POOL


def reset_pool() -> None:
    """Shut the process's pool down; the next `pool()` builds a new one from the limits (tests)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL = None


def session_id() -> str:
    """Return this browser session's random id (kept in its session state); 'bare' outside a
    Streamlit session (a script or a test calling the functions directly)."""
    if get_script_run_ctx(suppress_warning=True) is None:
        return "bare"
    return st.session_state.setdefault("_idlora_session", uuid.uuid4().hex[:12])


def user_id() -> str:
    """Return who owns this session's queued runs, studies and jobs: 'user:NAME' from the header
    named in IDLORA_USER_HEADER when the proxy sent it, else 'session:ID'."""
    header = os.environ.get("IDLORA_USER_HEADER", "").strip()
    if header:
        with contextlib.suppress(Exception):  # no request context (a bare script run)
            name = (st.context.headers.get(header) or "").strip()
            if name:
                return "user:" + name[:200]
    return "session:" + session_id()


def keep_alive() -> None:
    """While this session has runs in the server's queue (the Fine-tune page sets QUEUE_ROOT), touch
    its owner's heartbeat every HEARTBEAT_SECONDS from whatever page is open: a closed tab stops
    it, and the queue drops its waiting runs after IDLORA_TICKET_TTL_MINUTES."""
    root = st.session_state.get(QUEUE_ROOT)
    if not root:
        return

    @st.fragment(run_every=HEARTBEAT_SECONDS)
    def heartbeat() -> None:
        RunQueue(root).touch(user_id())

    heartbeat()


def submit(fn: Callable[..., Any], *args: Any, kind: str, label: str, key: str | None = None,
           supersede: bool = False, **kwargs: Any) -> Job:
    """Submit `fn(job, ...)` to the server's pool as this session's user (see JobPool.submit)."""
    return pool().submit(fn, *args, owner=user_id(), kind=kind, label=label, key=key,
                         supersede=supersede, **kwargs)


def show_job(job: Job, cancel_key: str) -> None:
    """Draw a job's progress bar and, while it waits or runs, a Cancel button (key `cancel_key`);
    a job another user submitted (an identical request this session shares) gets a note instead,
    since only its owner may cancel it."""
    state = job.state
    text = {"waiting": "waiting for a free worker (other sessions' jobs run first)"}.get(state, job.message)
    st.progress(job.fraction, text=f"{job.label}: {text}")
    if state not in ("waiting", "running"):
        return
    if job.owner != user_id():
        st.caption("Another session asked for the same computation first: you share its result.")
    elif st.button("Cancel", key=cancel_key):
        pool().cancel(job.id, job.owner)
        st.toast(f"Cancelling {job.label} (it stops after its current step).")


@st.fragment(run_every=POLL_SECONDS)
def poll(job: Job, cancel_key: str) -> None:
    """Draw `job`'s progress and Cancel every POLL_SECONDS; the whole page reruns once it ended."""
    if job.done():
        st.rerun()
    show_job(job, cancel_key)


def result_when_ready(fn: Callable[..., Any], *args: Any, kind: str, label: str, key: str,
                      panel: str, **kwargs: Any) -> Any | None:
    """Return `fn(job, *args, **kwargs)` computed in the pool, or None while it is not ready.

    For page work that must not run on the script thread (a clustering, a projection, the
    spectra of a layer's clusters). `key` names the inputs: the same key is the same job, and the
    last result of each `panel` is kept in the session, so reruns neither wait nor recompute. While
    the job waits or runs this draws its progress and Cancel (the page reruns when it ends) and
    returns None; a refused submission or a cancelled job gets one line on the page and None. A
    failed job raises its error here, on the script thread, for the page to word."""
    state = st.session_state.setdefault("_idlora_panels", {})  # panel -> (key, job or result)
    kept_key, kept = state.get(panel, (None, None))
    if kept_key == key and not isinstance(kept, Job):
        return kept
    if kept_key == key and kept.state == "failed":  # not retried on every rerun: same inputs
        raise kept.exception()
    if kept_key == key and kept.state == "cancelled":  # not restarted on every rerun
        st.info(f"{label} was cancelled.")
        if not st.button(f"Start {label} again", key=f"{panel}_restart"):
            return None
    try:
        job = submit(fn, *args, kind=kind, label=label, key=key, supersede=True, **kwargs)
    except JobRefused as exc:
        st.warning(f"{label} waits: {exc}")
        return None
    state[panel] = (key, job)
    status = job.state  # read once: a job ending between two reads would leave nothing drawn
    if status == "done":
        state[panel] = (key, job.result())
        return state[panel][1]
    if status == "failed":
        raise job.exception()
    if status == "waiting" or status == "running":
        poll(job, f"{panel}_cancel")
    return None


def _umap(job: Job, X: np.ndarray, **params: Any) -> np.ndarray:
    job.report(0.0, "computing UMAP")
    return umap_2d(X, **params)


def _failed(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future


def umap_async(
    W: np.ndarray, *, normalize_rows: bool = False, n_neighbors: int = 15, seed: int = 0
) -> Job | Future:
    """Return the Job (Future-like) of `umap_2d(W, ...)` computed in the background pool.

    The same matrix and parameters return the same job, so callers can poll it on every rerun;
    a failed job is retried on the next call, and a session's new request cancels its older
    unfinished ones (no queue of abandoned layers). When the pool is full, returns a finished
    Future whose exception (JobRefused) says so in one line.
    """
    X = np.ascontiguousarray(W, dtype=np.float64)
    key = "umap-" + hashlib.sha1(
        X.tobytes() + repr((X.shape, normalize_rows, n_neighbors, seed)).encode()
    ).hexdigest()
    try:
        return submit(_umap, X, kind="umap", label="UMAP projection", key=key, supersede=True,
                      normalize_rows=normalize_rows, n_neighbors=n_neighbors, seed=seed)
    except JobRefused as exc:
        return _failed(exc)


_WARM_UP: Future | None = None
_WARM_UP_LOCK = threading.Lock()


def _warm_up(future: Future) -> None:
    _lower_thread_priority()
    try:
        warm_umap()
    except BaseException as exc:  # noqa: BLE001 - kept in the Future; UMAP then compiles on first use
        future.set_exception(exc)
    else:
        future.set_result(None)


def warm_umap_async() -> Future:
    """Start compiling UMAP's kernels once per process, on a thread of its own at lowered priority
    (not the pool's worker: the 20-40 s compile would hold up every page's clustering and sweeps
    behind it); return its Future."""
    global _WARM_UP
    with _WARM_UP_LOCK:
        if _WARM_UP is None:
            _WARM_UP = Future()
            threading.Thread(target=_warm_up, args=(_WARM_UP,), name="idlora-umap-warm-up",
                             daemon=True).start()
        return _WARM_UP


@st.cache_resource(show_spinner=False)
def _server_queue(root: str) -> RunQueue:
    queue = RunQueue(root)
    QueueWorker(queue).start()
    return queue


def server_queue(root: str) -> RunQueue:
    """Return the server's one run queue for the runs folder `root`, pumped by one thread per
    server process (the Fine-tune page and the class study both submit to it)."""
    return _server_queue(str(root))
