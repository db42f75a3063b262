"""The files a run leaves in its output folder, written atomically so readers never see half a file.

  metrics.jsonl  one JSON object per logging step (appended; see callbacks.py)
  status.json    {state: starting|running|finished|cancelled|failed, message, pid, step,
                 max_steps, updated}
  run.json       resolved config, adapter report, versions, device, final metrics
This file owns the run states and every reader and writer of these files; it does not train.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from idlora_core.cache import write_text_atomic

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
RUN_FILE = "run.json"
ACTIVE_STATES = ("starting", "running")  # starting: folder written, process not yet training
FINAL_STATES = ("finished", "cancelled", "failed")
STATES = ACTIVE_STATES + FINAL_STATES


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


def write_status(output_dir: str | Path, state: str, message: str = "", *, step: int = 0,
                 max_steps: int | None = None, pid: int | None = -1) -> Path:
    """Write `status.json` (state, message, pid, step, max_steps, updated as Unix seconds).

    `pid` defaults to this process; pass None for a run whose process has not started yet.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    return write_json_atomic(Path(output_dir) / STATUS_FILE, {
        "state": state, "message": message, "pid": os.getpid() if pid == -1 else pid,
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


def read_run_json(output_dir: str | Path) -> dict[str, Any]:
    """Return the run's `run.json` summary as a dict ({} while the run has not written it)."""
    return _read_json(Path(output_dir) / RUN_FILE)


def append_metrics(output_dir: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line to `metrics.jsonl` (flushed at once so live readers see it)."""
    line = json.dumps(clean_json(row), allow_nan=False)
    with open(Path(output_dir) / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
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
        self.rows: list[dict[str, Any]] = []

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
