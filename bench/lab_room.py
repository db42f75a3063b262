"""Simulate a room: N students work through lab exercises 1-4 on one server, all at once.

This process is the server: every student is a headless Streamlit session (an AppTest of
app/main.py, in its own thread) sharing the process's caches, its background pool (the sweeps)
and its one run queue, whose QueueWorker starts real training processes, at most IDLORA_MAX_RUNS
at a time (--max-runs, default 2 as docs/LAB.md advises for a 2-core machine). Before the
students start, the instructor opens a class study of study preset (a) (`cs.open_class_study`,
what the Studies page's *Open class study* calls) with enough seeds for every join.

Each student (with no thinking time by default: the server's capacity, not the room's pace;
with --minute-s S, at the handout's pace: see below):
  1. Lab exercises -> Start exercise 1 -> Decomposition lab: Run sweep (36 layers), waits for the
     per-layer summary (and the focus layer's spectral errors, also a background job);
  2. Start exercise 2 -> Run sweep, waits for the spectral panel;
  3. Start exercise 3 -> Cluster explorer (PCA, cluster sizes), ticks Normalise rows, then the
     Decomposition lab's Run sweep (exercise 1's sweep, cached);
  4. Studies -> Join the class study (--runs-per-student times), each time waiting until the
     run has finished. While it waits, the student does what the open page does: every 5 s the
     class panel's status fragment (record finished runs, read its join's state) and every 30 s
     the page's heartbeat (`background.keep_alive`: only when the page set the queue root).
A student waits for a background job as the page's polling fragment does, then renders once.

Measured: wall time until the last student finished, each student's time per exercise, their
sweep waits (Run sweep -> results on screen), each run's queue wait (join -> the queue started
its process) and run time (start -> final status), every page render, and the server's peak RSS
(this process plus its training processes). Everything is logged as events and summarised from
the log (`summarise`). Caches and runs go to a fresh temporary folder (a cold server): the first
student's sweep computes, the others share it or read the cache. The repo's cached/ is untouched.

    .venv/bin/python bench/lab_room.py --students 20 [--runs-per-student 1] [--json OUT]
    .venv/bin/python bench/lab_room.py --students 2 --quick     # smoke run: 4-step runs, small eval
    .venv/bin/python bench/lab_room.py --students 20 --runs-per-student 2 --minute-s 15

The room's pace (--minute-s S): docs/LAB.md's timetable starts the exercises at lab minutes 10,
30, 45 and 60. Student i works at pace p_i, drawn uniformly from [0.85, 1.15] (seeded), and
begins exercise n at lab minute p_i x start(n), or at once when the previous exercise ran late;
a lab minute lasts S seconds of wall time. S = 60 is the real pace. A smaller S compresses only
the thinking time; every sweep, render and run still takes real seconds. The students then
reach the queue closer together, so the queue waits are at least as long as at the real pace
(a FIFO queue's waits cannot shrink when arrivals come earlier), and the finish, counted in lab
minutes, is at least as late. A compressed room that meets the target therefore meets it at the
real pace. --from-minute M starts the clock at lab minute M (what the timetable put earlier
begins at once): `--exercises 4 --minute-s 60 --from-minute 50` is exercise 4 at the real pace,
the students arriving between lab minutes 51 and 69, without the hour before it.

Target (issue 17 #9) on an idle 2-core machine: N = 20 finishes all four exercises within 90
minutes with a median queue wait of at most 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MAIN = str(REPO / "app" / "main.py")
LAB, EXPLORER, STUDIES = "views/decomposition_lab.py", "views/cluster_explorer.py", "views/studies.py"
EXERCISES_PAGE = "views/lab_exercises.py"
PRESET = REPO / "configs" / "studies" / "minilm_rotten_tomatoes.yaml"
JOB_KEYS = ("_lab_sweep_job", "_lab_spectral_job", "_lab_sens_job")  # the pages' background jobs
QUICK = {"steps": 4, "num_train": 200, "num_eval": 32, "num_test": 32}
STATUS_POLL_S, HEARTBEAT_S = 5.0, 30.0  # app/class_panel.POLL_SECONDS, background.HEARTBEAT_SECONDS
FINAL = ("finished", "failed", "cancelled", "withdrawn")
TARGET_WALL_S, TARGET_WAIT_S = 90 * 60, 120.0
TIMETABLE_MIN = {1: 10, 2: 30, 3: 45, 4: 60}  # docs/LAB.md: the lab minute each exercise begins
PACE_RANGE = (0.85, 1.15)  # slowest and fastest student's pace, relative to the timetable


# ----------------------------------------------------------------------------- the event log

class EventLog:
    """A thread-safe list of events: {"t": Unix seconds, "who": student or "server", "event", ...}."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, who: str, event: str, t: float | None = None, **fields: Any) -> None:
        """Append one event (at `t`, default now)."""
        with self._lock:
            self.events.append({"t": time.time() if t is None else float(t), "who": who, "event": event, **fields})


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _max(values: list[float]) -> float | None:
    return round(max(values), 1) if values else None


