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
from app.background import umap_async, umap_is_warm, warm_umap_async
from app.common import STRATEGIES, ensure_layer, get_model, init_state, layer_weight

SYMBOLS = {"id": "circle-open", "centroid": "diamond-open", "random": "x-thin-open"}
LINE_COLORS = {"id": "black", "centroid": "crimson", "random": "royalblue"}

init_state()
st.title("Cluster explorer")
loaded = get_model()
if loaded is None:
    st.stop()
if not umap_is_warm() and not os.environ.get("IDLORA_NO_UMAP_WARM"):
    warm_umap_async()  # compile UMAP in the background while the user looks at PCA

names = ensure_layer("explorer_layer", loaded)
c1, c2, c3, c4, c5 = st.columns([4, 1, 1, 1.3, 1.3])
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

layer = st.session_state["explorer_layer"]
k, r = int(st.session_state["explorer_k"]), int(st.session_state["explorer_r"])
normalize = bool(st.session_state["explorer_normalize_rows"])
seed = int(st.session_state["explorer_seed"])
W = layer_weight(loaded, layer)
m, n = W.shape


@st.cache_data(max_entries=32, show_spinner="Clustering rows and selecting skeletons ...")
def _view(model: str, layer: str, k: int, r: int, normalize: bool, seed: int, _W):
    return cluster_view(_W, k, r, STRATEGIES, normalize_rows=normalize, seed=seed)


@st.cache_data(max_entries=32, show_spinner=False)
def _pca(model: str, layer: str, normalize: bool, _W):
    return pca_2d(_W, normalize_rows=normalize)


try:
    view = _view(loaded.name, layer, k, r, normalize, seed, W)
except ValueError as exc:
    st.error(f"{exc}\n\nThis layer has {m} rows and {n} columns: choose k and r with "
             f"k * r <= {m} and r <= {n}.")
    st.stop()

st.caption(
    f"`{layer}`: {m} rows of length {n}, clustered by k-means into {k} clusters of at least "
    f"r = {r} rows each; from every cluster each strategy picks r skeleton rows (the frozen A_c)."
)


def scatter(points, title: str) -> go.Figure:
    """Return the projection scatter with the skeleton rows of each strategy drawn on top."""
    fig = px.scatter(
        points, x="x", y="y", color="cluster", custom_data=["row", "cluster"], title=title,
        category_orders={"cluster": [str(c) for c in range(k)]}, opacity=0.85,
        color_discrete_sequence=px.colors.qualitative.Dark24,
    )
    fig.update_traces(marker={"size": 6},
                      hovertemplate="row %{customdata[0]}<br>cluster %{customdata[1]}<extra></extra>")
    for strategy in STRATEGIES:
        chosen = points[points[f"skeleton_{strategy}"]]
        fig.add_trace(go.Scatter(
            x=chosen["x"], y=chosen["y"], mode="markers", name=f"skeleton: {strategy}",
            customdata=chosen[["row", "cluster"]].to_numpy(),
            marker={"symbol": SYMBOLS[strategy], "size": 9, "color": LINE_COLORS[strategy],
                    "line": {"width": 1.2}},
            hovertemplate=f"{strategy} skeleton<br>row %{{customdata[0]}}<br>"
                          "cluster %{customdata[1]}<extra></extra>",
        ))
    fig.update_layout(height=560, legend_title_text="cluster / skeleton", uirevision=layer,
                      xaxis_title="component 1", yaxis_title="component 2")
    return fig


def projection_panel() -> None:
    """Draw the scatter: UMAP when asked and ready, PCA otherwise (and while UMAP computes)."""
    xy, title = _pca(loaded.name, layer, normalize, W), "PCA of the rows (first two axes)"
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
        "clusters; the open symbols are the r skeleton rows each strategy keeps per cluster. "
        "ID-LoRA's frozen projections A_c are exactly these rows. Notice where each strategy "
        "looks: `id` (pivoted QR) favours large, spread-out rows, `centroid` the typical ones.\n\n"
        "**Why clusters help.** A cluster's rows are reconstructed from its own skeleton, "
        "so the error is governed by each cluster's spectrum: "
        r"$\|W-\hat W\|_2^2\le\sum_c(1+r(m_c-r))\,\sigma_{r+1}(W_c)^2$, "
        r"against $(1+r(m-r))\,\sigma_{r+1}(W)^2$ for one global skeleton (DESIGN §2)."
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
sizes = px.bar(view.sizes.assign(cluster=view.sizes["cluster"].astype(str)), x="cluster", y="rows",
               title="Rows per cluster")
sizes.add_hline(y=r, line_dash="dot", annotation_text=f"minimum size r = {r}")
sizes.update_layout(xaxis_title="cluster", yaxis_title="rows (count)", height=380)
a.plotly_chart(sizes, key="explorer_sizes")

errors = view.errors.assign(cluster=view.errors["cluster"].astype(str))
fig = px.bar(errors, x="cluster", y="rel_fro_error", color="strategy", barmode="group",
             log_y=True, title=f"Rank-{r} ID error of each cluster",
             color_discrete_map=LINE_COLORS)
best = errors.drop_duplicates("cluster")
fig.add_trace(go.Scatter(x=best["cluster"], y=best["svd_same_r"], mode="markers",
                         name=f"best rank-{r} (SVD of the cluster)",
                         marker={"symbol": "line-ew-open", "size": 22, "color": "gray",
                                 "line": {"width": 3}}))
fig.update_layout(xaxis_title="cluster",
                  yaxis_title="‖W_c − Ŵ_c‖_F / ‖W_c‖_F (log)",
                  height=380)
b.plotly_chart(fig, key="explorer_errors")
b.caption("The grey mark is the best any rank-r approximation of that cluster can do "
          "(Eckart–Young): no skeleton gets below it. A cluster of at most r rows is rebuilt "
          "exactly (error 0, no bar on the log axis).")
st.dataframe(
    view.errors, key="explorer_error_table", hide_index=True,
    column_config={
        "rel_fro_error": st.column_config.NumberColumn("ID error (rel. Frobenius)", format="%.4f"),
        "svd_same_r": st.column_config.NumberColumn("SVD rank-r error (rel.)", format="%.4f"),
    },
)
