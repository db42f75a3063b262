"""One study worker: takes trials from the Optuna study until none is left, trains each as an
ordinary run folder, and keeps the base model loaded between trials.

Grid studies: `GridSampler` over one categorical parameter, `cell`, the index of a grid cell
(so collapsed cells are never duplicated). TPE studies: one Optuna study per budget whose
trials sample `learning_rate` (log-uniform) and train every seed; the value is the mean.
A trial whose worker died (crash, kill, power cut) is failed and queued again once.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from idlora_core.config import save_config
from idlora_core.study.config import StudyConfig
from idlora_core.study.grid import cell_config, cell_name
from idlora_core.training.callbacks import StopFlag
from idlora_core.training.run_folder import pid_alive

RUNS_DIR = "runs"
RETRYABLE = ("worker process died", "stopped")  # failures that say nothing about the cell itself
HOST = socket.gethostname()


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


def _cell_of(trial: optuna.trial.FrozenTrial) -> Any:
    if "cell" in trial.params:
        return trial.params["cell"]
    return (trial.system_attrs.get("fixed_params") or {}).get("cell", trial.user_attrs.get("cell"))


def recover(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail the RUNNING trials of this host whose worker process is gone; return their numbers.

    `storage` is the one `study` was opened on: a dead process's trial is not a `Trial` of
    ours, so its failure is written through the storage's public API (not `study.tell`, which
    would run the sampler's after_trial: GridSampler calls `study.stop()`, an error outside
    `optimize`)."""
    failed = []
    study_id = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == HOST and pid and pid != os.getpid() and not pid_alive(pid):
            if study_id is None:
                study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "failure", "worker process died")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed.append(t.number)
    return failed


