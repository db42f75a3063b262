"""The class study (issue 17 #2): joins get distinct (budget, seed) pairs, an identical
configuration is trained once, finished runs become the study's trials, and only the student
who joined (or the instructor) may cancel a run."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from idlora_core.jobs import class_study as cs
from idlora_core.jobs import runs
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.study.config import load_study, parse_study
from idlora_core.study.runner import summary_table, trials_table
from idlora_core.study.summary import t_interval
from idlora_core.training.run_files import write_status

REPO = Path(__file__).resolve().parents[3]
PRESET = REPO / "configs" / "studies" / "minilm_rotten_tomatoes.yaml"
METRIC = "eval_rotten_tomatoes_accuracy"
# preset (a)'s budgets in grid order, and the learning rate a class study gives each method
BUDGETS = ["idlora:r8:k4", "lora:r4", "lora:r8", "head-only", "base"]
RATES = {"idlora": 0.01, "lora": 0.003, "head-only": 1.0}


@pytest.fixture(scope="module")
def preset():
    return load_study(PRESET)


def _open(root: Path, preset, name: str = "tue", seeds: int = 8, **kw) -> Path:
    return cs.open_class_study(root, name, preset, list(range(seeds)), **kw)


def _finish(root: Path, a: cs.Assignment, accuracy: float, state: str = "finished",
            trainable: int = 1000) -> Path:
    """Write the files a finished (or failed) training run leaves in its folder."""
    run_dir = root / a.run
    run_dir.mkdir(parents=True, exist_ok=True)
    final = {"steps": 80, "train_seconds": 1.5, "trainable_params": trainable, METRIC: accuracy,
             "test_rotten_tomatoes_accuracy": accuracy - 0.01} if state == "finished" else {}
    (run_dir / "run.json").write_text(json.dumps({"state": state, "message": f"{state} (fake)",
                                                  "final_metrics": final}))
    write_status(run_dir, state, f"{state} (fake)", pid=None)
    return run_dir


def test_two_sessions_join_round_robin_with_distinct_seeds(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    joins = [cs.assign(folder, student, queue) for student in ("alice", "bob", "alice", "bob")]
    # round robin over the 5 budgets; joins one after the other get different seeds
    assert [a.budget for a in joins] == BUDGETS[:4]
    assert [a.seed for a in joins] == [0, 1, 2, 3]
    for a in joins:
        method = a.budget.split(":")[0]
        assert a.config.train.seed == a.config.adapter.seed == a.seed
        assert a.config.train.learning_rate == RATES[method]
        assert not a.shared and a.ticket
    assert joins[0].config.adapter.targets[0].r == 8 and joins[1].config.adapter.targets[0].r == 4
    waiting = queue.waiting()
    assert [e["id"] for e in waiting] == [a.ticket for a in joins]
    assert [e["owner"] for e in waiting] == ["alice", "bob", "alice", "bob"]
    assert [Path(e["run_dir"]).name for e in waiting] == [a.run for a in joins]
    assert cs.progress(folder, queue) == {"runs": 40, "budgets": 5, "seeds": 8, "joined": 4, "live": 4,
                                          "finished": 0}


def test_a_student_joining_again_gets_a_seed_they_do_not_have(tmp_path, preset):
    folder = _open(tmp_path, preset, seeds=3)
    queue = RunQueue(tmp_path)
    firsts = [cs.assign(folder, s, queue) for s in ("a", "b", "c", "d", "e")]  # round 0: seeds 0,1,2,0,1
    assert [a.seed for a in firsts] == [0, 1, 2, 0, 1]
    again = cs.assign(folder, "a", queue)  # next in order is (idlora, seed 1): "a" has seed 0 -> fine
    assert (again.budget, again.seed) == ("idlora:r8:k4", 1)
    again = cs.assign(folder, "b", queue)  # next is (lora:r4, seed 2); "b" holds seed 1 only
    assert (again.budget, again.seed) == ("lora:r4", 2)
    again = cs.assign(folder, "c", queue)  # next is (lora:r8, seed 0): "c" holds seed 2
    assert (again.budget, again.seed) == ("lora:r8", 0)
    again = cs.assign(folder, "c", queue)  # next is (head-only, seed 1): "c" holds 2 and 0 -> 1 is new
    assert (again.budget, again.seed) == ("head-only", 1)


def test_assignments_survive_a_new_process(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    mine = [cs.assign(folder, s, queue) for s in ("alice", "bob")]
    code = ("import json, sys; from idlora_core.jobs import class_study as cs; "
            "from idlora_core.jobs.run_queue import RunQueue; f = sys.argv[1]; "
            "seen = [(a.student, a.budget, a.seed, a.run) for a in cs.assignments(f)]; "
            "a = cs.assign(f, 'carol', RunQueue(sys.argv[2])); "
            "print(json.dumps({'seen': seen, 'new': [a.budget, a.seed]}))")
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert [tuple(x) for x in got["seen"]] == [(a.student, a.budget, a.seed, a.run) for a in mine]
    assert got["new"] == ["lora:r8", 2]  # the other process continued the order
    assert [a.student for a in cs.assignments(folder)] == ["alice", "bob", "carol"]
    assert len(queue.waiting()) == 3


def test_an_identical_configuration_is_trained_once(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    first = cs.assign(folder, "alice", queue, want=3)
    second = cs.assign(folder, "bob", queue, want=3)
    assert second.shared and not first.shared
    assert second.run == first.run and second.ticket == first.ticket
    assert len(queue.waiting()) == 1
    assert cs.config_hash(first.config) == cs.config_hash(second.config)
    # another class study with the same preset: its pair (idlora, seed 0) is tue's first run
    tue_first = cs.assign(folder, "carol", queue)
    thu = _open(tmp_path, preset, name="thu")
    shared = cs.assign(thu, "dave", queue)
    assert (shared.budget, shared.seed) == (tue_first.budget, tue_first.seed)
    assert shared.shared and shared.run == tue_first.run and len(queue.waiting()) == 2
    # once tue's run finishes, it is a trial of both studies
    _finish(tmp_path, tue_first, 0.7)
    assert cs.record_finished(folder) == 1 and cs.record_finished(thu) == 1
    assert [len(trials_table(f)) for f in (folder, thu)] == [1, 1]


def test_a_withdrawn_or_failed_run_frees_its_pair(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    a = cs.assign(folder, "alice", queue)
    assert cs.cancel(folder, a.id, "alice", queue)  # withdrawn while waiting
    assert cs.assignment_state(folder, cs.assignments(folder)[0], queue) == ("withdrawn", None)
    again = cs.assign(folder, "bob", queue)
    assert (again.budget, again.seed) == (a.budget, a.seed) and again.run != a.run
    _finish(tmp_path, again, 0.0, state="failed")
    assert cs.record_finished(folder) == 1
    trials = trials_table(folder)
    assert trials["state"].tolist() == ["FAIL"] and trials["failure"].tolist() == ["failed (fake)"]
    third = cs.assign(folder, "carol", queue)
    assert (third.budget, third.seed) == (a.budget, a.seed)  # failed: trained again
    assert len({a.run, again.run, third.run}) == 3


def test_record_adds_exactly_the_finished_runs_once(tmp_path, preset):
    folder = _open(tmp_path, preset, seeds=3)
    queue = RunQueue(tmp_path)
    joins = [cs.assign(folder, f"s{i}", queue) for i in range(12)]  # 2 full rounds + 2
    accuracy = {a.run: 0.55 + 0.01 * i for i, a in enumerate(joins)}
    done = joins[:11]  # the last one still trains
    for a in done:
        _finish(tmp_path, a, accuracy[a.run], trainable={"base": 0}.get(a.budget, 1000))
    assert cs.record(folder, tmp_path / done[0].run) is True
    assert cs.record(folder, tmp_path / done[0].run) is False  # recorded twice = once
    assert cs.record(folder, tmp_path / joins[-1].run) is False  # still training
    assert cs.record_finished(folder) == 10
    assert cs.record_finished(folder) == 0
    with pytest.raises(cs.ClassStudyError, match="not a run of class study tue"):
        cs.record(folder, tmp_path / "someone-else")
    trials = trials_table(folder)
    assert len(trials) == 11 and set(trials["state"]) == {"COMPLETE"}
    assert sorted(trials[METRIC]) == pytest.approx(sorted(accuracy[a.run] for a in done))
    summary = summary_table(folder).set_index("method")
    expected_seeds = {}
    for a in done:
        expected_seeds.setdefault(a.budget.split(":")[0], []).append(accuracy[a.run])
    assert summary.loc["idlora", "n_seeds"] == 3 == len(expected_seeds["idlora"])
    assert summary.loc["head-only", "n_seeds"] == len(expected_seeds["head-only"]) == 2
    assert summary.loc["head-only", "best_learning_rate"] == 1.0
    mean, _, low, high = t_interval(np.array(expected_seeds["idlora"]))
    assert summary.loc["idlora", "metric_mean"] == pytest.approx(mean)
    assert (summary.loc["idlora", "metric_ci95_low"], summary.loc["idlora", "metric_ci95_high"]) == \
        pytest.approx((low, high))
    assert summary.loc["idlora", "test_mean"] == pytest.approx(mean - 0.01)
    lora = summary[summary.index == "lora"].set_index("r")["n_seeds"].to_dict()
    assert lora == {4: 2, 8: 2}


def test_every_run_taken_then_extra_seeds(tmp_path, preset):
    folder = _open(tmp_path, preset, seeds=1)
    queue = RunQueue(tmp_path)
    for i in range(5):
        cs.assign(folder, f"s{i}", queue)
    with pytest.raises(cs.ClassStudyError, match=r"every run of class study tue is taken \(5 runs\)"):
        cs.assign(folder, "late", queue)
    more = _open(tmp_path, preset, name="more", seeds=1, extra_seeds=True)
    first = [cs.assign(more, f"s{i}", queue) for i in range(10)]
    assert [a.seed for a in first] == [0] * 5 + [1] * 5  # one more seed for every budget
    assert sorted(a.budget for a in first[5:]) == sorted(BUDGETS)
    meta = json.loads((more / "study.json").read_text())
    assert len(meta["cells"]) == 10 and load_study(more / "study.yaml").grid.seed == [0, 1]
    cs.close_class_study(more)
    assert _open(tmp_path, preset, name="more", seeds=1, extra_seeds=True) == more  # reopened: cells kept
    assert len(json.loads((more / "study.json").read_text())["cells"]) == 10
    idlora = [a for a in first if a.budget == "idlora:r8:k4"]
    _finish(tmp_path, idlora[0], 0.6)
    _finish(tmp_path, idlora[1], 0.8)
    assert cs.record_finished(more) == 2
    summary = summary_table(more)
    assert summary.loc[summary["method"] == "idlora", "n_seeds"].tolist() == [2]
    assert summary.loc[summary["method"] == "idlora", "metric_mean"].tolist() == pytest.approx([0.7])


def test_closed_study_refuses_joins_and_reopening_keeps_them(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    cs.assign(folder, "alice", queue)
    cs.close_class_study(folder)
    assert cs.list_class_studies(tmp_path) == []
    with pytest.raises(cs.ClassStudyError, match="closed"):
        cs.assign(folder, "bob", queue)
    assert _open(tmp_path, preset) == folder  # same settings: reopened, the join kept
    assert len(cs.assignments(folder)) == 1 and cs.list_class_studies(tmp_path) == [folder]
    with pytest.raises(cs.ClassStudyError, match="other settings"):
        _open(tmp_path, preset, seeds=3)


def test_a_student_cannot_list_or_cancel_anothers_run_the_instructor_can(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    alice, bob = cs.assign(folder, "alice", queue), cs.assign(folder, "bob", queue)
    assert [a.id for a in cs.assignments(folder, "bob")] == [bob.id]
    assert {a.id for a in cs.assignments(folder)} == {alice.id, bob.id}
    with pytest.raises(PermissionError, match="another student"):
        cs.cancel(folder, alice.id, "bob", queue)
    assert queue.place(alice.ticket) == 1  # untouched
    assert cs.cancel(folder, alice.id, "instructor", queue, instructor=True)
    assert queue.place(alice.ticket) is None and queue.place(bob.ticket) == 1
    assert cs.cancel(folder, bob.id, "bob", queue)
    watcher = cs.assign(folder, "carol", queue)
    shared = cs.assign(folder, "dave", queue, want=watcher.cell)
    with pytest.raises(cs.ClassStudyError, match="identical configuration"):
        cs.cancel(folder, shared.id, "dave", queue)  # dave watches carol's run


def test_instructor_token(monkeypatch):
    monkeypatch.delenv(cs.TOKEN_ENV, raising=False)
    assert not cs.token_configured() and not cs.token_ok("") and not cs.token_ok("anything")
    monkeypatch.setenv(cs.TOKEN_ENV, "s3cret-token")
    assert cs.token_configured()
    assert cs.token_ok("s3cret-token") and cs.token_ok(" s3cret-token ")
    assert not cs.token_ok("s3cret") and not cs.token_ok(None) and not cs.token_ok("S3CRET-TOKEN")


def test_ten_threads_joining_at_once_get_ten_distinct_pairs(tmp_path, preset):
    folder = _open(tmp_path, preset)
    queue = RunQueue(tmp_path)
    got, errors = [], []
    barrier = threading.Barrier(10)

    def join(i: int) -> None:
        barrier.wait()
        try:
            got.append(cs.assign(folder, f"s{i}", queue))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({a.cell for a in got}) == 10 and len({a.run for a in got}) == 10
    assert not any(a.shared for a in got)
    assert len(cs.assignments(folder)) == 10 and len(queue.waiting()) == 10
    # the lock kept the order: the first 10 pairs of the round robin, each budget twice
    assert sorted((a.budget, a.seed) for a in got) == sorted(
        (BUDGETS[p], (p + q) % 8) for q in range(2) for p in range(5))


def _join_in_child(folder: str, root: str, student: str, out) -> None:
    a = cs.assign(folder, student, RunQueue(root))
    out.put((a.cell, a.run))


def test_processes_joining_at_once_get_distinct_pairs(tmp_path, preset):
    folder = _open(tmp_path, preset)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_join_in_child, args=(str(folder), str(tmp_path), f"p{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len({cell for cell, _ in got}) == 4 and len(cs.assignments(folder)) == 4


@pytest.mark.multiprocess  # one real training process on a tiny BERT
def test_a_real_join_trains_and_fills_the_study(tiny_bert_dir, tmp_path):
    study = parse_study({
        "base": {"model": {"name": tiny_bert_dir},
                 "adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 2}]},
                 "tasks": [{"name": "sentiment", "num_train": 8, "num_eval": 8}],
                 "train": {"steps": 2, "batch_size": 4, "seq_len": 16, "eval_interval": 0, "save_interval": 0}},
        "grid": {"method": ["lora", "base"], "seed": [0]}, "metric": "eval_sentiment_accuracy"})
    folder = cs.open_class_study(tmp_path, "tiny", study)
    queue = RunQueue(tmp_path, limit=2)
    a = cs.assign(folder, "alice", queue)
    b = cs.assign(folder, "bob", queue)
    watcher = cs.assign(folder, "carol", queue, want=a.cell)
    assert watcher.shared and len(queue.waiting()) == 2
    deadline = time.time() + 300
    while time.time() < deadline and any(
            runs.recorded_state(tmp_path / x.run) not in runs.FINAL_STATES or not (tmp_path / x.run).is_dir()
            for x in (a, b)):
        queue.pump()
        time.sleep(0.2)
    assert [cs.assignment_state(folder, x, queue)[0] for x in (a, b, watcher)] == ["finished"] * 3, [
        runs.log_tail(tmp_path / x.run) for x in (a, b)]
    assert cs.record_finished(folder) == 2
    trials = trials_table(folder)
    assert sorted(trials["method"]) == ["base", "lora"] and set(trials["state"]) == {"COMPLETE"}
    lora = json.loads((tmp_path / a.run / "run.json").read_text())["final_metrics"]
    row = trials[trials["method"] == "lora"].iloc[0]
    assert row["eval_sentiment_accuracy"] == lora["eval_sentiment_accuracy"]
    assert row["trainable_params"] == lora["trainable_params"] > 0
    assert os.path.isdir(tmp_path / a.run / "adapter")
