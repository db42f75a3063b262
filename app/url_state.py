"""Page choices in the URL (`st.query_params`): a refresh or a shared link restores them.

`restore()` runs once per browser session, in main.py before any widget: every known setting
found in the URL replaces its default. `mirror(page)` runs at the top of each page and writes
that page's settings that differ from their defaults into the URL (with the sidebar's, which
every page shares), so the address bar always holds the page's current choices. The keys, types,
defaults and text forms are those of the page dataclasses (`app/page_settings.py`); values that
do not parse, and keys no page knows (an old link's `ft_learning_rate`), are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from app.page_settings import BY_PAGE, SidebarSettings, parse_all_query

# page name (as passed to mirror / params_for) -> its settings; None: the sidebar's only
PAGES = {name: cls for name, cls in BY_PAGE.items() if cls is not SidebarSettings} | {"exercises": None}
_DONE = "_url_restored"


def restore() -> None:
    """Once per session: copy every known setting found in the URL into session state."""
    state = st.session_state
    if state.get(_DONE):
        return
    state[_DONE] = True
    state.update(parse_all_query(st.query_params.to_dict()))


def params_for(page: str, values: Mapping[str, Any]) -> dict[str, str]:
    """Return the URL parameters of `page` (a PAGES name) for the settings in `values`
    (a mapping such as st.session_state): the sidebar's and the page's that differ from their
    defaults."""
    cls = PAGES[page]
    params = SidebarSettings.from_state(values).to_query()
    return params | (cls.from_state(values).to_query() if cls is not None else {})


def mirror(page: str) -> None:
    """Write the settings of `page` (a PAGES name) that differ from their defaults into the
    URL, replacing what another page wrote there."""
    state = st.session_state
    state[_DONE] = True  # a page opened without main.py never restores later
    wanted = params_for(page, state)
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)
