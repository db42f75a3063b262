"""bench/lab_room.py's bookkeeping (not its timings): the summary of a hand-made event log, and
the class study it trains (preset (a), or the labelled quick sizes)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "lab_room.py"


@pytest.fixture(scope="module")
def room():
    """bench/lab_room.py imported from its path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_lab_room", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(room):
    log = room.EventLog()
    add = log.add
    add("server", "start", t=1000)
    # anna: every exercise; two sweep waits; two joins (the second shares a run already training)
    for n, (begin, end) in enumerate([(1001, 1061), (1061, 1101), (1101, 1121), (1121, 1400)], 1):
        add("anna", "exercise_start", t=begin, exercise=n)
        add("anna", "exercise_end", t=end, exercise=n)
    add("anna", "sweep_click", t=1002, exercise=1)
    add("anna", "sweep_shown", t=1050, exercise=1)
    add("anna", "sweep_click", t=1062, exercise=2)
    add("anna", "sweep_shown", t=1070.5, exercise=2)
    add("anna", "join", t=1122, ticket="t1")
    add("server", "run_start", t=1152, ticket="t1")
    add("server", "run_end", t=1212, ticket="t1", state="finished")
    add("server", "run_start", t=1200, ticket="t2")  # someone else's run, started before anna's join
    add("anna", "join", t=1250, ticket="t2")
    add("server", "run_end", t=1390, ticket="t2", state="finished")
    # ben: exercise 4 fails, his run never starts
    for n, (begin, end) in enumerate([(1001, 1090), (1090, 1130), (1130, 1150)], 1):
        add("ben", "exercise_start", t=begin, exercise=n)
        add("ben", "exercise_end", t=end, exercise=n)
    add("ben", "exercise_start", t=1150, exercise=4)
    add("ben", "sweep_click", t=1002, exercise=1)
    add("ben", "sweep_shown", t=1089, exercise=1)
    add("ben", "join", t=1151, ticket="t3")
    add("ben", "error", t=1700, exercise=4, message="exercise 4: the run class-x ended withdrawn")
    for seconds in (0.2, 0.4, 0.6, 3.0):
        add("anna", "render", seconds=seconds)
    return log.events


def test_the_summary_of_an_event_log(room):
    s = room.summarise(_log(room))
    anna, ben = s["per_student"]
    assert anna["student"] == "anna" and ben["student"] == "ben"
    assert anna["exercise_s"] == {1: 60, 2: 40, 3: 20, 4: 279}
    assert anna["sweep_waits_s"] == [48, 8.5]
    assert anna["queue_waits_s"] == [30, 0.0]  # t2 had started 50 s before anna joined it
    assert anna["run_s"] == [60, 190]
    assert anna["done_s"] == 400 and anna["errors"] == []
    assert ben["exercise_s"] == {1: 89, 2: 40, 3: 20} and ben["done_s"] is None
    assert ben["queue_waits_s"] == [None] and ben["run_s"] == []
    assert ben["errors"] == ["exercise 4: the run class-x ended withdrawn"]
    assert (s["students"], s["completed"], s["wall_s"]) == (2, 1, None)  # not everyone finished
    assert s["runs_never_started"] == 1
    assert (s["queue_wait_median_s"], s["queue_wait_max_s"]) == (15.0, 30)
    assert (s["sweep_wait_median_s"], s["sweep_wait_max_s"]) == (48, 87)  # median of 48, 8.5, 87
    assert s["run_median_s"] == 125.0
    assert (s["render_median_s"], s["render_p95_s"]) == (0.5, 3.0)
    assert s["meets_target"] is False


def test_a_room_that_finishes_meets_the_target_only_within_its_bounds(room):
    events = [e for e in _log(room) if e["who"] != "ben"]
    s = room.summarise(events)
    assert (s["completed"], s["wall_s"], s["queue_wait_median_s"]) == (1, 400, 15.0)
    assert s["meets_target"] is True
    late = [dict(e, t=e["t"] + 95 * 60) if e["event"] == "exercise_end" and e["exercise"] == 4 else e
            for e in events]
    assert room.summarise(late)["meets_target"] is False  # 95 min > 90 min
    slow = [dict(e, t=e["t"] + 200) if e["event"] == "run_start" else e for e in events]
    assert room.summarise(slow)["queue_wait_median_s"] > 120
    assert room.summarise(slow)["meets_target"] is False


def test_the_class_study_is_preset_a_or_the_labelled_quick_sizes(room):
    import yaml

    preset = yaml.safe_load(room.PRESET.read_text())
    full = room.class_study_config(None, quick=False)
    assert full.base.train.steps == preset["base"]["train"]["steps"] == 80
    assert full.base.tasks[0].num_test == preset["base"]["tasks"][0]["num_test"]
    quick = room.class_study_config(None, quick=True)
    assert quick.base.train.steps == room.QUICK["steps"] and quick.base.tasks[0].num_eval == room.QUICK["num_eval"]
    assert room.class_study_config(20, quick=False).base.train.steps == 20


def test_a_paced_room_counts_the_90_minutes_in_lab_minutes(room):
    events = [e for e in _log(room) if e["who"] != "ben"]  # anna finishes 400 s after the start
    assert room.summarise(events, minute_s=10)["wall_lab_min"] == 40.0  # 400 s at 10 s a lab minute
    assert room.summarise(events, minute_s=10)["meets_target"] is True
    assert room.summarise(events, minute_s=10, from_minute=55)["wall_lab_min"] == 95.0
    assert room.summarise(events, minute_s=10, from_minute=55)["meets_target"] is False  # 95 > 90
    assert room.summarise(events, minute_s=4)["meets_target"] is False  # 100 lab minutes
    assert room.summarise(events)["wall_lab_min"] is None  # no pace: seconds only


def test_a_paced_student_begins_each_exercise_at_their_own_lab_minute(room, monkeypatch):
    slept = []
    monkeypatch.setattr(room.time, "sleep", slept.append)
    monkeypatch.setattr(room.time, "time", lambda: 1000.0)
    student = room.Student.__new__(room.Student)
    student.pace, student.minute_s = 1.1, 2.0
    student.wait_for_timetable(4, t0=1000.0)  # lab minute 1.1 x 60 = 66, at 2 s each
    student.wait_for_timetable(2, t0=1000.0, from_minute=10)  # 1.1 x 30 - 10 = 23 lab minutes
    student.wait_for_timetable(1, t0=1000.0, from_minute=50)  # long past: at once
    assert slept == pytest.approx([132.0, 46.0, 0.0])
    student.minute_s = 0.0  # no thinking time: never sleeps
    student.wait_for_timetable(4, t0=1000.0)
    assert len(slept) == 3


def test_paces_and_the_timetable_are_the_handouts(room):
    lab = (room.REPO / "docs" / "LAB.md").read_text()
    for number, minute in room.TIMETABLE_MIN.items():
        assert re.search(rf"^\| {minute}–\d+ min \| {number}\. ", lab, re.M), (number, minute)
    low, high = room.PACE_RANGE
    assert 0 < low < 1 < high