def requeue(study: optuna.Study, n_cells: int) -> list[int]:
    """Queue once more every cell whose only trials failed because their worker stopped or died
    (at most one retry per cell); return the cells queued."""
    by_cell: dict[Any, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        by_cell.setdefault(_cell_of(t), []).append(t)
    queued = []
    for cell in range(n_cells):
        trials = by_cell.get(cell, [])
        if not trials or any(t.state != TrialState.FAIL for t in trials):
            continue
        if len(trials) < 2 and trials[0].user_attrs.get("failure") in RETRYABLE:
            study.enqueue_trial({"cell": cell}, user_attrs={"retry_of": trials[0].number})
            queued.append(cell)
    return queued


def open_cells(study: optuna.Study, n_cells: int) -> tuple[int, int]:
    """Return (cells nobody has started, trials waiting in the queue)."""
    trials = study.get_trials(deepcopy=False)
    started = {_cell_of(t) for t in trials if t.state != TrialState.WAITING}
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return len(set(range(n_cells)) - started), waiting


class Worker:
    """Runs trials of one study folder in this process (see the module docstring)."""

    def __init__(self, study_cfg: StudyConfig, meta: dict[str, Any], out_dir: str | Path, storage: str,
                 stop: StopFlag | None = None, label: str = "worker"):
        self.cfg, self.meta, self.out = study_cfg, meta, Path(out_dir)
        self.storage, self.stop, self.label = storage, stop or StopFlag(), label
        self.cells: list[dict[str, Any]] = meta["cells"]
        self.pool = ModelPool()

    def _train(self, trial: optuna.Trial, cell: dict[str, Any], folder: str) -> dict[str, Any]:
        """Train one cell into DIR/runs/folder and return its record (for user attrs)."""
        from idlora_core.training.trainer import run_training

        run_dir = self.out / RUNS_DIR / folder
        config = cell_config(self.cfg.base, cell, str(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        start = time.perf_counter()
        # overwrite: a retried trial replaces what its killed attempt left (moved aside, not lost)
        result = run_training(config, progress=False, overwrite=True, stop=self.stop, source=self.pool)
        final = {k: v for k, v in result.final_metrics.items() if isinstance(v, (int, float)) or v is None}
        return {"run_dir": f"{RUNS_DIR}/{folder}", "run_state": result.state, "message": result.message,
                "seconds": time.perf_counter() - start, "final": final}

    def _value(self, record: dict[str, Any]) -> float:
        if record["run_state"] == "cancelled":
            raise RuntimeError("stopped")
        if record["run_state"] != "finished":
            raise RuntimeError(record["message"])
        final = record["final"]
        if final.get(self.cfg.metric) is None:
            keys = ", ".join(sorted(k for k in final if k.startswith(("eval_", "final_"))))
            raise ValueError(f"metric {self.cfg.metric!r} is not in the run's final metrics ({keys})")
        return float(final[self.cfg.metric])

    def _mark(self, trial: optuna.Trial) -> None:
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())

    def grid_objective(self, study: optuna.Study):
        def objective(trial: optuna.Trial) -> float:
            self._mark(trial)
            index = trial.suggest_categorical("cell", list(range(len(self.cells))))
            trial.set_user_attr("cell", index)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
                if _cell_of(t) == index and t.number != trial.number and (
                        t.state == TrialState.COMPLETE or t.number < trial.number):
                    trial.set_user_attr("duplicate_of", t.number)
                    raise optuna.TrialPruned(f"cell {index} already run by trial {t.number}")
            cell = self.cells[index]
            record = self._train(trial, cell, cell_name(index, cell))
            for key, value in record.items():
                trial.set_user_attr(key, value)
            if record["run_state"] == "cancelled":
                trial.set_user_attr("failure", "stopped")
            value = self._value(record)
            print(f"[{self.label}] trial {trial.number} {cell_name(index, cell)}: {self.cfg.metric}="
                  f"{value:.4g} ({record['seconds']:.0f} s)", flush=True)
            return value
        return objective

    def run_grid(self) -> int:
        """Run grid trials until none is left (or a stop request); return how many this worker ran."""
        from idlora_core.study.storage import load_optuna_study, open_storage

        storage = open_storage(self.storage)
        study = load_optuna_study(storage, self.meta["name"])
        # One seed for every worker: GridSampler shuffles the grid with it, and grid ids must
        # name the same cells in all workers.
        study.sampler = optuna.samplers.GridSampler({"cell": list(range(len(self.cells)))}, seed=0)
        ran = 0
        while not self.stop.requested:
            recover(study, storage)
            requeue(study, len(self.cells))
            unstarted, waiting = open_cells(study, len(self.cells))
            if not unstarted and not waiting:
                break
            study.optimize(self.grid_objective(study), n_trials=1, catch=(Exception,))
            ran += 1
        return ran

    def run_tpe(self) -> int:
        """Run TPE trials for every budget until each has `trials` finished ones; return the count."""
        from idlora_core.study.storage import open_storage

        rng = self.cfg.grid.learning_rate
        groups: dict[str, list[dict[str, Any]]] = {}
        for cell in self.cells:
            groups.setdefault(cell_name(0, {**cell, "seed": None})[5:], []).append(cell)
        ran = 0
        storage = open_storage(self.storage)
        for group, cells in groups.items():
            name = f"{self.meta['name']}/{group}"
            study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                        direction=self.cfg.direction,
                                        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
            while not self.stop.requested:
                recover(study, storage)
                live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                TrialState.WAITING))
                if len(live) >= rng.trials:
                    break

                def objective(trial: optuna.Trial, cells=cells) -> float:
                    self._mark(trial)
                    lr = trial.suggest_float("learning_rate", rng.low, rng.high, log=True)
                    records = []
                    for cell in cells:
                        cell = {**cell, "learning_rate": lr}
                        folder = f"t{trial.number:03d}-" + cell_name(0, cell)[5:]
                        records.append({**self._train(trial, cell, folder), "cell": cell})
                        trial.set_user_attr("runs", records)
                    values = [self._value(r) for r in records]
                    return sum(values) / len(values)

                study.optimize(objective, n_trials=1, catch=(Exception,))
                ran += 1
            if self.stop.requested:
                break
        return ran