def summarise(events: list[dict[str, Any]], exercises: tuple[int, ...] = (1, 2, 3, 4),
              minute_s: float = 0.0, from_minute: float = 0.0) -> dict[str, Any]:
    """Return the room's summary from an event log.

    Events used (t in seconds): "start" (the students begin), "exercise_start" / "exercise_end"
    (who, exercise), "sweep_click" / "sweep_shown" (who, exercise: one sweep wait), "join" (who,
    ticket; t = when the join was recorded), "run_start" / "run_end" (ticket, state; the queue's
    start of the run's process and its final status), "render" (seconds), "error" (who, message).
    Per student: seconds per exercise, sweep waits, queue waits (run_start - join, 0 when the join
    shares a run already started, None when the run never started), run times, done (seconds from
    start to their last exercise's end, None unless every exercise in `exercises` ended), errors.
    Overall: wall_s (start -> last student done), completed, medians and maxima, the targets.
    minute_s > 0 (a paced room whose clock started at lab minute `from_minute`): the finish is also
    given in lab minutes (from_minute + wall_s / minute_s), and the 90-minute target is counted in
    them.
    """
    t0 = min((e["t"] for e in events if e["event"] == "start"), default=min((e["t"] for e in events), default=0.0))
    started = {e["ticket"]: e["t"] for e in events if e["event"] == "run_start"}
    ended = {e["ticket"]: e for e in events if e["event"] == "run_end"}
    names = sorted({e["who"] for e in events if e["who"] != "server"})
    students = []
    for who in names:
        mine = [e for e in events if e["who"] == who]
        begin = {e["exercise"]: e["t"] for e in mine if e["event"] == "exercise_start"}
        finish = {e["exercise"]: e["t"] for e in mine if e["event"] == "exercise_end"}
        clicks = {}
        sweep_waits = []
        for e in mine:
            if e["event"] == "sweep_click":
                clicks[e["exercise"]] = e["t"]
            elif e["event"] == "sweep_shown" and e["exercise"] in clicks:
                sweep_waits.append(round(e["t"] - clicks.pop(e["exercise"]), 1))
        queue_waits: list[float | None] = []
        run_s = []
        for e in (e for e in mine if e["event"] == "join"):
            start = started.get(e["ticket"])
            queue_waits.append(None if start is None else round(max(0.0, start - e["t"]), 1))
            end = ended.get(e["ticket"])
            if start is not None and end is not None:
                run_s.append(round(end["t"] - start, 1))
        complete = all(n in finish for n in exercises)
        students.append({
            "student": who,
            "exercise_s": {n: round(finish[n] - begin[n], 1) for n in exercises if n in begin and n in finish},
            "sweep_waits_s": sweep_waits, "queue_waits_s": queue_waits, "run_s": run_s,
            "done_s": round(max(finish[n] for n in exercises) - t0, 1) if complete else None,
            "errors": [e["message"] for e in mine if e["event"] == "error"],
        })
    waits = [w for s in students for w in s["queue_waits_s"] if w is not None]
    sweeps = [w for s in students for w in s["sweep_waits_s"]]
    runs = [r for s in students for r in s["run_s"]]
    renders = [e["seconds"] for e in events if e["event"] == "render"]
    done = [s["done_s"] for s in students if s["done_s"] is not None]
    wall = max(done) if done and len(done) == len(students) else None
    median_wait = _median(waits)
    return {
        "students": len(students), "completed": len(done), "wall_s": wall,
        "queue_wait_median_s": median_wait, "queue_wait_max_s": _max(waits),
        "runs_never_started": sum(w is None for s in students for w in s["queue_waits_s"]),
        "sweep_wait_median_s": _median(sweeps), "sweep_wait_max_s": _max(sweeps),
        "run_median_s": _median(runs), "render_median_s": None if not renders else round(statistics.median(renders), 2),
        "render_p95_s": None if not renders else round(sorted(renders)[math.ceil(0.95 * len(renders)) - 1], 2),
        "wall_lab_min": None if wall is None or minute_s <= 0 else round(from_minute + wall / minute_s, 1),
        "meets_target": bool(wall is not None and median_wait is not None and median_wait <= TARGET_WAIT_S
                             and ((from_minute + wall / minute_s) * 60 if minute_s > 0 else wall) <= TARGET_WALL_S),
        "per_student": students,
    }


