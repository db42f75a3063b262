"""The Decomposition lab's "Clustering sensitivity" section: is the result the k-means seed?

For the inspected layer the page's sweep is repeated with S k-means seeds (the page's seed and
the next S-1; `analysis.sensitivity`), only when the button is pressed, in the app's background
pool (`app.background`: progress and Cancel here, the page stays usable); every seed's sweep is
cached like the page's own, so a repeated request (or the page's seed itself) costs a lookup,
made on the page at once.
Shown: the seed x seed adjusted Rand index at the focus k, the cluster-wise ID error with ±1
std bars over the seeds, the rows that change cluster, and a one-line reading. UI only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from analysis.sensitivity import (
    seed_sweeps,
    spread_reading,
    spread_table,
    sweep_sensitivity,
)
from analysis.sweep import SweepResult, SweepSpec
from app import background, figures
from app.common import ModelHandle, layer_weight, plain

DEFAULT_SEEDS = 5
MAX_SEEDS = 20  # each seed is one more sweep of the layer
SEEDS_KEY = "lab_sens_seeds"
JOB = "_lab_sens_job"  # this session's seed sweeps in the background pool, or None
POLL_SECONDS = 1.0


def _seeds(first: int, count: int) -> list[int]:
    return [first + i for i in range(count)]


def _seed_job(job: background.Job, W: np.ndarray, spec: SweepSpec, seeds: list[int],
              layer: str) -> dict[int, SweepResult]:
    # On a pool worker: analysis only, progress (and cancel) through the job.
    return seed_sweeps(W, spec, seeds, layer=layer, cache=True,
                       progress=lambda done, total, message: job.report(done / max(total, 1), message))


def _key(loaded: ModelHandle, layer: str, spec: SweepSpec, seeds: list[int]) -> str:
    return "seeds-" + repr((loaded.name, layer, spec, tuple(seeds)))


def start(loaded: ModelHandle, layer: str, spec: SweepSpec, seeds: list[int]) -> background.Job:
    """Submit the sweeps of `layer` with every k-means seed of `seeds` to the background pool as
    this session's job; an identical request (any session's) returns the same job, a new one
    cancels this session's unfinished seed sweeps of other settings. Raises
    background.JobRefused (one line) when the pool or the user's share of it is full."""
    key = _key(loaded, layer, spec, seeds)
    return background.submit(_seed_job, layer_weight(loaded, layer), spec, list(seeds), layer,
                             kind="seeds", key=key, supersede=True,
                             label=f"sweeps of {layer} with {len(seeds)} k-means seeds")


@st.fragment(run_every=POLL_SECONDS)
def _poll(job: background.Job) -> None:
    """Progress and Cancel of the seed sweeps; the whole page reruns once they have ended."""
    if job.done():
        st.rerun()
    background.show_job(job, "lab_sens_cancel")


def _ended(job: background.Job) -> None:
    if job.state == "cancelled":
        st.info("The seed sweeps were cancelled; the seeds they finished are cached.")
    elif job.state == "failed":
        st.error(f"The sweeps could not run: {plain(str(job.exception()))}")


