"""Study processes: start one in the background, ask it to stop, say whether it runs, list them.

A study runs as `python -m idlora_core.study` in its own process session, so it keeps running
when the browser tab closes; its folder (`RUNS/studies/NAME`) holds the study (`input.yaml`), the
Optuna storage and `launcher.json` (the pid and worker count that the run limit counts).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from idlora_core.cache import write_text_atomic
from idlora_core.jobs.runs import (
    REPO_ROOT,
    RunPathError,
    address_space_cap,
    safe_run_dir,
    uses_cuda,
)
from idlora_core.study.config import StudyConfig, dumps_study
from idlora_core.study.storage import LOCK_FILE, _read_holder
from idlora_core.training.run_folder import pid_alive

STUDIES_DIR = "studies"
LAUNCH_FILE = "launcher.json"


def study_dir(runs_root: str | Path, name: str) -> Path:
    """Return the folder RUNS/studies/NAME of a study name; raises RunPathError unless the name is
    one plain folder name (a name such as `a/b`, `` or `.` made a study the page never listed
    and the run limit never counted)."""
    text = str(name).strip()
    if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise RunPathError(f"study name {name!r} must be one folder name (no '/', not empty, not '.'), "
                           "e.g. my-study")
    return safe_run_dir(Path(runs_root), f"{STUDIES_DIR}/{text}")


def start_study(study: StudyConfig, runs_root: str | Path, name: str, workers: int = 1,
                owner: str = "", memory_cap_gb: float | None = None) -> Path:
    """Write the study into RUNS/studies/NAME and start it in a new process session (it survives
    the browser tab); return the folder. The process output goes to study.log; `owner` (the lab
    user who started it) goes to launcher.json, so that only they can stop it from the page.
    memory_cap_gb: the address-space cap of the study process, which each of its worker
    processes inherits (CPU studies only, as for `runs.start_run`).

    Raises ValueError when the name is not one folder name, when a study of that name is still
    running (started here, or by a `python -m idlora_core.study` command that holds the folder's
    lock), or when the folder holds a study with other settings (the same settings resume it:
    finished trials are never repeated)."""
    out = study_dir(runs_root, name)
    spec = out / "input.yaml"
    text = dumps_study(study)
    if study_running(out):
        raise ValueError(f"study {name!r} is running; choose another name, or wait for it to finish")
    holder = lock_holder(out)
    if holder is not None:
        raise ValueError(f"study {name!r} is being run by another study command, {holder}: wait for it "
                         "to finish or stop it (SIGTERM), or choose another name")
    if spec.is_file() and spec.read_text(encoding="utf-8") != text:
        raise ValueError(f"a study with other settings is named {name!r}; choose another name "
                         "(the same settings resume it)")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec, text)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    capped = bool(memory_cap_gb) and not uses_cuda(study.base)
    cap = address_space_cap(int(memory_cap_gb * 1e9)) if capped else None
    with open(out / "study.log", "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            [sys.executable, "-m", "idlora_core.study", str(spec), "--out", str(out), "--workers", str(workers)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=cap)
    write_text_atomic(out / LAUNCH_FILE, json.dumps({"pid": proc.pid, "workers": workers, "owner": owner}))
    return out


def lock_holder(out_dir: str | Path) -> str | None:
    """Return who holds the study folder's coordinator lock (DIR/.study.lock, taken by every
    `python -m idlora_core.study` for as long as it runs), as "pid P on host H (since T)", or
    None when no process holds it. Probes with a shared, non-blocking flock, released at once."""
    path = Path(out_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no coordinator ever ran here
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts only with a coordinator's LOCK_EX
    except BlockingIOError:
        return _read_holder(fd)
    except OSError:  # a file system without locks: the coordinator cannot have one either
        return None
    finally:
        os.close(fd)  # closing drops the probe's lock
    return None


def _launch(out_dir: str | Path) -> dict:
    try:
        data = json.loads((Path(out_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def study_owner(out_dir: str | Path) -> str:
    """Return the owner recorded when the study was started from the app ('' when none)."""
    return str(_launch(out_dir).get("owner") or "")


def may_stop(out_dir: str | Path, user: str) -> bool:
    """True when `user` may stop the study: they started it, or no owner was recorded (started
    by hand or before owners were kept)."""
    owner = study_owner(out_dir)
    return not owner or owner == user


def running_studies_of(runs_root: str | Path, owner: str) -> list[Path]:
    """Return the study folders under `runs_root` that `owner` started and that still run (also
    those whose process has not written study.json yet)."""
    root = Path(runs_root) / STUDIES_DIR
    folders = [p.parent for p in root.glob(f"*/{LAUNCH_FILE}")] if root.is_dir() else []
    return [p for p in folders if study_owner(p) == owner and study_running(p)]


def study_running(out_dir: str | Path) -> bool:
    """Return True while the study process started for `out_dir` is alive."""
    path = Path(out_dir) / LAUNCH_FILE
    if not path.is_file():
        return False
    pid = json.loads(path.read_text(encoding="utf-8")).get("pid")
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    return pid_alive(pid)


def stop_study(out_dir: str | Path) -> bool:
    """Ask the study started for `out_dir` to stop: SIGTERM to its process group (the coordinator
    and its workers, which finish their current step, keep its checkpoint and exit; a re-start
    with the same settings resumes). Return True when a running study was signalled."""
    if not study_running(out_dir):
        return False
    pid = json.loads((Path(out_dir) / LAUNCH_FILE).read_text(encoding="utf-8")).get("pid")
    try:
        os.killpg(os.getpgid(pid), signal.SIGTERM)  # started with start_new_session: its own group
    except (ProcessLookupError, PermissionError):
        return False
    return True


def study_workers_alive(runs_root: str | Path) -> int:
    """Return the number of worker processes of the studies under `runs_root` still running."""
    busy = 0
    for folder in list_studies(runs_root):
        if study_running(folder):
            try:
                launch = json.loads((folder / LAUNCH_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                launch = {}
            busy += int(launch.get("workers", 1))
    return busy


def list_studies(runs_root: str | Path) -> list[Path]:
    """Return the study folders under RUNS/studies, newest first: those holding study.json and
    those just started (launcher.json written, the coordinator not yet at its first trial)."""
    root = Path(runs_root) / STUDIES_DIR
    if not root.is_dir():
        return []
    found = {p.parent for pattern in ("*/study.json", f"*/{LAUNCH_FILE}") for p in root.glob(pattern)}
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
