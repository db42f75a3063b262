"""Issue 18 #8 and #9: studies whose workers die on other hosts, killed coordinators, two
coordinators on one folder, `--status`, and summaries that flag missing seeds.

In-process tests build the "other host" as a real Optuna trial whose recorded host, process
space and heartbeat belong to another machine; the multi-process ones kill real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from idlora_core.study.config import load_study
from idlora_core.study.runner import prepare_study, summary_table, trials_table
from idlora_core.study.status import cell_of, cell_states, failure_of, status_text, unfinished_line
from idlora_core.study.storage import LOCK_FILE, LOST, load_optuna_study
from idlora_core.study.worker import DIED, SPACE, HeartbeatWatch, Worker, fail_lost, requeue
from idlora_core.training.callbacks import StopFlag

REPO = Path(__file__).resolve().parents[3]
OTHER_HOST = {"host": "gpu-b", "space": "gpu-b/another-boot/4026531836"}


def study_yaml(path: Path, model_dir: str, steps: int = 2, name: str | None = None, **grid) -> Path:
    data = {
        "base": {"model": {"name": model_dir},
                 "adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 2}]},
                 "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 8}],
                 "train": {"steps": steps, "batch_size": 4, "seq_len": 24, "learning_rate": 0.01,
                           "eval_interval": 0, "save_interval": 0}},
        "grid": {"method": ["lora"], "r": [2], "seed": [0], **grid},
        "metric": "eval_sentiment_accuracy",
        **({"name": name} if name else {}),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: list[str], tmp_path: Path, heartbeat: int = 1, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), IDLORA_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", IDLORA_STUDY_HEARTBEAT_S=str(heartbeat), **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "idlora_core.study", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def trial_of_cell(study: optuna.Study, cell: int, **attrs) -> optuna.Trial:
    """A RUNNING trial of `cell`, as a worker starts one (queued params, then its attrs)."""
    study.enqueue_trial({"cell": cell})
    trial = study.ask()
    cells = list(range(len(study.user_attrs["cells"])))
    assert trial.suggest_categorical("cell", cells) == cell
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def complete_per_cell(study: optuna.Study) -> Counter:
    return Counter(cell_of(t) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def storages(tmp_path):
    return {"journal": f"journal:{tmp_path / 'study.log'}", "sqlite": f"sqlite:///{tmp_path / 'study.db'}"}


# --- judging dead workers --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_fail_lost_by_pid_here_and_by_heartbeat_elsewhere(kind, storages, tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.setenv("IDLORA_STUDY_HEARTBEAT_S", "2")  # grace 6 s
    meta = prepare_study(load_study(study_yaml(tmp_path / "s.yaml", tiny_bert_dir, seed=[0, 1, 2, 3])),
                         tmp_path / "study", storages[kind])
    study = load_optuna_study(meta["storage"], meta["name"], sampler=optuna.samplers.RandomSampler())
    t_dead = trial_of_cell(study, 0, host="here", space=SPACE, pid=dead_pid(), heartbeat=time.time())
    # a live pid here means nothing on another host: only its silent heartbeat can tell
    t_silent = trial_of_cell(study, 1, pid=os.getpid() + 0, heartbeat=123.0, **OTHER_HOST)
    t_beating = trial_of_cell(study, 2, pid=1, heartbeat=1.0, **OTHER_HOST)
    t_self = trial_of_cell(study, 3, host="here", space=SPACE, pid=os.getpid(), heartbeat=5.0)
    clock = [1000.0]
    watch = HeartbeatWatch(clock=lambda: clock[0])
    assert fail_lost(study, watch) == [t_dead.number]  # a dead process here: at once
    clock[0] += 5.9
    t_beating.set_user_attr("heartbeat", 2.0)
    assert fail_lost(study, watch) == []  # 5.9 s of silence < 6 s of grace
    clock[0] += 0.2
    assert fail_lost(study, watch) == [t_silent.number]  # the same heartbeat for 6.1 s on this clock
    clock[0] += 100
    t_beating.set_user_attr("heartbeat", 3.0)
    assert fail_lost(study, watch) == []  # a heartbeat that changes is alive, however late it looks
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {t_dead.number: TrialState.FAIL, t_silent.number: TrialState.FAIL,
                      t_beating.number: TrialState.RUNNING, t_self.number: TrialState.RUNNING}
    attrs = study.user_attrs
    trials = {t.number: t for t in study.get_trials()}
    assert failure_of(trials[t_dead.number], attrs) == DIED and failure_of(trials[t_silent.number], attrs) == LOST
    assert sorted(requeue(study, 4)) == [0, 1]  # each lost cell queued once...
    assert requeue(study, 4) == []  # ...and only once
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted((t.user_attrs["retry_of"], cell_of(t)) for t in waiting) == [(t_dead.number, 0), (t_silent.number, 1)]


def test_optuna_rdb_heartbeat_fails_a_trial_whose_process_vanished(storages, tmp_path, monkeypatch, tiny_bert_dir):
    # Optuna's own heartbeat (RDB): the process died inside the objective (no tell, no more beats)
    monkeypatch.setenv("IDLORA_STUDY_HEARTBEAT_S", "1")
    meta = prepare_study(load_study(study_yaml(tmp_path / "s.yaml", tiny_bert_dir)), tmp_path / "study",
                         storages["sqlite"])
    study = load_optuna_study(meta["storage"], meta["name"], sampler=optuna.samplers.RandomSampler())
    with pytest.raises(SystemExit):
        study.optimize(lambda trial: sys.exit(9), n_trials=1)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.RUNNING
    time.sleep(4.5)  # the grace period (3 heartbeats) on the database's clock (whole seconds in SQLite)
    assert fail_lost(study, HeartbeatWatch()) == []  # a fresh watch judges nothing yet: Optuna did it
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and failure_of(trial, study.user_attrs) == LOST


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_survivor_recovers_a_trial_lost_on_another_host(kind, storages, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_STUDY_HEARTBEAT_S", "1")  # grace 3 s
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_study(study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=4, seed=[0, 1]))
    out = tmp_path / "study"
    meta = prepare_study(cfg, out, storages[kind])
    # another host's worker took its first cell as workers do (GridSampler); its heartbeat beats
    # (on a clock an hour ahead: it must not matter) until the survivor has finished the other
    # cell, then the host is lost: its trial stays RUNNING, its heartbeat frozen
    other = load_optuna_study(meta["storage"], meta["name"])
    other.sampler = optuna.samplers.GridSampler({"cell": [0, 1]}, seed=0)
    lost = other.ask()
    lost_cell = lost.suggest_categorical("cell", [0, 1])
    for key, value in {"pid": os.getpid(), "heartbeat": time.time() + 3600, **OTHER_HOST}.items():
        lost.set_user_attr(key, value)
    died = []

    def other_host() -> None:
        while not other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            lost.set_user_attr("heartbeat", time.time() + 3600)
            time.sleep(0.3)
        died.append(datetime.now())

    beating = threading.Thread(target=other_host, daemon=True)
    beating.start()
    ran = Worker(cfg, meta, out, meta["storage"], StopFlag(), label="survivor").run_grid()
    beating.join(timeout=5)
    assert ran == 2  # the other cell, then, once it had waited, the lost one again
    study = load_optuna_study(meta["storage"], meta["name"])
    trials = {t.number: t for t in study.get_trials()}
    assert trials[lost.number].state == TrialState.FAIL
    assert failure_of(trials[lost.number], study.user_attrs) == LOST
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and cell_of(retry) == lost_cell
    assert complete_per_cell(study) == {0: 1, 1: 1}  # every cell done exactly once
    # judged on the survivor's clock: after 3 s of silence (the last beat was at most 0.3 s
    # before the host died), and recovered within the grace period (+ a poll and slack)
    silent = retry.datetime_start - died[0]
    assert timedelta(seconds=2.6) <= silent < timedelta(seconds=6), silent
    assert list(cell_states(out).state) == ["done", "done"]
    table = trials_table(out)
    assert table.loc[table.trial == lost.number, "failure"].item() == LOST
    assert table.loc[table.trial == retry.number, "host"].item() == os.environ.get("IDLORA_HOST", os.uname().nodename)
    summary = summary_table(out, table)
    assert summary.n_seeds.tolist() == [2] and summary.seeds_missing.tolist() == [0]


# --- reporting ---------------------------------------------------------------------------------

def test_status_lists_every_state_of_a_constructed_study(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_STUDY_HEARTBEAT_S", "20")  # grace 60 s
    out = tmp_path / "study"
    meta = prepare_study(load_study(study_yaml(tmp_path / "s.yaml", tiny_bert_dir, seed=[0, 1, 2, 3, 4])), out)
    study = load_optuna_study(meta["storage"], meta["name"], sampler=optuna.samplers.RandomSampler())
    done = trial_of_cell(study, 0, host="gpu-a", pid=11, heartbeat=time.time())
    study.tell(done, 0.75)
    running = trial_of_cell(study, 1, host="gpu-b", pid=22, heartbeat=time.time() - 5)
    stale = trial_of_cell(study, 2, host="gpu-c", pid=33, heartbeat=time.time() - 1000)
    failed = trial_of_cell(study, 3, host="gpu-a", pid=11, failure="ValueError: metric missing")
    study.tell(failed, state=TrialState.FAIL)
    table = cell_states(out)
    assert list(table.state) == ["done", "running", "stale", "failed", "pending"]
    assert list(table.trial.astype(object).where(table.trial.notna(), None)) == [
        done.number, running.number, stale.number, failed.number, None]
    assert [h if isinstance(h, str) else None for h in table.host] == ["gpu-a", "gpu-b", "gpu-c", "gpu-a", None]
    assert table.heartbeat_age_s[1] == pytest.approx(5, abs=2) and table.heartbeat_age_s[2] == pytest.approx(1000, abs=2)
    assert table.failure[3] == "ValueError: metric missing" and table.complete.tolist() == [1, 0, 0, 0, 0]
    text = status_text(out, table)
    lines = text.splitlines()
    assert lines[0] == (f"study 'study' ({meta['storage']}): 5 cells: 1 done, 1 running, 1 stale, 1 failed, "
                        "1 pending")
    assert lines[1].split() == ["0000-lora-r2-s0", "done"]
    assert lines[2].split()[:7] == ["0001-lora-r2-s1", "running", "trial", str(running.number), "on",
                                    "gpu-b", "pid"]
    assert "heartbeat 5 s ago" in lines[2] or "heartbeat 6 s ago" in lines[2]
    assert lines[3].split()[1] == "stale" and "gpu-c" in lines[3]
    assert lines[4].endswith(f"failed   trial {failed.number}: ValueError: metric missing")
    assert lines[5].split() == ["0004-lora-r2-s4", "pending"]
    line = unfinished_line(table)
    assert line.startswith("4 of 5 cells not done: 0001-lora-r2-s1 running (trial")
    assert "0004-lora-r2-s4 pending" in line and "0000" not in line and "\n" not in line
    printed = subprocess.run([sys.executable, "-m", "idlora_core.study", str(out), "--status"], cwd=REPO,
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert printed.returncode == 0 and printed.stdout.splitlines()[0] == lines[0], printed.stderr
    assert [ln.split()[1] for ln in printed.stdout.splitlines()[1:]] == list(table.state)
    missing = subprocess.run([sys.executable, "-m", "idlora_core.study", str(tmp_path / "nowhere"), "--status"],
                             cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "is not a study folder" in missing.stderr


# --- real processes ----------------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow  # 18 s; default: jobs/test_studies.py::test_a_folder_held_by_a_cli_coordinator_is_refused_naming_the_holder
@pytest.mark.multiprocess
def test_second_coordinator_on_one_folder_is_refused_then_resumes(tiny_bert_dir, tmp_path):
    out = tmp_path / "study"
    spec = study_yaml(tmp_path / "s.yaml", tiny_bert_dir)
    meta = prepare_study(load_study(spec), out)
    # keep the first coordinator alive without training: its one cell runs on another host
    # (heartbeat fresh for the 90 s grace of IDLORA_STUDY_HEARTBEAT_S=30)
    study = load_optuna_study(meta["storage"], meta["name"], sampler=optuna.samplers.RandomSampler())
    elsewhere = trial_of_cell(study, 0, pid=1, heartbeat=time.time(), **OTHER_HOST)
    first = cli([str(spec), "--out", str(out)], tmp_path, heartbeat=30, start_new_session=True)
    try:
        lock = out / LOCK_FILE
        wait_for(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text(), 90, "the first coordinator's lock")
        before = {name: (out / name).read_bytes() for name in ("study.yaml", "study.json")}
        for extra in (["--set", "grid.seed=[0,1]"], []):  # another grid, then the same settings
            second = cli([str(spec), "--out", str(out), *extra], tmp_path)
            log, _ = second.communicate(timeout=120)
            lines = log.strip().splitlines()
            assert second.returncode == 1 and len(lines) == 1, log
            assert f"{out} is in use by another study command, pid {first.pid} on host" in lines[0]
        assert {name: (out / name).read_bytes() for name in before} == before  # nothing was touched
        study.tell(elsewhere, 0.5)  # the other host finishes the cell: the first coordinator ends
        log, _ = first.communicate(timeout=180)
        assert first.returncode == 0 and "waiting for trials running in other workers (trial 0 on gpu-b)" in log, log
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert complete_per_cell(study) == {0: 1}
    again = cli([str(spec), "--out", str(out)], tmp_path)  # the first has ended: the same settings resume
    log, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "all 1 cells are done" in log, log
    assert len(study.get_trials()) == 1


@pytest.mark.multiprocess
def test_killed_coordinator_takes_its_worker_with_it(tiny_bert_dir, tmp_path):
    out = tmp_path / "study"
    spec = study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=100000)
    coordinator = cli([str(spec), "--out", str(out)], tmp_path, start_new_session=True)
    worker = None
    try:
        status = wait_for(lambda: next((s for s in out.glob("runs/*/status.json")
                                        if pd.read_json(s, typ="series").get("step", 0) >= 2), None),
                          120, "the worker's run to train")
        worker = int(pd.read_json(status, typ="series")["pid"])
        assert [p.pid for p in psutil.Process(coordinator.pid).children()] == [worker]
        os.kill(coordinator.pid, signal.SIGKILL)  # no handler runs: only the kernel can tell the worker
        coordinator.wait()
        wait_for(lambda: _gone(worker), 20, f"worker {worker} to exit")
    finally:
        if coordinator.poll() is None:
            os.killpg(coordinator.pid, signal.SIGKILL)
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)  # an orphan: do not leave it training
    # it stopped as on any SIGTERM: after its step, with a checkpoint, the trial marked 'stopped'
    assert pd.read_json(status, typ="series")["state"] == "cancelled"
    trials = trials_table(out)
    assert trials.state.tolist() == ["FAIL"] and trials.failure.tolist() == ["stopped"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_worker_killed_on_a_second_host_is_recovered_by_the_survivor(tiny_bert_dir, tmp_path):
    # two hosts (IDLORA_HOST), each with its own --out, one journal storage; host A is killed -9
    # at step 4 of its first run; B finishes its cells, then A's, and exits 0
    storage = f"journal:{tmp_path / 'shared.log'}"
    spec = study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=40, name="shared", seed=[0, 1, 2])
    a = cli([str(spec), "--out", str(tmp_path / "a"), "--storage", storage], tmp_path,
            env={"IDLORA_HOST": "host-a"}, start_new_session=True)
    b = cli([str(spec), "--out", str(tmp_path / "b"), "--storage", storage], tmp_path,
            env={"IDLORA_HOST": "host-b"}, start_new_session=True)
    try:
        def a_at_step_4() -> bool:
            return any(pd.read_json(s, typ="series").get("step", 0) >= 4
                       for s in (tmp_path / "a").glob("runs/*/status.json"))
        wait_for(a_at_step_4, 240, "host A's run to reach step 4")
        os.killpg(a.pid, signal.SIGKILL)  # coordinator and worker: a machine lost
        a.wait()
        log, _ = b.communicate(timeout=300)
        assert b.returncode == 0, log
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    study = load_optuna_study(storage, "shared")
    assert complete_per_cell(study) == {0: 1, 1: 1, 2: 1}  # every cell (seed) done exactly once
    lost = [t for t in study.get_trials(states=(TrialState.FAIL,))]
    assert len(lost) == 1 and lost[0].user_attrs["host"] == "host-a"
    assert failure_of(lost[0], study.user_attrs) == LOST
    (retry,) = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == lost[0].number]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["host"] == "host-b"
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert summary.n_seeds.tolist() == [3] and summary.seeds_missing.tolist() == [0]
