"""Training runs as processes: start, cancel, wait for and list `python -m idlora_core.train` runs.

A run is a folder under a chosen runs root holding `config.yaml` (written here),
`metrics.jsonl` (one JSON object per logging step), `run.json` (summary at the end),
`status.json` (state, message, pid, last step) and `train.log` (the process output).
Processes start from an argument list, never through a shell; the training CLI picks
the GPU by itself when one is present (`train.device: auto`).

Pure Python: no Streamlit, no pandas (the run tables are `analysis.runs`).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from idlora_core.config import RunConfig, save_config
from idlora_core.training.run_files import (
    ACTIVE_STATES,
    FINAL_STATES,
    RunState,
    read_status,
    run_state_of,
    write_status,
)
from idlora_core.training.run_folder import pid_alive

REPO_ROOT = Path(__file__).resolve().parents[2]
CAP_ENV = "IDLORA_RUN_MEMORY_CAP_GB"  # tells a capped run (and its logs) the cap it runs under


class RunPathError(ValueError):
    """An output path that would leave the chosen runs folder."""


def safe_run_dir(runs_root: str | Path, name: str) -> Path:
    """Return the absolute folder `runs_root/name`; raises RunPathError when it would escape.

    Absolute names, `..` parts and names resolving outside the root (through links) are refused.
    """
    root = Path(runs_root).expanduser().resolve()
    rel = Path(str(name).strip())
    if not str(rel) or str(rel) == "." or rel.is_absolute() or ".." in rel.parts:
        raise RunPathError(
            f"run name {name!r} must be a plain relative folder name inside {root} "
            "(no '..', no absolute path)"
        )
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise RunPathError(f"run folder {target} is outside the runs folder {root}")
    return target


def new_run_name(method: str) -> str:
    """Return a fresh, unique run folder name like `20261128-161502-idlora-3f9a1c`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunHandle:
    """A run started by this process: its folder, method, (while alive) its process, and the
    address-space cap it runs under (GB; None = none)."""

    run_dir: Path
    method: str
    process: subprocess.Popen | None = field(default=None, repr=False)
    memory_cap_gb: float | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name


def train_command(config_path: Path, overrides: list[str] | None = None) -> list[str]:
    """Return the argument list that trains `config_path` in a fresh Python process."""
    cmd = [sys.executable, "-m", "idlora_core.train", str(config_path), "--no-progress"]
    for item in overrides or []:
        cmd += ["--set", item]
    return cmd


def uses_cuda(config: RunConfig) -> bool:
    """True when the run will train on a GPU (device cuda, or auto with one present)."""
    device = config.train.device
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    import torch  # the GPU question only; torch is loaded by every page that starts runs

    return torch.cuda.is_available()


def address_space_cap(cap_bytes: int) -> Callable[[], None]:
    """Return a preexec_fn that caps the child's address space (RLIMIT_AS) at `cap_bytes`."""

    def limit() -> None:  # runs in the child between fork and exec: one system call, no imports
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    return limit


def start_run(
    config: RunConfig,
    runs_root: str | Path,
    name: str | None = None,
    overrides: list[str] | None = None,
    *,
    memory_cap_gb: float | None = None,
    threads: int | None = None,
) -> RunHandle:
    """Write `config` into a new run folder under `runs_root` and start training it.

    The config's `output_dir` is replaced by that folder, so two runs (or two browser tabs)
    never share one. Returns the handle; the process writes `train.log` in the folder.
    memory_cap_gb: the child's address-space limit (RLIMIT_AS, set before it starts; CPU runs
    only, since CUDA reserves address space far beyond its use); a run that passes it fails and
    `settle_run` says so.
    threads: the child's CPU threads (OMP_NUM_THREADS) unless the server's environment sets them.
    """
    run_dir = safe_run_dir(runs_root, name or new_run_name(config.adapter.method))
    run_dir.mkdir(parents=True, exist_ok=False)
    config = config.model_copy(update={"output_dir": str(run_dir)})
    cfg_path = save_config(config, run_dir / "config.yaml")
    capped = bool(memory_cap_gb) and not uses_cuda(config)
    write_status(run_dir, RunState.starting, "process starting" + (
        f" (memory cap {memory_cap_gb:g} GB)" if capped else ""), pid=None)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # the admin's own setting wins
    if capped:
        env[CAP_ENV] = f"{memory_cap_gb:g}"
    with open(run_dir / "train.log", "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - argument list, no shell
            train_command(cfg_path, overrides),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=address_space_cap(int(memory_cap_gb * 1e9)) if capped else None,
        )
    return RunHandle(run_dir=run_dir, method=config.adapter.method, process=process,
                     memory_cap_gb=memory_cap_gb if capped else None)


OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "can't allocate memory", "std::bad_alloc",
                 "failed to map segment", "OutOfMemoryError", "out of memory")


def out_of_memory_message(cap_gb: float) -> str:
    """Return the status message of a run that ran out of memory under the server's cap."""
    return (f"out of memory under the server's cap of {cap_gb:g} GB per run "
            "(IDLORA_MAX_RUN_MEMORY_GB): lower batch_size or seq_len, or adapt fewer layers")


def settle_run(run_dir: str | Path, memory_cap_gb: float | None = None) -> RunState:
    """Close the books on a run whose process has ended: a run that ended without a final status
    is marked failed, with "out of memory under the server's cap of X GB" when it had a cap and
    its status or log shows an allocation failure (else "ended without a final status"). Returns
    the state now recorded."""
    status = read_status(run_dir)
    state, message = run_state_of(status), str(status.get("message", ""))
    if state not in ACTIVE_STATES and state != RunState.failed:
        return state
    cap = memory_cap_gb or None
    oom = cap and any(m in message or m in log_tail(run_dir, 4000) for m in OUT_OF_MEMORY)
    if oom and not message.startswith("out of memory"):
        write_status(run_dir, RunState.failed, out_of_memory_message(cap)
                     + (f" (was: {message[:300]})" if state == RunState.failed else ""),
                     step=int(status.get("step") or 0), max_steps=status.get("max_steps"), pid=None)
        return RunState.failed
    if state in ACTIVE_STATES:
        write_status(run_dir, RunState.failed, "the training process ended without a final status (see "
                     "train.log)", pid=None)
    return RunState.failed


def cancel_run(handle: RunHandle) -> bool:
    """Ask the run's process to stop after its current step (SIGTERM); True when it was alive.

    The training CLI keeps its metrics and a checkpoint when it stops this way.
    """
    proc = handle.process
    if proc is None or proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    return True


def wait_run(handle: RunHandle, timeout_s: float) -> int | None:
    """Wait up to `timeout_s` seconds for the run's process; return its exit code or None."""
    if handle.process is None:
        return None
    try:
        return handle.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def recorded_state(run_dir: str | Path) -> RunState:
    """Return the RunState `status.json` records (starting while absent or unreadable), or
    failed when it says starting/running but its recorded process on this host is gone: the
    one "is this run alive" rule for runs this process did not start."""
    found = read_status(run_dir)
    state, pid = run_state_of(found), found.get("pid")
    if state in ACTIVE_STATES and isinstance(pid, int) and not pid_alive(pid):
        return RunState.failed
    return state


def run_state(handle: RunHandle) -> RunState:
    """Return the RunState (starting, running, finished, cancelled, failed) of a run we started.

    The process exit code wins over a stale `status.json` (a crash cannot update the file).
    """
    proc = handle.process
    if proc is None:  # started elsewhere (the server's run queue): the recorded pid must live
        return recorded_state(handle.run_dir)
    status = run_state_of(read_status(handle.run_dir))
    code = proc.poll()
    if code is None:
        return status if status in ACTIVE_STATES else RunState.running
    if status in FINAL_STATES:
        return status
    if code == 0:
        return RunState.finished
    return RunState.cancelled if code in (-15, 143, 130) else RunState.failed


def log_tail(run_dir: str | Path, max_chars: int = 2000, name: str = "train.log") -> str:
    """Return the last `max_chars` characters of the log `name` in `run_dir` ('' when absent)."""
    path = Path(run_dir) / name
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def is_run_dir(path: str | Path) -> bool:
    """True when `path` looks like a training run folder (has a config or metrics file)."""
    path = Path(path)
    return path.is_dir() and any(
        (path / f).is_file() for f in ("config.yaml", "metrics.jsonl", "run.json", "status.json")
    )


def list_runs(runs_root: str | Path) -> list[Path]:
    """Return the run folders directly under `runs_root`, newest first ([] when absent)."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if is_run_dir(p)]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)
