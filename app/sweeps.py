"""The Decomposition lab's sweeps: computed once, then served from memory or the disk cache.

`run_sweeps` computes what is missing with `analysis.sweep.sweep_layer` (which stores every
layer's result in the cache folder); `stored_sweeps` only looks results up. Weights are read
one layer at a time from the checkpoint. The in-memory store is shared by every session of
the app process (tables are read-only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from analysis.sweep import SweepSpec, sweep_layer
from app.common import ModelHandle, layer_weight


@st.cache_resource(show_spinner=False)
def _sweep_store() -> dict[tuple, pd.DataFrame]:
    # Process-wide: a sweep computed in one tab is shown at once in another.
    return {}


def _sweep_key(loaded: ModelHandle, layer: str, spec: SweepSpec) -> tuple:
    return (loaded.name, layer, spec)


def stored_sweeps(loaded: ModelHandle, layers: list[str], **params: Any) -> pd.DataFrame | None:
    """Return the sweep table of `layers` when every layer was already swept with `params`
    (in this process, or in the on-disk cache), else None. Never computes.

    params: the fields of `analysis.sweep.SweepSpec` (ks, ranks, strategies, seed, normalize_rows, ...).
    """
    spec = SweepSpec(**params)
    store = _sweep_store()
    keys = [_sweep_key(loaded, layer, spec) for layer in layers]
    for layer, key in zip(layers, keys, strict=True):
        if key in store:
            continue
        try:
            result = sweep_layer(layer_weight(loaded, layer), spec, layer=layer, cache=True,
                                 lookup_only=True)
        except ValueError:
            return None
        if result is None:
            return None
        store[key] = result.table
    return pd.concat([store[key] for key in keys], ignore_index=True)


def run_sweeps(
    loaded: ModelHandle,
    layers: list[str],
    *,
    progress: Callable[[float, str], None] | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Return the sweep table of `layers` (analysis.sweep), computing only what is not stored yet.

    Each layer comes from this process's store, else from the on-disk cache (a repeated
    request costs nothing), else is computed. params: the fields of `SweepSpec` (ks, ranks,
    strategies, seed, normalize_rows, ...). progress(fraction 0..1, message).
    """
    spec = SweepSpec(**params)
    store = _sweep_store()
    for i, layer in enumerate(layers):
        key = _sweep_key(loaded, layer, spec)
        if key in store:
            continue

        def tick(done: int, total: int, message: str, i: int = i, layer: str = layer) -> None:
            if progress is not None:
                progress((i + done / max(total, 1)) / len(layers),
                         f"{layer} ({i + 1}/{len(layers)}): {message}")

        result = sweep_layer(layer_weight(loaded, layer), spec, layer=layer, cache=True,
                             progress=tick)
        store[key] = result.table
    return stored_sweeps(loaded, layers, **params)


def spectral_sweep(loaded: ModelHandle, layer: str, **params: Any) -> pd.DataFrame:
    """Return the sweep table of one layer with the measured spectral error `rel_spec_error`
    filled in (one residual SVD per configuration; cached on disk and in this process)."""
    spec = SweepSpec(**params, spectral=True)
    store = _sweep_store()
    key = _sweep_key(loaded, layer, spec)
    if key not in store:
        store[key] = sweep_layer(layer_weight(loaded, layer), spec, layer=layer, cache=True).table
    return store[key]


def stored_spectral(loaded: ModelHandle, layer: str, **params: Any) -> pd.DataFrame | None:
    """Return the spectral sweep of `layer` if this process already computed it, else None."""
    return _sweep_store().get(_sweep_key(loaded, layer, SweepSpec(**params, spectral=True)))
