"""recover(): a trial whose worker process died is failed through the storage's public API (no
`study._storage`, no `trial._trial_id`), also where `study.tell` cannot, and requeued once."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from idlora_core.study.storage import load_optuna_study, open_storage
from idlora_core.study.worker import HOST, recover, requeue

CELLS = {"cell": CategoricalDistribution([0, 1])}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def grid_study(storage) -> tuple[optuna.Study, optuna.Trial]:
    """Return a two-cell grid study with one finished trial and one RUNNING trial of this host
    whose worker process is dead."""
    optuna.create_study(study_name="s", storage=storage)
    study = load_optuna_study(storage, "s")
    study.sampler = optuna.samplers.GridSampler({"cell": [0, 1]}, seed=0)
    study.tell(study.ask(CELLS), 1.0)
    lost = study.ask(CELLS)
    lost.set_user_attr("host", HOST)
    lost.set_user_attr("pid", dead_pid())
    return study, lost


@pytest.mark.filterwarnings("ignore:Heartbeat")
@pytest.mark.parametrize("url", ["sqlite:///{}/study.db", "journal:{}/study.log"])
def test_dead_workers_trial_is_failed_and_queued_again(tmp_path, url):
    storage = open_storage(url.format(tmp_path))
    study, lost = grid_study(storage)
    assert recover(study, storage) == [lost.number]
    trial = study.get_trials()[lost.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["failure"] == "worker process died"
    assert requeue(study, 2) == [lost.params["cell"]]
    assert recover(study, storage) == []  # nothing left to fail


def test_study_tell_would_stop_the_grid_outside_optimize():
    """Why recover writes through the storage: telling the last open cell runs GridSampler's
    after_trial, whose study.stop() is an error outside `optimize`."""
    study, lost = grid_study(optuna.storages.InMemoryStorage())
    with pytest.raises(RuntimeError, match="Study.stop"):
        study.tell(lost.number, state=TrialState.FAIL)


def test_live_and_foreign_trials_are_left_alone():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    for host, pid in ((HOST, 1), ("another-host", dead_pid()), (HOST, None)):  # 1: init, alive
        trial = study.ask()
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
    assert recover(study, storage) == []
    assert all(t.state == TrialState.RUNNING for t in study.get_trials())
