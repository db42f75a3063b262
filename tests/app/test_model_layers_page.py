"""Model & layers page on its own: model facts, layer filters, the 4-bit note, bad paths."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "model_layers.py")


def test_page_renders_alone_with_model_facts(minilm):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    total = sum(p.numel() for p in minilm.model.parameters())
    assert metrics["Parameters"] == f"{total / 1e6:,.1f} M"
    assert (metrics["Stored as"], metrics["Weights"]) == ("float32", "on disk")
    assert any("`BertModel`" in c.value for c in at.caption)
    # a metric is one of five columns: a longer value is cut to "disk (not …" on a wide screen
    assert all(len(m.value) <= 12 for m in at.metric), {m.label: m.value for m in at.metric}
    assert any("no weights are loaded" in i.value for i in at.info)
    assert at.multiselect(key="layer_kinds").value == ["q", "v"]
    assert at.slider(key="block_range").value == (0, 5)
    table = at.dataframe[0].value
    expected = [f"encoder.layer.{b}.attention.self.{p}" for b in range(6) for p in ("query", "value")]
    assert table["name"].tolist() == expected
    assert (table["params"] == 384 * 384 + 384).all()


def test_filter_by_type_and_block_range():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.multiselect(key="layer_kinds").set_value(["ffn_in", "ffn_out"]).run()
    at.slider(key="block_range").set_value((2, 3)).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["name"].tolist() == [
        "encoder.layer.2.intermediate.dense", "encoder.layer.2.output.dense",
        "encoder.layer.3.intermediate.dense", "encoder.layer.3.output.dense",
    ]
    assert table["shape"].tolist() == ["1536 x 384", "384 x 1536"] * 2
    assert table["params"].tolist() == [1536 * 384 + 1536, 384 * 1536 + 384] * 2


def test_smollm2_shows_quantisation_note_and_resets_block_range():
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.slider(key="block_range").set_value((1, 2)).run()
    assert len(at.dataframe[0].value) == 4
    at.session_state["model_choice"] = "smollm2-135m"  # a new model: all its blocks again
    at.run()
    assert not at.exception
    assert any("4-bit" in w.value for w in at.warning)
    assert at.slider(key="block_range").value == (0, 29)
    names = at.dataframe[0].value["name"].tolist()
    assert names[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert len(names) == 60


def test_folder_without_config_shows_error(tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = str(tmp_path)
    at.run()
    assert not at.exception
    assert "no config.json" in at.error[0].value
    assert len(at.metric) == 0


def test_local_model_directory_loads(tiny_bert_dir):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = tiny_bert_dir
    at.run()
    assert not at.exception and len(at.error) == 0
    assert at.slider(key="block_range").value == (0, 1)
    table = at.dataframe[0].value
    # the checkpoint's own module names (a classification model: what its fine-tune adapts)
    assert table["name"].tolist() == [
        f"bert.encoder.layer.{b}.attention.self.{p}" for b in (0, 1) for p in ("query", "value")]
    assert table["shape"].tolist() == ["32 x 32"] * 4


def test_sharded_bf16_folder_without_tokenizer_opens_without_loading(tmp_path, monkeypatch,
                                                                     sharded_llama):
    folder = sharded_llama(tmp_path / "ckpt", "bf16")
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the page loaded a model")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = str(folder)
    at.session_state["layer_kinds"] = ["down"]
    at.run()
    assert not at.exception and len(at.error) == 0
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Stored as"], metrics["Weights"]) == ("bfloat16", "on disk")
    assert at.dataframe[0].value["name"].tolist() == ["model.layers.0.mlp.down_proj",
                                                      "model.layers.1.mlp.down_proj"]


def test_a_hub_id_without_a_hub_is_one_error_not_a_hang(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on these machines: no hub
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = "owner/name"
    at.run()
    assert not at.exception and len(at.metric) == 0
    assert "'owner/name'" in at.error[0].value and "not reachable" in at.error[0].value
