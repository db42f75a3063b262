"""AppTest of the Fine-tune page on its own: controls, past-run reload, compare table, run plan."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import settings_io as sio
from idlora_core.config import RunConfig, load_config, save_config

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "fine_tune.py")


def _fake_run(root: Path, name: str, method: str, losses: list[float], trainable: int,
              final: dict | None = None) -> Path:
    """A finished run folder; `final`: more final metrics (eval_* / test_*) for run.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = RunConfig()
    cfg.adapter.method = method
    cfg.train.learning_rate = 0.02
    save_config(cfg, run_dir / "config.yaml")
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for step, loss in enumerate(losses, start=1):
            fh.write(json.dumps({"step": step, "loss": loss, "trainable_params": trainable,
                                 "total_params": 22_700_000, "step_seconds": 0.05}) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "step": len(losses)}))
    (run_dir / "run.json").write_text(json.dumps({
        "method": method, "state": "finished", "tasks": ["rotten_tomatoes"],
        "config": {"train": {"learning_rate": 0.02}},
        "final_metrics": {"steps": len(losses), "final_train_loss": losses[-1],
                          "trainable_params": trainable, "train_seconds": 1.5, **(final or {})},
    }))
    return run_dir


def _scores(validation: float, test: float, share: float = 0.55) -> dict:
    """Final metrics of a Rotten Tomatoes run: validation and test accuracy, top-class share."""
    return {"eval_loss": 0.5, "eval_rotten_tomatoes_accuracy": validation,
            "eval_rotten_tomatoes_top_class_share": share, "test_loss": 0.52,
            "test_rotten_tomatoes_accuracy": test, "test_rotten_tomatoes_top_class_share": share}