# ----------------------------------------------------------------------------- the server's side

class Sampler(threading.Thread):
    """Samples the RSS of this process and of this process plus its children (the training runs)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.server_peak = self.total_peak = 0
        self.children_peak = 0

    def run(self) -> None:
        me = psutil.Process()
        while not self.halt.wait(0.5):
            rss = me.memory_info().rss
            kids = 0
            children = me.children(recursive=True)
            for child in children:
                try:
                    kids += child.memory_info().rss
                except psutil.Error:  # ended meanwhile
                    pass
            self.server_peak = max(self.server_peak, rss)
            self.total_peak = max(self.total_peak, rss + kids)
            self.children_peak = max(self.children_peak, len(children))


class QueueMonitor(threading.Thread):
    """Logs when the run queue starts each run (its active entry) and when the run ends (its
    final status.json), every 0.5 s."""

    def __init__(self, runs_root: Path, log: EventLog) -> None:
        super().__init__(daemon=True)
        self.active, self.log = runs_root / ".queue" / "active", log
        self.halt = threading.Event()
        self.started: dict[str, Path] = {}
        self.ended: set[str] = set()

    def poll(self) -> None:
        """One look at the queue's active runs and at the status of those seen started."""
        from idlora_core.training.run_files import read_status

        for path in sorted(self.active.glob("*.json")) if self.active.is_dir() else []:
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if entry.get("id") and entry["id"] not in self.started:
                self.started[entry["id"]] = Path(entry["run_dir"])
                self.log.add("server", "run_start", t=entry.get("started"), ticket=entry["id"],
                             run=Path(entry["run_dir"]).name)
        for ticket, run_dir in self.started.items():
            if ticket in self.ended:
                continue
            status = read_status(run_dir)
            if status.get("state") in FINAL:
                self.ended.add(ticket)
                self.log.add("server", "run_end", t=status.get("updated"), ticket=ticket, state=status["state"])

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.poll()


