"""ID-LoRA Lab entry point: `streamlit run app/main.py`.

Builds the navigation of the pages (`PAGES`) and the model picker in the sidebar. The picker only
writes session-state keys (see `app/common.py`); every page loads the model itself through
the shared cached loader, so each page file also runs on its own.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import background, exercise_panel, url_state
from app.common import MODEL_CHOICES, init_state
from app.settings_io import lab_mode

HERE = Path(__file__).resolve().parent
PAGES = [
    ("views/model_layers.py", "Model & layers", ":material/memory:"),
    ("views/lab_exercises.py", "Lab exercises", ":material/school:"),
    ("views/decomposition_lab.py", "Decomposition lab", ":material/grid_on:"),
    ("views/cluster_explorer.py", "Cluster explorer", ":material/scatter_plot:"),
    ("views/layer_atlas.py", "Layer atlas", ":material/grid_view:"),
    ("views/budget_planner.py", "Budget planner", ":material/tune:"),
    ("views/fine_tune.py", "Fine-tune", ":material/model_training:"),
    ("views/studies.py", "Studies", ":material/query_stats:"),
    ("views/export_import.py", "Export / import", ":material/download:"),
]


def model_picker() -> None:
    """Draw the sidebar model picker (writes model_choice / model_path / trust_remote_code)."""
    with st.sidebar:
        st.markdown("### Model")
        st.selectbox(
            "Model", list(MODEL_CHOICES), format_func=MODEL_CHOICES.get, key="model_choice",
            help="The model every page analyses and fine-tunes. Loaded once and shared.",
        )
        if st.session_state.get("model_choice") == "local":
            st.text_input(
                "Local model directory", key="model_path", placeholder="/path/to/hf-model",
                help="A Hugging Face model folder (config.json + weights). It is only read.",
            )
            if lab_mode():
                st.caption("Served to a lab (IDLORA_LAB): models never run their own code here.")
            else:
                st.checkbox(
                    "Trust remote code", key="trust_remote_code",
                    help="Runs Python code shipped with the model on this server. Only tick it "
                         "for a local model folder you trust; imported YAML never ticks it.",
                )
        elif st.session_state.get("model_choice") == "smollm2-135m":
            st.caption("SmolLM2's weights passed through 4-bit (Q4_1) quantisation: expect a "
                       "noise floor in the spectra.")


st.set_page_config(page_title="ID-LoRA Lab", page_icon=":material/hub:", layout="wide")
init_state()
url_state.restore()  # a refresh, a new tab or a shared link brings the choices (and runs) back
pages = [
    st.Page(str(HERE / path), title=title, icon=icon, default=(i == 0))
    for i, (path, title, icon) in enumerate(PAGES)
    if (HERE / path).is_file()
]
navigation = st.navigation(pages, position="sidebar")
model_picker()
exercise_panel.sidebar_panel()
background.keep_alive()  # this session's queued runs stay queued while any page of it is open
try:
    navigation.run()
finally:  # also after st.stop() / st.rerun(): the settings and runs survive a refresh
    url_state.persist()
