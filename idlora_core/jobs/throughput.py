"""How long a run takes on this server, from the runs this server has finished: per-run
estimates for the Start buttons, the size limits and the queue's expected wait.

A finished run folder (`run.json` state finished) is one Measurement: its wall time per step
(from the `time` stamps of its metrics rows; the median `step_seconds` when it logged too few),
the seconds of one evaluation (the gap of an evaluating row past its steps) and the rest of its
wall time, from config.yaml's write to the last write of run.json, status.json or train.log, as
overhead (process start, model and data loading, clustering, the test split, saving). A run is estimated as

    overhead + steps x seconds per step x tokens ratio + evaluations x seconds per evaluation
                                                          x (eval examples x seq_len) ratio

from the medians of the best matching measurements, in this order:
  1. same model, method, batch size, sequence length and device: "measured on this server";
  2. same model, method and device, the nearest batch x sequence length: "scaled";
  3. same model and device, another method: "scaled" (the base model dominates a step);
  4. nothing measured: the default guess, SECONDS_PER_STEP for MiniLM (and the figures below
     for the embedded models), scaled by model size and tokens per step.

The measurements are kept in RUNS/.throughput.json (written atomically): each refresh lists
the run folders (the runs folder's own and the studies' `studies/*/runs/*`), stats their
run.json and parses only those new or changed since the cache was written, so a page that
asks on every render reads O(new runs). No Streamlit here.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from idlora_core.cache import write_text_atomic
from idlora_core.config import RunConfig, TaskConfig, TrainConfig
from idlora_core.training.run_files import RUN_FILE, STATUS_FILE, read_metrics, read_run_json

CACHE_FILE = ".throughput.json"
VERSION = 1
SECONDS_PER_STEP = 0.6  # MiniLM at batch 16 x 48 tokens on a shared 2-core CPU (study preset (a))
DEFAULT_OVERHEAD_S = 10.0  # process start, model and data loading, final evaluation (preset (a))
# model -> (seconds per step, tokens per step, where the figure comes from) on a 2-core CPU
REFERENCE_STEPS: dict[str, tuple[float, int, str]] = {
    "minilm": (SECONDS_PER_STEP, 16 * 48, "MiniLM, batch 16 x 48 tokens, 2 CPU cores"),
    "smollm2-135m": (40.0, 8 * 128, "SmolLM2-135M, batch 8 x 128 tokens, 2 CPU cores"),
}
MINILM_PARAMS = 22.7e6


@dataclass(frozen=True)
class RunShape:
    """What sets a run's time: model, method, steps, tokens per step, evaluations, device."""

    model: str
    method: str
    steps: int
    batch_size: int
    seq_len: int
    grad_accum: int = 1
    eval_interval: int = 0
    num_eval: int = 0  # validation examples, all tasks together (0 = unknown)
    device: str = "cpu"  # "cpu" | "cuda"

    @classmethod
    def of(cls, config: RunConfig) -> RunShape:
        """Return the shape of `config` (device "auto" resolved on this machine)."""
        return cls.from_train(config.model.name, config.adapter.method, config.train, config.tasks)

    @classmethod
    def from_train(cls, model: str, method: str, train: TrainConfig, tasks: Iterable[TaskConfig] = ()) -> RunShape:
        """Return the shape of a run of `method` on `model` with `train` and `tasks`."""
        return cls(model=model, method=method, steps=0 if method == "base" else int(train.steps),
                   batch_size=int(train.batch_size), seq_len=int(train.seq_len), grad_accum=int(train.grad_accum),
                   eval_interval=int(train.eval_interval), num_eval=sum(int(t.num_eval) for t in tasks),
                   device=device_kind(train.device))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunShape | None:
        """Return the shape a ticket or cache recorded (None when it is not one)."""
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (TypeError, KeyError):
            return None

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        """(model, method, batch_size, seq_len, device): runs with one key share a step time."""
        return self.model, self.method, self.batch_size, self.seq_len, self.device

    @property
    def tokens(self) -> int:
        """Tokens per optimiser step: batch_size x grad_accum x seq_len."""
        return self.batch_size * self.grad_accum * self.seq_len

    @property
    def evaluations(self) -> int:
        """How many validation passes the run makes (every eval_interval steps and at the end)."""
        if self.steps <= 0 or self.eval_interval <= 0:
            return 1
        return self.steps // self.eval_interval + (1 if self.steps % self.eval_interval else 0)


