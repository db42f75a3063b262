"""Page choices in the URL (`st.query_params`): a refresh or a shared link restores them.

`restore()` runs once per browser session, in main.py before any widget: every known key found
in the URL replaces its default. `mirror(page)` runs at the top of each page and writes that
page's settings that differ from their defaults into the URL (lists comma-separated), so the
address bar always holds the page's current choices. Values that do not parse are ignored
(the page's own validation drops options that do not exist).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import settings_io as sio
from app.common import DEFAULTS

# key -> kind: str, strs (comma list), int, ints, float, bool, range ("a-b" blocks)
PAGE_KEYS: dict[str, dict[str, str]] = {
    "model": {"layer_kinds": "strs", "block_range": "range"},
    "lab": {"lab_layers": "strs", "lab_ks": "ints", "lab_ranks": "ints", "lab_selections": "strs",
            "lab_normalize_rows": "bool", "lab_seed": "int", "lab_focus_layer": "str",
            "lab_focus_k": "int", "lab_summary_r": "int"},
    "explorer": {"explorer_layer": "str", "explorer_k": "int", "explorer_r": "int",
                 "explorer_projection": "str", "explorer_normalize_rows": "bool",
                 "explorer_seed": "int", "explorer_skeleton": "str"},
    "finetune": {"ft_methods": "strs", "ft_ranks": "ints", "ft_ks": "ints",
                 "ft_selection": "str", "ft_steps": "int", "ft_batch_size": "int",
                 "ft_learning_rate": "float", "ft_tasks": "strs"},
    "exercises": {},
}
SHARED = {"model_choice": "str", "lab_exercise": "int"}  # written by every page
RETIRED_KEYS = {"lab_strategies": "lab_selections"}  # old URL key -> the one name (VOCABULARY.md)
_DONE = "_url_restored"


def _default(key: str) -> Any:
    return DEFAULTS.get(key, sio.DEFAULTS.get(key))


def encode(value: Any, kind: str) -> str:
    """Return the URL text of a setting value."""
    if kind in ("strs", "ints"):
        return ",".join(str(v) for v in value or [])
    if kind == "bool":
        return "1" if value else "0"
    if kind == "range":
        return "" if value is None else f"{int(value[0])}-{int(value[1])}"
    return f"{value:g}" if kind == "float" else str(value)


def decode(text: str, kind: str) -> Any:
    """Return the setting value of URL text; raises ValueError when it does not parse. Lists
    keep each value once (`id,id` named two widgets alike: StreamlitDuplicateElementKey)."""
    if kind == "strs":
        return list(dict.fromkeys(t for t in text.split(",") if t))
    if kind == "ints":
        return list(dict.fromkeys(int(t) for t in text.split(",") if t))
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    if kind == "range":
        first, last = (int(t) for t in text.split("-"))
        return (min(first, last), max(first, last))
    return text


def restore() -> None:
    """Once per session: copy every known setting found in the URL into session state."""
    state = st.session_state
    if state.get(_DONE):
        return
    state[_DONE] = True
    kinds = dict(SHARED)
    for keys in PAGE_KEYS.values():
        kinds |= keys
    found = st.query_params.to_dict()
    for key, text in found.items():
        key = RETIRED_KEYS.get(key, key) if RETIRED_KEYS.get(key) not in found else key
        if key in kinds:
            try:
                state[key] = decode(text, kinds[key])
            except ValueError:
                continue


def params_for(page: str, values: Any) -> dict[str, str]:
    """Return the URL parameters of `page` (a PAGE_KEYS name) for the settings in `values`
    (a mapping such as st.session_state): those that differ from their defaults."""
    kinds = SHARED | PAGE_KEYS[page]
    return {key: encode(values[key], kind) for key, kind in kinds.items()
            if key in values and values[key] is not None and values[key] != _default(key)}


def mirror(page: str) -> None:
    """Write the settings of `page` (a PAGE_KEYS name) that differ from their defaults into
    the URL, replacing what another page wrote there."""
    state = st.session_state
    state[_DONE] = True  # a page opened without main.py never restores later
    wanted = params_for(page, state)
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)
