"""AppTest of the Studies page: presets with run counts, a grid built from the Fine-tune choices,
and the figures and tables of a finished tiny study (the session's, tests/conftest.py) read
back from its storage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from idlora_core.study.grid import cell_config, expand_grid
from tests.app.test_fine_tune_page import plotly_array

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "app" / "views" / "studies.py")


def test_preset_shows_run_count_and_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IDLORA_MAX_RUNS", "4")
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    at.selectbox(key="st_preset").set_value("minilm_sentiment").run()
    text = " ".join(m.value for m in at.markdown)
    assert "**129 runs**" in text and "2 worker(s)" in text
    at.number_input(key="st_workers").set_value(4).run()
    assert "4 worker(s)" in " ".join(m.value for m in at.markdown)
    assert at.number_input(key="st_workers").max == 4  # the server's global run limit


def test_start_refused_when_the_run_limit_is_reached(tmp_path, monkeypatch):
    from idlora_core.jobs import studies

    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IDLORA_MAX_RUNS", "1")
    busy = tmp_path / "studies" / "other"
    busy.mkdir(parents=True)
    (busy / "study.json").write_text("{}")
    (busy / studies.LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 1}))  # alive
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert any("run limit is reached" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "st_start"]


def test_build_grid_from_finetune_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.session_state["st_methods"] = ["idlora", "lora", "head-only", "base"]
    at.run()
    assert not at.exception
    at.multiselect(key="st_ranks").set_value([4, 8]).run()
    at.multiselect(key="st_seeds").set_value([0, 1]).run()
    at.text_input(key="st_lr_lora").set_value("0.001, 0.003").run()
    # independent count: idlora 2 r x 1 k x 3 lr x 2 seeds = 12, lora 2 r x 2 lr x 2 = 8,
    # head-only 3 lr x 2 = 6, base 2 seeds = 2
    assert "**28 runs**" in " ".join(m.value for m in at.markdown)
    at.text_input(key="st_lr_lora").set_value("0.001, -1").run()
    assert any("learning rates must be positive" in e.value for e in at.error)


def test_finished_study_draws_tradeoff_and_summary(finished_tiny_study, monkeypatch):
    """The session's finished study (tests/conftest.py: 4 methods, 2 learning rates, 2 seeds)."""
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(finished_tiny_study.root))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    assert at.selectbox(key="st_open").value.endswith("tiny")
    charts = at.get("plotly_chart")
    assert len(charts) == 2

    fig = json.loads(charts[0].proto.spec)
    names = [t.get("name") for t in fig["data"]]
    assert {"idlora", "lora", "head-only", "base", "Pareto frontier"} <= set(names)
    assert fig["layout"]["xaxis"]["type"] == "log"
    summary = pd.read_csv(finished_tiny_study.out / "summary.csv")
    shown = at.dataframe[0].value
    assert list(shown.method) == list(summary.method) == ["idlora", "lora", "head-only", "base"]
    assert shown.metric_mean.tolist() == pytest.approx(summary.metric_mean.tolist())
    assert (summary.n_seeds == 2).all()
    lora = [t for t in fig["data"] if t.get("name") == "lora"][0]
    assert summary.test_mean.notna().all()  # the runs score their test split: the plot shows it
    lora_test = summary.loc[summary.method == "lora", "test_mean"].item()
    assert plotly_array(lora["y"])[0] == pytest.approx(lora_test)
    assert fig["layout"]["yaxis"]["title"]["text"].startswith("test_")


