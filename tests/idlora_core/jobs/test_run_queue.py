"""The server's one run queue (issue 8 #8): one limit for all sessions, FIFO, on disk, places."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from idlora_core.config import parse_config
from idlora_core.jobs import runs, slots
from idlora_core.jobs.run_queue import QueueWorker, RunQueue, free_run_slots, ticket_state
from idlora_core.jobs.slots import max_runs
from idlora_core.training.run_files import read_status, write_status


def sleeper(seconds: float, started: list):
    """A launcher whose 'run' is a real process that sleeps (the queue only sees processes)."""

    def launch(config, root, name):
        run_dir = runs.safe_run_dir(root, name)
        run_dir.mkdir(parents=True)
        proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        write_status(run_dir, "running", "sleeping", pid=proc.pid)
        started.append(name)
        return runs.RunHandle(run_dir, config.adapter.method, proc)

    return launch


def _cfg(method: str = "lora"):
    return parse_config({"adapter": {"method": method}})


def _end(queue: RunQueue, name: str) -> None:
    for entry in queue.running():
        if entry["run_dir"].endswith(name):
            os.kill(entry["pid"], 9)
    deadline = time.time() + 10
    while time.time() < deadline and any(e["run_dir"].endswith(name) for e in queue.running()):
        time.sleep(0.05)


def test_each_queued_run_gets_an_equal_share_of_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(slots.os, "cpu_count", lambda: 8)
    for runs_at_once, threads in (("1", 8), ("2", 4), ("3", 2), ("8", 1), ("16", 1)):
        monkeypatch.setenv("IDLORA_MAX_RUNS", runs_at_once)
        assert slots.threads_per_run() == threads
    monkeypatch.setenv("IDLORA_MAX_RUNS", "two")  # reported where runs start; here one run's share
    assert slots.threads_per_run() == 8
    monkeypatch.setenv("IDLORA_MAX_RUNS", "2")
    asked = []
    monkeypatch.setattr(runs, "start_run", lambda *a, **kw: asked.append(kw))
    RunQueue(tmp_path)._start_capped(parse_config({}), tmp_path, "x")
    assert asked[0]["threads"] == 4


def test_limit_from_env_gpus_or_cpu_cores(monkeypatch):
    import torch

    monkeypatch.setenv("IDLORA_MAX_RUNS", "3")
    assert max_runs() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("IDLORA_MAX_RUNS", bad)
        with pytest.raises(ValueError, match="IDLORA_MAX_RUNS"):
            max_runs()
    monkeypatch.delenv("IDLORA_MAX_RUNS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(slots.os, "cpu_count", lambda: 8)
    assert max_runs() == 4
    monkeypatch.setattr(slots.os, "cpu_count", lambda: 1)
    assert max_runs() == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert max_runs() == 2


def test_sessions_share_one_limit_first_come_first_served(tmp_path):
    started: list[str] = []
    server = RunQueue(tmp_path, limit=1, launcher=sleeper(60, started))
    tab_a, tab_b = RunQueue(tmp_path), RunQueue(tmp_path)  # two sessions, one runs folder
    a1 = tab_a.submit(_cfg(), label="a1", owner="A", name="a1")
    b1 = tab_b.submit(_cfg(), label="b1", owner="B", name="b1")
    a2 = tab_a.submit(_cfg(), label="a2", owner="A", name="a2")
    assert [tab_b.place(t.id) for t in (a1, b1, a2)] == [1, 2, 3]
    try:
        assert [h.name for h in server.pump()] == ["a1"]
        assert server.pump() == []  # the limit holds while a1 lives
        assert ticket_state(tab_a, a1) == ("running", None)
        assert ticket_state(tab_b, b1) == ("queued", 1) and ticket_state(tab_a, a2) == ("queued", 2)
        _end(server, "a1")
        assert [h.name for h in server.pump()] == ["b1"]  # B was before A's second run
        assert ticket_state(tab_a, a2) == ("queued", 1)
        _end(server, "b1")
        server.pump()
        assert started == ["a1", "b1", "a2"] and len(server.running()) == 1
    finally:
        for entry in server.running():
            os.kill(entry["pid"], 9)


def test_queued_runs_survive_a_closed_tab(tmp_path):
    started: list[str] = []
    tab = RunQueue(tmp_path)
    ticket = tab.submit(_cfg(), label="mine", name="r1")
    del tab  # the browser tab is closed: nothing of the queue lived in it
    worker = QueueWorker(RunQueue(tmp_path, limit=1, launcher=sleeper(0.1, started)), interval=0.05)
    worker.start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not started:
            time.sleep(0.05)
    finally:
        worker.stop()
        worker.join(5)
    assert started == ["r1"] and ticket.run_dir.is_dir() and not worker.errors


def test_cancel_withdraws_a_waiting_run_and_stops_a_started_one(tmp_path):
    started: list[str] = []
    server = RunQueue(tmp_path, limit=1, launcher=sleeper(60, started))
    first = server.submit(_cfg(), name="first")
    second = server.submit(_cfg(), name="second")
    server.pump()
    assert server.cancel(second.id) and server.place(second.id) is None
    assert server.cancel(first.id)  # SIGTERM to the sleeping process
    deadline = time.time() + 10
    while time.time() < deadline and server.running():
        time.sleep(0.05)
    assert server.running() == [] and server.pump() == [] and started == ["first"]
    assert not server.cancel(second.id)


def test_a_run_that_dies_without_a_status_is_marked_failed(tmp_path):
    started: list[str] = []
    server = RunQueue(tmp_path, limit=1, launcher=sleeper(0, started))
    ticket = server.submit(_cfg(), name="crash")
    server.pump()
    deadline = time.time() + 10
    while time.time() < deadline and server.running():
        time.sleep(0.05)
    server.pump()
    status = read_status(ticket.run_dir)
    assert status["state"] == "failed" and "without a final status" in status["message"]
    assert ticket_state(server, ticket) == ("failed", None)


def test_submit_refuses_a_taken_folder_name(tmp_path):
    queue = RunQueue(tmp_path)
    queue.submit(_cfg(), name="x")
    with pytest.raises(runs.RunPathError, match="already exists or is queued"):
        queue.submit(_cfg(), name="x")
    with pytest.raises(runs.RunPathError):
        queue.submit(_cfg(), name="../outside")


@pytest.mark.slow  # 10 s; default: the FIFO tests with sleeper processes in this file
@pytest.mark.multiprocess  # two real training processes (about 45 s on 2 busy cores)
def test_real_training_runs_one_after_the_other(tiny_bert_dir, tmp_path, monkeypatch):
    """Two real training processes through the queue with a limit of one never overlap."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny BERT: one thread each (tests/conftest.py)
    queue = RunQueue(tmp_path, limit=1)
    raw = {"model": {"name": tiny_bert_dir},
           "adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 2}]},
           "tasks": [{"name": "sentiment", "num_train": 8, "num_eval": 4}],
           "train": {"steps": 2, "batch_size": 4, "seq_len": 16, "eval_interval": 0, "save_interval": 0}}
    tickets = [queue.submit(parse_config(raw), name=f"run{i}") for i in range(2)]
    deadline = time.time() + 300
    while time.time() < deadline and any(ticket_state(queue, t)[0] not in runs.FINAL_STATES for t in tickets):
        assert len(queue.running()) <= 1
        queue.pump()
        time.sleep(0.2)
    assert [ticket_state(queue, t)[0] for t in tickets] == ["finished", "finished"], [
        runs.log_tail(t.run_dir) for t in tickets]
    first_end = read_status(tickets[0].run_dir)["updated"]
    second_start = min(p.stat().st_mtime for p in tickets[1].run_dir.iterdir())
    assert second_start >= first_end - 0.5  # started after the first one ended