def device_kind(device: str) -> str:
    """Return "cuda" or "cpu": where a run with train.device `device` trains on this machine."""
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        return "cuda"
    import torch  # "auto": the GPU question only (a page that starts runs has torch loaded already)

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Measurement:
    """One finished run: its shape and timings (seconds). `evals` is the validation passes it
    made; eval_seconds (one pass) and overhead_seconds are None when its files cannot tell."""

    run: str
    shape: RunShape
    step_seconds: float
    eval_seconds: float | None
    overhead_seconds: float | None
    wall_seconds: float | None
    evals: int

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form kept in the cache."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement | None:
        """Return the Measurement of a cache entry (None for an entry of another version)."""
        shape = RunShape.from_dict(data.get("shape") or {})
        if shape is None:
            return None
        try:
            return cls(shape=shape, **{f.name: data[f.name] for f in fields(cls) if f.name != "shape"})
        except (TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Estimate:
    """A run's estimated wall time in seconds, where the figure comes from (`source`, one
    phrase), its `kind` ("measured" | "scaled" | "default"), how many measured runs it rests
    on, and its seconds per step."""

    seconds: float
    source: str
    kind: str
    runs: int
    step_seconds: float


def _median(values: Iterable[float | None]) -> float | None:
    found = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(found) if found else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def measure_run(run_dir: str | Path) -> Measurement | None:
    """Return the Measurement of a finished run folder, or None (not finished, no config, no steps
    timed). Reads run.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    summary = read_run_json(run_dir)
    config, final = summary.get("config") or {}, summary.get("final_metrics") or {}
    if summary.get("state") != "finished" or not config:
        return None
    try:
        cfg = RunConfig.model_validate(config)
    except ValueError:
        return None
    device = (summary.get("device") or {}).get("type") or "cpu"
    shape = RunShape.from_train(cfg.model.name, cfg.adapter.method,
                                cfg.train.model_copy(update={"device": "cuda" if device == "cuda" else "cpu"}),
                                cfg.tasks)
    steps = int(final.get("steps") or 0)
    shape = RunShape(**{**asdict(shape), "steps": steps})
    rows = read_metrics(run_dir)
    timed = [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("time"), (int, float))]
    evaluating = [i for i, r in enumerate(timed) if any(k.startswith("eval_") for k in r)]
    gaps = [(timed[i]["time"] - timed[i - 1]["time"]) / (timed[i]["step"] - timed[i - 1]["step"])
            for i in range(1, len(timed)) if i not in evaluating and timed[i]["step"] > timed[i - 1]["step"]]
    step = _median(gaps) if len(gaps) >= 2 else None
    if step is None:
        step = _median(r.get("step_seconds") for r in rows)
    if step is None and steps:
        step = float(final.get("train_seconds") or 0.0) / steps or None
    if step is None and steps:
        return None
    step = step or 0.0
    evals = len(evaluating)
    eval_s = _median(max(0.0, timed[i]["time"] - timed[i - 1]["time"]
                         - (timed[i]["step"] - timed[i - 1]["step"]) * step) for i in evaluating if i > 0)
    start = _mtime(run_dir / "config.yaml")
    end = max((t for t in (_mtime(run_dir / name) for name in (RUN_FILE, STATUS_FILE, "train.log")) if t),
              default=None)  # the process's last words: its log, else its final status
    wall = end - start if start is not None and end is not None and end > start else None
    overhead = None if wall is None else max(0.0, wall - steps * step - evals * (eval_s or 0.0))
    return Measurement(run=run_dir.name, shape=shape, step_seconds=step, eval_seconds=eval_s,
                       overhead_seconds=overhead, wall_seconds=wall, evals=evals)


def run_folders(runs_root: str | Path) -> list[Path]:
    """Return the run folders whose timings count: the runs folder's own and its studies' runs
    (`studies/*/runs/*`); one listing per folder, no file read."""
    root = Path(runs_root)
    found: list[Path] = []
    for parent in [root, *sorted((root / "studies").glob("*/runs"))]:
        try:
            with os.scandir(parent) as entries:
                found += [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
        except OSError:
            continue
    return found


class Throughput:
    """The measurements of one runs folder, cached in RUNS/.throughput.json.

    `refresh()` re-reads only the runs whose run.json changed since they were cached; `reads`
    counts the run.json files parsed by this object.
    """

    def __init__(self, runs_root: str | Path) -> None:
        self.root = Path(runs_root).expanduser().resolve()
        self.path = self.root / CACHE_FILE
        self.reads = 0
        self._seen: dict[str, dict[str, Any]] = {}  # folder (relative) -> {"mtime", "m"}
        self._lock = threading.Lock()
        self._loaded = False

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and data.get("version") == VERSION and isinstance(data.get("runs"), dict):
            self._seen = {k: v for k, v in data["runs"].items() if isinstance(v, dict)}
        self._loaded = True

    def refresh(self) -> int:
        """Read the finished runs new or changed since the last refresh (or the cache file);
        forget removed folders; write the cache when anything changed. Returns the runs read."""
        with self._lock:
            if not self._loaded:
                self._load()
            read, seen = 0, {}
            for folder in run_folders(self.root):
                name = str(folder.relative_to(self.root))
                mtime = _mtime(folder / RUN_FILE)
                if mtime is None:
                    continue  # not started, or a folder of something else
                old = self._seen.get(name)
                if old is not None and old.get("mtime") == mtime:
                    seen[name] = old
                    continue
                self.reads += 1
                read += 1
                found = measure_run(folder)
                seen[name] = {"mtime": mtime, "m": None if found is None else found.as_dict()}
            changed = read > 0 or len(seen) != len(self._seen)
            self._seen = seen
            if changed and self.root.is_dir():
                try:
                    write_text_atomic(self.path, json.dumps({"version": VERSION, "updated": time.time(),
                                                             "runs": seen}))
                except OSError:
                    pass  # a read-only or full runs folder: estimates still work, from memory
            return read

    def measurements(self) -> list[Measurement]:
        """Return the finished runs' measurements after a refresh."""
        self.refresh()
        found = (Measurement.from_dict(v["m"]) for v in self._seen.values() if v.get("m"))
        return [m for m in found if m is not None]

    def estimate(self, shape: RunShape, param_count: int | None = None) -> Estimate:
        """Return the estimate of a run of `shape` (see the module docstring)."""
        return estimate_from(shape, self.measurements(), param_count)


_THROUGHPUT: dict[Path, Throughput] = {}
_MEMO_LOCK = threading.Lock()


def throughput(runs_root: str | Path) -> Throughput:
    """Return this process's Throughput of `runs_root` (one per folder, so reads are not repeated)."""
    root = Path(runs_root).expanduser().resolve()
    with _MEMO_LOCK:
        if root not in _THROUGHPUT:
            _THROUGHPUT[root] = Throughput(root)
        return _THROUGHPUT[root]


def _group(shape: RunShape, found: list[Measurement]) -> tuple[str, list[Measurement]]:
    """Return (kind, the measurements an estimate of `shape` rests on)."""
    trains = [m for m in found if (m.shape.steps > 0) == (shape.steps > 0)]
    same = [m for m in trains if m.shape.key == shape.key]
    if same:
        return "measured", same
    for pool in ([m for m in trains if (m.shape.model, m.shape.method, m.shape.device)
                  == (shape.model, shape.method, shape.device)],
                 [m for m in trains if (m.shape.model, m.shape.device) == (shape.model, shape.device)]):
        if pool:
            def distance(m: Measurement) -> float:
                return abs(math.log(max(m.shape.tokens, 1) / max(shape.tokens, 1)))
            best = min(distance(m) for m in pool)
            nearest = [m for m in pool if distance(m) == best]
            key = nearest[0].shape.key
            return "scaled", [m for m in nearest if m.shape.key == key]
    return "default", []


def _default(shape: RunShape, param_count: int | None) -> Estimate:
    step_s, tokens, where = REFERENCE_STEPS.get(shape.model, REFERENCE_STEPS["minilm"])
    scale = shape.tokens / tokens
    if shape.model not in REFERENCE_STEPS and param_count:
        scale *= param_count / MINILM_PARAMS
        where += f", scaled to {param_count / 1e6:,.0f} M parameters"
    step = step_s * scale
    gpu = " (a CPU figure; a GPU is faster)" if shape.device == "cuda" else ""
    return Estimate(DEFAULT_OVERHEAD_S + shape.steps * step,
                    f"default guess: {step_s:g} s/step for {where}, linear in batch x sequence length{gpu}; "
                    f"nothing measured on this server yet for {shape.model} on {shape.device}",
                    "default", 0, step)


def estimate_from(shape: RunShape, found: list[Measurement], param_count: int | None = None) -> Estimate:
    """Return the estimate of a run of `shape` from the measurements `found` (module docstring);
    `param_count` scales the default guess for a model without a reference figure."""
    kind, group = _group(shape, found)
    if not group:
        return _default(shape, param_count)
    step = _median(m.step_seconds / max(m.shape.tokens, 1) for m in group) * shape.tokens
    per_eval = _median(m.eval_seconds / max(m.shape.num_eval * m.shape.seq_len, 1)
                       for m in group if m.eval_seconds is not None and m.shape.num_eval)
    if per_eval is not None and shape.num_eval:
        eval_s = per_eval * shape.num_eval * shape.seq_len
    else:
        eval_s = _median(m.eval_seconds for m in group) or 0.0
    overhead = _median(m.overhead_seconds for m in group)
    seconds = (DEFAULT_OVERHEAD_S if overhead is None else overhead) + shape.steps * step + shape.evaluations * eval_s
    n = len(group)
    runs = f"{n} run{'' if n == 1 else 's'}"
    ref = group[0].shape
    if kind == "measured":
        source = f"measured on this server from {runs} ({step:.2f} s/step)"
    elif ref.method == shape.method:
        source = (f"scaled from {runs} measured on this server at batch {ref.batch_size} x {ref.seq_len} "
                  f"tokens: linear in steps and in batch x sequence length ({step:.2f} s/step)")
    else:
        source = (f"scaled from {runs} of another method ({ref.method}) measured on this server at batch "
                  f"{ref.batch_size} x {ref.seq_len} tokens: linear in steps and in batch x sequence "
                  f"length ({step:.2f} s/step)")
    return Estimate(seconds, source, kind, n, step)


def estimate_run_seconds(config: RunConfig | RunShape, runs_root: str | Path | None = None, *,
                         param_count: int | None = None) -> Estimate:
    """Return the estimated wall time of one run (an Estimate: seconds, source, kind, ...),
    from the runs finished in `runs_root` (None: the default guess only)."""
    shape = config if isinstance(config, RunShape) else RunShape.of(config)
    found = throughput(runs_root).measurements() if runs_root is not None else []
    return estimate_from(shape, found, param_count)


def estimate_runs(configs: Iterable[RunConfig | RunShape], runs_root: str | Path | None = None, *,
                  param_count: int | None = None) -> list[Estimate]:
    """Return one Estimate per config (`estimate_run_seconds`), reading the runs folder once."""
    found = throughput(runs_root).measurements() if runs_root is not None else []
    return [estimate_from(c if isinstance(c, RunShape) else RunShape.of(c), found, param_count) for c in configs]


class QueueLike(Protocol):
    """What `estimate_wait_seconds` reads of a run queue (`idlora_core.jobs.run_queue.RunQueue`)."""

    root: Path

    def waiting(self) -> list[dict[str, Any]]: ...

    def running(self) -> list[dict[str, Any]]: ...


UNKNOWN_SHAPE = RunShape(model="?", method="?", steps=TrainConfig().steps, batch_size=TrainConfig().batch_size,
                         seq_len=TrainConfig().seq_len)  # a ticket of an older version: the defaults


def estimate_wait_seconds(queue: QueueLike, slots: int, runs_root: str | Path | None = None, *,
                          now: float | None = None) -> tuple[float, int]:
    """Return (seconds, runs ahead): the expected wait of a run queued now, the time left of the
    runs training (their estimate less their time so far) plus the estimates of every waiting run,
    shared by `slots` slots."""
    found = throughput(runs_root if runs_root is not None else queue.root).measurements()
    memo: dict[RunShape, float] = {}

    def seconds(entry: dict[str, Any]) -> float:
        shape = RunShape.from_dict(entry.get("shape") or {}) or UNKNOWN_SHAPE
        if shape not in memo:
            memo[shape] = estimate_from(shape, found).seconds
        return memo[shape]

    now = time.time() if now is None else now
    running, waiting = queue.running(), queue.waiting()
    left = sum(max(0.0, seconds(e) - (now - float(e.get("started") or now))) for e in running)
    total = left + sum(seconds(e) for e in waiting)
    return total / max(int(slots), 1), len(running) + len(waiting)


def minutes(seconds: float) -> str:
    """Return a duration for a page: "40 s", "3 min", "1.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:,.1f} h"
