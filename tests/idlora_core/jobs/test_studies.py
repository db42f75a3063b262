"""Study names are folder names, one name holds one study, and a study can be stopped (issue 18 #3, #4, #6)."""

from __future__ import annotations

import json
import os

import pytest

from idlora_core.jobs import studies
from idlora_core.jobs.runs import RunPathError
from idlora_core.study.config import parse_study

BASE = {"adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 8, "k": 4}]},
        "tasks": [{"name": "sentiment"}]}


def _study(seeds: list[int]):
    return parse_study({"base": BASE, "grid": {"method": ["base"], "seed": seeds},
                        "metric": "eval_sentiment_accuracy"})


@pytest.mark.parametrize("name", ["a/b", "", "  ", ".", "..", "x\\y", "nul\x00"])
def test_a_study_name_must_be_one_folder_name(tmp_path, name):
    with pytest.raises(RunPathError, match="must be one folder name"):
        studies.study_dir(tmp_path, name)
    assert studies.study_dir(tmp_path, " my-study ") == (tmp_path / "studies" / "my-study").resolve()


def test_a_name_in_use_is_refused_and_its_files_are_kept(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(studies.subprocess, "Popen", lambda *a, **k: started.append(a) or
                        type("P", (), {"pid": 10**7})())  # never a live pid
    out = studies.start_study(_study([0]), tmp_path, "mine")
    spec = (out / "input.yaml").read_text()
    with pytest.raises(ValueError, match="a study with other settings is named 'mine'"):
        studies.start_study(_study([0, 1]), tmp_path, "mine")
    assert (out / "input.yaml").read_text() == spec and len(started) == 1
    assert studies.start_study(_study([0]), tmp_path, "mine") == out  # same settings: resume
    (out / studies.LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 1}))  # alive
    with pytest.raises(ValueError, match="study 'mine' is running"):
        studies.start_study(_study([0]), tmp_path, "mine")
    assert len(started) == 2


def test_stop_study_ends_the_coordinator_and_its_workers(tmp_path):
    """The Studies page's Stop button: SIGTERM to the study's process group (issue 18 #6)."""
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    script = ("import subprocess, sys, time, pathlib; "
              "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"pathlib.Path({str(pid_file)!r}).write_text(str(w.pid)); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        (tmp_path / studies.LAUNCH_FILE).write_text(json.dumps({"pid": proc.pid, "workers": 1}))
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert studies.study_running(tmp_path)
        assert studies.stop_study(tmp_path)
        assert proc.wait(timeout=30) == -15
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker)
        assert not studies.study_running(tmp_path) and not studies.stop_study(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:  # a zombie (reaped later by init) counts as gone
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_owner_is_recorded_and_only_they_may_stop_it(tmp_path, monkeypatch):
    """Issue 18 #2: a user stops their own studies; a user's running studies are counted."""
    calls = []

    class Alive:  # a "study process" whose pid is this test's: alive while the test runs
        pid = os.getpid()

        def __init__(self, *args, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(studies.subprocess, "Popen", Alive)
    monkeypatch.setattr(studies, "uses_cuda", lambda config: False)  # a CPU server (a GPU has no cap)
    mine = studies.start_study(_study([0]), tmp_path, "mine", owner="user:ann", memory_cap_gb=8)
    other = studies.start_study(_study([1]), tmp_path, "other", owner="user:bob", memory_cap_gb=0)
    by_hand = tmp_path / "studies" / "by-hand"
    by_hand.mkdir()
    (by_hand / studies.LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 1}))
    assert studies.study_owner(mine) == "user:ann" and studies.study_owner(by_hand) == ""
    assert studies.may_stop(mine, "user:ann") and not studies.may_stop(other, "user:ann")
    assert studies.may_stop(by_hand, "user:ann")  # no owner recorded: as before
    # counted before the study process writes study.json
    assert studies.running_studies_of(tmp_path, "user:ann") == [mine]
    assert studies.running_studies_of(tmp_path, "user:carl") == []
    # the cap is set in the study process (its workers inherit it); 0 = none
    assert callable(calls[0]["preexec_fn"]) and calls[1]["preexec_fn"] is None


def test_a_folder_held_by_a_cli_coordinator_is_refused_naming_the_holder(tmp_path, monkeypatch):
    """The app's Start study used to report "started" while its coordinator failed on the lock."""
    import subprocess
    import sys
    import time

    from idlora_core.study.storage import LOCK_FILE

    out = studies.study_dir(tmp_path, "held")
    assert studies.lock_holder(out) is None  # no lock file yet
    script = ("import sys, time; from idlora_core.study.storage import StudyLock; "
              f"StudyLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    started = []  # from here on, start_study's coordinator is only recorded
    monkeypatch.setattr(studies.subprocess, "Popen", lambda *a, **k: started.append(a) or
                        type("P", (), {"pid": 10**7})())
    try:
        assert holder.stdout.readline().strip() == "held"
        found = studies.lock_holder(out)
        assert found is not None and found.startswith(f"pid {holder.pid} on host ")
        with pytest.raises(ValueError, match=rf"^study 'held' is being run by another study command, "
                                             rf"pid {holder.pid} on host .*: wait for it to finish"):
            studies.start_study(_study([0]), tmp_path, "held")
        assert started == [] and not (out / studies.LAUNCH_FILE).exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10  # the kernel drops the flock with the process
    while studies.lock_holder(out) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / LOCK_FILE).is_file() and studies.lock_holder(out) is None
    assert studies.start_study(_study([0]), tmp_path, "held") == out and len(started) == 1
