"""AppTest of the class study panel (issue 17 #2, #4): the instructor section needs the server's
token, students join and see only their own runs, the instructor sees and cancels every run."""

from __future__ import annotations

import os

import pytest
from streamlit.testing.v1 import AppTest

from app import class_panel
from idlora_core.jobs import class_study as cs
from idlora_core.jobs import runs
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.training.run_files import write_status

SCRIPT = "from app import class_panel\nclass_panel.panel()\n"
TOKEN = "a-long-random-instructor-token"


class _Alive:
    """A stand-in process that never ends (this test process's id)."""

    pid = os.getpid()

    def poll(self):
        return None


def _pretend_launcher(config, root, name):
    """Start no training: the folder of a run that stays 'running' (its pid is this process)."""
    run_dir = runs.safe_run_dir(root, name)
    run_dir.mkdir(parents=True)
    write_status(run_dir, "running", "pretend", pid=os.getpid())
    return runs.RunHandle(run_dir, config.adapter.method, _Alive())


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A served lab on `tmp_path` whose queue starts no training process; returns the queue."""
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IDLORA_MAX_RUNS", "1")
    monkeypatch.delenv(cs.TOKEN_ENV, raising=False)
    queue = RunQueue(tmp_path, launcher=_pretend_launcher)
    monkeypatch.setattr(class_panel, "queue", lambda: queue)
    return queue


def _app(session: str, token: str | None = None) -> AppTest:
    at = AppTest.from_string(SCRIPT, default_timeout=60)
    at.session_state["_idlora_session"] = session
    if token is not None:
        at.query_params["token"] = token
    return at.run()


def _has(at: AppTest, key: str) -> bool:
    return any(w.key == key for w in at.button)


def _texts(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_instructor_section_needs_the_servers_token(lab, monkeypatch):
    at = _app("s1")
    assert not at.exception
    assert not _has(at, "cs_open") and not at.expander  # no token on the server: nothing to sign in to
    monkeypatch.setenv(cs.TOKEN_ENV, TOKEN)
    at = _app("s1")
    assert not _has(at, "cs_open") and [e.label for e in at.expander] == ["Instructor"]
    wrong = _app("s1", token="a-long-random-instructor-tokeN")
    assert [e.value for e in wrong.error] == ["Wrong token."]  # nothing more said
    assert not _has(wrong, "cs_open")
    right = _app("s1", token=TOKEN)
    assert not right.exception and not right.error and _has(right, "cs_open")
    assert "token" not in right.query_params  # removed from the address at once
    right.run()
    assert _has(right, "cs_open")  # the session stays signed in
    typed = _app("s2")
    typed.text_input(key="cs_token").input("guess")
    typed.button(key="cs_signin_button").click().run()
    assert [e.value for e in typed.error] == ["Wrong token."] and not _has(typed, "cs_open")
    typed.text_input(key="cs_token").input(TOKEN)
    typed.button(key="cs_signin_button").click().run()
    assert _has(typed, "cs_open")


def test_instructor_opens_students_join_and_see_only_their_own(lab, tmp_path, monkeypatch):
    monkeypatch.setenv(cs.TOKEN_ENV, TOKEN)
    teacher = _app("teacher", token=TOKEN)
    assert "**5 budgets x 8 seeds = 40 runs**" in " ".join(c.value for c in teacher.caption)
    teacher.text_input(key="cs_name").set_value("tuesday")
    teacher.button(key="cs_open").click().run()
    assert not teacher.exception
    folder = tmp_path / "studies" / "tuesday"
    assert cs.is_class_study(folder) and (folder / "study.json").is_file()

    alice, bob = _app("alice"), _app("bob")
    assert "**Class study: tuesday**" in _texts(alice) and _has(alice, "cs_join") and not _has(alice, "cs_open")
    alice.button(key="cs_join").click().run()
    bob.button(key="cs_join").click().run()
    assert not alice.exception and not bob.exception
    assert "your run trains **idlora:r8:k4, seed 0**" in alice.success[0].value
    assert "your run trains **lora:r4, seed 1**" in bob.success[0].value
    joins = cs.assignments(folder)
    assert [(a.student, a.budget, a.seed) for a in joins] == [("session:alice", "idlora:r8:k4", 0), ("session:bob", "lora:r4", 1)]
    assert [e["owner"] for e in lab.waiting()] == ["session:bob"]  # the limit of 1: alice's run trains, bob's waits
    assert [e["owner"] for e in lab.running()] == ["session:alice"]

    bob.run()
    mine = bob.dataframe[0].value
    assert mine["run"].tolist() == [joins[1].run] and "student" not in mine  # bob sees his run only
    assert mine["state"].tolist() == ["queued"] and mine["place in queue"].tolist() == [1]
    alice.run()
    assert alice.dataframe[0].value["run"].tolist() == [joins[0].run]
    assert alice.session_state["st_open"] == str(folder)  # the Studies page shows the class study

    teacher.run()
    every = teacher.dataframe[0].value
    assert every["student"].tolist() == ["session:alice", "session:bob"]
    assert teacher.selectbox(key="cs_pick_tuesday").options[-1].startswith("lora:r4 seed 1 (session:bob")
    teacher.selectbox(key="cs_pick_tuesday").set_value(joins[1].id)
    teacher.button(key="cs_cancel_tuesday").click().run()
    assert lab.waiting() == []  # the instructor withdrew bob's run
    assert cs.assignment_state(folder, cs.assignments(folder)[1], lab)[0] == "withdrawn"

    carol = _app("carol")
    carol.button(key="cs_join").click().run()
    assert "**lora:r4, seed 1**" in carol.success[0].value  # bob's freed pair goes to the next join


def test_a_student_cancels_only_their_own_and_a_finished_run_fills_the_plot(lab, tmp_path):
    from idlora_core.study.config import load_study
    from idlora_core.study.runner import summary_table

    folder = cs.open_class_study(tmp_path, "wed", load_study(class_panel.studies.list_presets()["minilm_rotten_tomatoes"]),
                                 [0, 1])
    alice, bob = _app("alice"), _app("bob")
    alice.button(key="cs_join").click().run()
    bob.button(key="cs_join").click().run()
    bob.run()
    bob.button(key="cs_withdraw").click().run()
    states = [s for s, _ in cs.states(folder, cs.assignments(folder), lab)]
    assert states == ["running", "withdrawn"]  # bob's own waiting run only; alice's untouched
    a = cs.assignments(folder, "session:alice")[0]
    run_dir = tmp_path / a.run
    (run_dir / "run.json").write_text('{"state": "finished", "final_metrics": {"trainable_params": 38018, '
                                      '"eval_rotten_tomatoes_accuracy": 0.71}}')
    write_status(run_dir, "finished", "done", pid=None)
    bob.run()  # any session's render records the finished run
    summary = summary_table(folder)
    assert summary[["method", "n_seeds", "metric_mean"]].values.tolist() == [["idlora", 1, 0.71]]
    assert "1 of 10 runs finished" in _texts(bob)


def test_the_studies_page_reads_a_class_study_like_any_study(lab, tmp_path):
    """Students' finished runs fill in the ordinary trade-off plot and summary of the Studies page."""
    import json
    from pathlib import Path

    from idlora_core.study.config import load_study

    page = str(Path(__file__).resolve().parents[2] / "app" / "views" / "studies.py")
    preset = load_study(class_panel.studies.list_presets()["minilm_rotten_tomatoes"])
    folder = cs.open_class_study(tmp_path, "thu", preset, [0, 1])
    scores = {}
    for i in range(10):  # the whole grid: 5 budgets x 2 seeds
        a = cs.assign(folder, f"s{i}", lab)
        run_dir = tmp_path / a.run
        run_dir.mkdir(exist_ok=True)
        score = 0.5 + 0.02 * i
        scores.setdefault(a.budget, []).append(score)
        (run_dir / "run.json").write_text(json.dumps({"state": "finished", "final_metrics": {
            "trainable_params": 1000 * (i % 5 + 1), "eval_rotten_tomatoes_accuracy": score}}))
        write_status(run_dir, "finished", "done", pid=None)
    at = AppTest.from_file(page, default_timeout=180)
    at.session_state["_idlora_session"] = "s0"
    at.run()
    assert not at.exception
    assert at.selectbox(key="st_open").value.endswith("thu")
    assert "10 of 10 runs finished" in _texts(at)
    summary = next(d.value for d in at.dataframe if "metric_mean" in d.value)
    assert summary["n_seeds"].tolist() == [2] * 5
    assert sorted(summary["metric_mean"]) == pytest.approx(sorted(sum(v) / 2 for v in scores.values()))
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {"idlora", "lora", "head-only", "base"} <= {t.get("name") for t in fig["data"]}


