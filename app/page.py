"""The start of every analysis page: defaults, title, URL mirror and the shared model handle."""

from __future__ import annotations

import streamlit as st

from app import url_state
from app.common import ModelHandle, get_model, init_state


def open_page(title: str, url_key: str) -> ModelHandle:
    """Start an analysis page: defaults, its title, its choices mirrored into the URL under
    `url_key`; return the shared model handle (the page stops after an error when there is none)."""
    init_state()
    st.title(title)
    url_state.mirror(url_key)
    loaded = get_model()
    if loaded is None:
        st.stop()
    return loaded
