"""AppTest of the Budget planner page: the plan on screen (metrics, heatmap, curve, per-layer
table) equals the library's plan of the same scan; the YAML loads; the budget slider moves it;
'Send to Fine-tune' hands the plan to the Fine-tune page, which offers to start it."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import plan as ap
from analysis.sweep import SweepSpec
from idlora_core.config import AdapterConfig, loads_config
from idlora_core.weights import open_weights

pytestmark = pytest.mark.usefixtures("one_blas_thread")
VIEWS = Path(__file__).resolve().parents[2] / "app" / "views"
LAYERS = [f"encoder.layer.{b}.attention.self.{p}" for b in (0, 1) for p in ("query", "value")]


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(str(VIEWS / "budget_planner.py"), default_timeout=180)
    at.session_state["block_range"] = (0, 1)  # q, v of blocks 0-1: four 384 x 384 layers
    return at


def _values(data) -> list[float]:
    """A plotly array from a chart's JSON spec (plain list, or base64 typed-array encoding)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def _expected(fraction: str):
    weights = open_weights("minilm")
    table, _ = ap.scan_layers(weights, LAYERS, SweepSpec((1, 2, 4, 8), (2, 4, 8, 16, 32, 64), ("id",)))
    curves = ap.planner_curves(table)
    return ap.make_plan(curves, f"{fraction}xlora@8")


def test_the_plan_on_screen_is_the_library_plan(app, settle):
    settle(app)  # the scan runs in the background pool; the page polls it
    assert not app.exception and not app.error
    metrics = {m.label: m.value for m in app.metric}
    lora = 4 * 8 * (384 + 384)
    assert metrics["Budget"] == f"{math.floor(0.5 * lora):,}"
    plan = _expected("0.5")
    assert metrics["Plan's trainable parameters"] == f"{plan.params:,}"
    assert metrics["Layers adapted"] == f"{len(plan.adapted)} of 4"
    assert metrics["Objective"] == f"{plan.objective:.4f}"
    assert any("exact (DP) — optimal" in c.value for c in app.caption)
    cells = app.dataframe[0].value
    assert list(cells["layer"]) == LAYERS
    shown = {row["layer"]: (row["k (0 = not adapted)"], row["r (0 = not adapted)"])
             for _, row in cells.iterrows()}
    assert shown == {name: plan.choices[name] or (0, 0) for name in LAYERS}
    assert cells["trainable parameters"].sum() == plan.params

    heatmap, curve = (json.loads(c.proto.spec)["data"] for c in app.get("plotly_chart"))
    labels = [t for row in heatmap[0]["text"] for t in row]
    assert sorted(labels) == sorted(f"r={r}<br>k={k}" if r else "—"
                                    for k, r in (plan.choices[n] or (0, 0) for n in LAYERS))
    assert [trace["name"] for trace in curve] == ["plan (per-layer k, r)", "uniform (one k, r everywhere)"]
    plan_y, uniform_y = _values(curve[0]["y"]), _values(curve[1]["y"])
    assert len(plan_y) == 40 and all(p <= u + 1e-12 for p, u in zip(plan_y, uniform_y, strict=True))

    cfg = loads_config(next(c.value for c in app.code if c.language == "yaml"))
    assert {t.pattern: (t.k, t.r) for t in cfg.adapter.targets} == plan.adapted
    assert all(t.layers == [int(t.pattern.split(".")[2])] for t in cfg.adapter.targets)
    assert set(cfg.adapter.skeletons) == set(plan.adapted)
    assert cfg.tasks[0].name == "rotten_tomatoes" and cfg.train.steps == 150  # Fine-tune's settings
    assert app.get("download_button")

    app.select_slider(key="plan_budget").set_value(1.0).run()
    more = _expected("1")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Budget"] == f"{lora:,}" and metrics["Objective"] == f"{more.objective:.4f}"
    assert more.objective < plan.objective


def test_send_to_fine_tune_offers_the_plan_run(app, settle):
    settle(app)
    app.button(key="plan_send").click().run()
    sent = app.session_state["ft_plan"]
    assert sent["model"] == "minilm"
    adapter = AdapterConfig.model_validate_json(sent["adapter"])
    plan = _expected("0.5")
    assert {t.pattern: (t.k, t.r) for t in adapter.targets} == plan.adapted
    assert sent["summary"].startswith(f"{len(plan.adapted)} layers, {plan.params:,} trainable")

    fine_tune = AppTest.from_file(str(VIEWS / "fine_tune.py"), default_timeout=180)
    fine_tune.session_state["ft_plan"] = sent
    fine_tune.run()
    assert not fine_tune.exception
    assert any("Budget plan" in m.value and sent["summary"] in m.value for m in fine_tune.markdown)
    assert fine_tune.button(key="start_plan") and not fine_tune.button(key="start_plan").disabled
    fine_tune.button(key="discard_plan").click().run()
    assert "ft_plan" not in fine_tune.session_state


def test_plan_run_config_keeps_the_plan_targets_and_the_fine_tune_training():
    from app import settings_io as sio

    state = dict(sio.DEFAULTS)
    adapter = AdapterConfig(method="idlora", targets=[
        {"pattern": LAYERS[0], "layers": [0], "r": 16, "k": 8, "selection": "id"}])
    cfg = sio.plan_run_config(state, adapter, "minilm", "encoder")
    assert cfg.adapter == adapter and cfg.model.name == "minilm"
    assert cfg.train.learning_rate == state[sio.LR_KEYS["idlora"]] and cfg.train.steps == 150
    assert cfg.tasks[0].name == "rotten_tomatoes"


def test_no_layers_selected_is_one_error(app):
    app.session_state["layer_kinds"] = ["gate"]  # MiniLM has none
    app.run()
    assert not app.exception
    assert [e.value for e in app.error] == [
        "No candidate layers: pick layer types and blocks on the Model & layers page."]
