"""Fine-tune page, issue 17 #3 and #4: the estimate before Start (measured on this server), the
room's time limit and its confirmation, the warning for a causal LM on a CPU, a student's own
runs only, and the instructor's view (every run with its owner, Cancel, the class CSV)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import instructor_runs
from idlora_core.config import parse_config
from idlora_core.jobs import class_study as cs
from idlora_core.jobs import owners, run_queue
from idlora_core.jobs.run_queue import RunQueue
from tests.app.conftest import AlivePopen
from tests.idlora_core.jobs.test_throughput import fake_run

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "fine_tune.py")
TOKEN = "a-long-random-instructor-token"


@pytest.fixture(autouse=True)
def _served(tmp_path, monkeypatch):
    """Training processes that never start (a stand-in that stays alive: its pid is this test's;
    a SIGTERM to it is recorded, not sent), one slot, the runs folder in tmp_path."""
    from idlora_core.jobs import runs

    real_kill, killed = os.kill, []

    def kill(pid, sig):
        if sig == signal.SIGTERM and pid == os.getpid():
            killed.append(pid)
            return None
        return real_kill(pid, sig)

    monkeypatch.setattr(runs.subprocess, "Popen", AlivePopen)
    monkeypatch.setattr(run_queue.os, "kill", kill)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "1")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("IDLORA_LAB", raising=False)
    monkeypatch.delenv(cs.TOKEN_ENV, raising=False)
    yield killed
    run_queue.stop_workers()


def _tab(session: str = "student00001", token: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["_idlora_session"] = session
    at.session_state["ft_methods"] = ["lora"]
    at.session_state["ft_device"] = "cpu"
    for key, value in state.items():
        at.session_state[key] = value
    if token is not None:
        at.query_params["token"] = token
    return at.run()


def _estimate(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption if c.value.startswith("**Before you start:**"))


def test_the_estimate_before_start_comes_from_this_servers_measured_runs(tmp_path):
    at = _tab()
    assert not at.exception
    text = _estimate(at)
    assert "LoRA: about" in text and "default guess" in text and "0 runs ahead, 1 slot" in text
    assert not any(w.key == "ft_small_settings" for w in at.button)  # MiniLM is an encoder: no warning
    # a finished LoRA run of the page's shape (batch 16 x 48 tokens, CPU): 0.5 s a step
    fake_run(tmp_path, "measured", method="lora", batch=16, seq=48, step_s=0.5, eval_s=1.0, load_s=4.0, test_s=1.0)
    RunQueue(tmp_path).submit(parse_config({"adapter": {"method": "lora"}}), label="other", owner="session:other")
    text = _estimate(_tab())
    assert "measured on this server from 1 run (0.50 s/step)" in text
    assert "1 run ahead, 1 slot" in text  # the other user's run is training now (the page pumped it)


def test_a_run_over_the_rooms_limit_needs_the_confirmation_naming_its_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_MAX_RUN_MINUTES", "1")
    at = _tab(ft_steps=300)  # default guess at the page's 16 x 48 tokens: 10 + 300 x 0.6 s = 190 s
    boxes = [b for b in at.checkbox if b.label.startswith("I know this run takes about")]
    assert [b.label for b in boxes] == ["I know this run takes about 3 min"]
    assert any("over this room's 1 min per run" in w.value for w in at.warning)
    at.button(key="start_runs").click().run()
    assert "IDLORA_MAX_RUN_MINUTES" in at.error[0].value and "I know this run takes about 3 min" in at.error[0].value
    assert at.session_state["ft_tickets"] == [] and RunQueue(tmp_path).places() == {}
    at.checkbox(key=boxes[0].key).check().run()
    at.button(key="start_runs").click().run()
    assert not at.error and len(at.session_state["ft_tickets"]) == 1


def test_over_the_hard_limit_start_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_REFUSE_RUN_MINUTES", "2")
    at = _tab(ft_steps=300)
    assert any("Start will refuse it" in w.value for w in at.warning)
    at.button(key="start_runs").click().run()
    assert "IDLORA_REFUSE_RUN_MINUTES" in at.error[0].value and at.session_state["ft_tickets"] == []


def test_a_causal_lm_on_the_cpu_warns_up_front_and_offers_the_small_settings(tiny_llama_dir):
    at = _tab(model_choice="local", model_path=tiny_llama_dir, ft_tasks=[], ft_steps=300, ft_seq_len=256)
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "is a causal LM and this server trains on its CPU" in warning and "one run of these settings" in warning
    at.button(key="ft_small_settings").click().run()
    state = at.session_state
    assert (state["ft_steps"], state["ft_seq_len"], state["ft_batch_size"]) == (20, 64, 4)
    assert tuple(state["block_range"]) == (0, 1)  # the tiny Llama's last two blocks
    assert at.number_input(key="ft_steps").value == 20


def _owned_run(root: Path, name: str, owner: str, accuracy: float) -> Path:
    run = fake_run(root, name, method="lora")
    summary = json.loads((run / "run.json").read_text())
    summary["config"]["adapter"]["targets"] = [{"pattern": "query", "r": 4, "k": None}]
    summary["final_metrics"] |= {"eval_sentiment_accuracy": accuracy, "test_sentiment_accuracy": accuracy - 0.1,
                                 "trainable_params": 1234}
    (run / "run.json").write_text(json.dumps(summary))
    owners.write_owner(run, owner)
    return run


def test_a_student_lists_and_cancels_only_their_own_runs(tmp_path, monkeypatch, _served):
    monkeypatch.setenv("IDLORA_LAB", "1")
    _owned_run(tmp_path, "alice-old", "session:alice0000001", 0.8)
    _owned_run(tmp_path, "bob-old", "session:bob000000001", 0.7)
    fake_run(tmp_path, "by-hand")  # no owner: a served lab shows it to nobody but the instructor
    alice = _tab("alice0000001")
    alice.button(key="start_runs").click().run()  # alice's run takes the one slot
    assert len(alice.session_state["ft_tickets"]) == 1
    bob = _tab("bob000000001")
    assert bob.multiselect(key="ft_past").options == ["bob-old"]  # not alice's, not the unowned one
    assert alice.multiselect(key="ft_past").options == ["alice-old"]
    bob.button(key="cancel_runs").click().run()
    assert not bob.exception and _served == []  # alice's run got no SIGTERM
    assert [e["owner"] for e in RunQueue(tmp_path).running()] == ["session:alice0000001"]
    assert not any(w.key in ("instructor_cancel", "download_class_results") for w in bob.button)
    alice.button(key="cancel_runs").click().run()
    assert _served == [os.getpid()]  # her own: asked to stop


def test_the_instructor_sees_every_run_with_its_owner_cancels_any_and_gets_the_csv(tmp_path, monkeypatch, _served):
    monkeypatch.setenv("IDLORA_LAB", "1")
    monkeypatch.setenv(cs.TOKEN_ENV, TOKEN)
    _owned_run(tmp_path, "alice-old", "session:alice0000001", 0.8)
    _owned_run(tmp_path, "bob-old", "user:bob", 0.7)
    alice = _tab("alice0000001")
    alice.button(key="start_runs").click().run()  # trains
    bob = _tab("bob000000001")
    bob.button(key="start_runs").click().run()  # waits
    teacher = _tab("teacher00001", token=TOKEN)
    assert not teacher.exception
    table = next(d.value for d in teacher.dataframe if "owner" in d.value)  # the instructor's table
    assert sorted(zip(table["owner"], table["state"], strict=True)) == [
        ("session alice0", "running"), ("session bob000", "queued")]
    training = alice.session_state["ft_tickets"][0].run_dir.name  # started: its folder is a run too
    assert sorted(teacher.multiselect(key="ft_past").options) == sorted(
        [f"{training} (session alice0)", "alice-old (session alice0)", "bob-old (bob)"])
    assert any("IDLORA_MAX_QUEUED_PER_USER" in c.value for c in teacher.caption)  # the caps
    bob_ticket = bob.session_state["ft_tickets"][0].id
    teacher.selectbox(key="instructor_pick").set_value(bob_ticket).run()
    teacher.button(key="instructor_cancel").click().run()
    assert RunQueue(tmp_path).places() == {}  # bob's waiting run withdrawn
    alice_ticket = alice.session_state["ft_tickets"][0].id
    teacher.selectbox(key="instructor_pick").set_value(alice_ticket).run()
    teacher.button(key="instructor_cancel").click().run()
    assert _served == [os.getpid()]  # alice's training run asked to stop
    assert any(b.key == "download_class_results" for b in teacher.get("download_button"))
    csv = instructor_runs.class_results(tmp_path)
    rows = csv.set_index("run")
    assert sorted(rows.index) == ["alice-old", "bob-old"]
    assert rows.loc["alice-old", "owner"] == "session alice0" and rows.loc["bob-old", "owner"] == "bob"
    assert rows.loc["alice-old", "validation accuracy (sentiment)"] == 0.8
    assert rows.loc["bob-old", "test accuracy (sentiment)"] == pytest.approx(0.6)
    assert rows.loc["alice-old", "r"] == 4 and rows.loc["alice-old", "trainable_params"] == 1234
    assert list(csv.columns[:3]) == ["owner", "run", "method"]

