"""Who may write a run's output folder, and when: an exclusive lock, the overwrite policy, resume checks.

  - One run per folder: `RunFolder.acquire()` creates `.run.lock` (pid, host, start time)
    atomically; a second run fails at once naming the holder. A lock left by a process that
    no longer exists on this host is stale and taken over.
  - Nothing of a finished run is lost by a failed re-run: a folder that already holds
    anything but the launcher's files (config.yaml, train.log, owner.json, a 'starting' status.json) is
    refused unless `overwrite`; with it, the old run's files are moved to
    `replaced-<time>/` inside the folder only by `claim()`, which the trainer calls after the
    new run's config, model and data have loaded.
  - `--resume` continues only the same configuration: `check_resume_config` compares the new
    config with the one saved with the checkpoint and refuses a mismatch, naming the keys; it
    starts from the newest COMPLETE checkpoint (`last_complete_checkpoint`), skipping one that a
    full disk or a kill left half-written.
This file does not train; `trainer.run_training` drives it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from idlora_core.training.run_files import (
    METRICS_FILE,
    RUN_FILE,
    STATUS_FILE,
    RunState,
    read_status,
)

LOCK_FILE = ".run.lock"
CHECKPOINT_CONFIG = "run_config.yaml"  # the run's config, saved in every checkpoint folder
OWNER_FILE = "owner.json"  # who queued the run (idlora_core/jobs/owners.py), written by the server's queue
LAUNCHER_FILES = {"config.yaml", "train.log", LOCK_FILE, OWNER_FILE}  # written before the run starts
RUN_OUTPUTS = (METRICS_FILE, RUN_FILE, STATUS_FILE, "checkpoints", "adapter")
# fields that may change on --resume: where the run lives and how often it logs / saves /
# evaluates, and its total length (continue a finished run for more steps)
RESUMABLE_KEYS = ("output_dir", "train.steps", "train.log_interval", "train.save_interval",
                  "train.eval_interval")


# what `--resume` reads from a checkpoint folder; one missing (a full disk or a kill while it was
# written) makes the folder partial, and resume takes the newest complete one instead
TRAINABLE_FILE = "trainable.safetensors"
CHECKPOINT_FILES = ("trainer_state.json", TRAINABLE_FILE, "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """Return the path of the newest `checkpoint-N` folder in `folder` that holds every file in
    CHECKPOINT_FILES (non-empty), or None when there is none; partial checkpoints are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and path.is_dir() and all(
                (path / name).is_file() and (path / name).stat().st_size > 0 for name in CHECKPOINT_FILES):
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


class RunFolderError(ValueError):
    """The output folder cannot be used for this run (in use, not empty, or another config)."""


def pid_alive(pid: object) -> bool:
    """Return True when a process with this id exists on this host (False for a non-int or <= 0)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_lock(folder: str | Path) -> dict[str, Any] | None:
    """Return the holder recorded in `folder`'s lock file ({pid, host, started}), or None."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_text(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(
        started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {when})"


