"""Page choices in the URL (`st.query_params`) and the session store: a refresh (F5), a
reconnect, a new tab on the same address or a shared link restores them.

`restore()` runs once per browser session, in main.py before any widget: the session's stored
settings and runs (`app/session_store.py`, found by the URL's `sid`), then every known setting
found in the URL, replace the defaults; a URL without a valid `sid` gets a new one. `mirror(page)`
runs at the top of each page and writes that page's settings that differ from their defaults
into the URL (with the sidebar's, which every page shares, and the `sid`), so the address bar
always holds the page's current choices. `persist()` runs at the end of every run of main.py and
writes the store when the settings or runs changed. The keys, types, defaults and text forms
are those of the page dataclasses (`app/page_settings.py`); values that do not parse, and keys
no page knows (an old link's `ft_learning_rate`), are ignored; a key the one vocabulary retired
(`lab_strategies`, docs/VOCABULARY.md) is read under its new name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from app import session_store as store
from app.page_settings import BY_PAGE, SidebarSettings, parse_all_query
from app.settings_io import runs_root

# page name (as passed to mirror / params_for) -> its settings; None: the sidebar's only
PAGES = {name: cls for name, cls in BY_PAGE.items() if cls is not SidebarSettings} | {"exercises": None}
_DONE = "_url_restored"
SID = "_sid"  # session key: this browser session's id (the URL's `sid`)
_SAVED = "_sid_saved"  # session key: the store text last read or written


def restore() -> None:
    """Once per session: copy the stored settings and runs of the URL's `sid`, then every known
    setting found in the URL, into session state (a new `sid` when the URL has no valid one)."""
    state = st.session_state
    if state.get(_DONE):
        return
    state[_DONE] = True
    params = st.query_params.to_dict()
    sid = params.get(store.SID_PARAM)
    data = None
    if store.valid_sid(sid):
        root = runs_root()
        data = store.load(root, sid)
        store.prune(root)
        if data is not None:
            state.update(store.values(data, root))
    else:
        sid = store.new_sid()
    state.update(parse_all_query(params))  # the address wins: a link's own choices
    state[SID] = sid
    state[_SAVED] = store.dumps(data if data is not None else store.snapshot({}))


def persist() -> None:
    """Write this session's settings and runs to the store when they changed since the last
    read or write (nothing for a session that never left the defaults)."""
    state = st.session_state
    sid = state.get(SID)
    if not sid:
        return
    snapshot = store.snapshot(state)
    text = store.dumps(snapshot)
    if text != state.get(_SAVED) and store.save(runs_root(), sid, snapshot):
        state[_SAVED] = text


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
    wanted = params_for(page, state) | ({store.SID_PARAM: state[SID]} if state.get(SID) else {})
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)
