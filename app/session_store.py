"""Per-browser session store: a refresh (F5), a reconnect or a new tab on the same address brings
back every page's settings, the started lab exercise and the session's own fine-tune runs.

The browser keeps only a random id in the URL (`sid`: 32 hex digits, 128 bits, `new_sid()`;
Streamlit 1.67 reads cookies but cannot set them). The server keeps `RUNS/.sessions/<sid>.json`
(`session_file`): the settings that differ from their defaults (the JSON form of the page
dataclasses, `app/page_settings.py`) and the Fine-tune page's runs of this session (run folders,
queue tickets, labels, the queue owner name). It is written atomically, at most MAX_BYTES, and
expires MAX_AGE_S after its last write (`prune` removes old files). Reading is as tolerant as the
URL: a value that does not validate keeps its default, a run folder outside the runs folder is
dropped. Anyone holding the address holds the session: share a link without `sid` to share
only the page's choices. No Streamlit calls; `app/url_state.py` calls these.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from app.page_settings import all_json, parse_all_json
from idlora_core.cache import write_text_atomic
from idlora_core.jobs.run_queue import Ticket
from idlora_core.jobs.runs import RunHandle

SID_PARAM = "sid"  # the URL parameter
SESSIONS_DIR = ".sessions"  # inside the runs folder
MAX_BYTES = 256 * 1024  # a session's file; settings and a few hundred runs fit in a few KiB
MAX_AGE_S = 24 * 3600  # a file not written for a day is gone
VERSION = 1
# the Fine-tune page's session keys (app/views/fine_tune.py) this store keeps
HANDLES, TICKETS, LABELS, PAST = "ft_handles", "ft_tickets", "ft_labels", "ft_past"
OWNER = "_idlora_session"  # app.background.session_id(): who owns the queued runs and studies
_SID = re.compile(r"[0-9a-f]{32}")


class _Handle(BaseModel):
    run_dir: str
    method: str = ""


class _Ticket(_Handle):
    id: str = Field(max_length=64)
    label: str = ""


class _Runs(BaseModel):
    owner: str = Field("", max_length=64)
    handles: list[_Handle] = []
    tickets: list[_Ticket] = []
    labels: dict[str, str] = {}
    past: list[str] = []


def new_sid() -> str:
    """Return a fresh session id: 32 random hex digits (128 bits)."""
    return secrets.token_hex(16)


def valid_sid(text: object) -> bool:
    """Return True when `text` is a session id (exactly 32 lowercase hex digits)."""
    return isinstance(text, str) and _SID.fullmatch(text) is not None


def session_file(root: Path, sid: str) -> Path:
    """Return the store file of session `sid` under the runs folder `root`; raise ValueError
    for anything but a session id (so no path is ever built from other text)."""
    if not valid_sid(sid):
        raise ValueError(f"session id {str(sid)[:40]!r} is not 32 hex digits")
    return Path(root) / SESSIONS_DIR / f"{sid}.json"


def snapshot(state: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the store keeps of session `state`: the settings that differ from their
    defaults and the Fine-tune runs of this session (JSON-able)."""
    runs = {
        "owner": str(state.get(OWNER) or ""),
        "handles": [{"run_dir": str(h.run_dir), "method": h.method} for h in state.get(HANDLES) or []],
        "tickets": [{"id": t.id, "run_dir": str(t.run_dir), "label": t.label, "method": t.method}
                    for t in state.get(TICKETS) or []],
        "labels": {str(k): str(v) for k, v in (state.get(LABELS) or {}).items()},
        "past": [str(p) for p in state.get(PAST) or []],
    }
    return {"version": VERSION, "settings": all_json(state, changed_only=True),
            "runs": {k: v for k, v in runs.items() if v}}


def values(data: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """Return the session-state values of stored `data`: every setting that validates, and the
    runs whose folders lie inside the runs folder `root` (RunHandle / Ticket objects)."""
    settings = data.get("settings")
    out = parse_all_json(settings) if isinstance(settings, Mapping) else {}
    try:
        runs = _Runs.model_validate(data.get("runs") or {})
    except ValidationError:
        return out
    root = Path(root).resolve()

    def inside(path: str) -> Path | None:
        resolved = Path(path).resolve()
        return resolved if resolved.is_relative_to(root) and resolved != root else None

    handles = [RunHandle(run_dir=d, method=h.method) for h in runs.handles if (d := inside(h.run_dir))]
    tickets = [Ticket(id=t.id, run_dir=d, label=t.label, method=t.method)
               for t in runs.tickets if (d := inside(t.run_dir))]
    if handles or tickets:
        out |= {HANDLES: handles, TICKETS: tickets, LABELS: dict(runs.labels)}
    if runs.owner:
        out[OWNER] = runs.owner
    if runs.past:
        out[PAST] = list(dict.fromkeys(runs.past))
    return out


def dumps(data: Mapping[str, Any]) -> str:
    """Return the file text of `data` (sorted keys: equal data, equal text)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def load(root: Path, sid: str, now: float | None = None) -> dict[str, Any] | None:
    """Return the stored data of session `sid`, or None when there is none, it expired (the
    file is removed), it is over MAX_BYTES or it is not a JSON object."""
    path = session_file(root, sid)
    try:
        info = path.stat()
        if (now if now is not None else time.time()) - info.st_mtime > MAX_AGE_S:
            path.unlink(missing_ok=True)
            return None
        if info.st_size > MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def save(root: Path, sid: str, data: Mapping[str, Any]) -> bool:
    """Write `data` as session `sid`'s file (atomically); False when it is over MAX_BYTES (the
    previous file stays) or cannot be written."""
    text = dumps(data)
    if len(text.encode("utf-8")) > MAX_BYTES:
        return False
    try:
        write_text_atomic(session_file(root, sid), text)
    except OSError:
        return False
    return True


def prune(root: Path, now: float | None = None) -> int:
    """Remove the session files not written for MAX_AGE_S; return how many were removed."""
    folder = Path(root) / SESSIONS_DIR
    now = now if now is not None else time.time()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file() and now - entry.stat().st_mtime > MAX_AGE_S:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed
