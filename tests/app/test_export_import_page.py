"""AppTest of the Export / import page on its own: export YAML, import bad and good YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import settings_io as sio
from idlora_core.adapters.skeletons import layer_skeletons
from idlora_core.config import TargetConfig, dumps_config, loads_config
from idlora_core.layers import get_weight
from idlora_core.linalg.clustering import MinSizeKMeans

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "export_import.py")
Q0 = "encoder.layer.0.attention.self.query"


def _yaml_shown(at: AppTest) -> str:
    return next(c.value for c in at.code if c.language == "yaml")


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["block_range"] = (0, 1)  # q, v of blocks 0-1: four layers
    return at


def test_export_yaml_is_a_valid_config_with_skeletons(app, minilm):
    app.run()
    assert not app.exception
    assert app.selectbox(key="ex_method").value == "idlora"
    assert app.get("download_button")
    cfg = loads_config(_yaml_shown(app))
    names = [t.pattern for t in cfg.adapter.targets]
    assert names == [f"encoder.layer.{b}.attention.self.{kind}"
                     for b in (0, 1) for kind in ("query", "value")]
    assert cfg.model.name == "minilm" and cfg.tasks[0].name == "rotten_tomatoes"
    assert cfg.output_dir == "runs/my-run"
    # k=4 clusters of r=8 distinct rows, each row from its own k-means cluster (independent fit)
    skeleton = cfg.adapter.skeletons[Q0]
    assert [len(rows) for rows in skeleton] == [8, 8, 8, 8]
    flat = [i for rows in skeleton for i in rows]
    assert len(set(flat)) == 32 and all(0 <= i < 384 for i in flat)
    labels = MinSizeKMeans(n_clusters=4, min_size=8, random_state=0).fit(
        get_weight(minilm.model, Q0)).labels_
    assert [len({int(labels[i]) for i in rows}) for rows in skeleton] == [1, 1, 1, 1]
    assert len({int(labels[rows[0]]) for rows in skeleton}) == 4
    commands = " ".join(c.value for c in app.code if c.language == "bash")
    assert "python -m idlora_core.train idlora_config.yaml" in commands
    assert "accelerate launch --multi_gpu --num_processes 8 -m idlora_core.train" in commands


def test_export_rejects_output_escape(app):
    app.session_state["ex_run_name"] = "../../etc"
    app.run()
    assert any("outside" in e.value or "no '..'" in e.value for e in app.error)
    assert not [c for c in app.code if c.language == "yaml"]


def test_import_bad_yaml_shows_every_schema_error(app):
    app.run()
    bad = "adapter:\n  method: qlora\n  targets: [{pattern: query, r: 0}]\ntrain:\n  stepz: 3\n"
    app.text_area(key="ex_paste").set_value(bad)
    app.button(key="import_pasted").click().run()
    assert not app.exception
    text = " ".join(e.value for e in app.error)
    assert "adapter.method" in text and "adapter.targets.0.r" in text and "train.stepz" in text
    assert app.session_state["ex_method"] == "idlora"  # nothing restored


def test_import_bad_upload_shows_errors(app):
    app.run()
    app.file_uploader(key="upload_yaml").set_value(("c.yaml", b"tasks: []\n", "application/x-yaml"))
    app.run()
    assert any("tasks" in e.value and "c.yaml" in e.value for e in app.error)


def test_import_good_yaml_restores_every_page_setting(app):
    app.session_state["lab_exercise"] = 4  # its sidebar panel would describe the old settings
    app.run()
    cfg = loads_config(_yaml_shown(app))
    cfg.adapter.skeletons = None
    cfg.adapter.method = "idlora"  # the method that uses every target field (others refuse them)
    cfg.adapter.seed = 3
    cfg.adapter.targets = [
        TargetConfig(pattern="encoder.layer.2.attention.self.key", r=4, k=2, selection="id",
                     rb_splits=2, alpha=8.0),
        TargetConfig(pattern="encoder.layer.3.attention.self.key", r=16, k=3),
    ]
    cfg.train.steps = 77
    cfg.train.learning_rate = 0.005
    cfg.output_dir = "runs/imported"
    app.file_uploader(key="upload_yaml").set_value(
        ("mine.yaml", dumps_config(cfg).encode(), "application/x-yaml"))
    app.run()
    assert not app.exception and not app.error
    s = app.session_state
    assert s["ex_method"] == "idlora" and s["ft_methods"] == ["idlora"]
    assert s["layer_kinds"] == ["k"] and tuple(s["block_range"]) == (2, 3)
    assert s["ex_seed"] == 3 and s["ft_adapter_seed"] == 3 and s["ft_steps"] == 77 and s["ft_lr_idlora"] == 0.005
    assert s["ex_run_name"] == "imported" and "ft_runs_root" not in s
    assert s["layer_choices"]["encoder.layer.3.attention.self.key"]["k"] == 3
    assert (s["adapter_k"], s["adapter_r"], s["adapter_selection"], s["adapter_rb_splits"]) == (2, 4, "id", 2)
    assert any("mine.yaml" in m.value for m in app.success)
    assert s["lab_exercise"] is None  # the import closed the exercise panel
    # the page now exports the imported choices back (round trip, skeletons aside)
    again = loads_config(_yaml_shown(app))
    assert again.adapter.targets == cfg.adapter.targets[:1] + [
        cfg.adapter.targets[1].model_copy(update={"alpha": 8.0})]  # alpha is one setting
    assert again.train == cfg.train and again.output_dir == "runs/imported"


def test_resolve_skeletons_is_deterministic_and_checks_sizes(minilm):
    t = TargetConfig(pattern=Q0, r=16, k=4, selection="id")
    a = layer_skeletons(minilm.model, [t], seed=0)
    assert a == layer_skeletons(minilm.model, [t], seed=0)
    with pytest.raises(ValueError, match="k\\*r"):
        layer_skeletons(minilm.model, [t.model_copy(update={"k": 40, "r": 16})])


def test_settings_round_trip_without_streamlit():
    state = dict(sio.DEFAULTS) | {"ex_seed": 0, "ex_normalize_rows": True}
    choices = {Q0: {"k": 2, "r": 8, "selection": "random", "rb_splits": 4}}
    cfg = sio.export_config(state, "minilm", "encoder", [Q0], choices)
    values = sio.settings_from_config(cfg, {"model_choice": "minilm", "model_path": ""})
    cfg2 = sio.export_config(state | values, "minilm", "encoder", [Q0], values["layer_choices"])
    assert cfg2 == cfg


def test_exported_skeletons_are_used_by_the_training_model():
    """Skeletons keyed by base-model names (as exported) are honoured on the classification
    model, whose modules are named `bert.encoder...`: no re-clustering happens."""
    from idlora_core.adapters.model import apply_adapters
    from idlora_core.config import AdapterConfig
    from idlora_core.models import load_model

    chosen = [[0, 1, 2, 3], [10, 11, 12, 13]]  # deliberately not what clustering would pick
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern=Q0, r=4, k=2)],
                        skeletons={Q0: chosen})
    model = load_model("minilm", head="classification").model
    adapted = apply_adapters(model, cfg)
    report = adapted.report
    assert report.resolved_skeletons == {"bert." + Q0: chosen}


def test_per_layer_override_reaches_the_yaml(app):
    app.run()
    app.toggle(key="ex_override").set_value(True).run()
    layer = "encoder.layer.1.attention.self.value"
    app.selectbox(key="ov_layer").set_value(layer).run()
    app.number_input(key=f"ov_k_{layer}").set_value(2)
    app.number_input(key=f"ov_r_{layer}").set_value(16)
    app.button(key="set_layer_choice").click().run()
    assert not app.exception
    assert app.session_state["layer_choices"][layer]["k"] == 2
    cfg = loads_config(_yaml_shown(app))
    target = next(t for t in cfg.adapter.targets if t.pattern == layer)
    assert (target.k, target.r) == (2, 16)
    assert [len(rows) for rows in cfg.adapter.skeletons[layer]] == [16, 16]
    assert next(t for t in cfg.adapter.targets if t.pattern == Q0).k == 4  # others keep k


def test_hydralora_export_uses_the_heads_widget(app):
    """Issue 20: for HydraLoRA the page shows heads N (adapter_heads), not clusters k, and its
    YAML's targets get heads from it (a per-layer override too); k stays ID-LoRA's."""
    app.session_state["adapter_k"] = 2  # ID-LoRA's clusters: no part of a HydraLoRA export
    app.run()
    assert app.number_input(key="adapter_k").label == "k (clusters, ID-LoRA)"
    app.selectbox(key="ex_method").set_value("hydralora").run()
    assert not [w for w in app.number_input if w.key == "adapter_k"]
    heads = app.number_input(key="adapter_heads")
    assert heads.label == "heads N (HydraLoRA)" and heads.value == 4
    heads.set_value(3).run()
    assert not app.exception
    cfg = loads_config(_yaml_shown(app))
    assert cfg.adapter.method == "hydralora" and {t.heads for t in cfg.adapter.targets} == {3}
    assert {t.k for t in cfg.adapter.targets} == {TargetConfig.model_fields["k"].default}  # not adapter_k
    assert app.dataframe[0].value["heads"].tolist() == [3, 3, 3, 3]
    app.toggle(key="ex_override").set_value(True).run()
    layer = "encoder.layer.1.attention.self.value"
    app.selectbox(key="ov_layer").set_value(layer).run()
    app.number_input(key=f"ov_heads_{layer}").set_value(5)
    app.button(key="set_layer_choice").click().run()
    assert not app.exception
    assert app.session_state["layer_choices"][layer] == {
        "k": 2, "heads": 5, "r": 8, "selection": "id", "rb_splits": 1}
    cfg = loads_config(_yaml_shown(app))
    assert {t.pattern: t.heads for t in cfg.adapter.targets}[layer] == 5
    assert {t.heads for t in cfg.adapter.targets if t.pattern != layer} == {3}
    app.selectbox(key="ex_method").set_value("idlora").run()  # ID-LoRA: its k is back
    assert app.number_input(key="adapter_k").value == 2
    assert {t.k for t in loads_config(_yaml_shown(app)).adapter.targets} == {2}
