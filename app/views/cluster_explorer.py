"""Cluster explorer page: a layer's rows in 2-D, coloured by cluster, skeleton rows highlighted.

UMAP's one-off compilation starts in the background when the page opens (set the environment
variable IDLORA_NO_UMAP_WARM=1 to skip that, e.g. in tests); PCA is drawn at once.
"""

from __future__ import annotations

import os

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from analysis.explorer import cluster_view, points_frame
from analysis.projection import pca_2d
from app.background import Job, result_when_ready, umap_async, umap_is_warm, warm_umap_async
from app.common import (
    SELECTIONS,
    ensure_layer,
    layer_weight,
    plain,
)
from app.figures import QUALITATIVE, SELECTION_COLORS, TOP_MARGIN
from app.page import open_page

SYMBOLS = {"id": "circle-open", "centroid": "diamond-open", "random": "x-thin-open"}

loaded = open_page("Cluster explorer", "explorer")
if not umap_is_warm() and not os.environ.get("IDLORA_NO_UMAP_WARM"):
    warm_umap_async()  # compile UMAP in the background while the user looks at PCA

names = ensure_layer("explorer_layer", loaded)
c1, c2, c3, c4, c5, c6 = st.columns([3, 0.9, 0.9, 1.2, 1.6, 1.3])
c1.selectbox("Layer", names, key="explorer_layer")
c2.number_input("Clusters k", 1, 256, step=1, key="explorer_k")
c3.number_input("Rank r", 1, 512, step=1, key="explorer_r",
                help="Skeleton rows per cluster; every cluster keeps at least r rows.")
c4.radio("Projection", ["PCA", "UMAP"], key="explorer_projection", horizontal=True,
         help="PCA appears at once; UMAP is computed in the background and replaces it.")
with c5:
    st.checkbox("Normalise rows", key="explorer_normalize_rows",
                help="Cluster rows by direction (cosine). This page's own setting: the "
                "Decomposition lab and Fine-tune pages have their own.")
    st.number_input("Seed", 0, 2**31 - 1, step=1, key="explorer_seed")
if st.session_state.get("explorer_skeleton") not in SELECTIONS:
    st.session_state["explorer_skeleton"] = "id"
c6.radio("Skeleton rows of", list(SELECTIONS), key="explorer_skeleton",
         help="Whose skeleton rows (the frozen A_c) are drawn on the scatter: one selection at "
         "a time. id: pivoted QR; centroid: nearest the centroid (the paper); random.")

layer = st.session_state["explorer_layer"]
k, r = int(st.session_state["explorer_k"]), int(st.session_state["explorer_r"])
normalize = bool(st.session_state["explorer_normalize_rows"])
seed = int(st.session_state["explorer_seed"])
skeleton = str(st.session_state["explorer_skeleton"])
W = layer_weight(loaded, layer)
m, n = W.shape


def _view_job(job: Job, W, k: int, r: int, normalize: bool, seed: int):
    """The page's clustering (k-means, three selections) and PCA, in the background pool."""
    job.report(0.0, f"clustering {W.shape[0]} rows into {k} clusters")
    view = cluster_view(W, k, r, SELECTIONS, normalize_rows=normalize, seed=seed)
    job.report(0.9, "PCA of the rows")
    return view, pca_2d(W, normalize_rows=normalize)


try:
    ready = result_when_ready(
        _view_job, W, k, r, normalize, seed, kind="explorer", label="clustering the rows",
        key=f"explorer|{loaded.name}|{layer}|{k}|{r}|{normalize}|{seed}", panel="explorer_view")
except ValueError as exc:
    st.error(f"{plain(str(exc))}\n\nThis layer has {m} rows and {n} columns: choose k and r "
             f"with k × r ≤ {m} and r ≤ {n}.")
    st.stop()
if ready is None:  # its progress is drawn; the page reruns when it is done
    st.stop()
view, pca = ready

st.caption(
    f"`{layer}`: {m} rows of length {n}, clustered by k-means into {k} clusters of at least "
    f"r = {r} rows each; from every cluster each selection picks r skeleton rows (the frozen A_c)."
)


def scatter(points, title: str) -> go.Figure:
    """Return the projection scatter, clusters in a qualitative palette, with the skeleton rows
    of ONE selection (`skeleton`) drawn on top."""
    order = [str(c) for c in range(k)]
    fig = px.scatter(
        points, x="x", y="y", color="cluster", custom_data=["row", "cluster"], title=title,
        category_orders={"cluster": order}, opacity=0.75,
        color_discrete_sequence=QUALITATIVE,
    )
    fig.update_traces(marker={"size": 6},
                      hovertemplate="row %{customdata[0]}<br>cluster %{customdata[1]}<extra></extra>")
    fig.for_each_trace(lambda t: t.update(name=f"cluster {t.name}"))
    chosen = points[points[f"skeleton_{skeleton}"]]
    fig.add_trace(go.Scatter(
        x=chosen["x"], y=chosen["y"], mode="markers", name=f"skeleton rows: {skeleton}",
        customdata=chosen[["row", "cluster"]].to_numpy(),
        marker={"symbol": SYMBOLS[skeleton], "size": 11, "color": "black",
                "line": {"width": 1.6, "color": "black"}},
        hovertemplate=f"{skeleton} skeleton row %{{customdata[0]}}<br>"
                      "cluster %{customdata[1]}<extra></extra>",
    ))
    fig.update_layout(height=560, legend_title_text="", uirevision=layer, margin=TOP_MARGIN,
                      xaxis_title="component 1", yaxis_title="component 2")
    return fig


