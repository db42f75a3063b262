"""Lab exercises page: the handout's exercises (docs/LAB.md), each one click away.

"Start exercise N" sets every control the exercise needs on every page and opens its page;
its steps and "what you should see" stay in the sidebar beside the plots. "Reset" puts every
page back to its defaults. The text and the presets come from `analysis/exercises.yaml`.
"""

from __future__ import annotations

import streamlit as st

from app import exercise_panel as panel
from app.common import init_state

init_state()
st.title("Lab exercises")
st.caption("The exercises of the lab handout (`docs/LAB.md`, generated from the same file as "
           "these presets). **Start** sets every control the exercise needs — model, layers, "
           "k, r, strategies, seed, normalisation — and opens its page; the steps and what you "
           "should see stay in the sidebar. Your other settings go back to their defaults.")
active = st.session_state.get("lab_exercise")
for ex in panel.exercises():
    with st.container(border=True, key=f"exercise_card_{ex.id}"):
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(f"#### Exercise {ex.id} — {ex.title}\n{ex.minutes} min · {ex.page}"
                      + (" · **active**" if active == ex.id else ""))
        if button.button(f"Start exercise {ex.id}", key=f"exercise_start_{ex.id}",
                         type="primary" if active != ex.id else "secondary"):
            panel.start(ex)
        st.markdown(ex.text("intro"))
        with st.expander("Steps and what you should see"):
            st.markdown(ex.text("steps"))
            st.markdown("**What you should see**\n\n" + ex.text("observe"))
st.markdown("Exercise 4 (fine-tuning ID-LoRA against LoRA) is in `docs/LAB.md`; set it up on "
            "the Fine-tune page.")
if st.button("Reset every page to its defaults", key="exercise_reset_all"):
    panel.reset()
