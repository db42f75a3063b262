"""State that survives a refresh (issue 17 item 1): the URL's `sid` finds the session's stored
settings and runs on the server (app/session_store.py), so F5, a reconnect or a new tab on the
same address brings back every page's choices, the started exercise and the session's runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import session_store as store
from app.common import DEFAULTS
from idlora_core.jobs.run_queue import Ticket, stop_workers
from idlora_core.jobs.runs import RunHandle

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
# set on other pages than the two driven through their widgets below
OTHER_PAGES = {"layer_kinds": ["q", "k", "v"], "explorer_k": 5, "explorer_projection": "UMAP",
               "ex_seed": 7, "layer_choices": {"encoder.layer.0.attention.self.query":
                                               {"k": 2, "r": 4, "selection": "random", "rb_splits": 2}},
               "st_seeds": [3, 4], "st_source": "Build from the Fine-tune choices",
               "atlas_ranks": [8], "atlas_path": "scan.csv", "lab_exercise": 2}


@pytest.fixture(autouse=True)
def _runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    yield
    stop_workers()  # the Fine-tune page starts the server's queue thread


def _url(at: AppTest) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in dict(at.query_params).items()}


def _fake_run(root: Path, name: str) -> Path:
    run_dir = root / name
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "step": 3}))
    return run_dir


def test_every_page_and_the_runs_come_back_in_a_new_session_with_the_same_sid(tmp_path):
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    assert not at.exception
    sid = _url(at)["sid"]
    assert store.valid_sid(sid)
    at.switch_page("views/decomposition_lab.py").run()
    at.multiselect(key="lab_ranks").set_value([2, 8]).run()
    at.number_input(key="lab_seed").set_value(5).run()
    at.switch_page("views/fine_tune.py").run()
    at.selectbox(key="ft_lr_lora").set_value(1e-3).run()
    at.number_input(key="ft_steps").set_value(40).run()
    run_dir = _fake_run(tmp_path, "run-a")
    at.session_state["ft_handles"] = [RunHandle(run_dir=run_dir, method="lora")]
    at.session_state["ft_tickets"] = [Ticket(id="t1", run_dir=run_dir, label="LoRA r=8", method="lora")]
    at.session_state["ft_labels"] = {"run-a": "LoRA r=8"}
    for key, value in OTHER_PAGES.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception and _url(at)["sid"] == sid
    owner = at.session_state["_idlora_session"]
    saved = json.loads((tmp_path / ".sessions" / f"{sid}.json").read_text())
    assert saved["settings"]["lab_ranks"] == [2, 8] and saved["runs"]["owner"] == owner

    again = AppTest.from_file(MAIN, default_timeout=180)  # F5: a new session, the same address
    again.query_params["sid"] = sid
    again.run()
    assert not again.exception
    s = again.session_state
    expected = {"lab_ranks": [2, 8], "lab_seed": 5, "ft_lr_lora": 1e-3, "ft_steps": 40} | OTHER_PAGES
    assert {key: s[key] for key in expected} == expected
    assert [h.run_dir for h in s["ft_handles"]] == [run_dir.resolve()] and s["_idlora_session"] == owner
    assert s["ft_tickets"] == [Ticket(id="t1", run_dir=run_dir.resolve(), label="LoRA r=8", method="lora")]
    assert any("Exercise 2" in m.value for m in again.sidebar.markdown)  # the started exercise's panel
    again.switch_page("views/decomposition_lab.py").run()
    assert again.multiselect(key="lab_ranks").value == [2, 8] and again.number_input(key="lab_seed").value == 5
    again.switch_page("views/fine_tune.py").run()
    assert not again.exception
    assert again.selectbox(key="ft_lr_lora").value == 1e-3 and again.number_input(key="ft_steps").value == 40
    assert "LoRA r=8" in list(again.dataframe[0].value["label"])  # the run is back in the live table

    other = AppTest.from_file(MAIN, default_timeout=180)  # another browser: its own sid
    other.query_params["sid"] = store.new_sid()
    other.run()
    assert other.session_state["lab_ranks"] == DEFAULTS["lab_ranks"] and "ft_handles" not in other.session_state


def test_a_bad_sid_gets_a_new_session_and_never_names_a_file(tmp_path):
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.query_params.update(sid="../../etc/passwd", lab_seed="3")
    at.run()
    assert not at.exception
    sid = _url(at)["sid"]
    assert store.valid_sid(sid) and at.session_state["lab_seed"] == 3  # the link's own choice
    with pytest.raises(ValueError, match="32 hex digits"):
        store.session_file(tmp_path, "../x")


def test_the_store_is_tolerant_capped_and_expires(tmp_path):
    sid = store.new_sid()
    run_dir = _fake_run(tmp_path, "mine")
    state = dict(DEFAULTS) | {"explorer_k": 3, "trust_remote_code": True, "_idlora_session": "ab12",
                              "ft_handles": [RunHandle(run_dir=run_dir, method="idlora")],
                              "ft_past": ["old-run"]}
    data = store.snapshot(state)
    assert data["settings"] == {"explorer_k": 3}  # only what differs; never trust_remote_code
    assert store.save(tmp_path, sid, data) and store.load(tmp_path, sid) == data
    back = store.values(store.load(tmp_path, sid), tmp_path)
    assert back["explorer_k"] == 3 and back["_idlora_session"] == "ab12" and back["ft_past"] == ["old-run"]
    assert [h.run_dir for h in back["ft_handles"]] == [run_dir.resolve()]
    # a run folder outside the runs folder, a bad value and a bad runs section are dropped
    bad = {"settings": {"explorer_k": "many", "lab_seed": 4, "ft_methods": ["idlora", 3]},
           "runs": {"handles": [{"run_dir": "/etc", "method": "lora"},
                                {"run_dir": str(tmp_path / ".." / "x"), "method": "lora"}]}}
    assert store.values(bad, tmp_path) == {"lab_seed": 4}
    assert store.values({"settings": [], "runs": {"handles": "x"}}, tmp_path) == {}
    # too big: refused, the previous file stays
    huge = data | {"settings": {"atlas_path": "x" * (store.MAX_BYTES + 1)}}
    assert not store.save(tmp_path, sid, huge) and store.load(tmp_path, sid) == data
    # garbage on disk is no session
    path = store.session_file(tmp_path, sid)
    path.write_text("[1, 2")
    assert store.load(tmp_path, sid) is None
    # a day without a write: gone (load and prune remove it)
    store.save(tmp_path, sid, data)
    later = path.stat().st_mtime + store.MAX_AGE_S + 1
    assert store.load(tmp_path, sid, now=later - 2) == data
    assert store.load(tmp_path, sid, now=later) is None and not path.exists()
    store.save(tmp_path, sid, data)
    fresh = store.new_sid()
    store.save(tmp_path, fresh, data)
    stale = time.time() - store.MAX_AGE_S - 10
    os.utime(path, (stale, stale))
    assert store.prune(tmp_path) == 1 and not path.exists() and store.load(tmp_path, fresh) == data
