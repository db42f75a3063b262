"""The app's one bounded background pool (issue 18 #1, #10): bounds on the whole queue and per
user, refusals in one line, cancel (waiting and running jobs), and a stuck job that blocks no one."""

from __future__ import annotations

import threading
import time

import pytest

from app import background
from app.background import JobPool, JobRefused


@pytest.fixture
def small_pool():
    pool = JobPool(workers=1, max_jobs=3, per_owner=2)
    yield pool
    pool.shutdown()


def _stuck(release: threading.Event):
    def job_fn(job):
        while not release.wait(0.01):
            job.report(0.5, "stuck")  # raises JobCancelled once cancelled
        return "released"

    return job_fn


def test_bounds_refuse_in_one_line_and_a_stuck_job_blocks_no_submit(small_pool):
    release = threading.Event()
    try:
        stuck = small_pool.submit(_stuck(release), owner="A", kind="scan", label="A's scan")
        start = time.perf_counter()
        queued = small_pool.submit(lambda job: 42, owner="B", kind="scan", label="B's scan")
        assert time.perf_counter() - start < 0.1  # submitting never waits for the worker
        deadline = time.time() + 5
        while stuck.fraction != 0.5 and time.time() < deadline:  # running, and reporting
            time.sleep(0.01)
        assert (stuck.state, queued.state) == ("running", "waiting")
        small_pool.submit(lambda job: 1, owner="A", kind="scan", label="A's second")
        with pytest.raises(JobRefused, match=r"^the server's background queue is full \(3 jobs"):
            small_pool.submit(lambda job: 1, owner="C", kind="scan", label="C's")
        assert small_pool.cancel(queued.id, "B") and queued.state == "cancelled"  # withdrawn unstarted
        with pytest.raises(JobRefused, match=r"you already have 2 background job\(s\) .*A's scan, A's second"):
            small_pool.submit(lambda job: 1, owner="A", kind="scan", label="A's third")
        assert not small_pool.cancel(stuck.id, "B")  # only the owner cancels
        assert small_pool.cancel(stuck.id, "A")
        with pytest.raises(background.JobCancelled):
            stuck.result(timeout=5)
        assert stuck.state == "cancelled" and stuck.message == "stuck"
    finally:
        release.set()


def test_same_key_returns_the_same_job_and_a_failed_one_is_retried(small_pool):
    calls = []

    def work(job, x):
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first try fails")
        return x * 2

    first = small_pool.submit(work, 3, owner="A", kind="umap", label="u", key="k")
    with pytest.raises(ValueError):
        first.result(timeout=5)
    second = small_pool.submit(work, 3, owner="B", kind="umap", label="u", key="k")
    assert second is not first and second.result(timeout=5) == 6
    assert small_pool.submit(work, 3, owner="C", kind="umap", label="u", key="k") is second
    assert calls == [3, 3]


def test_umap_refused_when_the_pool_is_full_is_a_failed_future(monkeypatch):
    full = JobPool(workers=1, max_jobs=1, per_owner=1)
    release = threading.Event()
    try:
        full.submit(_stuck(release), owner="someone", kind="scan", label="busy")
        monkeypatch.setattr(background, "_POOL", full)
        import numpy as np

        job = background.umap_async(np.eye(20), seed=1)
        assert job.done() and isinstance(job.exception(), JobRefused)
        assert "background queue is full" in str(job.exception())
    finally:
        release.set()
        full.shutdown()


def test_a_new_request_supersedes_the_sessions_older_ones(small_pool):
    """Finding 10: a request waited 20.6 s behind 24 UMAP jobs of layers the user had left."""
    release = threading.Event()
    try:
        busy = small_pool.submit(_stuck(release), owner="other", kind="scan", label="other's scan")
        jobs = [small_pool.submit(lambda job, i=i: i, owner="A", kind="umap", label=f"layer {i}",
                                  key=f"u{i}", supersede=True) for i in range(24)]
        assert [j.state for j in jobs[:-1]] == ["cancelled"] * 23 and jobs[-1].state == "waiting"
        assert small_pool.busy() == 2  # the other user's scan and A's newest request
        small_pool.cancel(busy.id, "other")
        assert jobs[-1].result(timeout=5) == 23
    finally:
        release.set()


def test_a_new_setting_never_cancels_a_job_another_user_waits_for(small_pool):
    release = threading.Event()
    try:
        stuck = small_pool.submit(_stuck(release), owner="other", kind="scan", label="holds the worker")
        shared = small_pool.submit(lambda job: "clusters k=4", owner="A", kind="explorer", label="k=4",
                                   key="k4", supersede=True)
        assert small_pool.submit(lambda job: "never run", owner="B", kind="explorer", label="k=4",
                                 key="k4", supersede=True) is shared  # B waits for A's job
        assert shared.sharers == {"B"}
        mine = small_pool.submit(lambda job: "clusters k=8", owner="A", kind="explorer", label="k=8",
                                 key="k8", supersede=True)  # A moves on to k = 8
        assert shared.state == "waiting" and shared.owner == "B" and not shared.sharers  # B's now
        again = small_pool.submit(lambda job: "clusters k=2", owner="A", kind="explorer", label="k=2",
                                  key="k2", supersede=True)  # no one shares k = 8: cancelled
        assert mine.state == "cancelled" and again.state == "waiting"
        small_pool.cancel(stuck.id, "other")
        assert shared.result(timeout=5) == "clusters k=4" and again.result(timeout=5) == "clusters k=2"
    finally:
        release.set()


def test_an_open_page_keeps_its_queued_runs_alive(tmp_path):
    """The heartbeat `app/main.py` draws on every page of a session that queued runs."""
    from streamlit.testing.v1 import AppTest

    from idlora_core.jobs.run_queue import RunQueue

    script = "from app import background\nbackground.keep_alive()\n"
    at = AppTest.from_string(script, default_timeout=30)
    at.run()
    queue = RunQueue(tmp_path)
    assert queue._last_seen("session:me") == 0.0
    at.session_state["_idlora_session"] = "me"
    at.session_state[background.QUEUE_ROOT] = str(tmp_path)
    at.run()
    assert not at.exception and time.time() - queue._last_seen("session:me") < 5


def test_the_umap_warm_up_never_holds_the_pools_worker(monkeypatch, fresh_pool):
    """UMAP's one-off compile (20-40 s) ran on the pool's one worker: the first student's
    clustering waited behind it. It has a thread of its own now, started once per process."""
    release, calls = threading.Event(), []
    monkeypatch.setattr(background, "warm_umap", lambda: (calls.append(1), release.wait(30)))
    monkeypatch.setattr(background, "_WARM_UP", None)
    try:
        warm = background.warm_umap_async()
        assert background.warm_umap_async() is warm  # once per process
        job = fresh_pool.submit(lambda job: "clusters", owner="A", kind="explorer", label="clustering")
        assert job.result(timeout=10) == "clusters" and not warm.done()  # ran beside the compile
    finally:
        release.set()
    warm.result(timeout=10)
    assert calls == [1]
