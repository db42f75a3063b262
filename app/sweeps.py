"""The Decomposition lab's sweeps: computed once, then served from memory or the disk cache.

`run_sweeps` computes what is missing with `analysis.sweep.sweep_layer` (which stores every
layer's result in the cache folder); `stored_results` / `stored_sweeps` only look results up.
The store keeps each layer's whole `SweepResult` (table, labels, skeletons): the pages read
their tables from it, the spectra panel its clusters, and `spectral_sweep` adds the measured
spectral columns to it (`analysis.sweep.add_spectral`: from the stored clusterings, saved
under the same cache key) instead of sweeping again. Weights are read one layer at a time
from the checkpoint. The in-memory store is shared by every session of the app process
(results are read-only; extending one replaces it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pandas as pd
import streamlit as st

from analysis.sweep import SweepResult, SweepSpec, add_spectral, sweep_layer, tidy_table
from app.common import ModelHandle, layer_weight


@st.cache_resource(show_spinner=False)
def _sweep_store() -> dict[tuple, SweepResult]:
    # Process-wide: a sweep computed in one tab is shown at once in another.
    return {}


def _sweep_key(loaded: ModelHandle, layer: str, spec: SweepSpec) -> tuple:
    # the spectral columns are part of the same result: one entry per (model, layer, grid)
    return (loaded.name, layer, replace(spec, spectral=False))


def sweep_table(results: dict[str, SweepResult]) -> pd.DataFrame:
    """Return the tables of `results` (layer -> SweepResult) concatenated, in their order."""
    return tidy_table(pd.concat([r.table for r in results.values()], ignore_index=True))


def stored_results(loaded: ModelHandle, layers: list[str], **params: Any) -> dict[str, SweepResult] | None:
    """Return {layer: SweepResult} when every layer was already swept with `params` (in this
    process, or in the on-disk cache), else None. Never computes.

    params: the fields of `analysis.sweep.SweepSpec` (ks, ranks, selections, seed, normalize_rows, ...).
    """
    spec = SweepSpec(**params)
    store = _sweep_store()
    out: dict[str, SweepResult] = {}
    for layer in layers:
        key = _sweep_key(loaded, layer, spec)
        if key not in store:
            try:
                result = sweep_layer(layer_weight(loaded, layer), spec, layer=layer, cache=True,
                                     lookup_only=True)
            except ValueError:
                return None
            if result is None:
                return None
            store[key] = result
        out[layer] = store[key]
    return out


def stored_sweeps(loaded: ModelHandle, layers: list[str], **params: Any) -> pd.DataFrame | None:
    """Return the sweep table of `layers` when every layer was already swept with `params`,
    else None (`stored_results`). Never computes. Layers whose spectral columns were measured
    have them filled."""
    results = stored_results(loaded, layers, **params)
    return None if results is None else sweep_table(results)


def run_sweeps(
    loaded: ModelHandle,
    layers: list[str],
    *,
    progress: Callable[[float, str], None] | None = None,
    **params: Any,
) -> dict[str, SweepResult]:
    """Return {layer: SweepResult} of `layers` (analysis.sweep), computing only what is not
    stored yet.

    Each layer comes from this process's store, else from the on-disk cache (a repeated
    request costs nothing), else is computed. params: the fields of `SweepSpec` (ks, ranks,
    selections, seed, normalize_rows, ...). progress(fraction 0..1, message).
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

        store[key] = sweep_layer(layer_weight(loaded, layer), spec, layer=layer, cache=True,
                                 progress=tick)
    return {layer: store[_sweep_key(loaded, layer, spec)] for layer in layers}


def spectral_sweep(loaded: ModelHandle, layer: str, **params: Any) -> SweepResult:
    """Return the sweep result of one layer with the measured spectral columns filled in.

    A stored result is extended (one residual SVD per configuration, from its own clusters
    and skeletons; saved under the same cache key) and replaces the stored one; a layer not
    swept yet is swept first. params: the fields of `SweepSpec`.
    """
    spec = SweepSpec(**params)
    store = _sweep_store()
    key = _sweep_key(loaded, layer, spec)
    W = layer_weight(loaded, layer)
    result = store.get(key)
    if result is None:
        result = sweep_layer(W, replace(spec, spectral=True), layer=layer, cache=True)
    elif not result.has_spectral:
        result = add_spectral(W, result, spec, cache=True)
    store[key] = result
    return result


def stored_spectral(loaded: ModelHandle, layer: str, **params: Any) -> pd.DataFrame | None:
    """Return the sweep table of `layer` when its spectral columns were measured (in this
    process or in the on-disk cache), else None. Never computes."""
    results = stored_results(loaded, [layer], **params)
    result = None if results is None else results[layer]
    return result.table if result is not None and result.has_spectral else None