def test_a_running_studys_workers_take_slots_from_the_queue(tmp_path, monkeypatch):
    import json

    from idlora_core.jobs.studies import LAUNCH_FILE, STUDIES_DIR

    started: list = []
    queue = RunQueue(tmp_path, limit=2, launcher=sleeper(30, started))
    study = tmp_path / STUDIES_DIR / "s1"
    study.mkdir(parents=True)
    (study / "study.json").write_text("{}")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (study / LAUNCH_FILE).write_text(json.dumps({"pid": worker.pid, "workers": 2}))
        queue.submit(_cfg(), label="a")
        assert queue.pump() == [] and started == []  # the study's 2 workers fill the limit of 2
        (study / LAUNCH_FILE).write_text(json.dumps({"pid": worker.pid, "workers": 1}))
        assert len(queue.pump()) == 1 and len(started) == 1
    finally:
        worker.kill()
        worker.wait()
        for entry in queue.running():
            os.kill(entry["pid"], 9)
        deadline = time.time() + 10
        while queue.running() and time.time() < deadline:  # reaps the killed child
            time.sleep(0.05)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "3")
    assert free_run_slots(tmp_path) == 3  # the study ended and the sleeper was killed


def test_runs_started_by_hand_in_the_runs_folder_take_slots(tmp_path, monkeypatch):
    import json
    import socket

    from idlora_core.training.run_folder import LOCK_FILE, RunFolder

    monkeypatch.setenv("IDLORA_MAX_RUNS", "2")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for name, holder in (("other-host", {"pid": os.getpid(), "host": "elsewhere"}),
                         ("dead", {"pid": gone.pid, "host": socket.gethostname()})):
        (tmp_path / name).mkdir()  # neither holds a slot here
        (tmp_path / name / LOCK_FILE).write_text(json.dumps(holder))
    assert free_run_slots(tmp_path) == 2
    by_hand = RunFolder(tmp_path / "by-hand").acquire()  # `python -m idlora_core.train` holds it
    started: list[str] = []

    def locked_sleeper(config, root, name):  # a queued run that holds its folder's lock, as
        handle = sleeper(60, started)(config, root, name)  # the trainer does
        (handle.run_dir / LOCK_FILE).write_text(json.dumps(
            {"pid": handle.process.pid, "host": socket.gethostname()}))
        return handle

    server = RunQueue(tmp_path, launcher=locked_sleeper)
    for name in ("q1", "q2"):
        server.submit(_cfg(), label=name, name=name)
    try:
        assert free_run_slots(tmp_path) == 1
        assert [h.name for h in server.pump()] == ["q1"]  # the hand-started run holds a slot
        assert server.pump() == [] and free_run_slots(tmp_path) == 0
        by_hand.release()
        assert [h.name for h in server.pump()] == ["q2"]  # q1's own lock is not counted twice
        assert free_run_slots(tmp_path) == 0 and started == ["q1", "q2"]
    finally:
        by_hand.release()
        for entry in server.running():
            os.kill(entry["pid"], 9)