def _is_stale(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    return (holder.get("host") == socket.gethostname() and isinstance(pid, int)
            and pid != os.getpid() and not pid_alive(pid))


def _foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that neither the launcher nor a 'starting' status wrote."""
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.name in LAUNCHER_FILES:
            continue
        if entry.name == STATUS_FILE and read_status(folder).get("state") == RunState.starting:
            continue
        names.append(entry.name + ("/" if entry.is_dir() else ""))
    return names


class RunFolder:
    """The output folder of one run: lock it, check it may be written, then claim it.

    overwrite: a folder holding an earlier run is accepted; its files are moved aside by
    `claim()`. resume: the folder is expected to hold the run being continued.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False) -> None:
        if not str(path).strip():
            raise RunFolderError("output_dir is empty: name a folder for the run's files, "
                                 "e.g. --output-dir runs/my-run")
        self.path = Path(path).expanduser()
        self.overwrite, self.resume = overwrite, resume
        self.locked = False
        self.claimed = False  # True once this run may write its files into the folder
        self.moved_to: Path | None = None
        self._old: list[str] = []

    def acquire(self) -> RunFolder:
        """Take the folder's lock and check the overwrite policy; raises RunFolderError.

        Nothing in the folder is changed except the lock file.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"output_dir {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._old = [] if self.resume else _foreign_entries(self.path)
            if self._old and not self.overwrite:
                shown = ", ".join(self._old[:6]) + (", ..." if len(self._old) > 6 else "")
                raise RunFolderError(
                    f"output folder {self.path} is not empty ({shown}): pass --overwrite to "
                    "replace the run in it (its files are moved to replaced-<time>/ once the new "
                    "run has loaded), --resume to continue it, or choose another --output-dir")
        except BaseException:
            self.release()
            raise
        self.claimed = not self._old and not self.resume
        return self

    def _lock(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        lock = self.path / LOCK_FILE
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(record)
                os.link(tmp, lock)  # atomic: fails when the lock exists, never half-written
                self.locked = True
                return
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is None:
                    continue  # released meanwhile: try again
                if _is_stale(holder):
                    lock.unlink(missing_ok=True)
                    continue
                raise RunFolderError(
                    f"output folder {self.path} is in use by another run, {_holder_text(holder)}: "
                    f"wait for it to end or choose another --output-dir (delete {lock} only if "
                    "that process is gone)") from None
            finally:
                os.unlink(tmp)
        raise RunFolderError(f"could not lock {lock}: it keeps changing; try again")

    def claim(self) -> Path | None:
        """Make the folder this run's: move an earlier run's files (overwrite) to
        `replaced-<time>/`; return that folder, or None when nothing was moved."""
        if self.claimed:
            return self.moved_to
        if self._old:
            target = self.path / time.strftime("replaced-%Y%m%d-%H%M%S")
            while target.exists():
                target = target.with_name(target.name + "x")
            target.mkdir()
            for name in RUN_OUTPUTS:
                if (self.path / name).exists():
                    shutil.move(str(self.path / name), str(target / name))
            self.moved_to = target
        self.claimed = True
        return self.moved_to

    def release(self) -> None:
        """Remove the lock file when this object holds it."""
        if self.locked:
            holder = read_lock(self.path)
            if holder and holder.get("pid") == os.getpid():
                (self.path / LOCK_FILE).unlink(missing_ok=True)
            self.locked = False

    def __enter__(self) -> RunFolder:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and prefix != "adapter.skeletons":  # skeletons compared whole
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {f"{prefix}.length": len(value)}  # e.g. adapter.targets[0].r
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Return the dotted keys whose values differ between two config dicts (e.g. adapter.targets[0].r),
    leaving out RESUMABLE_KEYS and, when the new config has none, the saved skeletons."""
    a, b = _flatten(saved), _flatten(new)
    if b.get("adapter.skeletons") is None:
        a.pop("adapter.skeletons", None)
        b.pop("adapter.skeletons", None)
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))


def saved_run_config(output_dir: str | Path, checkpoint: str | Path | None):
    """Return the RunConfig a checkpoint was trained with: the copy inside the checkpoint, else
    the config in `run.json`; None when neither exists."""
    from idlora_core.config import RunConfig, load_config

    if checkpoint is not None and (Path(checkpoint) / CHECKPOINT_CONFIG).is_file():
        return load_config(Path(checkpoint) / CHECKPOINT_CONFIG)
    try:
        summary = json.loads((Path(output_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = summary.get("config") if isinstance(summary, dict) else None
    return RunConfig.model_validate(cfg) if isinstance(cfg, dict) else None


def check_resume_config(config, output_dir: str | Path, checkpoint: str | Path):
    """Return `config` for resuming from `checkpoint` (with the checkpoint's skeletons when it has
    none); raises RunFolderError listing the changed keys when it differs from the saved config."""
    saved = saved_run_config(output_dir, checkpoint)
    if saved is None:
        return config
    new, old = config.model_dump(mode="json"), saved.model_dump(mode="json")
    changed = config_differences(old, new)
    if changed:
        detail = "; ".join(f"{k}: {_short(_flatten(old).get(k))} -> {_short(_flatten(new).get(k))}"
                           for k in changed[:8])
        raise RunFolderError(
            f"--resume: the config differs from the checkpoint's in {len(changed)} key(s): {detail}. "
            "Resume with the original config, or start a new run (another --output-dir, or "
            "--overwrite)")
    if config.adapter.skeletons is None and saved.adapter.skeletons:
        config = config.model_copy(update={"adapter": config.adapter.model_copy(
            update={"skeletons": saved.adapter.skeletons})})
    return config


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
