"""Background work of the app: UMAP projections on one low-priority worker thread.

The Cluster explorer shows PCA at once and polls a Future for UMAP on each rerun. The maths
is `analysis/projection.py`; this file only owns the executor and the per-process job table.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from analysis.projection import umap_2d, umap_is_warm, warm_umap

__all__ = ["umap_async", "umap_is_warm", "warm_umap_async"]

_JOBS_LOCK = threading.Lock()
_JOBS: dict[str, Future] = {}
_MAX_JOBS = 16


def _lower_thread_priority() -> None:
    # The background UMAP work (numba compile, projection) must not slow the page in front of
    # the user on a small CPU: nice this worker thread (threads it starts inherit it).
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


_EXECUTOR = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="umap", initializer=_lower_thread_priority
)


def umap_async(
    W: np.ndarray, *, normalize_rows: bool = False, n_neighbors: int = 15, seed: int = 0
) -> Future:
    """Return a Future of `umap_2d(W, ...)` computed on a background thread (one at a time).

    The same matrix and parameters return the same Future, so callers can poll it on every
    rerun; a failed job is retried on the next call. Keeps the last 16 results per process.
    """
    X = np.ascontiguousarray(W, dtype=np.float64)
    key = hashlib.sha1(
        X.tobytes() + repr((X.shape, normalize_rows, n_neighbors, seed)).encode()
    ).hexdigest()
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job is None or (job.done() and job.exception() is not None):
            job = _EXECUTOR.submit(
                umap_2d, X, normalize_rows=normalize_rows, n_neighbors=n_neighbors, seed=seed
            )
            _JOBS[key] = job
            while len(_JOBS) > _MAX_JOBS:
                _JOBS.pop(next(iter(_JOBS)))
        return job


def warm_umap_async() -> Future:
    """Start compiling UMAP's kernels on the background thread; returns its Future."""
    return _EXECUTOR.submit(warm_umap)