def plotly_array(value) -> np.ndarray:
    """Decode a plotly JSON array (plain list or plotly 6's {"dtype", "bdata"} binary form)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


@pytest.fixture(autouse=True)
def _no_queue_left_running():
    """The page starts the server's queue thread; stop it after each test so that no waiting
    run is started once the fake process is gone."""
    yield
    from idlora_core.jobs import run_queue

    run_queue.stop_workers()


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    return at


def test_page_renders_alone_with_controls(app):
    app.run()
    assert not app.exception
    assert app.multiselect(key="ft_methods").value == ["idlora", "lora"]
    tasks = app.multiselect(key="ft_tasks")
    assert tasks.value == ["rotten_tomatoes"]  # MiniLM: the real-data encoder task first
    assert tasks.options[0] == "Rotten Tomatoes (real movie reviews)"  # format_func labels
    assert "Sentiment (synthetic, saturates — 30-s smoke task)" in tasks.options
    assert app.multiselect(key="ft_ranks").value == [8]
    assert app.number_input(key="ft_steps").value == 150  # bench/finetune_defaults.py measures it
    assert app.number_input(key="ft_batch_size").value == 16
    assert app.selectbox(key="ft_lr_idlora").value == 1e-2 and app.selectbox(key="ft_lr_lora").value == 3e-3
    assert (app.button(key="start_runs").label, app.button(key="cancel_runs").label) == (
        "Start runs", "Cancel my runs")
    assert any("No runs yet" in i.value for i in app.info)
    app.toggle(key="ft_more").set_value(True).run()
    assert app.number_input(key="ft_num_eval").label == "Validation examples per task"
    test = app.number_input(key="ft_num_test")
    assert test.label == "Test examples per task" and test.value == sio.DEFAULTS["ft_num_test"]
    assert (test.min, test.max) == (0, 1_000_000)  # TaskConfig.num_test's range


def test_task_sizes_follow_the_model_kind_and_the_dataset_pools():
    state: dict = {}
    sio.init_defaults(state)
    assert [state[k] for k in ("ft_num_train", "ft_num_eval", "ft_num_test")] == [2000, 500, 1000]
    assert sio.sizes_for_kind(state, "causal-lm")  # untouched encoder sizes -> a causal LM's
    assert [state[k] for k in ("ft_num_train", "ft_num_eval", "ft_num_test")] == [512, 32, 32]
    state["ft_num_eval"] = 48  # the user's own choice survives a change of model
    assert not sio.sizes_for_kind(state, "encoder") and state["ft_num_eval"] == 48
    state.update(ft_num_train=5000, ft_num_eval=5000, ft_num_test=5000, ft_tasks=["bbc_news"])
    (task,) = sio.task_configs(state, "encoder")  # BBC News holds 1,525 / 200 / 400
    assert (task.num_train, task.num_eval, task.num_test) == (1525, 200, 400)
    state["ft_tasks"] = ["sentiment"]  # a generated task has no pool: the sizes as chosen
    (task,) = sio.task_configs(state, "encoder")
    assert (task.num_train, task.num_eval, task.num_test) == (5000, 5000, 5000)


def test_task_options_follow_the_registry():
    from idlora_core.tasks import BUILTIN

    encoder = sio.task_options("encoder")
    assert encoder[0] == "rotten_tomatoes" and "sentiment" in encoder
    assert ("bbc_news" in encoder) == ("bbc_news" in BUILTIN)  # offered once registered
    causal = sio.task_options("causal-lm")
    assert causal[:4] == ("arithmetic", "code", "knowledge", "refusal")
    assert ("math" in causal) == ("math" in BUILTIN)
    assert sio.task_label("bbc_news") == "BBC News (real articles, 5 topics)"
    assert sio.task_label("math") == "Maths questions (DeepMind mathematics_dataset)"
    assert sio.chosen_tasks(dict(sio.DEFAULTS), "causal-lm") == ["arithmetic"]  # not the encoder default


def test_test_examples_travel_through_the_config_and_back():
    state = dict(sio.DEFAULTS) | {"ft_num_eval": 100, "ft_num_test": 500}
    (task,) = sio.task_configs(state, "encoder")
    assert (task.name, task.num_eval, task.num_test) == ("rotten_tomatoes", 100, 500)
    label, cfg = sio.finetune_configs(state, "minilm", "encoder",
                                      ["encoder.layer.0.attention.self.query"])[0]
    values = sio.settings_from_config(cfg, {"model_choice": "minilm"})
    assert (values["ft_num_eval"], values["ft_num_test"]) == (100, 500)
    cfg.tasks[0].num_test = None  # a YAML without num_test: as many as num_eval
    assert sio.settings_from_config(cfg, {"model_choice": "minilm"})["ft_num_test"] == 100


def test_past_runs_reload_into_charts_and_compare_table(app, tmp_path, monkeypatch):
    _fake_run(tmp_path, "run-a", "idlora", [0.9, 0.7, 0.5], trainable=9_000, final=_scores(0.81, 0.79))
    _fake_run(tmp_path, "run-b", "lora", [0.9, 0.6, 0.45], trainable=18_000, final=_scores(0.84, 0.8))
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    app.run()
    assert set(app.multiselect(key="ft_past").options) == {"run-a", "run-b"}
    app.multiselect(key="ft_past").set_value(["run-a", "run-b"]).run()
    assert not app.exception
    charts = app.get("plotly_chart")
    assert len(charts) == 2  # loss curves + the trade-off scatter
    loss = json.loads(charts[0].proto.spec)
    assert sorted(t["name"] for t in loss["data"]) == ["run-a", "run-b"]
    ys = {t["name"]: plotly_array(t["y"]).tolist() for t in loss["data"]}
    assert ys["run-b"] == [0.9, 0.6, 0.45]
    assert loss["layout"]["uirevision"] == "ft-loss"
    scatter = json.loads(charts[1].proto.spec)
    points = {(float(x), float(y)) for t in scatter["data"]
              for x, y in zip(plotly_array(t["x"]), plotly_array(t["y"]), strict=True)}
    assert points == {(9_000.0, 0.81), (18_000.0, 0.84)}  # validation accuracy vs trainable params
    assert scatter["layout"]["yaxis"]["title"]["text"] == "validation accuracy (rotten tomatoes)"
    chance = [s for s in scatter["layout"]["shapes"] if s["y0"] == 0.5]  # 1 / 2 labels
    assert chance and scatter["layout"]["yaxis"]["range"] == [0, 1.05]
    lead = ["method", "validation accuracy (rotten tomatoes)", "test accuracy (rotten tomatoes)",
            "trainable parameters"]
    runs_table = app.dataframe[0].value
    assert list(runs_table.columns[:6]) == ["label", *lead, "training loss"]
    assert runs_table.set_index("label").loc["run-b", "test accuracy (rotten tomatoes)"] == "0.8000"
    compared = app.dataframe[-1].value  # the comparison table comes last
    assert list(compared.columns[:6]) == ["run label", *lead, "final training loss (nats)"]
    assert "note" not in compared and "note" not in runs_table and not app.warning  # none collapsed
    table = compared.set_index("method")
    assert table.loc["lora", "validation accuracy (rotten tomatoes)"] == pytest.approx(0.84)
    assert table.loc["lora", "test accuracy (rotten tomatoes)"] == pytest.approx(0.8)
    assert table.loc["idlora", "trainable parameters"] == 9_000  # readable headers
    assert table.loc["idlora", "% of LoRA's trainable"] == pytest.approx(50.0)  # 9000 / 18000
    assert table.loc["lora", "final training loss (nats)"] == pytest.approx(0.45)
    assert not [c for c in table.columns if "_" in c], list(table.columns)
    assert app.get("download_button")


def test_a_collapsed_run_is_marked_and_warned_about(app, tmp_path, monkeypatch):
    """A run whose final validation predictions are one class gets a note and one warning."""
    _fake_run(tmp_path, "run-ok", "idlora", [0.7, 0.5], trainable=9_000, final=_scores(0.8, 0.78))
    _fake_run(tmp_path, "run-flat", "lora", [0.7, 0.69], trainable=18_000,
              final=_scores(0.5, 0.5, share=1.0))
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    app.run()
    app.multiselect(key="ft_past").set_value(["run-ok", "run-flat"]).run()
    assert not app.exception
    for table, label in ((app.dataframe[0].value, "label"), (app.dataframe[-1].value, "run label")):
        notes = dict(zip(table[label], table["note"], strict=True))
        assert notes == {"run-ok": "", "run-flat": "collapsed: predicts one class"}
        assert list(table.columns).index("note") < list(table.columns).index("state")
    (warning,) = app.warning
    assert "run-flat" in warning.value and "lower learning rate than 0.02" in warning.value


def test_run_plan_matches_the_choices():
    state = dict(sio.DEFAULTS) | {"ft_methods": ["full", "lora", "idlora"], "ft_ranks": [4, 8],
                                  "ft_ks": [2, 4]}
    plan = sio.finetune_configs(state, "minilm", "encoder", ["encoder.layer.0.attention.self.query"])
    labels = [label for label, _ in plan]
    # idlora: 2 ranks x 2 ks, lora: 2 ranks, full: one run; in METHODS order
    assert labels == ["ID-LoRA r=4 k=2", "ID-LoRA r=4 k=4", "ID-LoRA r=8 k=2", "ID-LoRA r=8 k=4",
                      "LoRA r=4", "LoRA r=8", "Full fine-tuning"]
    cfg = plan[2][1]
    assert cfg.adapter.targets[0].r == 8 and cfg.adapter.targets[0].k == 2
    assert cfg.train.steps == 150 and cfg.tasks[0].name == "rotten_tomatoes"
    assert cfg.tasks[0].num_test == sio.DEFAULTS["ft_num_test"]


def test_head_only_on_a_causal_lm_is_refused_before_queueing():
    # exercise 4's preset keeps head-only; on SmolLM2 each such run was queued and then failed
    state = dict(sio.DEFAULTS) | {"ft_methods": ["lora", "head-only"]}
    layer = ["model.layers.0.self_attn.q_proj"]
    with pytest.raises(ValueError, match="Head only .* causal-LM"):
        sio.finetune_configs(state, "smollm2-135m", "causal-lm", layer)
    base = sio.finetune_configs(state | {"ft_methods": ["lora", "base"]}, "smollm2-135m", "causal-lm", layer)
    assert [label for label, _ in base] == ["LoRA r=8", sio.METHOD_LABELS["base"]]
    assert [label for label, _ in sio.finetune_configs(state, "minilm", "encoder",
                                                       ["encoder.layer.0.attention.self.query"])][1] \
        == sio.METHOD_LABELS["head-only"]


def _fake_training_processes(monkeypatch) -> list:
    """Make `idlora_core.jobs.runs` start fake training processes that keep running (their pid is this
    test's); return the list their command lines are appended to."""
    from idlora_core.jobs import runs

    started = []

    class FakePopen:
        pid = os.getpid()  # alive for as long as the test runs

        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def poll(self):
            return None

    monkeypatch.setattr(runs.subprocess, "Popen", FakePopen)
    return started


def test_two_sessions_start_runs_in_their_own_folders(tmp_path, monkeypatch):
    """Two browser tabs = two sessions: each sees only its own runs, in distinct folders."""

    started = _fake_training_processes(monkeypatch)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "3")
    tabs = [AppTest.from_file(PAGE, default_timeout=60) for _ in range(2)]
    for at, methods in zip(tabs, (["idlora"], ["lora", "dora"]), strict=True):
        monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
        at.session_state["ft_methods"] = methods
        at.run()
        at.button(key="start_runs").click().run()
        assert not at.exception
    mine = [[h.run_dir for h in at.session_state["ft_handles"]] for at in tabs]
    assert [len(m) for m in mine] == [1, 2]
    assert len({d for m in mine for d in m}) == 3 and len(started) == 3
    assert [h.method for h in tabs[1].session_state["ft_handles"]] == ["lora", "dora"]
    # each tab's live table lists its own runs only
    assert tabs[0].dataframe[0].value["method"].tolist() == ["idlora"]
    assert tabs[1].dataframe[0].value["method"].tolist() == ["lora", "dora"]


