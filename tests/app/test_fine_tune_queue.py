"""Fine-tune page on a served lab (issue 18 #2, #6): a user's share of the queue, refusals before
anything is built or queued, Withdraw per waiting run, and a render that reads the queue once."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import settings_io as sio
from idlora_core.config import parse_config
from idlora_core.jobs import run_queue
from idlora_core.jobs.run_queue import RunQueue
from tests.app.conftest import AlivePopen

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "fine_tune.py")


@pytest.fixture(autouse=True)
def _served(tmp_path, monkeypatch):
    """Fake training processes that stay alive (their pid is this test's), one slot, the runs
    folder in tmp_path; the page's queue thread stopped afterwards."""
    from idlora_core.jobs import runs

    monkeypatch.setattr(runs.subprocess, "Popen", AlivePopen)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "1")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    yield
    run_queue.stop_workers()


def _tab(methods: list[str], **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["ft_methods"] = methods
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def _places(tmp_path) -> dict[str, int]:
    return RunQueue(tmp_path).places()


def test_a_click_over_the_users_share_is_refused_and_others_keep_their_places(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_MAX_QUEUED_PER_USER", "3")
    other = _tab(["lora", "dora"])
    other.button(key="start_runs").click().run()
    theirs = _places(tmp_path)
    assert len(theirs) == 1  # one runs, one waits at place 1
    # finding 2: URL-chosen ranks 1..60 x ks 1..8 queued 540 runs in one click (100 s)
    def never(*args, **kwargs):
        raise AssertionError("the configs were built before the share was checked")

    monkeypatch.setattr(sio, "finetune_configs", never)
    me = _tab(["idlora", "lora"], ft_ranks=list(range(1, 61)), ft_ks=list(range(1, 9)))
    start = time.monotonic()
    me.button(key="start_runs").click().run()
    took = time.monotonic() - start
    assert not me.exception and took < 10
    assert [e.value for e in me.error] == [
        "refused: you have 0 runs queued or running and this adds 540; this server allows 3 per user "
        "(IDLORA_MAX_QUEUED_PER_USER). Withdraw or stop some, or wait"]
    assert _places(tmp_path) == theirs and me.session_state["ft_tickets"] == []


def test_a_run_over_the_step_or_memory_limit_is_refused_with_the_estimate(tmp_path):
    me = _tab(["lora"], ft_steps=10_000_000)
    me.button(key="start_runs").click().run()
    assert "IDLORA_MAX_RUN_STEPS" in me.error[0].value and "10,000,000 steps" in me.error[0].value
    me = _tab(["lora"], ft_batch_size=4096)  # finding 5: grew to 7.9 GB RSS
    me.button(key="start_runs").click().run()
    assert "IDLORA_MAX_RUN_MEMORY_GB" in me.error[0].value and "needs about" in me.error[0].value
    assert _places(tmp_path) == {} and not list(tmp_path.glob("*-lora-*"))


def test_withdraw_frees_a_waiting_runs_place(tmp_path):
    first = _tab(["idlora"])
    first.button(key="start_runs").click().run()  # takes the one slot
    mine = _tab(["lora", "dora"])
    mine.button(key="start_runs").click().run()
    lora, dora = mine.session_state["ft_tickets"]
    assert _places(tmp_path) == {lora.id: 1, dora.id: 2}
    captions = " ".join(c.value for c in mine.caption)
    assert "LoRA r=8 — place 1 of 2" in captions or "LoRA r=8 — place 1 of 2" in mine.info[0].value
    mine.button(key=f"withdraw_{lora.id}").click().run()
    assert not mine.exception
    assert _places(tmp_path) == {dora.id: 1}
    assert f"withdraw_{lora.id}" not in [b.key for b in mine.button]
    assert f"withdraw_{dora.id}" not in [b.key for b in first.run().button]  # not theirs to withdraw


def test_a_render_with_a_thousand_tickets_reads_each_file_at_most_once(tmp_path, monkeypatch):
    """Finding 2: a refresh with 540 tickets took 43.6 s (the queue re-read per ticket)."""
    RunQueue(tmp_path).submit_many([(f"t{i}", parse_config({"adapter": {"method": "lora"}}))
                                    for i in range(1000)], owner="another-user")
    reads: collections.Counter = collections.Counter()
    real = RunQueue._read

    def counting(self, path):
        if path.parent.name == "waiting":
            reads[path.name] += 1
        return real(self, path)

    monkeypatch.setattr(RunQueue, "_read", counting)
    at = _tab(["lora"])  # first render: nothing of this session queued yet
    # each ticket parsed once; the one the pump starts (the slot is free) once more, for its config
    assert len(reads) == 1000 and sorted(reads.values())[-2:] in ([1, 1], [1, 2])
    reads.clear()
    at.button(key="start_runs").click().run()
    assert len(reads) <= 2 and max(reads.values()) == 1  # this session's new ticket (+ a start)
    reads.clear()
    start = time.monotonic()
    at.run()
    took = time.monotonic() - start
    assert sum(reads.values()) == 0  # a render lists the folder; no ticket file is parsed again
    shown = " ".join(c.value for c in at.caption) + " ".join(i.value for i in at.info)
    assert "LoRA r=8 — place 1000 of 1000" in shown
    assert took < 15, took
