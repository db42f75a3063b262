"""The server's one slot accountant: how many training processes may run, and how many do.

A slot is one training process on this host: a run the queue started, a run started by hand
in the runs folder (it holds the folder's lock) or one worker of a running study.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

from idlora_core.jobs.studies import study_workers_alive
from idlora_core.training.run_folder import LOCK_FILE, pid_alive, read_lock


def max_runs() -> int:
    """Return how many runs may train at once on this server: $IDLORA_MAX_RUNS when set, else one
    per GPU, else one per 2 CPU cores (at least 1). Raises ValueError for a bad setting."""
    raw = os.environ.get("IDLORA_MAX_RUNS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"IDLORA_MAX_RUNS must be a whole number >= 1, got {raw[:40]!r}")
        return int(raw)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus if gpus > 0 else max(1, (os.cpu_count() or 2) // 2)


def threads_per_run() -> int:
    """Return the CPU threads each app-started run may use: this machine's cores shared equally
    among `max_runs()` runs (at least 1). Two runs of two threads each on two cores stall each
    other at every parallel region; one thread each keeps both busy."""
    try:
        runs = max_runs()
    except ValueError:  # a bad IDLORA_MAX_RUNS is reported where runs are started
        runs = 1
    return max(1, (os.cpu_count() or 1) // runs)


def hand_started_runs(runs_root: str | Path, known: set[Path] = frozenset()) -> int:
    """Return the number of training processes alive on this host in run folders directly under
    `runs_root` that are not in `known`: runs started by hand (`python -m idlora_core.train`
    with an output_dir in the runs folder) hold the folder's lock and use a slot too."""
    host, busy = socket.gethostname(), 0
    for lock in Path(runs_root).glob(f"*/{LOCK_FILE}"):
        holder = read_lock(lock.parent) or {}
        if (lock.parent.resolve() not in known and holder.get("host") == host
                and pid_alive(holder.get("pid"))):
            busy += 1
    return busy


def slots_in_use(runs_root: str | Path, queued_alive: Iterable[Path] = ()) -> int:
    """Return how many training processes hold a slot under `runs_root`: `queued_alive` (the
    queue's live run folders), runs started by hand in the folder and the running studies' workers."""
    known = {Path(p).resolve() for p in queued_alive}
    return len(known) + hand_started_runs(runs_root, known) + study_workers_alive(runs_root)