def test_global_limit_queues_runs_of_all_sessions_and_shows_places(tmp_path, monkeypatch):
    """Issue 8 #8: one limit for the server; a second tab waits and sees its place in line."""

    started = _fake_training_processes(monkeypatch)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "1")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    tabs = [AppTest.from_file(PAGE, default_timeout=60) for _ in range(2)]
    for at, methods in zip(tabs, (["idlora", "lora"], ["dora"]), strict=True):
        at.session_state["ft_methods"] = methods
        at.run()
        at.button(key="start_runs").click().run()
        assert not at.exception
    assert len(started) == 1  # one run on the whole server
    assert len(tabs[0].session_state["ft_handles"]) == 1 and tabs[1].session_state["ft_handles"] == []
    shown = " ".join(i.value for i in tabs[1].info)
    assert "DoRA r=8 — place 2 of 2" in shown
    first = " ".join(c.value for c in tabs[0].run().caption)
    assert "LoRA r=8 — place 1 of 2" in first and "1 running, 1 queued" in first


def test_heads_and_clusters_have_their_own_widgets_and_reach_the_runs(tmp_path, monkeypatch):
    """Issue 20: HydraLoRA's heads N is its own widget (ft_heads, shown once HydraLoRA is
    chosen), ID-LoRA's clusters k another (ft_ks); the started runs' configs carry each on its
    own field, labelled k=K and heads=N."""
    started = _fake_training_processes(monkeypatch)
    monkeypatch.setenv("IDLORA_MAX_RUNS", "4")
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert at.multiselect(key="ft_ks").label == "Clusters k (ID-LoRA)"
    assert not [w for w in at.multiselect if w.key == "ft_heads"]  # HydraLoRA not chosen
    at.multiselect(key="ft_methods").set_value(["idlora", "hydralora"]).run()
    heads = at.multiselect(key="ft_heads")
    assert heads.label == "Heads N (HydraLoRA)" and heads.value == [4]
    heads.set_value([2, 4]).run()  # the estimate counts ID-LoRA 1 k + HydraLoRA 2 N
    assert "**3 runs**" in " ".join(c.value for c in at.caption)
    at.multiselect(key="ft_heads").set_value([2]).run()
    at.multiselect(key="ft_ks").set_value([8]).run()
    at.button(key="start_runs").click().run()
    assert not at.exception and len(started) == 2
    configs = {h.method: load_config(h.run_dir / "config.yaml") for h in at.session_state["ft_handles"]}
    assert configs["hydralora"].adapter.targets[0].heads == 2
    assert configs["idlora"].adapter.targets[0].k == 8
    assert sorted(at.session_state["ft_labels"].values()) == ["HydraLoRA r=8 heads=2", "ID-LoRA r=8 k=8"]


def test_an_old_session_with_only_ft_ks_gives_hydralora_its_heads():
    """A session or link from before ft_heads: its ft_ks held HydraLoRA's heads N, and still does."""
    state = {key: value for key, value in sio.DEFAULTS.items() if key != "ft_heads"}
    state |= {"ft_methods": ["hydralora", "idlora"], "ft_ks": [2, 8]}
    plan = sio.finetune_configs(state, "minilm", "encoder", ["encoder.layer.0.attention.self.query"])
    assert [(label, cfg.adapter.targets[0].heads) for label, cfg in plan if cfg.adapter.method == "hydralora"] == [
        ("HydraLoRA r=8 heads=2", 2), ("HydraLoRA r=8 heads=8", 8)]
