"""One study worker: takes trials from the Optuna study until none is left, trains each as an
ordinary run folder, and keeps the base model loaded between trials.

Grid studies: `GridSampler` over one categorical parameter, `cell`, the index of a grid cell
(so collapsed cells are never duplicated). TPE studies: one Optuna study per budget whose
trials sample `learning_rate` (log-uniform) and train every seed; the value is the mean.

Dead workers, on any host: a running trial carries `host`, `pid`, `space` (host, boot and pid
namespace: where that pid means something) and a `heartbeat` (Unix seconds) rewritten every
`heartbeat_seconds()`. Before taking work, a worker fails (`fail_lost`) the running trials of
other workers whose process is gone (same `space` only) or whose heartbeat it has seen unchanged
for `grace_seconds()` on its own clock (so hosts' clocks need not agree), plus Optuna's own
stale RDB trials; `requeue` runs such a cell once more. A worker leaves only when every cell is
finished or failed for good: while others' trials run it waits, in case they die.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from idlora_core.config import save_config
from idlora_core.models import error_line
from idlora_core.study.config import StudyConfig
from idlora_core.study.grid import cell_config, cell_name
from idlora_core.study.status import cell_of, failure_of
from idlora_core.study.storage import (
    LOST,
    grace_seconds,
    heartbeat_seconds,
    load_optuna_study,
    open_storage,
    record_failure,
)
from idlora_core.training.callbacks import StopFlag
from idlora_core.training.run_files import RunState
from idlora_core.training.run_folder import pid_alive

RUNS_DIR = "runs"
DIED = "worker process died"
STOPPED = "stopped"
RETRYABLE = (DIED, LOST, STOPPED)  # failures that say nothing about the cell itself
HOST = os.environ.get("IDLORA_HOST") or socket.gethostname()  # IDLORA_HOST: a host name of your choice


def _process_space() -> str:
    """Where a recorded pid can be checked: this host, its boot and its pid namespace (two
    containers on one host share the name but not the pids)."""
    parts = [HOST]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot" in path else str(os.stat(path).st_ino))
        except OSError:
            parts.append("")
    return "/".join(parts)


SPACE = _process_space()


class ModelPool:
    """Keeps one pristine copy of each loaded model and hands out deep copies (`source` for
    `run_training`), so a worker loads each base model once for all its trials, in the run's
    precision and on its device (as a fresh run loads it)."""

    def __init__(self) -> None:
        self._models: dict[tuple, tuple[Any, Any]] = {}
        self.loads = 0

    def __call__(self, name: str, head: str, num_labels: int, trust_remote_code: bool, *,
                 dtype: Any, device: str | None):
        key = (name, head, num_labels, trust_remote_code, str(dtype), device)
        if key not in self._models:
            from idlora_core.models import load_model

            loaded = load_model(name, head=head, num_labels=num_labels, trust_remote_code=trust_remote_code,
                                dtype=dtype, device=device)
            self._models[key] = (loaded.model, loaded.tokenizer)
            self.loads += 1
        model, tokenizer = self._models[key]
        return copy.deepcopy(model), tokenizer


class HeartbeatWatch:
    """Judges other workers' running trials by their `heartbeat` attr on this process's clock: a
    trial is stale once this process has seen the same heartbeat (or none) for longer than
    `grace_seconds()`. A fresh watch therefore needs one grace period before it fails anything."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock  # seconds, any origin
        self._seen: dict[int, tuple[Any, float]] = {}

    def stale(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Return True when `trial`'s heartbeat has not changed for grace_seconds() of `clock`."""
        now = self.clock()
        beat = trial.user_attrs.get("heartbeat")
        seen = self._seen.get(trial.number)
        if seen is None or seen[0] != beat:
            self._seen[trial.number] = (beat, now)
            return False
        return now - seen[1] > grace_seconds()


def _same_space(trial: optuna.trial.FrozenTrial) -> bool:
    if "space" in trial.user_attrs:
        return trial.user_attrs["space"] == SPACE
    return trial.user_attrs.get("host") == HOST  # trials recorded before `space` existed


def fail_lost(study: optuna.Study, watch: HeartbeatWatch) -> list[int]:
    """Fail the running trials of other workers that are gone: those whose process no longer
    exists (recorded in this process space) and those whose heartbeat `watch` finds stale, then
    Optuna's own stale trials (RDB heartbeats, database clock). Returns the trial numbers failed
    by the first two checks. `study` should carry a sampler with no `after_trial` work (e.g.
    RandomSampler)."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if pid == os.getpid() and _same_space(t):
            continue
        if _same_space(t) and pid and not pid_alive(pid):
            reason = DIED
        elif watch.stale(t):
            reason = LOST
        else:
            continue
        record_failure(study, t.number, reason)
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished or failed by its own worker or another one meanwhile
        failed.append(t.number)
    optuna.storages.fail_stale_trials(study)
    return failed


def requeue(study: optuna.Study, n_cells: int) -> list[int]:
    """Queue once more every cell whose only trials failed because their worker stopped, died or
    went silent (at most one retry per cell); return the cells queued."""
    by_cell: dict[Any, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        by_cell.setdefault(cell_of(t), []).append(t)
    attrs = study.user_attrs
    queued = []
    for cell in range(n_cells):
        trials = by_cell.get(cell, [])
        if not trials or any(t.state != TrialState.FAIL for t in trials):
            continue
        if len(trials) < 2 and failure_of(trials[0], attrs) in RETRYABLE:
            study.enqueue_trial({"cell": cell}, user_attrs={"retry_of": trials[0].number})
            queued.append(cell)
    return queued


def open_cells(study: optuna.Study, n_cells: int) -> tuple[int, int]:
    """Return (cells nobody has started, trials waiting in the queue)."""
    trials = study.get_trials(deepcopy=False)
    started = {cell_of(t) for t in trials if t.state != TrialState.WAITING}
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return len(set(range(n_cells)) - started), waiting


class Heartbeat:
    """While a trial runs: its `heartbeat` attr rewritten every heartbeat_seconds() by a thread
    (stops by itself when the storage refuses, e.g. another worker failed the trial)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(heartbeat_seconds()):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - a finished trial or a storage hiccup: stop beating
                return

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


class Worker:
    """Runs trials of one study folder in this process (see the module docstring)."""

    def __init__(self, study_cfg: StudyConfig, meta: dict[str, Any], out_dir: str | Path, storage: str,
                 stop: StopFlag | None = None, label: str = "worker"):
        self.cfg, self.meta, self.out = study_cfg, meta, Path(out_dir)
        self.storage, self.stop, self.label = storage, stop or StopFlag(), label
        self.cells: list[dict[str, Any]] = meta["cells"]
        self.pool = ModelPool()
        self.watch = HeartbeatWatch()

    def _train(self, trial: optuna.Trial, cell: dict[str, Any], folder: str) -> dict[str, Any]:
        """Train one cell into DIR/runs/folder and return its record (for user attrs)."""
        from idlora_core.training.trainer import run_training

        run_dir = self.out / RUNS_DIR / folder
        config = cell_config(self.cfg.base, cell, str(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        start = time.perf_counter()
        # overwrite: a retried trial replaces what its killed attempt left (moved aside, not lost)
        try:
            result = run_training(config, progress=False, overwrite=True, stop=self.stop, source=self.pool)
        except Exception as exc:
            trial.set_user_attr("failure", f"{type(exc).__name__}: {error_line(exc)}")
            raise
        final = {k: v for k, v in result.final_metrics.items() if isinstance(v, (int, float)) or v is None}
        return {"run_dir": f"{RUNS_DIR}/{folder}", "run_state": result.state, "message": result.message,
                "seconds": time.perf_counter() - start, "final": final}

    def _value(self, record: dict[str, Any]) -> float:
        if record["run_state"] == RunState.cancelled:
            raise RuntimeError("stopped")
        if record["run_state"] != RunState.finished:
            raise RuntimeError(record["message"])
        final = record["final"]
        if final.get(self.cfg.metric) is None:
            keys = ", ".join(sorted(k for k in final if k.startswith(("eval_", "final_"))))
            raise ValueError(f"metric {self.cfg.metric!r} is not in the run's final metrics ({keys})")
        return float(final[self.cfg.metric])

    def _mark(self, trial: optuna.Trial) -> Heartbeat:
        """Record where the trial runs; return its heartbeat (a context manager)."""
        for key, value in (("host", HOST), ("pid", os.getpid()), ("space", SPACE)):
            trial.set_user_attr(key, value)
        return Heartbeat(trial)

    def grid_objective(self, study: optuna.Study):
        def objective(trial: optuna.Trial) -> float:
            with self._mark(trial):
                return run(trial)

        def run(trial: optuna.Trial) -> float:
            index = trial.suggest_categorical("cell", list(range(len(self.cells))))
            trial.set_user_attr("cell", index)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
                if cell_of(t) == index and t.number != trial.number and (
                        t.state == TrialState.COMPLETE or t.number < trial.number):
                    trial.set_user_attr("duplicate_of", t.number)
                    raise optuna.TrialPruned(f"cell {index} already run by trial {t.number}")
            cell = self.cells[index]
            record = self._train(trial, cell, cell_name(index, cell))
            for key, value in record.items():
                trial.set_user_attr(key, value)
            if record["run_state"] == RunState.cancelled:
                trial.set_user_attr("failure", STOPPED)
            value = self._value(record)
            print(f"[{self.label}] trial {trial.number} {cell_name(index, cell)}: {self.cfg.metric}="
                  f"{value:.4g} ({record['seconds']:.0f} s)", flush=True)
            return value
        return objective

    def _optimize(self, study: optuna.Study, objective) -> None:
        """One trial; a trial that another worker failed meanwhile (its heartbeat looked stale:
        a stalled host, a partitioned network) cannot be told its result, which is dropped."""
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
            print(f"[{self.label}] {error_line(exc)}: another worker failed this trial as lost; "
                  "its result is dropped (the cell is run again)", flush=True)

    def _wait(self, running: list[optuna.trial.FrozenTrial], shown: set[int]) -> None:
        """Sleep a poll period (a stop request ends it) while other workers' trials run."""
        new = [t for t in running if t.number not in shown]
        if new:
            where = ", ".join(f"trial {t.number} on {t.user_attrs.get('host', '?')}" for t in new[:5])
            print(f"[{self.label}] waiting for trials running in other workers ({where}): a trial whose "
                  f"heartbeat stops for {grace_seconds()} s is run again here", flush=True)
            shown.update(t.number for t in new)
        end = time.monotonic() + min(5.0, max(0.5, heartbeat_seconds() / 2))
        while time.monotonic() < end and not self.stop.requested:
            time.sleep(0.2)

    def run_grid(self) -> int:
        """Run grid trials until every cell is finished or failed for good (or a stop request);
        return how many this worker ran."""
        study = load_optuna_study(self.storage, self.meta["name"])
        # One seed for every worker: GridSampler shuffles the grid with it, and grid ids must
        # name the same cells in all workers.
        study.sampler = optuna.samplers.GridSampler({"cell": list(range(len(self.cells)))}, seed=0)
        admin = load_optuna_study(self.storage, self.meta["name"], sampler=optuna.samplers.RandomSampler())
        ran, shown = 0, set()
        while not self.stop.requested:
            fail_lost(admin, self.watch)
            requeue(admin, len(self.cells))
            unstarted, waiting = open_cells(admin, len(self.cells))
            if unstarted or waiting:
                self._optimize(study, self.grid_objective(study))
                ran += 1
                continue
            running = admin.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                break
            self._wait(running, shown)
        return ran

    def run_tpe(self) -> int:
        """Run TPE trials for every budget until each has `trials` finished ones (trials lost with
        their worker are replaced); return the count."""
        rng = self.cfg.grid.learning_rate
        groups: dict[str, list[dict[str, Any]]] = {}
        for cell in self.cells:
            groups.setdefault(cell_name(0, {**cell, "seed": None})[5:], []).append(cell)
        studies: dict[str, optuna.Study] = {}
        ran, shown = 0, set()
        while not self.stop.requested:
            running, worked = [], False
            for group, cells in groups.items():
                if group not in studies:
                    studies[group] = optuna.create_study(
                        study_name=f"{self.meta['name']}/{group}", storage=open_storage(self.storage),
                        load_if_exists=True, direction=self.cfg.direction,
                        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
                study = studies[group]
                fail_lost(study, self.watch)
                trials = study.get_trials(deepcopy=False)
                live = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)]
                attrs = study.user_attrs
                broken = sum(t.state == TrialState.FAIL and failure_of(t, attrs) not in RETRYABLE for t in trials)
                if len(live) < rng.trials and broken < rng.trials:  # a budget that always fails: give up
                    self._optimize(study, self._tpe_objective(cells))
                    ran, worked = ran + 1, True
                    break
                running += [t for t in live if t.state == TrialState.RUNNING]
            if worked:
                continue
            if not running:
                break
            self._wait(running, shown)
        return ran

    def _tpe_objective(self, cells: list[dict[str, Any]]):
        rng = self.cfg.grid.learning_rate

        def objective(trial: optuna.Trial) -> float:
            with self._mark(trial):
                lr = trial.suggest_float("learning_rate", rng.low, rng.high, log=True)
                records = []
                for cell in cells:
                    cell = {**cell, "learning_rate": lr}
                    folder = f"t{trial.number:03d}-" + cell_name(0, cell)[5:]
                    records.append({**self._train(trial, cell, folder), "cell": cell})
                    trial.set_user_attr("runs", records)
                values = [self._value(r) for r in records]
                return sum(values) / len(values)
        return objective