def class_study_config(steps: int | None, quick: bool):
    """Return study preset (a), with `steps` optimiser steps per run (None: the preset's) and,
    with `quick`, the smoke sizes QUICK (fewer steps, a small training and evaluation set)."""
    import yaml

    from idlora_core.study.config import parse_study

    data = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    if quick:
        data["base"]["train"]["steps"] = QUICK["steps"]
        data["base"]["train"]["warmup_steps"] = 0
        for task in data["base"]["tasks"]:
            task.update(num_train=QUICK["num_train"], num_eval=QUICK["num_eval"], num_test=QUICK["num_test"])
    if steps is not None:
        data["base"]["train"]["steps"] = int(steps)
        data["base"]["train"]["warmup_steps"] = min(data["base"]["train"].get("warmup_steps", 0), int(steps) // 10)
    return parse_study(data)


def share_apptest_globals() -> None:
    """Let AppTest sessions run in threads at once, as a server's sessions do. AppTest keeps three
    things process-wide per run: a new compiled-script cache (compiling the same pages in several
    threads at once trips CPython 3.11's ast module: "AST constructor recursion depth mismatch"),
    the mock Runtime (set at the start of a run, cleared at its end: another session's script then
    fails with "Runtime hasn't been created!"), and the `global.appTest` option (patched in and
    out around a run: another session's dataframes then render lazily, without values). Here the
    sessions share one script cache, as a server does, a cleared Runtime falls back to the last
    one set, and the option stays on."""
    import contextlib

    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner, util

    shared = ScriptCache()
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared
    config.get_option = util.build_mock_config_get_option({"global.appTest": True})
    app_test.patch_config_options = lambda overrides: contextlib.nullcontext()
    last: list[Runtime] = []

    def instance(cls) -> Runtime:
        if cls._instance is not None:
            last[:] = [cls._instance]
            return cls._instance
        if last:
            return last[0]
        raise RuntimeError("Runtime hasn't been created!")

    Runtime.instance = classmethod(instance)
    Runtime.exists = classmethod(lambda cls: cls._instance is not None or bool(last))


# ----------------------------------------------------------------------------- a student

class Student:
    """One student's session (an AppTest of app/main.py) and what they do."""

    def __init__(self, name: str, log: EventLog, folder: Path, runs_root: Path, runs: int,
                 pace: float = 0.0, minute_s: float = 0.0) -> None:
        from streamlit.testing.v1 import AppTest

        self.name, self.log, self.folder, self.root, self.runs = name, log, folder, runs_root, runs
        self.pace, self.minute_s = pace, minute_s  # minute_s 0: no thinking time
        self.user = f"session:{name}"
        self.at = AppTest.from_file(MAIN, default_timeout=900)
        self.at.session_state["_idlora_session"] = name  # background.user_id() is "session:<name>"

    def render(self, action: Callable[[], Any] | None = None) -> None:
        """Run the page once (after `action`, e.g. a click) and log how long it took."""
        start = time.perf_counter()
        (action or self.at.run)()
        self.log.add(self.name, "render", seconds=round(time.perf_counter() - start, 3))
        if self.at.exception:
            raise RuntimeError(f"page exception: {self.at.exception[0].value}"[:300])

    def settle(self) -> None:
        """Wait for this session's background jobs as the page's polling fragment does, then render."""
        while pending := [job for job in self.jobs() if not job.done()]:
            for job in pending:
                try:
                    job.exception(timeout=3600)
                except Exception:  # noqa: BLE001 - cancelled or failed: the page says which
                    pass
            self.render()

    def jobs(self) -> list:
        """Return the background jobs this session's pages hold: each page's own (JOB_KEYS) and
        the panels' (`background.result_when_ready`: the explorer's clustering, the spectra)."""
        state = self.at.session_state
        held = [state[key] for key in JOB_KEYS if key in state and state[key] is not None]
        panels = state["_idlora_panels"] if "_idlora_panels" in state else {}
        return held + [job for _, job in panels.values() if hasattr(job, "done")]

    def start_exercise(self, number: int, page: str) -> None:
        """Lab exercises -> Start exercise `number` (the preset opens `page`)."""
        self.at.switch_page(EXERCISES_PAGE)
        self.render()
        self.render(self.at.button(key=f"exercise_start_{number}").click().run)
        self.at.switch_page(page)  # AppTest's next run() would go back to its own page

    def run_sweep(self, number: int, ready: Callable[[], bool]) -> None:
        """Press Run sweep, wait until `ready()` holds on the page (one sweep wait)."""
        self.log.add(self.name, "sweep_click", exercise=number)
        self.render(self.at.button(key="lab_run").click().run)
        self.settle()
        if not ready():
            raise RuntimeError(f"exercise {number}: the sweep's results are not on the page "
                               f"({[e.value for e in self.at.error]})")
        self.log.add(self.name, "sweep_shown", exercise=number)

    def charts(self) -> set[str]:
        """Return the keys of the page's plotly charts."""
        return {c.proto.id.rsplit("-", 1)[-1] for c in self.at.get("plotly_chart")}

    def exercise_1(self) -> None:
        self.start_exercise(1, LAB)
        self.run_sweep(1, lambda: any("gain_vs_svd" in d.value.columns for d in self.at.dataframe))

    def exercise_2(self) -> None:
        self.start_exercise(2, LAB)
        self.run_sweep(2, lambda: "lab_error_vs_rank_spectral" in self.charts())

    def exercise_3(self) -> None:
        self.start_exercise(3, EXPLORER)
        self.render()
        self.settle()  # the clustering runs in the background pool
        if "explorer_sizes" not in self.charts():
            raise RuntimeError("exercise 3: the Cluster explorer shows no cluster sizes")
        self.render(self.at.checkbox(key="explorer_normalize_rows").check().run)
        self.settle()
        self.at.switch_page(LAB)
        self.render()
        self.run_sweep(3, lambda: any("mean_gain" in d.value.columns for d in self.at.dataframe))

    def exercise_4(self) -> None:
        from app import background
        from idlora_core.jobs import class_study as cs
        from idlora_core.jobs.run_queue import RunQueue

        queue = RunQueue(self.root)
        self.at.switch_page(STUDIES)
        self.render()
        for _ in range(self.runs):
            before = len(cs.assignments(self.folder, self.user))
            self.render(self.at.button(key="cs_join").click().run)
            mine = cs.assignments(self.folder, self.user)
            if len(mine) == before:
                said = [m.value for m in (*self.at.error, *self.at.info)]
                raise RuntimeError(f"exercise 4: Join did not join: {said}"[:300])
            join = mine[-1]
            self.log.add(self.name, "join", t=join.time, ticket=join.ticket, run=join.run, shared=join.shared,
                         budget=join.budget, seed=join.seed)
            beat = time.monotonic()
            while True:  # the page's status fragment, and its heartbeat
                cs.record_finished(self.folder)
                state, _ = cs.assignment_state(self.folder, join, queue)
                if state in FINAL:
                    break
                if time.monotonic() - beat >= HEARTBEAT_S:  # drawn only once the page set the root
                    beat = time.monotonic()
                    if background.QUEUE_ROOT in self.at.session_state:
                        queue.touch(self.user)
                time.sleep(STATUS_POLL_S)
            if state != "finished":
                raise RuntimeError(f"exercise 4: the run {join.run} ended {state}")
            self.render()  # the class's plot with this run in it

    def wait_for_timetable(self, number: int, t0: float, from_minute: float = 0.0) -> None:
        """Paced room: sleep until this student's lab minute pace x TIMETABLE_MIN[number], the
        clock having started (at `t0`) at lab minute `from_minute`."""
        if self.minute_s > 0:
            due = t0 + (self.pace * TIMETABLE_MIN[number] - from_minute) * self.minute_s
            time.sleep(max(0.0, due - time.time()))

    def work(self, exercises: tuple[int, ...], t0: float | None = None, from_minute: float = 0.0) -> None:
        """Do the exercises in order (a paced room: each at its time in the timetable, the clock
        starting at `t0` at lab minute `from_minute`); an exercise that fails is logged and the
        next one begins."""
        t0 = time.time() if t0 is None else t0
        try:
            self.render()  # the first page: Model & layers
        except Exception as exc:  # noqa: BLE001 - logged: the summary counts it
            self.log.add(self.name, "error", exercise=0, message=f"{type(exc).__name__}: {exc}"[:300])
        for number in exercises:
            self.wait_for_timetable(number, t0, from_minute)
            self.log.add(self.name, "exercise_start", exercise=number)
            try:
                getattr(self, f"exercise_{number}")()
            except Exception as exc:  # noqa: BLE001 - logged: the summary counts it
                self.log.add(self.name, "error", exercise=number,
                             message=f"{type(exc).__name__}: {exc}"[:300])
                traceback.print_exc()
                continue
            self.log.add(self.name, "exercise_end", exercise=number)


# ----------------------------------------------------------------------------- the room

def simulate(students: int, runs_per_student: int, steps: int | None, quick: bool, max_runs: int,
             exercises: tuple[int, ...], tmp: Path, minute_s: float = 0.0, seed: int = 0,
             from_minute: float = 0.0) -> dict[str, Any]:
    """Run the room in folder `tmp`; return the JSON document (settings, summary, events).
    minute_s > 0: the students keep the timetable at their own pace (seeded by `seed`), the
    clock starting at lab minute `from_minute`."""
    os.environ.update(IDLORA_RUNS_DIR=str(tmp / "runs"), IDLORA_CACHE_DIR=str(tmp / "cache"),
                      IDLORA_MAX_RUNS=str(max_runs))
    from app import background
    from idlora_core.jobs import class_study as cs
    from idlora_core.jobs import run_queue

    share_apptest_globals()
    runs_root = tmp / "runs"
    runs_root.mkdir(parents=True)
    study = class_study_config(steps, quick)
    budgets, _ = cs.class_plan(cs.class_config(study))
    seeds = max(1, math.ceil(students * runs_per_student / budgets))
    folder = cs.open_class_study(runs_root, "room", study, list(range(seeds)), extra_seeds=True)
    log = EventLog()
    sampler, monitor = Sampler(), QueueMonitor(runs_root, log)
    sampler.start()
    monitor.start()
    paces = [random.Random(f"{seed}:{i}").uniform(*PACE_RANGE) for i in range(students)]
    people = [Student(f"student{i + 1:02d}", log, folder, runs_root, runs_per_student, paces[i], minute_s)
              for i in range(students)]
    log.add("server", "start")
    t0 = time.time()
    threads = [threading.Thread(target=s.work, args=(exercises, t0, from_minute), name=s.name) for s in people]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        monitor.poll()
        monitor.halt.set()
        sampler.halt.set()
        monitor.join()
        sampler.join()
        background.reset_pool()
        run_queue.stop_workers()
        for child in psutil.Process().children(recursive=True):  # our own training processes only
            try:
                child.terminate()
            except psutil.Error:
                pass
    summary = summarise(log.events, exercises, minute_s, from_minute)
    return {
        "bench": "lab_room", "students": students, "runs_per_student": runs_per_student,
        "minute_s": minute_s, "from_minute": from_minute, "seed": seed, "paces": [round(p, 3) for p in paces],
        "steps": study.base.train.steps, "quick": quick, "max_runs": max_runs, "cpus": os.cpu_count(),
        "class_study": {"budgets": budgets, "seeds": seeds},
        "exercises": list(exercises),
        "rss_peak_server_mb": round(sampler.server_peak / 2**20),
        "rss_peak_with_runs_mb": round(sampler.total_peak / 2**20),
        "summary": summary, "events": log.events,
    }


def print_table(result: dict[str, Any]) -> None:
    """Print one row per student and the room's summary lines."""
    s = result["summary"]
    label = " (QUICK smoke run: not the lab's runs)" if result["quick"] else ""
    pace = (f"timetable pace, 1 lab minute = {result['minute_s']:g} s" if result.get("minute_s")
            else "no thinking time")
    print(f"\nlab_room: {result['students']} students, {result['runs_per_student']} run(s) each of "
          f"{result['steps']} steps{label}, {result['max_runs']} run slots, {result['cpus']} CPUs, {pace}")
    exercises = result["exercises"]
    head = f"{'student':<10}" + "".join(f"{'ex' + str(n) + ' s':>9}" for n in exercises) + \
        f"{'done s':>9}  {'sweep waits s':<18}{'queue waits s':<16}{'run s':<14}errors"
    print(head)
    for row in s["per_student"]:
        cells = "".join(f"{row['exercise_s'].get(n, '—')!s:>9}" for n in exercises)
        print(f"{row['student']:<10}{cells}{row['done_s'] if row['done_s'] is not None else '—'!s:>9}  "
              f"{','.join(map(str, row['sweep_waits_s'])) or '—':<18}"
              f"{','.join(map(str, row['queue_waits_s'])) or '—':<16}"
              f"{','.join(map(str, row['run_s'])) or '—':<14}{len(row['errors'])}")
    lab_min = f" ({s['wall_lab_min']} lab min)" if s.get("wall_lab_min") is not None else ""
    print(f"wall {s['wall_s']} s{lab_min}; completed {s['completed']}/{s['students']}; queue wait median "
          f"{s['queue_wait_median_s']} s, max {s['queue_wait_max_s']} s; sweep wait median "
          f"{s['sweep_wait_median_s']} s, max {s['sweep_wait_max_s']} s; run median {s['run_median_s']} s; "
          f"render median {s['render_median_s']} s, p95 {s['render_p95_s']} s; peak RSS server "
          f"{result['rss_peak_server_mb']} MB, with runs {result['rss_peak_with_runs_mb']} MB; "
          f"target (<= 90 min, median queue wait <= 2 min): {'met' if s['meets_target'] else 'NOT met'}")
    for row in s["per_student"]:
        for message in row["errors"]:
            print(f"  {row['student']}: {message}")


def main(argv: list[str] | None = None) -> int:
    """Run the room simulation; print the table and write `--json` when given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=5, help="sessions working at once")
    parser.add_argument("--runs-per-student", type=int, default=1, choices=[1, 2],
                        help="class-study runs each student joins in exercise 4")
    parser.add_argument("--steps", type=int, help="optimiser steps per class run (default: preset (a)'s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['steps']}-step runs on {QUICK['num_train']} training and "
                             f"{QUICK['num_eval']}/{QUICK['num_test']} evaluation snippets (labelled QUICK)")
    parser.add_argument("--max-runs", type=int, default=int(os.environ.get("IDLORA_MAX_RUNS") or 2),
                        help="training processes at once (IDLORA_MAX_RUNS; default 2)")
    parser.add_argument("--exercises", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--minute-s", type=float, default=0.0,
                        help="keep docs/LAB.md's timetable, one lab minute lasting this many seconds "
                             "(60 = real pace; less compresses the thinking time only); 0: no thinking time")
    parser.add_argument("--from-minute", type=float, default=0.0,
                        help="with --minute-s: the lab minute at which the clock starts (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the students' paces")
    parser.add_argument("--json", type=Path, help="write the settings, summary and event log here")
    args = parser.parse_args(argv)
    if args.students < 1 or args.max_runs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--students, --max-runs and --steps must be at least 1")
    if not 0 <= args.minute_s <= 600:
        parser.error(f"--minute-s must be between 0 and 600 seconds, got {args.minute_s:g}")
    if not 0 <= args.from_minute <= 90:
        parser.error(f"--from-minute must be a lab minute between 0 and 90, got {args.from_minute:g}")
    with tempfile.TemporaryDirectory(prefix="lab-room-") as tmp:
        result = simulate(args.students, args.runs_per_student, args.steps, args.quick, args.max_runs,
                          tuple(sorted(set(args.exercises))), Path(tmp), args.minute_s, args.seed,
                          args.from_minute)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["summary"]["completed"] == args.students else 1


if __name__ == "__main__":
    sys.exit(main())