def projection_panel() -> None:
    """Draw the scatter: UMAP when asked and ready, PCA otherwise (and while UMAP computes)."""
    xy, title = pca, "PCA of the rows (first two axes)"
    if st.session_state["explorer_projection"] == "UMAP":
        job = umap_async(W, normalize_rows=normalize, seed=seed)
        if job.done() and job.exception() is None:
            xy, title = job.result(), "UMAP of the rows (15 nearest neighbours)"
        elif job.done():
            st.error(f"UMAP failed: {job.exception()}. PCA is shown; try another seed or PCA.")
        else:
            st.info("UMAP is computing in the background (the first time also compiles it, "
                    "about 20-40 s on a small CPU). PCA is shown meanwhile.")
    st.plotly_chart(scatter(points_frame(xy, view), title), key="explorer_scatter")


pending = (st.session_state["explorer_projection"] == "UMAP"
           and not umap_async(W, normalize_rows=normalize, seed=seed).done())


@st.fragment(run_every=1.0 if pending else None)
def live_projection() -> None:
    """Poll the UMAP job while it runs; a full rerun once it is done stops the polling."""
    projection_panel()
    if pending and umap_async(W, normalize_rows=normalize, seed=seed).done():
        st.rerun()


left, right = st.columns([3, 1.2])
with left:
    live_projection()
with right:
    st.markdown(
        "**What you see.** Each dot is one row of the weight (one output neuron's input "
        "weights), placed so that similar rows sit close together. Colours are the k-means "
        f"clusters; the black open symbols are the r = {r} skeleton rows the `{skeleton}` "
        "selection keeps per cluster — ID-LoRA's frozen projections A_c are exactly these rows. "
        "Switch *Skeleton rows of* to compare: `id` (pivoted QR) picks rows that point in "
        "different directions (often large, spread out), `centroid` the typical rows of the "
        "cluster, which are nearly parallel. A 2-D projection of a "
        f"{n}-dimensional cloud often shows one blob: the clusters differ in directions the "
        "first two axes do not show, so read the sizes and errors below as well.\n\n"
        "**Why clusters help.** A cluster's rows are reconstructed from its own skeleton, "
        "so the error is governed by each cluster's spectrum: "
        r"$\|W-\hat W\|_2^2\le\sum_c(1+r(m_c-r))\,\sigma_{r+1}(W_c)^2$, "
        r"against $(1+r(m-r))\,\sigma_{r+1}(W)^2$ for one global skeleton (the paper; "
        "Gu & Eisenstat 1996 — see `docs/THEORY.md`)."
    )

def _use_for_export(k: int, r: int, normalize: bool, seed: int) -> None:
    state = st.session_state
    state["adapter_k"], state["adapter_r"] = k, r
    state["ex_normalize_rows"], state["ex_seed"] = normalize, seed


st.button(f"Use k = {k}, r = {r} as the export defaults", key="explorer_use_for_export",
          on_click=_use_for_export, args=(k, r, normalize, seed),
          help="The Export page adapts every selected layer with these, unless the Decomposition "
          "lab set a per-layer choice.")

st.markdown("#### Cluster sizes and per-cluster error")
a, b = st.columns(2)
order = [str(c) for c in range(k)]
sizes = px.bar(view.sizes.assign(cluster=view.sizes["cluster"].astype(str)), x="cluster",
               y="rows", color="cluster", category_orders={"cluster": order},
               color_discrete_sequence=QUALITATIVE, title="Rows per cluster")
sizes.update_traces(hovertemplate="cluster %{x}: %{y} rows<extra></extra>", showlegend=False)
sizes.add_hline(y=r, line_dash="dot", annotation_text=f"minimum size r = {r}",  # on a white
                annotation_position="top left", annotation_bgcolor="rgba(255,255,255,0.85)")  # box over the bars
sizes.update_layout(xaxis_title="cluster", yaxis_title="rows (count)", height=380,
                    margin=TOP_MARGIN, xaxis={"type": "category", "tickmode": "linear"})
a.plotly_chart(sizes, key="explorer_sizes")

errors = view.errors.assign(cluster=view.errors["cluster"].astype(str))
fig = px.bar(errors, x="cluster", y="rel_fro_error", color="selection", barmode="group",
             title=f"Rank-{r} ID error of each cluster", color_discrete_map=SELECTION_COLORS,
             category_orders={"cluster": order, "selection": list(SELECTIONS)},
             custom_data=["selection"])
fig.update_traces(hovertemplate="cluster %{x}, %{customdata[0]}: %{y:.3f}<extra></extra>")
best = errors.drop_duplicates("cluster")
fig.add_trace(go.Scatter(x=best["cluster"], y=best["svd_same_r"], mode="markers",
                         name=f"best rank-{r} (SVD of the cluster)",
                         hovertemplate="cluster %{x}: best rank-r %{y:.3f}<extra></extra>",
                         marker={"symbol": "line-ew-open", "size": 22, "color": "black",
                                 "line": {"width": 3}}))
fig.update_layout(xaxis_title="cluster", yaxis_title="‖W_c − Ŵ_c‖_F / ‖W_c‖_F (linear)",
                  height=420, margin=TOP_MARGIN, legend_title_text="",
                  legend={"orientation": "h", "y": -0.25},
                  xaxis={"type": "category", "tickmode": "linear"})
b.plotly_chart(fig, key="explorer_errors")
b.caption("The black mark is the best any rank-r approximation of that cluster can do "
          "(Eckart–Young): no skeleton gets below it. A cluster of at most r rows is rebuilt "
          "exactly (error 0).")
st.dataframe(
    view.errors, key="explorer_error_table", hide_index=True,
    column_config={
        "rel_fro_error": st.column_config.NumberColumn("ID error (rel. Frobenius)", format="%.4f"),
        "svd_same_r": st.column_config.NumberColumn("SVD rank-r error (rel.)", format="%.4f"),
    },
)
