"""The lab exercises in the app: apply a preset, show the active exercise beside the plots,
reset every page to its defaults. The exercises themselves live in `analysis/exercises.yaml`.
"""

from __future__ import annotations

import copy
from typing import Any

import streamlit as st

from analysis.exercises import SELECTED, Exercise, load_exercises, preset_layers
from app import url_state
from app.common import DEFAULTS, apply_settings, open_named

MODEL_KEYS = ("model_choice", "model_path", "trust_remote_code")
PAGE_FILES = {"Decomposition lab": ("views/decomposition_lab.py", "lab"),
              "Cluster explorer": ("views/cluster_explorer.py", "explorer"),
              "Fine-tune": ("views/fine_tune.py", "finetune")}


@st.cache_resource(show_spinner=False)
def exercises() -> list[Exercise]:
    """Return the handout's exercises (read once per app process)."""
    return load_exercises()


def exercise(number: int | None) -> Exercise | None:
    """Return exercise `number`, or None."""
    return next((ex for ex in exercises() if ex.id == number), None)


def default_values() -> dict[str, Any]:
    """Return every page setting at its default (the model choice and the runs folder are kept)."""
    return {k: copy.deepcopy(v) for k, v in DEFAULTS.items() if k not in MODEL_KEYS}


def preset_values(ex: Exercise) -> dict[str, Any]:
    """Return the session values of exercise `ex`: the defaults, then its settings (on MiniLM)."""
    from analysis.layers import layer_table

    values = default_values() | {"model_choice": "minilm", "model_path": ""}
    values |= copy.deepcopy(ex.settings)
    if ex.settings.get("lab_layers") == SELECTED:
        values["lab_layers"] = preset_layers(ex.settings, layer_table(open_named("minilm").weights))
    values["lab_exercise"] = ex.id
    return values


def start(ex: Exercise) -> None:
    """Apply the preset of `ex` and open its page (the settings apply before any widget)."""
    values = preset_values(ex)
    st.session_state["_pending_settings"] = values
    path, url_page = PAGE_FILES.get(ex.page, PAGE_FILES["Decomposition lab"])
    # the page's choices go into the new URL at once (a refresh or a shared link keeps them)
    st.switch_page(path, query_params=url_state.params_for(url_page, values))


def reset() -> None:
    """Put every page back to its defaults and close the exercise panel."""
    apply_settings(default_values())


def sidebar_panel() -> None:
    """Draw the active exercise's steps and "what you should see" in the sidebar."""
    ex = exercise(st.session_state.get("lab_exercise"))
    if ex is None:
        return
    with st.sidebar, st.container(key="exercise_panel", border=True):
        st.markdown(f"**Exercise {ex.id} — {ex.title}**")
        with st.expander("Steps", expanded=True):
            st.markdown(ex.text("steps"))
        with st.expander("What you should see", expanded=True):
            st.markdown(ex.text("observe"))
        with st.expander("Questions"):
            st.markdown(ex.text("questions"))
        a, b = st.columns(2)
        if a.button("Reset", key="exercise_reset",
                    help="Every page back to its default settings."):
            reset()
        if b.button("Close", key="exercise_close", help="Hide this panel; keep the settings."):
            st.session_state["lab_exercise"] = None
            st.rerun()