def test_a_waiting_class_run_is_kept_queued_by_the_open_page(lab, tmp_path):
    """A joined run that waits longer than IDLORA_TICKET_TTL_MINUTES was dropped: the Studies page
    never touched its owner's heartbeat (found by bench/lab_room.py's room of 20)."""
    import time

    from app import background
    from idlora_core.study.config import load_study

    folder = cs.open_class_study(tmp_path, "fri", load_study(class_panel.studies.list_presets()["minilm_rotten_tomatoes"]),
                                 [0, 1])
    script = "from app import background, class_panel\nbackground.keep_alive()\nclass_panel.panel()\n"
    alice, bob = (AppTest.from_string(script, default_timeout=60) for _ in range(2))
    for at, name in ((alice, "alice"), (bob, "bob")):
        at.session_state["_idlora_session"] = name
        at.run()
        at.button(key="cs_join").click().run()
    assert [e["owner"] for e in lab.waiting()] == ["session:bob"]  # the limit of 1: bob waits
    assert bob.session_state[background.QUEUE_ROOT] == str(lab.root)
    seen = lab._seen_path("session:bob")
    old = time.time() - 3600
    os.utime(seen, (old, old))
    bob.run()  # any rerun of an open page (and its 30-s fragment) reports the owner alive
    assert time.time() - lab._last_seen("session:bob") < 5
    assert lab.expire() == 0 and [e["owner"] for e in lab.waiting()] == ["session:bob"]
    assert cs.assignment_state(folder, cs.assignments(folder, "session:bob")[0], lab)[0] == "queued"


def test_the_studies_page_signs_the_instructor_in_from_the_url(lab, monkeypatch):
    """docs/LAB.md's `?token=` on the Studies page: the page's URL mirror dropped it unread."""
    from pathlib import Path

    monkeypatch.setenv(cs.TOKEN_ENV, TOKEN)
    page = str(Path(__file__).resolve().parents[2] / "app" / "views" / "studies.py")
    at = AppTest.from_file(page, default_timeout=180)
    at.query_params["token"] = TOKEN
    at.run()
    assert not at.exception and _has(at, "cs_open")
    assert "token" not in at.query_params
