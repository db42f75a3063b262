"""Fair shares and bounded size on a served lab (issue 18 #2, #5, #6): per-user caps, withdrawing,
expiring tickets, one read of the queue per render, sizes decided before anything is queued or
expanded, and runs started under a memory cap."""

from __future__ import annotations

import os
import time

import pytest

from idlora_core.config import parse_config
from idlora_core.jobs import limits, runs
from idlora_core.jobs.limits import (
    LimitError,
    ServerLimits,
    check_runs,
    check_study,
    server_limits,
    study_size,
)
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.study.config import parse_study
from idlora_core.study.grid import expand_grid
from idlora_core.training.run_files import read_status


def _cfg(method: str = "lora", steps: int = 10):
    return parse_config({"adapter": {"method": method}, "train": {"steps": steps}})


def _never_started(config, root, name):  # the tests below only queue
    raise AssertionError("no run may start here")


def test_limits_come_from_the_environment_with_one_line_errors(monkeypatch):
    assert server_limits() == ServerLimits()
    monkeypatch.setenv("IDLORA_MAX_QUEUED_PER_USER", "3")
    monkeypatch.setenv("IDLORA_MAX_RUN_MEMORY_GB", "0")  # 0 = no cap
    assert (server_limits().queued_per_user, server_limits().run_memory_gb) == (3, 0.0)
    for name, bad in (("IDLORA_MAX_QUEUED_PER_USER", "0"), ("IDLORA_MAX_STUDY_RUNS", "many"),
                      ("IDLORA_MAX_RUN_MEMORY_GB", "-1"), ("IDLORA_TICKET_TTL_MINUTES", "nan")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            server_limits()
        monkeypatch.delenv(name)


def test_a_user_over_their_share_is_refused_and_others_keep_their_places(tmp_path):
    queue = RunQueue(tmp_path, launcher=_never_started)
    theirs = queue.submit_many([(f"b{i}", _cfg()) for i in range(3)], owner="B", share=6)
    mine = queue.submit_many([("a1", _cfg()), ("a2", _cfg())], owner="A", share=6)
    before = queue.places()
    with pytest.raises(LimitError) as info:
        queue.submit_many([(f"a{i}", _cfg()) for i in range(3, 8)], owner="A", share=6)
    assert str(info.value).startswith("refused: you have 2 runs queued or running and this adds 5")
    assert "IDLORA_MAX_QUEUED_PER_USER" in str(info.value) and "\n" not in str(info.value)
    assert queue.places() == before  # nothing of the refused click was queued
    assert [before[t.id] for t in theirs] == [1, 2, 3] and [before[t.id] for t in mine] == [4, 5]
    assert len(queue.submit_many([("a3", _cfg())] * 1, owner="A", share=3)) == 1  # up to the cap


def test_withdrawing_frees_the_place_and_only_the_owner_can(tmp_path):
    queue = RunQueue(tmp_path, launcher=_never_started)
    a1, a2 = queue.submit_many([("a1", _cfg()), ("a2", _cfg())], owner="A")
    (b1,) = queue.submit_many([("b1", _cfg())], owner="B")
    assert queue.places() == {a1.id: 1, a2.id: 2, b1.id: 3}
    assert not queue.withdraw(a1.id, "B")  # another user's ticket is never touched
    assert queue.withdraw(a1.id, "A")
    assert queue.places() == {a2.id: 1, b1.id: 2}
    assert not queue.withdraw(a1.id, "A")  # gone already
    assert [e["id"] for e in queue.owned("A")[0]] == [a2.id]


def test_a_thousand_tickets_are_read_once_and_placed_in_one_call(tmp_path):
    writer = RunQueue(tmp_path, launcher=_never_started)
    config = _cfg()
    tickets = writer.submit_many([(f"t{i}", config) for i in range(1000)], owner="many")
    page = RunQueue(tmp_path, launcher=_never_started)  # a fresh server process: nothing parsed yet
    start = time.perf_counter()
    places = page.places()
    first = time.perf_counter() - start
    assert page.reads == 1000  # each ticket file parsed once
    assert [places[t.id] for t in tickets[::100]] == list(range(1, 1001, 100))
    start = time.perf_counter()
    again = page.places()
    second = time.perf_counter() - start
    assert again == places and page.reads == 1000  # a second render parses nothing
    assert page.withdraw(tickets[0].id, "many") and page.reads == 1001  # reads the one it removes
    assert page.places()[tickets[1].id] == 1 and page.reads == 1001
    assert first < 5 and second < 0.5, (first, second)


def test_tickets_of_a_gone_session_expire_and_a_live_one_stays(tmp_path):
    queue = RunQueue(tmp_path, launcher=_never_started, ttl_s=60)
    (gone,) = queue.submit_many([("gone", _cfg())], owner="gone-session")
    (live,) = queue.submit_many([("live", _cfg())], owner="live-session")
    (cli,) = queue.submit_many([("cli", _cfg())])  # no owner (submitted from Python): never expires
    now = time.time() + 120  # two minutes later; only the live session touched its heartbeat since
    queue.touch("live-session")
    os.utime(queue._seen_path("live-session"), (now - 5, now - 5))
    assert queue.expire(now) == 1
    assert list(queue.places()) == [live.id, cli.id] and queue.expired == 1


def test_run_size_is_refused_before_queueing_with_the_estimate():
    lim = ServerLimits(run_steps=3000, run_memory_gb=8)
    # nothing measured: the default guess, 0.6 s/step at MiniLM's 16 x 48 tokens scaled to the
    # default batch 8 x 128 tokens, plus 10 s of start-up, per run
    per_run = 10 + 100 * limits.SECONDS_PER_STEP * (8 * 128) / (16 * 48)
    assert check_runs([_cfg(steps=100)] * 2, [2 * 10**9] * 2, lim) == pytest.approx(2 * per_run)
    with pytest.raises(LimitError, match=r"540 run\(s\) x up to 10,000,000 steps .*IDLORA_MAX_RUN_STEPS"):
        check_runs([_cfg(steps=10_000_000)] * 540, None, lim)
    with pytest.raises(LimitError, match=r"about 9.5 GB .*allows 8 GB per run \(IDLORA_MAX_RUN_MEMORY_GB\)"):
        check_runs([_cfg()], [int(9.5e9)], lim)


def _study(ranks, ks, lrs, seeds=(0,), methods=("idlora", "lora", "base")):
    return parse_study({"base": {"adapter": {"method": "lora"}}, "metric": "eval_loss",
                        "grid": {"method": list(methods), "r": list(ranks), "k": list(ks), "seed": list(seeds),
                                 "learning_rates": {m: list(lrs) for m in methods if m != "base"}}})


@pytest.mark.parametrize("ranks, ks, lrs, seeds", [
    ([4, 8], [2, 4], [1e-3, 3e-3], [0, 1]), ([8], [1], [1e-3], [0]), ([2, 4, 8, 16], [1, 2], [1e-4], [0, 1, 2]),
])
def test_study_size_is_the_grid_size_without_expanding_it(ranks, ks, lrs, seeds):
    study = _study(ranks, ks, lrs, seeds)
    cells, notes = expand_grid(study)
    assert study_size(study) == len(cells) + len(notes)  # collapsed axes counted once


def test_a_huge_study_is_refused_in_milliseconds_before_expansion(monkeypatch):
    import idlora_core.study.grid as grid

    def boom(study):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(grid, "expand_grid", boom)
    study = _study(range(1, 31), range(1, 17), [1e-5 * (i + 1) for i in range(200)], methods=("idlora", "lora"))
    start = time.perf_counter()
    with pytest.raises(LimitError, match=r"up to 102,000 runs .*IDLORA_MAX_STUDY_RUNS"):
        check_study(study, ServerLimits(study_runs=200))
    assert time.perf_counter() - start < 0.05
    assert study_size(study) == 30 * 16 * 200 + 30 * 200
    assert check_study(_study([4, 8], [2], [1e-3]), ServerLimits()) == 2 + 2 + 1


@pytest.mark.multiprocess  # one real process that fails at once under a tiny cap (about 2 s)
def test_a_run_over_the_memory_cap_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_MAX_RUN_MEMORY_GB", "0.3")  # torch alone maps more than this
    queue = RunQueue(tmp_path, limit=1)  # the server's default launcher: start_run under the cap
    config = parse_config({"adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 2}]},
                           "tasks": [{"name": "sentiment", "num_train": 8, "num_eval": 4}],
                           "train": {"steps": 2, "batch_size": 4, "seq_len": 16, "device": "cpu"}})
    ticket = queue.submit(config, name="capped", owner="A")
    (handle,) = queue.pump()
    assert handle.memory_cap_gb == 0.3
    assert runs.wait_run(handle, 120) not in (None, 0)
    queue.pump()  # closes the books on the dead run
    status = read_status(ticket.run_dir)
    assert status["state"] == "failed"
    assert status["message"].startswith("out of memory under the server's cap of 0.3 GB per run")
    assert "IDLORA_MAX_RUN_MEMORY_GB" in status["message"] and queue.running() == []
