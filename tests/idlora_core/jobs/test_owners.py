"""Issue 17 #4 in the library: the queue records who owns a run (owner.json), a student lists and
cancels only their own runs, the instructor flag any."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from idlora_core.config import parse_config
from idlora_core.jobs import owners, runs
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.jobs.throughput import RunShape
from idlora_core.training.run_files import write_status
from idlora_core.training.run_folder import LAUNCHER_FILES, OWNER_FILE


def _cfg(method: str = "lora", steps: int = 30):
    return parse_config({"adapter": {"method": method}, "train": {"steps": steps, "device": "cpu"}})


@pytest.fixture
def sleeping():
    """A launcher whose runs are real processes that sleep; they are killed afterwards."""
    procs: list[subprocess.Popen] = []

    def launch(config, root, name):
        run_dir = runs.safe_run_dir(root, name)
        run_dir.mkdir(parents=True)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(proc)
        write_status(run_dir, "running", "sleeping", pid=proc.pid)
        return runs.RunHandle(run_dir, config.adapter.method, proc)

    yield launch
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_started_run_records_its_owner_and_a_ticket_its_shape(tmp_path, sleeping):
    queue = RunQueue(tmp_path, limit=2, launcher=sleeping)
    alice, = queue.submit_many([("alice's LoRA", _cfg(steps=30))], owner="session:alice0123456789")
    entry = queue.waiting()[0]
    assert RunShape.from_dict(entry["shape"]) == RunShape.of(_cfg(steps=30))  # read by the wait estimate
    queue.pump()
    data = json.loads((alice.run_dir / OWNER_FILE).read_text())
    assert data["owner"] == "session:alice0123456789" and data["label"] == "alice's LoRA"
    assert owners.run_owner(alice.run_dir) == "session:alice0123456789"
    assert queue.running()[0]["shape"] == entry["shape"]
    assert OWNER_FILE in LAUNCHER_FILES  # the trainer treats it as the launcher's, not an earlier run


def test_a_student_cannot_cancel_another_students_run_the_instructor_can(tmp_path, sleeping):
    queue = RunQueue(tmp_path, limit=1, launcher=sleeping)
    alice, = queue.submit_many([("a", _cfg())], owner="alice")
    queue.pump()  # alice's run trains
    bob, = queue.submit_many([("b", _cfg())], owner="bob")  # bob's waits
    with pytest.raises(PermissionError, match="belongs to another user"):
        queue.cancel(alice.id, "bob")
    with pytest.raises(PermissionError):
        queue.cancel(bob.id, "alice")
    assert [e["id"] for e in queue.running()] == [alice.id] and queue.places() == {bob.id: 1}  # untouched
    assert queue.cancel(bob.id, "bob") and queue.places() == {}  # the owner withdraws
    pid = queue.running()[0]["pid"]
    assert queue.cancel(alice.id, "instructor", instructor=True)  # SIGTERM
    os.waitpid(pid, 0)
    assert not queue.cancel(alice.id, "alice")  # ended: nothing found


def test_a_student_lists_only_their_own_runs_the_instructor_all(tmp_path):
    for name, owner in (("a1", "alice"), ("b1", "bob"), ("hand", None)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("x: 1\n")
        if owner:
            owners.write_owner(run, owner)

    def names(**kw):
        return sorted(p.name for p, _ in owners.visible_runs(tmp_path, **kw))

    assert names(viewer="alice", lab=True) == ["a1"]
    assert names(viewer="alice", lab=False) == ["a1", "hand"]  # a single user sees hand-started runs
    assert names(viewer="bob", lab=True) == ["b1"]
    assert names(viewer="x", instructor=True, lab=True) == ["a1", "b1", "hand"]
    assert dict((p.name, o) for p, o in owners.visible_runs(tmp_path, "x", instructor=True))["b1"] == "bob"


@pytest.mark.parametrize(("owner", "short"), [("user:alice", "alice"), ("session:3f9a1c77aa", "session 3f9a1c"),
                                              (None, "—"), ("plain", "plain")])
def test_short_owner(owner, short):
    assert owners.short_owner(owner) == short
