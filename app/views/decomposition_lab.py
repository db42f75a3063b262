"""Decomposition lab page: how well cluster-wise ID reconstructs a layer, against global SVD/ID."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from analysis.explorer import spectra_frame
from analysis.sweep import ERROR_COLUMNS
from analysis.views import choices_for_export, error_vs_rank, heatmap_grid, layer_summary
from app.common import (
    STRATEGIES,
    ensure_layer,
    get_model,
    init_state,
    layer_weight,
    selected_layers,
    valid,
)
from app.sweeps import run_sweeps, stored_sweeps

K_OPTIONS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
R_OPTIONS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256]


@st.cache_data(max_entries=64, show_spinner="Clustering the rows for the spectra ...")
def _spectra(model: str, layer: str, k: int, min_size: int, normalize: bool, seed: int, _W):
    return spectra_frame(_W, k, min_size=min_size, normalize_rows=normalize, seed=seed)


init_state()
st.title("Decomposition lab")
loaded = get_model()
if loaded is None:
    st.stop()

names = ensure_layer("lab_focus_layer", loaded)  # stops with a message when there are none
state = st.session_state
if not valid(state["lab_layers"], names):  # default: the first layer selected on Model & layers
    state["lab_layers"] = [state["lab_focus_layer"]]
else:
    state["lab_layers"] = valid(state["lab_layers"], names)
for key, options in (("lab_ks", K_OPTIONS), ("lab_ranks", R_OPTIONS)):
    state[key] = sorted(set(valid(state[key], options))) or [options[0]]
state["lab_strategies"] = valid(state["lab_strategies"], list(STRATEGIES)) or ["id"]

def _use_selected(chosen: list[str]) -> None:
    st.session_state["lab_layers"] = chosen


chosen = selected_layers(loaded)
with st.container(border=True):
    pick, use = st.columns([5, 1.4], vertical_alignment="bottom")
    pick.multiselect("Layers", names, key="lab_layers",
                     help="Defaults to the first layer selected on the Model & layers page.")
    use.button(f"Use the {len(chosen)} selected layers", key="lab_use_selected",
               on_click=_use_selected, args=(chosen,), disabled=not chosen,
               help="The layers chosen by type and block range on the Model & layers page.")
    c1, c2, c3, c4, c5 = st.columns([2, 3, 2, 1.4, 1])
    c1.multiselect("Clusters k", K_OPTIONS, key="lab_ks")
    c2.multiselect("Ranks r", R_OPTIONS, key="lab_ranks")
    c3.multiselect("Strategies", list(STRATEGIES), key="lab_strategies",
                   help="id: pivoted-QR skeleton (theory); centroid: rows nearest the cluster "
                   "centroid (the paper); random: seeded baseline.")
    c4.checkbox("Normalise rows", key="lab_normalize_rows",
                help="Cluster L2-normalised rows (cosine geometry). This page's own setting: "
                "the Cluster explorer and Fine-tune pages have their own.")
    c5.number_input("Seed", 0, 2**31 - 1, step=1, key="lab_seed")
    st.caption(
        "The sweep runs k-means **once per k**, with minimum cluster size = the largest "
        "feasible r of the grid for that k (k·r ≤ m, r ≤ n), so every rank fits every cluster "
        "and all ranks of one k share the same clusters. One QR per cluster and strategy gives "
        "the error of every rank at once. Infeasible (k, r) pairs are left blank."
    )
    run = st.button("Run sweep", key="lab_run", type="primary")

layers = list(state["lab_layers"])
params = dict(ks=sorted(state["lab_ks"]), ranks=sorted(state["lab_ranks"]),
              strategies=list(state["lab_strategies"]), seed=int(state["lab_seed"]),
              normalize_rows=bool(state["lab_normalize_rows"]))
if not layers:
    st.info("Pick at least one layer above.")
    st.stop()

table = stored_sweeps(loaded, layers, **params)
if run and table is None:
    bar = st.progress(0.0, text="Starting the sweep ...")

    def show(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    try:
        table = run_sweeps(loaded, layers, progress=show, **params)
    except ValueError as exc:
        st.error(f"The sweep could not run: {exc}\n\nAdjust k and r so that k·r ≤ m and "
                 "r ≤ n for the chosen layers.")
        st.stop()
    bar.progress(1.0, text=f"Done: {len(layers)} layer(s), {len(table)} configurations.")
if table is None:
    st.info("Choose layers, cluster counts, ranks and strategies, then press **Run sweep**. "
            "Results already computed for these settings appear here at once.")
    st.stop()

st.success(f"{int(table['feasible'].sum())} configurations over {len(layers)} layer(s) "
           "(cached: changing a plot below does not recompute).", icon=":material/check:")

if state.get("lab_focus_layer") not in layers:
    state["lab_focus_layer"] = layers[0]
focus_l, focus_k = st.columns([3, 1])
focus_l.selectbox("Layer to inspect", layers, key="lab_focus_layer")
ks_run = sorted(table["k"].unique())
if state.get("lab_focus_k") not in ks_run:
    state["lab_focus_k"] = max(ks_run)
focus_k.selectbox("k for the curves", ks_run, key="lab_focus_k")
layer = state["lab_focus_layer"]
one = table[table["layer"] == layer]
m, n = int(one["m"].iloc[0]), int(one["n"].iloc[0])

# --- 1. heatmaps -----------------------------------------------------------------------------
st.markdown(f"#### 1 · Relative error over k × r — `{layer}` ({m} × {n})")
plot, text = st.columns([3, 1])
with plot:
    strategies = params["strategies"]
    cols = st.columns(len(strategies))
    lo, hi = one["rel_fro_error"].min(), one["rel_fro_error"].max()
    for col, strategy in zip(cols, strategies, strict=True):
        grid = heatmap_grid(one, strategy)
        fig = px.imshow(
            grid.to_numpy(), x=[str(r) for r in grid.columns], y=[str(k) for k in grid.index],
            text_auto=".3f", aspect="auto", zmin=lo, zmax=hi, color_continuous_scale="Viridis_r",
            labels={"x": "rank r (rows per cluster)", "y": "clusters k", "color": "rel. error"},
            title=f"strategy: {strategy}",
        )
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
        fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
        col.plotly_chart(fig, key=f"lab_heatmap_{strategy}")
with text:
    st.markdown(
        r"Each cell is the relative Frobenius error $\|W-\hat W\|_F/\|W\|_F$ of cluster-wise "
        r"ID: the rows of each of k clusters are rebuilt from r skeleton rows of that cluster, "
        r"$\|W-\hat W\|_F^2=\sum_c\|W_c-X_cW_c[J_c,:]\|_F^2$. Down a column (more clusters at "
        r"fixed r) the capacity $k r$ grows while ID-LoRA's trainable $B$ ($m r$) stays the same."
    )

# --- 2. error vs rank --------------------------------------------------------------------------
k = int(state["lab_focus_k"])
st.markdown(f"#### 2 · Error against rank at k = {k}")
plot, text = st.columns([3, 1])
curves = error_vs_rank(one, k)
if curves.empty:
    plot.warning(f"No feasible rank at k = {k} for this layer; pick a smaller k.")
else:
    fig = px.line(curves, x="r", y="error", color="curve", line_dash="kind", markers=True,
                  log_y=True, log_x=True, line_dash_map={"measured": "solid", "bound": "dot"})
    fig.update_layout(
        height=440, xaxis_title="rank r (rows per cluster; log)",
        yaxis_title="relative error (log): ‖·‖_F/‖W‖_F measured, ‖·‖₂/σ₁ bounds",
        legend_title_text="curve · kind",
    )
    fig.update_xaxes(tickvals=sorted(curves["r"].unique()))
    plot.plotly_chart(fig, key="lab_error_vs_rank")
with text:
    st.markdown(
        "**Same r** (same trainable B): cluster-wise ID against global SVD and global ID at "
        "rank r. Beating them is the paper's claim.\n\n"
        r"**Same total rank k·r**: global SVD is optimal (Eckart–Young, "
        r"$\|W-W_R\|_F=\sqrt{\sum_{j>R}\sigma_j^2}$); no cluster-wise scheme can go below it — "
        "the gap is real.\n\n"
        r"**Dotted = bounds, not measurements**: a rank-r ID of a p-row matrix can reach "
        r"$\|M-XM[J,:]\|_2\le\sqrt{1+r(p-r)}\,\sigma_{r+1}(M)$; clusters give "
        r"$\sqrt{\sum_c(1+r(m_c-r))\,\sigma_{r+1}(W_c)^2}$, the paper's tighter bound "
        "(both divided by σ₁ here). Pivoted QR does not guarantee them: compare the measured "
        "lines with the bounds."
    )

# --- 3. spectra ---------------------------------------------------------------------------------
st.markdown(f"#### 3 · Singular values of the layer and of its {k} clusters")
plot, text = st.columns([3, 1])
feasible_r = one[(one["k"] == k) & one["feasible"]]["r"]
spectra = None
if len(feasible_r):  # the sweep's clusters: minimum size = largest feasible r at this k
    spectra = _spectra(loaded.name, layer, k, int(feasible_r.max()), params["normalize_rows"],
                       params["seed"], layer_weight(loaded, layer))
else:
    plot.warning(f"The sweep has no clusters at k = {k} (no feasible r); pick a smaller k.")
if spectra is not None:
    fig = px.line(spectra, x="index", y="relative", color="part", log_y=True,
                  hover_data={"rows": True, "sigma": ":.4g"})
    fig.update_traces(selector={"name": "layer"}, line={"width": 4, "color": "black"})
    fig.update_layout(height=420, xaxis_title="index j of the singular value",
                      yaxis_title="σ_j / σ₁(W) (log)", legend_title_text="rows of")
    plot.plotly_chart(fig, key="lab_spectra")
with text:
    st.markdown(
        r"The error of any rank-r approximation is governed by the tail $\sigma_{r+1},\sigma_{r+2},\dots$: "
        "a cluster whose spectrum falls faster than the layer's is easier to approximate at "
        "rank r. SmolLM2's 4-bit origin shows as a flat noise floor at the end."
    )

# --- 4. per-layer summary -----------------------------------------------------------------------
st.markdown("#### 4 · Per-layer summary")
r_sum = st.selectbox("Rank r for the summary", params["ranks"], key="lab_summary_r",
                     index=len(params["ranks"]) // 2)
summary = layer_summary(table, int(r_sum))
st.dataframe(
    summary, key="lab_summary", hide_index=True,
    column_config={
        "rel_fro_error": st.column_config.NumberColumn("best cluster-wise ID", format="%.4f"),
        "svd_same_r": st.column_config.NumberColumn("SVD same r", format="%.4f"),
        "global_id_same_r": st.column_config.NumberColumn("global ID same r", format="%.4f"),
        "svd_same_total": st.column_config.NumberColumn("SVD same k·r", format="%.4f"),
        "gain_vs_svd": st.column_config.NumberColumn("SVD(r) / cluster-ID", format="%.2f×"),
        "gap_vs_total": st.column_config.NumberColumn("gap to SVD(k·r)", format="%.4f"),
        "trainable_idlora": st.column_config.NumberColumn("ID-LoRA trainable", format="localized"),
        "trainable_lora": st.column_config.NumberColumn("LoRA trainable", format="localized"),
    },
)
if len(summary) > 1:
    long = summary.melt(id_vars=["layer"], value_vars=["rel_fro_error", "svd_same_r", "svd_same_total"],
                        var_name="measure", value_name="error")
    long["measure"] = long["measure"].map({
        "rel_fro_error": "best cluster-wise ID", "svd_same_r": f"global SVD, rank {r_sum}",
        "svd_same_total": "global SVD, rank k·r"})
    fig = px.bar(long, x="layer", y="error", color="measure", barmode="group", log_y=True)
    fig.update_layout(height=420, xaxis_title="layer", yaxis_title="relative Frobenius error (log)",
                      legend_title_text="")
    st.plotly_chart(fig, key="lab_summary_chart")
st.caption("For each layer: the (k, strategy) with the lowest error at this r. A ratio above "
           "1× means clustering beats the best global rank-r factorisation at the same r; the "
           "gap to SVD at rank k·r is never negative.")
if st.button("Use these (k, r, strategy) per layer for export", key="lab_use_for_export"):
    state["layer_choices"] = {**state["layer_choices"], **choices_for_export(table, int(r_sum))}
    state["ex_normalize_rows"], state["ex_seed"] = params["normalize_rows"], params["seed"]
    st.toast(f"Export will use the best k and strategy of {len(summary)} layer(s) at r = {r_sum}.")
with st.expander("Full sweep table"):
    st.dataframe(table, key="lab_table", hide_index=True, column_config={
        **{c: st.column_config.NumberColumn(c, format="%.4f") for c in ERROR_COLUMNS},
        "seconds": st.column_config.NumberColumn("seconds", format="%.3f"),
    })
    st.download_button("Download CSV", table.to_csv(index=False), "sweep.csv", "text/csv",
                       key="lab_download")
