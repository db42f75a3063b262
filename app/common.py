"""Shared state of the ID-LoRA Lab pages: session-state keys, defaults, the cached model loader.

Every page calls `init_state()` first and gets the model with `get_model()` (never through
state that `main.py` set), so each page file also runs on its own. `get_model()` opens the
checkpoint's weights WITHOUT loading the model (`idlora_core.weights`): the layer list comes
from the file headers and each weight is read alone when a page needs it; only a fine-tune
(a separate process) loads the whole model. This file holds no maths.

Session-state keys (the contract between pages; Export/Import reads and restores them) are the
fields of the page dataclasses in `app/page_settings.py` (`SidebarSettings`: model_choice,
model_path, trust_remote_code, lab_exercise; `ModelLayersSettings`: layer_kinds, block_range;
`LabSettings`: lab_*; `ExplorerSettings`: explorer_*; `FineTuneSettings`: ft_*;
`ExportSettings`: ex_*, adapter_k/heads/r/selection/rb_splits and the per-layer overrides
`layer_choices` {layer: {"k", "heads", "r", "selection", "rb_splits"}}; `StudiesSettings`: st_*;
`LayerAtlasSettings`: atlas_*), with their types and defaults (retired keys such as
`lab_strategies` are still read: docs/VOCABULARY.md); `DEFAULTS` below is derived from them.
Widgets use these keys directly, so setting a key before its widget renders changes the widget.

Each page owns its settings: no key is read by two pages (the Fine-tune and Export pages keep
their own normalisation and seed in `ft_normalize_rows` / `ft_adapter_seed` and `ex_normalize_rows` /
`ex_seed`, see `app/settings_io.py`). What one page hands to another goes through an explicit
button ("Use the N selected layers", "Use these ... for export"). Only the model picker and the
Model & layers selection (`layer_kinds`, `block_range`) are shared, and pages say so where used.

Getters/setters: `model_name()` / `set_model_name(name)`, `selected_layers(loaded)`,
`layer_weight(loaded, layer)` (cached float32 weight, read alone from disk), `ensure_layer(key, loaded)`,
`layer_choice(layer)` (per-layer k/heads/r/selection/rb_splits with the defaults filled in),
`apply_settings(values)` (restore many keys at once, safe from any page and any point of a run).

Keys starting with `ft_` or `ex_` (Fine-tune and Export/Import pages) are kept across page
switches too; do not use those prefixes for buttons, file uploaders, download buttons or forms.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException

from analysis.layers import filter_layers, layer_table
from app.page_settings import ExportSettings, all_defaults
from app.settings_io import lab_read_path
from idlora_core.linalg.validation import SELECTIONS as SELECTIONS  # the pages read it from here
from idlora_core.models import (
    EMBEDDED,
    ModelNotFoundError,
    canonical_name,
    model_kind,
    set_hub_defaults,
    short_name,
)
from idlora_core.weights import WeightReader, open_weights

set_hub_defaults()  # the app is an entry point: never hang on the hub

MODEL_CHOICES: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 (BERT encoder, 22.7 M)",
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 135 M, 4-bit origin)",
    "local": "Local model directory ...",
}
KEEP_PREFIXES: tuple[str, ...] = ("ft_", "ex_")
_PENDING = "_pending_settings"
RANGE_OWNER = "_block_range_model"  # model the block range was chosen for (reset on a new model)

DEFAULTS: dict[str, Any] = all_defaults()  # every page's settings (app/page_settings.py)


def init_state() -> None:
    """Fill missing keys with their defaults and keep every page's settings across page switches.

    Streamlit drops the state of widgets that a run did not draw; re-assigning each key at the
    top of every run turns it into plain session state, so it survives a visit to another page.
    """
    state = st.session_state
    pending = state.pop(_PENDING, None) or {}
    for key, value in pending.items():
        _assign(key, value)
    if "block_range" in pending:
        state.pop(RANGE_OWNER, None)  # an imported range is kept even if the model changed too
    for key, value in DEFAULTS.items():
        if key not in state:
            state[key] = copy.deepcopy(value)
    for key in list(state.keys()):
        if key in DEFAULTS or key.startswith(KEEP_PREFIXES):
            _assign(key, state[key])


def _assign(key: str, value: Any) -> None:
    # A widget already drawn in this run (the sidebar picker when a page calls init_state
    # after main.py did) keeps its value; read-only widget keys are skipped too.
    try:
        st.session_state[key] = value
    except StreamlitAPIException:
        pass


def apply_settings(values: dict[str, Any]) -> None:
    """Restore many settings at once (e.g. from an imported YAML) and rerun so widgets show them.

    Works from a callback or from a page body: the values are applied by `init_state()` at the
    start of the next run, before any widget is drawn (this calls `st.rerun()`).
    """
    st.session_state[_PENDING] = dict(values)
    st.rerun()


def model_name() -> str:
    """Return the model name to load: "minilm", "smollm2-135m" or the local directory path."""
    state = st.session_state
    choice = state.get("model_choice", DEFAULTS["model_choice"])
    if choice == "local":
        return str(state.get("model_path", "")).strip()
    return choice


def set_model_name(name: str) -> dict[str, Any]:
    """Return the settings (model_choice, model_path) that select `name`; pass them to apply_settings."""
    short = short_name(name)
    if short:
        return {"model_choice": short, "model_path": ""}
    return {"model_choice": "local", "model_path": name}


@dataclass(frozen=True)
class ModelHandle:
    """The chosen model as the pages see it: names, kind and its weights on disk (not loaded)."""

    name: str  # canonical name ("all-MiniLM-L6-v2", ...) or the path
    kind: str  # "encoder" or "causal-lm"
    source: str  # folder or file the weights are read from
    note: str  # e.g. the 4-bit remark for SmolLM2
    weights: WeightReader  # layer list from the headers; weight(name) reads one tensor


@st.cache_resource(show_spinner=False, max_entries=3)
def _open(name: str) -> ModelHandle:
    weights = open_weights(name)
    canon = canonical_name(name)
    return ModelHandle(name=canon if canon in EMBEDDED else weights.source,
                       kind=model_kind(weights.config), source=weights.source,
                       note=EMBEDDED.get(canon, ""), weights=weights)


def open_named(name: str) -> ModelHandle:
    """Return the shared handle of model `name` (headers only, opened once per process)."""
    return _open(name)


def get_model() -> ModelHandle | None:
    """Return the shared handle of the model chosen in the sidebar, or None after an st.error.

    Opening it reads the config and the weight files' headers only (seconds, even for an 8B
    checkpoint); `layer_weight` reads one weight at a time. No model code runs, so
    trust_remote_code does not matter here (it does for a fine-tune).
    """
    name = model_name()
    if not name:
        st.error("No model directory given. Type the path of a local Hugging Face model folder "
                 "(one that holds config.json) in the sidebar, or pick an embedded model.")
        return None
    if st.session_state.get("model_choice") == "local":
        try:
            lab_read_path(name, "model folder")
        except ValueError as exc:
            st.error(str(exc))
            return None
    try:
        with st.spinner(f"Reading the layer list of {name} (headers only, no weights loaded) ..."):
            return _open(name)
    except ModelNotFoundError as exc:
        st.error(f"{exc}\n\nPick an embedded model in the sidebar, or give an existing local "
                 "model directory.")
    except Exception as exc:  # a broken model folder can fail in many ways inside transformers
        st.error(f"Could not load {name!r}: {type(exc).__name__}: {exc}\n\nCheck that the folder "
                 "holds a complete Hugging Face model, or pick an embedded model in the sidebar.")
    return None


def model_name_is_local() -> bool:
    """Return True when the sidebar points at an existing local model directory (not a hub id)."""
    path = str(st.session_state.get("model_path", "")).strip()
    return st.session_state.get("model_choice") == "local" and bool(path) and Path(
        path).expanduser().is_dir()


def selected_layers(loaded: ModelHandle) -> list[str]:
    """Return the names of the linear layers matching the chosen layer kinds and block range."""
    table = filter_layers(
        layer_table(loaded.weights),
        kinds=st.session_state.get("layer_kinds") or None,
        blocks=st.session_state.get("block_range"),
    )
    return list(table["name"])


def layer_choice(layer: str) -> dict[str, Any]:
    """Return {"k", "heads", "r", "selection", "rb_splits"} for `layer`: its override or the export
    defaults."""
    return ExportSettings.from_state(st.session_state).layer_choice(layer)


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:^])")


def literal(message: object) -> str:
    """Return `message` escaped for Markdown, so that it shows exactly as written: a user's text
    (a layer regex such as `^(\\w|[a-z])*\\d`) would otherwise lose its `*`, `\\` and `$`."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(message))