def show(loaded: ModelHandle, layer: str, k: int, params: dict[str, Any]) -> None:
    """Draw the clustering-sensitivity section of `layer` at `k` for the page's sweep
    settings `params` (the fields of `SweepSpec`)."""
    st.markdown(f"#### 5 · Clustering sensitivity — how much is the k-means seed? (`{layer}`)")
    state = st.session_state
    try:  # a restored or typed-in value outside the widget's range is brought back into it
        state[SEEDS_KEY] = min(max(int(state.get(SEEDS_KEY, DEFAULT_SEEDS)), 2), MAX_SEEDS)
    except (TypeError, ValueError):
        state[SEEDS_KEY] = DEFAULT_SEEDS
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    count = int(left.number_input("k-means seeds S", 2, MAX_SEEDS, step=1, key=SEEDS_KEY,
                                  help=f"The page's seed and the next S-1 (at most {MAX_SEEDS}); "
                                  "each is one more sweep of this layer with the settings above."))
    run = right.button("Run the sweep for every seed", key="lab_sens_run",
                       help="Repeats this layer's sweep once per seed (cached: asking again is "
                       "free) and compares the clusterings.")
    spec = SweepSpec(**params)
    seeds = _seeds(spec.seed, count)
    W = layer_weight(loaded, layer)
    results = seed_sweeps(W, spec, seeds, layer=layer, cache=True, lookup_only=True)
    job = state.get(JOB)
    if run and results is None:
        try:
            job = state[JOB] = start(loaded, layer, spec, seeds)
        except background.JobRefused as exc:
            st.error(str(exc))
    if job is not None and job.done():
        state[JOB] = None
        _ended(job)
        if results is None and job.state == "done" and job.key == _key(loaded, layer, spec, seeds):
            results = job.result()  # also when the disk cache lost them since
    elif job is not None:
        _poll(job)
        if results is None:
            return
    if results is None:
        st.caption(f"Press the button to repeat this layer's sweep with seeds {seeds[0]}–"
                   f"{seeds[-1]}: the agreement of the clusterings (adjusted Rand index), the rows "
                   "that change cluster and the spread of the error at each (k, r).")
        return
    try:
        sens = sweep_sensitivity(results, k)
    except ValueError as exc:
        st.warning(plain(str(exc)))
        return
    spread = spread_table(results)
    at_k = spread[(spread["k"] == k) & spread["feasible"]]
    ranks = sorted(int(r) for r in at_k["r"].unique())
    r = ranks[len(ranks) // 2]
    st.markdown(f"**Reading.** {sens.reading()}")
    st.markdown("\n".join(f"- {spread_reading(spread, k, r, selection)}" for selection in params["selections"]))

    plot, curve = st.columns(2)
    plot.markdown(f"**Adjusted Rand index between the seeds' clusterings** (k = {k})")
    plot.plotly_chart(figures.ari_heatmap_figure(sens.ari), key="lab_sens_ari")
    curve.markdown(f"**Error over the seeds** — mean ± std at k = {k}")
    curve.plotly_chart(figures.seed_spread_figure(spread, k), key="lab_sens_spread_chart")

    st.dataframe(
        at_k[["k", "r", "selection", "rel_error_mean", "rel_error_std", "rel_error_min",
              "rel_error_max", "svd_same_r", "n_cluster_seeds"]],
        key="lab_sens_spread", hide_index=True,
        column_config={
            "rel_error_mean": st.column_config.NumberColumn("mean error", format="%.4f"),
            "rel_error_std": st.column_config.NumberColumn(
                "std over seeds", format="%.4f", help="sample standard deviation (ddof 1)"),
            "rel_error_min": st.column_config.NumberColumn("min", format="%.4f"),
            "rel_error_max": st.column_config.NumberColumn("max", format="%.4f"),
            "svd_same_r": st.column_config.NumberColumn("SVD same r", format="%.4f"),
            "n_cluster_seeds": st.column_config.NumberColumn("seeds"),
        })
    st.dataframe(sens.per_seed(), key="lab_sens_per_seed", hide_index=True, column_config={
        "ari_vs_reference": st.column_config.NumberColumn(f"ARI with seed {seeds[0]}", format="%.3f"),
        "rows_moved": st.column_config.NumberColumn("rows that change cluster"),
        "share_moved": st.column_config.NumberColumn("share", format="%.3f"),
    })
    st.caption("A row changes cluster when, after each seed's cluster ids are matched to the "
               "first seed's (Hungarian algorithm on the shared rows), it sits in another one. "
               "The spread over all (k, r, selection) is in the CSV; the random selection's also "
               "holds the random skeleton draw (same seed).")
    with st.expander(f"The {sens.n_moved} rows that change cluster under some seed"):
        st.dataframe(sens.rows(), key="lab_sens_rows", hide_index=True)
    st.download_button("Download the spread (CSV)", spread.to_csv(index=False),
                       "sweep_seed_spread.csv", "text/csv", key="lab_sens_download")
