"""The Decomposition lab's "Clustering sensitivity" section: is the result the k-means seed?

For the inspected layer the page's sweep is repeated with S k-means seeds (the page's seed and
the next S-1; `analysis.sensitivity`), only when the button is pressed; every seed's sweep is
cached like the page's own, so a repeated request (or the page's seed itself) costs a lookup.
Shown: the seed x seed adjusted Rand index at the focus k, the cluster-wise ID error with ±1
std bars over the seeds, the rows that change cluster, and a one-line reading. UI only.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from analysis.sensitivity import (
    seed_sweeps,
    spread_reading,
    spread_table,
    sweep_sensitivity,
)
from analysis.sweep import SweepSpec
from app import figures
from app.common import ModelHandle, layer_weight, plain

DEFAULT_SEEDS = 5
MAX_SEEDS = 20  # each seed is one more sweep of the layer
SEEDS_KEY = "lab_sens_seeds"


def _seeds(first: int, count: int) -> list[int]:
    return [first + i for i in range(count)]


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
    if run and results is None:
        bar = st.progress(0.0, text=f"Sweeping {layer} with {count} k-means seeds ...")

        def tick(done: int, total: int, message: str) -> None:
            bar.progress(min(max(done / max(total, 1), 0.0), 1.0), text=message)

        try:
            results = seed_sweeps(W, spec, seeds, layer=layer, cache=True, progress=tick)
        except ValueError as exc:
            st.error(f"The sweeps could not run: {plain(str(exc))}")
            return
        bar.progress(1.0, text=f"Done: {count} seeds.")
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