def test_built_grid_starts_from_the_finetune_defaults_in_a_fresh_session(tmp_path, monkeypatch):
    # A student who never opened the Fine-tune page got a grid of head-only and base only:
    # the page read ft_methods from the session, where only a visit to Fine-tune puts it.
    from app import settings_io as sio

    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.run()
    assert not at.exception
    methods = at.multiselect(key="st_methods").value
    assert methods == [*sio.DEFAULTS["ft_methods"], "head-only", "base"]
    lr_box = at.text_input(key="st_lr_idlora")
    assert lr_box.label == sio.METHOD_LABELS["idlora"]
    assert all(len(v.strip()) <= 7 for v in lr_box.value.split(",")), lr_box.value  # 0.00333, not 0.00333333
    r = sio.DEFAULTS["ft_ranks"][0]
    assert at.multiselect(key="st_ranks").value == [r // 2, r, 2 * r]  # budgets around Fine-tune's r
    assert at.multiselect(key="st_ks").value == sio.DEFAULTS["ft_ks"]


def test_built_grid_takes_the_ranks_and_ks_chosen_on_fine_tune(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.session_state["ft_ranks"] = [12]  # not among the page's usual options
    at.session_state["ft_ks"] = [2, 8]
    at.run()
    assert not at.exception
    ranks = at.multiselect(key="st_ranks")
    assert ranks.value == [6, 12, 24] and {"6", "12", "24"} <= set(map(str, ranks.options))
    assert at.multiselect(key="st_ks").value == [2, 8]
    at.session_state["ft_ranks"] = [4, 16]  # once chosen on this page, the grid keeps its own
    at.run()
    assert at.multiselect(key="st_ranks").value == [6, 12, 24]



def test_built_grid_on_a_causal_lm_leaves_head_only_out(tmp_path, monkeypatch):
    # head-only needs a classification head: on SmolLM2 every such trial failed
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["model_choice"] = "smollm2-135m"
    at.session_state["ft_methods"] = ["idlora", "lora", "head-only"]
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.run()
    assert not at.exception
    assert at.multiselect(key="st_methods").value == ["idlora", "lora", "base"]



def test_built_grid_takes_heads_from_their_own_widget(tmp_path, monkeypatch):
    """Issue 20: HydraLoRA's heads N have their own box (st_heads, from the Fine-tune ft_heads,
    shown once HydraLoRA is in the grid); ID-LoRA's clusters k stay in st_ks."""
    from analysis import studies

    built = []
    real = studies.build_study
    monkeypatch.setattr(studies, "build_study", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.session_state["ft_heads"] = [2, 8]
    at.session_state["st_methods"] = ["idlora", "lora"]
    at.run()
    assert not at.exception
    assert at.multiselect(key="st_ks").label == "Clusters k (ID-LoRA)"
    assert not [w for w in at.multiselect if w.key == "st_heads"]  # no HydraLoRA in the grid
    at.multiselect(key="st_methods").set_value(["idlora", "hydralora"]).run()
    heads = at.multiselect(key="st_heads")
    assert heads.label == "Heads N (HydraLoRA)" and heads.value == [2, 8]  # the Fine-tune heads
    at.multiselect(key="st_ranks").set_value([8]).run()
    at.multiselect(key="st_seeds").set_value([0]).run()
    at.multiselect(key="st_ks").set_value([16]).run()
    # independent count: idlora 1 r x 1 k x 3 lr = 3, hydralora 1 r x 2 N x 3 lr = 6
    assert "**9 runs**" in " ".join(m.value for m in at.markdown)
    at.multiselect(key="st_heads").set_value([2]).run()
    assert "**6 runs**" in " ".join(m.value for m in at.markdown)
    cells, _ = expand_grid(built[-1])
    targets = {(c["method"], c["learning_rate"]): cell_config(built[-1].base, c, "x").adapter.targets[0]
               for c in cells}
    assert {(m, t.k if m == "idlora" else t.heads) for (m, _), t in targets.items()} == {
        ("idlora", 16), ("hydralora", 2)}


def test_study_name_follows_the_chosen_study(tmp_path, monkeypatch):
    # the preset's name stayed in the box after switching to a built grid (or another preset)
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    preset_name = at.text_input(key="st_name").value
    assert preset_name and not at.exception
    at.radio(key="st_source").set_value("Build from the Fine-tune choices").run()
    assert not at.exception
    assert at.text_input(key="st_name").value != preset_name
    at.text_input(key="st_name").set_value("mine").run()  # a typed name stays while the study does
    assert at.text_input(key="st_name").value == "mine"


def test_a_study_this_tab_started_shows_at_once_even_before_its_first_trial(finished_tiny_study, tmp_path,
                                                                            monkeypatch):
    """The tab that started a study shows that study (not the previous one) before the
    coordinator has written study.json; a study that died before it shows its log."""
    import shutil

    from idlora_core.jobs import studies as jobs

    root = tmp_path / "runs"
    shutil.copytree(finished_tiny_study.root / "studies", root / "studies")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(root))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert at.selectbox(key="st_open").value.endswith("tiny")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fresh = root / "studies" / "fresh"
        fresh.mkdir()
        (fresh / jobs.LAUNCH_FILE).write_text(json.dumps({"pid": sleeper.pid, "workers": 1}))
        assert jobs.list_studies(root)[0] == fresh  # listed before it has a study.json
        at = AppTest.from_file(PAGE, default_timeout=120)  # the tab whose Start set these two keys
        at.session_state["st_current"] = at.session_state["st_open"] = str(fresh)
        at.run()
        assert at.session_state["st_open"] == str(fresh)
        assert at.selectbox(key="st_open").options[0] == "fresh"
        assert any("fresh is starting" in m.value for m in at.info)
    finally:
        sleeper.kill()
        sleeper.wait()
    (fresh / "study.log").write_text("error: the model folder does not exist\n")
    at.run()
    assert any("ended before its first trial" in w.value and "does not exist" in w.value for w in at.warning)


def test_only_the_owner_sees_stop_on_a_running_study(finished_tiny_study, tmp_path, monkeypatch):
    """Issue 18 #2: a user stops their own studies, not another student's."""
    from idlora_core.jobs import studies

    shutil.copytree(finished_tiny_study.root / "studies", tmp_path / "studies")  # the shared one stays as is
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    launch = tmp_path / "studies" / finished_tiny_study.out.name / studies.LAUNCH_FILE
    for owner, stop_shown in (("session:someone-else", False), ("session:me", True), ("", True)):
        launch.write_text(json.dumps({"pid": os.getpid(), "workers": 1, "owner": owner}))  # "running"
        at = AppTest.from_file(PAGE, default_timeout=120)
        at.session_state["_idlora_session"] = "me"
        at.run()
        assert not at.exception
        assert ("st_stop" in [b.key for b in at.button]) is stop_shown, owner
        assert any("Another user started this study" in c.value for c in at.caption) is not stop_shown
