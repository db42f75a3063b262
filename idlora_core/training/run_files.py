"""The files a run leaves in its output folder, written atomically so readers never see half a file.

  metrics.jsonl  one JSON object per logging step (appended; see callbacks.py): `MetricRow`
  status.json    {state: starting|running|finished|cancelled|failed (`RunState`), message, pid,
                 step, max_steps, updated}
  run.json       resolved config, adapter report, versions, device, final metrics
This file owns the run states and every reader and writer of these files; it does not train.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

from idlora_core.cache import write_text_atomic

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
RUN_FILE = "run.json"


class RunState(StrEnum):
    """The state of a training run, as `status.json` stores it (the plain string: a StrEnum
    equals its value, `RunState.running == "running"`, and json writes "running")."""

    starting = "starting"  # folder written, process not yet training
    running = "running"
    finished = "finished"
    cancelled = "cancelled"
    failed = "failed"

    @property
    def active(self) -> bool:
        """True while the run's process may still change its files (starting, running)."""
        return self in ACTIVE_STATES


ACTIVE_STATES: tuple[RunState, ...] = (RunState.starting, RunState.running)
FINAL_STATES: tuple[RunState, ...] = (RunState.finished, RunState.cancelled, RunState.failed)
STATES: tuple[RunState, ...] = ACTIVE_STATES + FINAL_STATES


class MetricRow(TypedDict, total=False):
    """One line of `metrics.jsonl` (`callbacks.MetricsCallback`): one logging step.

    Besides these keys a row holds the evaluation metrics of the steps where the model was
    evaluated, named `eval_<metric>` (validation: `eval_loss`, `eval_<task>_accuracy`, ...);
    they vary with the tasks, so they are the row's `dict` extras, not fields here. None
    stands for a value that was not finite or not measured.
    """

    step: int  # optimiser step (global)
    epoch: float  # epochs so far, 4 decimals
    loss: float  # training loss over the logging window (nats)
    lr: float  # learning rate at this step
    grad_norm: float | None  # gradient norm before clipping
    trainable_params: int  # elements that train (adapters and head)
    total_params: int  # elements of the adapted model
    step_seconds: float  # mean seconds per optimiser step over the window
    tokens_per_s: float | None  # input tokens per second over the window
    peak_memory_mb: float  # CUDA max allocated, else the process's max RSS (MiB)
    time: float  # Unix seconds when the row was written


METRIC_KEYS: tuple[str, ...] = tuple(MetricRow.__annotations__)  # the fixed keys, in order
EVAL_PREFIX = "eval_"  # the dynamic validation-metric keys of a row


def clean_json(value: Any) -> Any:
    """Return `value` with non-finite floats replaced by None and tensors/numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as JSON to `path` through a temporary file and os.replace; return the path."""
    return write_text_atomic(path, json.dumps(clean_json(data), indent=1, allow_nan=False))


def write_status(output_dir: str | Path, state: RunState | str, message: str = "", *, step: int = 0,
                 max_steps: int | None = None, pid: int | None = -1) -> Path:
    """Write `status.json` (state as its plain string, message, pid, step, max_steps, updated
    as Unix seconds).

    `pid` defaults to this process; pass None for a run whose process has not started yet.
    """
    try:
        known = RunState(state)
    except ValueError:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}") from None
    return write_json_atomic(Path(output_dir) / STATUS_FILE, {
        "state": known.value, "message": message, "pid": os.getpid() if pid == -1 else pid,
        "step": int(step), "max_steps": max_steps, "updated": time.time(),
    })


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(output_dir: str | Path) -> dict[str, Any]:
    """Return the run's `status.json` as a dict ({} when missing or half-written)."""
    return _read_json(Path(output_dir) / STATUS_FILE)


def run_state_of(status: dict[str, Any]) -> RunState:
    """Return the RunState a `read_status` dict records: starting when it holds none (no file
    yet, half-written) or one that is not a RunState."""
    try:
        return RunState(status.get("state", RunState.starting))
    except ValueError:
        return RunState.starting


def read_run_json(output_dir: str | Path) -> dict[str, Any]:
    """Return the run's `run.json` summary as a dict ({} while the run has not written it)."""
    return _read_json(Path(output_dir) / RUN_FILE)


def append_metrics(output_dir: str | Path, row: MetricRow | dict[str, Any]) -> None:
    """Append one JSON line to `metrics.jsonl` (flushed at once so live readers see it)."""
    line = json.dumps(clean_json(row), allow_nan=False)
    with open(Path(output_dir) / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def read_metrics(output_dir: str | Path) -> list[MetricRow]:
    """Return the rows of `metrics.jsonl` (an incomplete or torn line is skipped)."""
    tail = MetricsTail(output_dir)
    tail.read()
    return tail.rows


class MetricsTail:
    """Incremental reader of one run's `metrics.jsonl`.

    Each `read()` parses only the bytes appended since the last call; a line still being
    written (no trailing newline) waits for the next call. `frame` holds every row so far.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.offset = 0
        self.rows: list[MetricRow] = []

    def read(self) -> int:
        """Read newly appended lines; return how many rows were added."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        added = 0
        for line in chunk[: end + 1].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: the training CLI owns the format
            if isinstance(row, dict):
                self.rows.append(row)
                added += 1
        return added

    @property
    def frame(self):
        """All rows read so far as a pandas DataFrame (one row per logged step)."""
        import pandas as pd

        return pd.DataFrame(self.rows)


def truncate_metrics(output_dir: str | Path, after_step: int) -> None:
    """Drop metrics rows with step > `after_step` (used when resuming from a checkpoint)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(output_dir) if int(r.get("step", 0)) <= after_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def versions() -> dict[str, str]:
    """Return the versions of Python and the libraries a run depends on."""
    import accelerate
    import torch
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "accelerate": accelerate.__version__}
    try:
        import peft

        found["peft"] = peft.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        found["idlora-lab"] = version("idlora-lab")
    except Exception:  # noqa: BLE001 - not installed as a package
        pass
    return found
