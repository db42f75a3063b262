"""Who owns a run folder, and who may see it: the owner the server's run queue recorded when it
started the run (`owner.json`: owner id and label), read for the Fine-tune page's past runs and
the instructor's class results.

A student sees the runs they own; on a single-user app (not served to a lab) also the runs
nobody owns (started by hand, or before owners were recorded); the instructor sees every run.
No Streamlit here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from idlora_core.cache import write_text_atomic
from idlora_core.jobs.runs import list_runs
from idlora_core.training.run_folder import OWNER_FILE


def write_owner(run_dir: str | Path, owner: str, label: str = "") -> Path:
    """Record `owner` (and the run's label) in `run_dir/owner.json`; return the file."""
    return write_text_atomic(Path(run_dir) / OWNER_FILE, json.dumps(
        {"owner": owner, "label": label, "time": time.time()}))


def run_owner(run_dir: str | Path) -> str | None:
    """Return the owner recorded in `run_dir` (None when none is: a run started by hand)."""
    try:
        data = json.loads((Path(run_dir) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    owner = data.get("owner") if isinstance(data, dict) else None
    return owner if isinstance(owner, str) and owner else None


def short_owner(owner: str | None) -> str:
    """Return an owner id as people read it: 'user:alice' -> 'alice', 'session:3f9a1c...' ->
    'session 3f9a1c', None -> '—'."""
    if not owner:
        return "—"
    kind, _, name = owner.partition(":")
    if kind == "user" and name:
        return name
    if kind == "session" and name:
        return f"session {name[:6]}"
    return owner[:40]


def may_see(owner: str | None, viewer: str, *, instructor: bool = False, lab: bool = False) -> bool:
    """Return True when `viewer` may list a run owned by `owner`: its owner, the instructor, and
    (only when not served to a lab) anyone for a run without an owner."""
    return instructor or owner == viewer or (owner is None and not lab)


def visible_runs(runs_root: str | Path, viewer: str, *, instructor: bool = False,
                 lab: bool = False) -> list[tuple[Path, str | None]]:
    """Return (run folder, owner) of the runs under `runs_root` that `viewer` may list, newest
    first (`may_see`)."""
    found = [(path, run_owner(path)) for path in list_runs(runs_root)]
    return [(path, owner) for path, owner in found if may_see(owner, viewer, instructor=instructor, lab=lab)]
