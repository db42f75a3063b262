"""The Decomposition lab's sweeps: computed once, then served from memory or the disk cache.

`run_sweeps` computes what is missing with `analysis.sweep.sweep_layer` (which stores every
layer's result in the cache folder); `stored_results` / `stored_sweeps` only look results up.
The page never computes on its script thread: `start_sweeps` and `start_spectral` submit the
same work to the app's bounded background pool (`app.background`) and return its Job, whose
progress the page polls; an identical request of another session returns the same job.
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

import numpy as np
import pandas as pd
import streamlit as st

from analysis.sweep import SweepResult, SweepSpec, add_spectral, sweep_layer, tidy_table
from app import background
from app.background import Job
from app.common import ModelHandle, layer_weight

Store = dict[tuple, SweepResult]


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


def _sweep_into(store: Store, loaded: ModelHandle, layers: list[str], spec: SweepSpec,
                progress: Callable[[float, str], None] | None,
                weight: Callable[[str], np.ndarray]) -> dict[str, SweepResult]:
    for i, layer in enumerate(layers):
        key = _sweep_key(loaded, layer, spec)
        if key in store:
            continue

        def tick(done: int, total: int, message: str, i: int = i, layer: str = layer) -> None:
            if progress is not None:
                progress((i + done / max(total, 1)) / len(layers),
                         f"{layer} ({i + 1}/{len(layers)}): {message}")

        store[key] = sweep_layer(weight(layer), spec, layer=layer, cache=True, progress=tick)
    return {layer: store[_sweep_key(loaded, layer, spec)] for layer in layers}


def run_sweeps(
    loaded: ModelHandle,
    layers: list[str],
    *,
    progress: Callable[[float, str], None] | None = None,
    **params: Any,
) -> dict[str, SweepResult]:
    """Return {layer: SweepResult} of `layers` (analysis.sweep), computing only what is not
    stored yet, on the calling thread (the page uses `start_sweeps`).

    Each layer comes from this process's store, else from the on-disk cache (a repeated
    request costs nothing), else is computed. params: the fields of `SweepSpec` (ks, ranks,
    selections, seed, normalize_rows, ...). progress(fraction 0..1, message).
    """
    return _sweep_into(_sweep_store(), loaded, layers, SweepSpec(**params), progress,
                       lambda layer: layer_weight(loaded, layer))


def _sweep_job(job: Job, store: Store, loaded: ModelHandle, layers: list[str],
               spec: SweepSpec) -> dict[str, SweepResult]:
    # On a pool worker: no Streamlit call here (the store was fetched on the script thread);
    # each weight is read alone, straight from the checkpoint.
    return _sweep_into(store, loaded, layers, spec, job.report, loaded.weights.weight)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def start_sweeps(loaded: ModelHandle, layers: list[str], **params: Any) -> Job:
    """Submit the sweep of `layers` (what `run_sweeps` computes) to the app's background pool as
    this session's job and return it; its result {layer: SweepResult} also lands in the store,
    where `stored_results` finds it. An identical request (same model, layers and grid) that
    is waiting, running or done returns that job, whoever submitted it; a new one cancels this
    session's unfinished sweep of other settings (the page shows one sweep at a time).

    Raises ValueError for a bad grid (SweepSpec), background.JobRefused when the pool or the
    user's share of it is full (one line)."""
    spec = SweepSpec(**params)
    store = _sweep_store()
    key = "sweep-" + repr((loaded.name, tuple(layers), replace(spec, spectral=False)))
    job = background.submit(_sweep_job, store, loaded, list(layers), spec, kind="sweep", supersede=True,
                            label=f"sweep of {_plural(len(layers), 'layer')}", key=key)
    if job.state == "done":  # the same sweep finished before: its results, stored again
        for layer, result in job.result().items():
            store.setdefault(_sweep_key(loaded, layer, spec), result)
    return job


def _spectral_into(store: Store, loaded: ModelHandle, layer: str, spec: SweepSpec,
                   W: np.ndarray, progress: Callable[[float, str], None] | None = None) -> SweepResult:
    key = _sweep_key(loaded, layer, spec)
    result = store.get(key)

    def tick(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress(done / max(total, 1), message)

    if result is None:
        result = sweep_layer(W, replace(spec, spectral=True), layer=layer, cache=True, progress=tick)
    elif not result.has_spectral:
        result = add_spectral(W, result, spec, cache=True, progress=tick)
    store[key] = result
    return result


def spectral_sweep(loaded: ModelHandle, layer: str, **params: Any) -> SweepResult:
    """Return the sweep result of one layer with the measured spectral columns filled in,
    computed on the calling thread (the page uses `start_spectral`).

    A stored result is extended (one residual SVD per configuration, from its own clusters
    and skeletons; saved under the same cache key) and replaces the stored one; a layer not
    swept yet is swept first. params: the fields of `SweepSpec`.
    """
    return _spectral_into(_sweep_store(), loaded, layer, SweepSpec(**params),
                          layer_weight(loaded, layer))


def _spectral_job(job: Job, store: Store, loaded: ModelHandle, layer: str, spec: SweepSpec,
                  W: np.ndarray) -> SweepResult:
    job.report(0.0, "one SVD of the residual per configuration, on the sweep's own clusters")
    return _spectral_into(store, loaded, layer, spec, W, job.report)


def spectral_key(loaded: ModelHandle, layer: str, **params: Any) -> str:
    """Return the job key of `start_spectral(loaded, layer, **params)` (Job.key)."""
    return "spectral-" + repr((loaded.name, layer, replace(SweepSpec(**params), spectral=False)))


def start_spectral(loaded: ModelHandle, layer: str, **params: Any) -> Job:
    """Submit the measured spectral columns of `layer` (what `spectral_sweep` computes) to the
    background pool and return the Job; the extended result replaces the stored one. A new
    request of this session cancels its older unfinished one (another inspected layer), and an
    identical request returns the same job. Raises background.JobRefused when the pool is full."""
    spec = SweepSpec(**params)
    store = _sweep_store()
    key = spectral_key(loaded, layer, **params)
    job = background.submit(_spectral_job, store, loaded, layer, spec, layer_weight(loaded, layer),
                            kind="spectral", supersede=True, label=f"spectral errors of {layer}",
                            key=key)
    if job.state == "done":  # measured before: stored again
        store[_sweep_key(loaded, layer, spec)] = job.result()
    return job


def stored_spectral(loaded: ModelHandle, layer: str, **params: Any) -> pd.DataFrame | None:
    """Return the sweep table of `layer` when its spectral columns were measured (in this
    process or in the on-disk cache), else None. Never computes."""
    results = stored_results(loaded, [layer], **params)
    result = None if results is None else results[layer]
    return result.table if result is not None and result.has_spectral else None
