"""The app entry point: navigation of the five pages, the sidebar model picker, bad model paths."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app.common import DEFAULTS

APP = Path(__file__).resolve().parents[2] / "app"
MAIN = str(APP / "main.py")


def test_main_renders_first_page_with_model_picker():
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    assert not at.exception
    picker = at.sidebar.selectbox(key="model_choice")
    assert picker.value == "minilm"
    assert picker.options[:2] == [
        "all-MiniLM-L6-v2 (BERT encoder, 22.7 M)", "SmolLM2-135M-Instruct (Llama, 135 M, 4-bit origin)"]
    assert at.title[0].value == "Model & layers"  # the default page, with the model loaded
    assert at.dataframe[0].value["name"].tolist()[0] == (
        "encoder.layer.0.attention.self.query")


def test_every_page_file_exists_and_switching_keeps_settings():
    for page in ("model_layers", "decomposition_lab", "cluster_explorer", "fine_tune", "studies",
                 "export_import", "layer_atlas"):
        assert (APP / "views" / f"{page}.py").is_file()
        assert f'"views/{page}.py"' in (APP / "main.py").read_text()
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["lab_ranks"] = [2, 4]
    at.run()
    at.switch_page("views/decomposition_lab.py").run()
    assert not at.exception
    assert at.title[0].value == "Decomposition lab"
    assert at.multiselect(key="lab_ranks").value == [2, 4]
    at.switch_page("views/model_layers.py").run()
    at.switch_page("views/decomposition_lab.py").run()
    assert at.multiselect(key="lab_ranks").value == [2, 4]


def test_bad_local_path_shows_error_with_next_step(tmp_path):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["model_choice"] = "local"
    at.session_state["model_path"] = str(tmp_path / "no-such-model")
    at.run()
    assert not at.exception
    assert at.sidebar.text_input(key="model_path").value.endswith("no-such-model")
    assert len(at.error) == 1
    message = at.error[0].value
    assert "does not exist" in message and "Pick an embedded model" in message
    assert len(at.dataframe) == 0


def test_each_page_owns_its_normalisation_and_seed():
    """Ticking "Normalise rows" in the explorer leaves the lab's own setting (and the
    Fine-tune / Export settings) unchanged; the lab's results stay where they were."""
    at = AppTest.from_file(MAIN, default_timeout=180).run()
    at.switch_page("views/decomposition_lab.py").run()
    assert at.checkbox(key="lab_normalize_rows").value is False
    at.switch_page("views/cluster_explorer.py").run()
    assert not at.exception
    at.checkbox(key="explorer_normalize_rows").check().run()
    at.number_input(key="explorer_seed").set_value(5).run()
    assert not at.exception
    assert at.session_state["explorer_normalize_rows"] is True
    at.switch_page("views/decomposition_lab.py").run()
    assert not at.exception
    assert at.checkbox(key="lab_normalize_rows").value is False
    assert at.number_input(key="lab_seed").value == 0
    at.switch_page("views/fine_tune.py").run()
    assert at.checkbox(key="ft_normalize_rows").value is False
    # back in the explorer, its own choice is still there
    at.switch_page("views/cluster_explorer.py").run()
    assert at.checkbox(key="explorer_normalize_rows").value is True
    assert at.number_input(key="explorer_seed").value == 5


def test_page_choices_live_in_the_url_and_come_back_on_refresh():
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.switch_page("views/decomposition_lab.py").run()
    at.multiselect(key="lab_ranks").set_value([2, 8]).run()
    at.checkbox(key="lab_normalize_rows").check().run()
    assert not at.exception
    url = dict(at.query_params)
    assert url["lab_ranks"] in ("2,8", ["2,8"]) and url["lab_normalize_rows"] in ("1", ["1"])
    # a refresh is a new session with the same URL: the choices come back
    again = AppTest.from_file(MAIN, default_timeout=180)
    for key, value in url.items():
        again.query_params[key] = value
    again.switch_page("views/decomposition_lab.py").run()
    assert not again.exception
    assert again.multiselect(key="lab_ranks").value == [2, 8]
    assert again.checkbox(key="lab_normalize_rows").value is True
    # a value that does not parse is ignored, not an error
    bad = AppTest.from_file(MAIN, default_timeout=180)
    bad.query_params["lab_ranks"] = "two,eight"
    bad.switch_page("views/decomposition_lab.py").run()
    assert not bad.exception and bad.multiselect(key="lab_ranks").value == DEFAULTS["lab_ranks"]


def test_a_value_repeated_in_the_url_is_kept_once():
    """Issue 18 #10: lab_selections=id,id raised StreamlitDuplicateElementKey on the lab."""
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.query_params.update(lab_selections="id,id", lab_ks="2,2", lab_ranks="4,8,4")
    at.switch_page("views/decomposition_lab.py").run()
    assert not at.exception
    assert at.multiselect(key="lab_selections").value == ["id"]
    assert at.multiselect(key="lab_ks").value == [2] and at.multiselect(key="lab_ranks").value == [4, 8]