def plain(message: str) -> str:
    """Return an error message safe to show as Markdown: `*` (k*r) becomes " × "."""
    return str(message).replace("*", " × ")


RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64)  # ranks r offered by the Fine-tune and Studies pages
K_CHOICES = (1, 2, 4, 8, 16)  # clusters k and (their own widgets) heads N offered by the same pages


def choices_with_state(base: tuple[int, ...], key: str) -> list[int]:
    """Return the base choices plus any value already in session state `key` (an imported YAML,
    or the Fine-tune values a study starts from), sorted."""
    return sorted(set(base) | {int(v) for v in st.session_state.get(key) or []})


def valid(values: list, options: list) -> list:
    """Return the items of `values` that are among `options`, in order (for multiselect state)."""
    return [v for v in values if v in options]


@st.cache_data(max_entries=16, show_spinner="Reading the layer's weight from disk ...")
def _weight(model: str, layer: str, _weights: WeightReader) -> np.ndarray:
    return _weights.weight(layer)


def layer_weight(loaded: ModelHandle, layer: str) -> np.ndarray:
    """Return the float32 weight (m, n) of `layer`, read alone from the checkpoint (cached
    per model and layer)."""
    return _weight(loaded.name, layer, loaded.weights)


def layer_names(loaded: ModelHandle) -> list[str]:
    """Return the names of every linear layer of the model, in module order."""
    return list(loaded.weights.linear)


def ensure_layer(key: str, loaded: ModelHandle) -> list[str]:
    """Make session key `key` name an existing layer (default: the first selected layer).

    Call before drawing the selectbox with that key; returns the options (all layer names).
    """
    names = layer_names(loaded)
    if not names:
        st.error(f"{loaded.name} has no nn.Linear layers to analyse (GPT-2-style Conv1D layers "
                 "are not supported). Pick another model in the sidebar.")
        st.stop()
    if st.session_state.get(key) not in names:
        chosen = selected_layers(loaded)
        st.session_state[key] = chosen[0] if chosen else names[0]
    return names

