"""Decomposition lab page: how well cluster-wise ID reconstructs a layer, against global SVD/ID."""

from __future__ import annotations

import hashlib

import streamlit as st

from analysis.explorer import spectra_frame
from analysis.sweep import ERROR_COLUMNS
from analysis.views import (
    choices_for_export,
    error_vs_rank,
    heatmap_grid,
    layer_summary,
    selection_means,
    short_label,
)
from app import background, figures, sensitivity_panel
from app.common import (
    SELECTIONS,
    ensure_layer,
    layer_weight,
    plain,
    selected_layers,
    valid,
)
from app.page import open_page
from app.sweeps import spectral_key, start_spectral, start_sweeps, stored_results, sweep_table

K_OPTIONS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
R_OPTIONS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256]
JOB = "_lab_sweep_job"  # this session's sweep in the background pool (app.background.Job) or None
SPECTRAL_JOB = "_lab_spectral_job"  # the last spectral measurement this session started


def _spectra_job(job: background.Job, W, labels):
    job.report(0.0, "singular values of the layer and its clusters")
    return spectra_frame(W, labels)  # the sweep's own clusters (labels), no new k-means


def _spectral_panel(layer: str) -> None:
    """Start (or follow) the background measurement of `layer`'s spectral columns; once it is
    stored the page draws them. A measurement this session cancelled, or one that failed, waits
    for its button."""
    last = state.get(SPECTRAL_JOB)
    ended = None if last is None or last.key != spectral_key(loaded, layer, **params) else last.state
    if ended in ("cancelled", "failed"):  # not resubmitted on every rerun: the pool retries these
        if ended == "cancelled":
            st.info("The spectral errors were cancelled.")
        else:
            st.error(f"Could not measure the spectral errors: {last.exception()}")
        if not st.button("Measure the spectral errors", key="lab_spectral_run"):
            return
    try:
        job = state[SPECTRAL_JOB] = start_spectral(loaded, layer, **params)
    except background.JobRefused as exc:
        st.warning(f"The spectral errors wait: {exc}")
        return
    now = job.state  # read once: a job ending between two reads would leave nothing drawn, no poll
    if now == "done":
        results[layer] = job.result()
    elif now == "failed" and ended != "failed":  # a retry failing again: said above already
        st.error(f"Could not measure the spectral errors: {job.exception()}")
    elif now in ("waiting", "running"):
        background.poll(job, "lab_spectral_cancel")


def _sweep_ended(job: background.Job) -> None:
    """Say why a finished sweep job left no results (a finished one needs no words)."""
    if job.state == "cancelled":
        st.info("The sweep was cancelled; the layers it finished are cached and are not computed again.")
    elif job.state == "failed":
        exc = job.exception()
        if isinstance(exc, ValueError):
            st.error(f"The sweep could not run: {plain(str(exc))}\n\nAdjust k and r so that "
                     "k × r ≤ m and r ≤ n for the chosen layers.")
        else:
            st.error(f"The sweep failed: {type(exc).__name__}: {plain(str(exc))}")


loaded = open_page("Decomposition lab", "lab")

names = ensure_layer("lab_focus_layer", loaded)  # stops with a message when there are none
state = st.session_state
if not valid(state["lab_layers"], names):  # default: the first layer selected on Model & layers
    state["lab_layers"] = [state["lab_focus_layer"]]
else:
    state["lab_layers"] = valid(state["lab_layers"], names)
for key, options in (("lab_ks", K_OPTIONS), ("lab_ranks", R_OPTIONS)):
    state[key] = sorted(set(valid(state[key], options))) or [options[0]]
state["lab_selections"] = valid(state["lab_selections"], list(SELECTIONS)) or ["id"]

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
    c1, c2, c3, c4, c5 = st.columns([2, 2.6, 2, 1.8, 1])
    c1.multiselect("Clusters k", K_OPTIONS, key="lab_ks")
    c2.multiselect("Ranks r", R_OPTIONS, key="lab_ranks")
    c3.multiselect("Selections", list(SELECTIONS), key="lab_selections",
                   help="id: pivoted-QR skeleton (theory); centroid: rows nearest the cluster "
                   "centroid (the paper); random: seeded baseline.")
    c4.checkbox("Normalise rows", key="lab_normalize_rows",
                help="Cluster L2-normalised rows (cosine geometry). This page's own setting: "
                "the Cluster explorer and Fine-tune pages have their own.")
    c5.number_input("Seed", 0, 2**31 - 1, step=1, key="lab_seed")
    st.caption(
        "The sweep runs k-means **once per k**, with minimum cluster size = the largest "
        "feasible r of the grid for that k (k·r ≤ m, r ≤ n), so every rank fits every cluster "
        "and all ranks of one k share the same clusters. One QR per cluster and selection gives "
        "the error of every rank at once. Infeasible (k, r) pairs are left blank."
    )
    run = st.button("Run sweep", key="lab_run", type="primary")

layers = list(state["lab_layers"])
params = dict(ks=sorted(state["lab_ks"]), ranks=sorted(state["lab_ranks"]),
              selections=list(state["lab_selections"]), seed=int(state["lab_seed"]),
              normalize_rows=bool(state["lab_normalize_rows"]))
if not layers:
    st.info("Pick at least one layer above.")
    st.stop()

# Stored results (this process, or the disk cache) are read here at once; anything to compute
# runs in the app's background pool while this page polls it (other pages stay usable).
results = stored_results(loaded, layers, **params)  # layer -> SweepResult (table, clusters)
job = state.get(JOB)
if run and results is None:
    try:
        job = state[JOB] = start_sweeps(loaded, layers, **params)
    except background.JobRefused as exc:
        st.error(str(exc))
    except ValueError as exc:
        st.error(f"The sweep could not run: {plain(str(exc))}\n\nAdjust k and r so that "
                 "k × r ≤ m and r ≤ n for the chosen layers.")
        st.stop()
if job is not None and job.done():
    state[JOB] = None
    _sweep_ended(job)
    results = results or stored_results(loaded, layers, **params)
elif job is not None:
    background.poll(job, "lab_cancel")
    if results is None:
        st.stop()
if results is None:
    st.info("Choose layers, cluster counts, ranks and selections, then press **Run sweep**. "
            "Results already computed for these settings appear here at once.")
    st.stop()
table = sweep_table(results)

st.success(f"{int(table['feasible'].sum())} configurations over {len(layers)} layer(s) "
           "(cached: changing a plot below does not recompute).", icon=":material/check:")

if state.get("lab_focus_layer") not in layers:
    state["lab_focus_layer"] = layers[0]
focus_l, focus_k = st.columns([3, 1])
focus_l.selectbox("Layer to inspect", layers, key="lab_focus_layer")
ks_run = sorted(int(k) for k in table["k"].unique())
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
    selections = params["selections"]
    *cols, scale = st.columns([1.0] * len(selections) + [0.4])  # equal heatmaps, one colour bar
    lo, hi = one["rel_fro_error"].min(), one["rel_fro_error"].max()
    for col, selection in zip(cols, selections, strict=True):
        col.markdown(f"**selection: {selection}**")
        col.plotly_chart(figures.heatmap(heatmap_grid(one, selection), lo, hi),
                         key=f"lab_heatmap_{selection}")
    scale.markdown("&nbsp;")
    scale.plotly_chart(figures.colour_scale(lo, hi), key="lab_heatmap_scale")
with text:
    st.markdown(
        r"Each cell is the relative Frobenius error $\|W-\hat W\|_F/\|W\|_F$ of cluster-wise "
        r"ID: the rows of each of k clusters are rebuilt from r skeleton rows of that cluster, "
        r"$\|W-\hat W\|_F^2=\sum_c\|W_c-X_cW_c[J_c,:]\|_F^2$. Down a column (more clusters at "
        r"fixed r) the capacity $k r$ grows while ID-LoRA's trainable $B$ ($m r$) stays the same. "
        "Theory and sources: `docs/THEORY.md`."
    )

# --- 2. error vs rank --------------------------------------------------------------------------
k = int(state["lab_focus_k"])
st.markdown(f"#### 2 · Error against rank at k = {k} — `{layer}`")
curves = error_vs_rank(one, k, norm="frobenius")
if curves.empty:
    st.warning(f"No feasible rank at k = {k} for this layer; pick a smaller k.")
else:
    if curves["r"].nunique() < 3:
        st.caption("Only two ranks were swept: add ranks above (e.g. 1, 2, 4, 8, 12, 16) to see "
                   "a curve. The largest rank sets the minimum cluster size.")
    left, right = st.columns(2)
    left.markdown("**Frobenius norm, measured** — the comparison at the same r and at the "
                  "same total rank k·r")
    left.plotly_chart(figures.error_vs_rank_figure(curves, "‖W − Ŵ‖_F / ‖W‖_F (log)"),
                      key="lab_error_vs_rank")
    right.markdown("**Spectral norm** — the measured error against the ID bounds (dotted)")
    if not results[layer].has_spectral:  # one SVD per configuration: measured in the background
        with right:
            _spectral_panel(layer)
    if results[layer].has_spectral:
        table = sweep_table(results)  # the full table below holds this layer's spectral columns
        spectral = error_vs_rank(results[layer].table, k, norm="spectral")
        right.plotly_chart(figures.error_vs_rank_figure(spectral, "‖W − Ŵ‖₂ / σ₁(W) (log)"),
                           key="lab_error_vs_rank_spectral")
st.markdown(
    "**Same r** (same trainable B): cluster-wise ID against global SVD and global ID at rank "
    "r. Beating them is the paper's claim. "
    r"**Same total rank k·r**: global SVD is optimal (Eckart–Young, "
    r"$\|W-W_R\|_F=\sqrt{\sum_{j>R}\sigma_j^2}$); no cluster-wise scheme can go below it — the "
    "gap is real. "
    r"**Dotted = bounds, not measurements** (right panel, spectral norm like the bounds): a "
    r"rank-r ID of a p-row matrix can reach $\|M-XM[J,:]\|_2\le\sqrt{1+r(p-r)}\,\sigma_{r+1}(M)$ "
    r"(strong rank-revealing QR, Gu & Eisenstat 1996); clusters give "
    r"$\sqrt{\sum_c(1+r(m_c-r))\,\sigma_{r+1}(W_c)^2}$, the paper's tighter bound (both divided "
    "by σ₁). Pivoted QR does not guarantee them: compare the measured lines with the bounds. "
    "Derivations: `docs/THEORY.md`."
)

# --- 3. spectra ---------------------------------------------------------------------------------
st.markdown(f"#### 3 · Singular values of the layer and of its {k} clusters")
plot, text = st.columns([3, 1])
labels = results[layer].labels(k)  # the sweep's clusters at this k (None: none feasible)
if labels is not None:
    with plot:
        spectra = background.result_when_ready(
            _spectra_job, layer_weight(loaded, layer), labels, kind="spectra",
            label="singular values of the clusters", panel="lab_spectra",
            key=f"spectra|{loaded.name}|{layer}|{hashlib.sha1(labels.tobytes()).hexdigest()}")
    if spectra is not None:
        plot.plotly_chart(figures.spectra_figure(spectra), key="lab_spectra")
else:
    plot.warning(f"The sweep has no clusters at k = {k} (no feasible r); pick a smaller k.")
with text:
    note = ("The error of any rank-r approximation is governed by the tail "
            r"$\sigma_{r+1},\sigma_{r+2},\dots$: a cluster whose spectrum falls faster than the "
            "layer's is easier to approximate at rank r. The clusters are the sweep's own "
            "(the ones behind every error above).")
    if "smollm2" in loaded.name.lower():
        note += " SmolLM2's 4-bit origin shows as a flat noise floor at the end."
    st.markdown(note)

# --- 4. per-layer summary -----------------------------------------------------------------------
st.markdown("#### 4 · Per-layer summary")
if state.get("lab_summary_r") not in params["ranks"]:
    state["lab_summary_r"] = params["ranks"][len(params["ranks"]) // 2]
r_sum = int(st.selectbox("Rank r for the summary", params["ranks"], key="lab_summary_r"))
summary = layer_summary(table, r_sum)
if summary.empty:
    st.info(f"No feasible (k, r = {r_sum}) configuration in this sweep: pick another rank.")
    st.stop()
shown = summary.assign(
    label=[short_label(name) for name in summary["layer"]],
    result=["LOSS" if g < 0 else "gain" for g in summary["gain_vs_svd"]],
).sort_values("gain_vs_svd", ascending=False)
st.dataframe(
    shown[["label", "layer", "r", "k", "selection", "rel_fro_error", "svd_same_r", "gain_vs_svd",
           "result", "global_id_same_r", "svd_same_total", "gap_vs_total", "trainable_idlora",
           "trainable_lora"]],
    key="lab_summary", hide_index=True,
    column_config={
        "label": st.column_config.TextColumn("block · type"),
        "layer": st.column_config.TextColumn("layer (full name)"),
        "r": st.column_config.NumberColumn("rank r"),
        "k": st.column_config.NumberColumn("best k"),
        "rel_fro_error": st.column_config.NumberColumn("best cluster-wise ID", format="%.3f"),
        "svd_same_r": st.column_config.NumberColumn("SVD same r", format="%.3f"),
        "gain_vs_svd": st.column_config.NumberColumn(
            "gain over SVD(r)", format="%+.3f",
            help="SVD(r) error − cluster-wise ID error: > 0 clustering wins, < 0 it loses."),
        "result": st.column_config.TextColumn("gain / LOSS"),
        "global_id_same_r": st.column_config.NumberColumn("global ID same r", format="%.3f"),
        "svd_same_total": st.column_config.NumberColumn("SVD same k·r", format="%.3f"),
        "gap_vs_total": st.column_config.NumberColumn("gap to SVD(k·r)", format="%.3f"),
        "trainable_idlora": st.column_config.NumberColumn("ID-LoRA trainable", format="localized"),
        "trainable_lora": st.column_config.NumberColumn("LoRA trainable", format="localized"),
    },
)
wins, losses = int((summary["gain_vs_svd"] > 0).sum()), int((summary["gain_vs_svd"] < 0).sum())
st.caption(f"For each layer: the (k, selection) with the lowest error at r = {r_sum}. Gain = "
           "SVD(r) error − cluster-wise ID error (a difference of relative errors): clustering "
           f"beats the best global rank-{r_sum} factorisation on **{wins} of {len(summary)}** "
           f"layer(s)" + (f" and loses on **{losses}** (marked LOSS, red)" if losses else "")
           + ". The gap to SVD at rank k·r is never negative (Eckart–Young).")
if len(summary) > 1:
    st.plotly_chart(figures.gain_figure(summary, r_sum), key="lab_summary_chart")
ks_at = sorted(int(x) for x in table[(table["r"] == r_sum) & table["feasible"]]["k"].unique())
if ks_at:
    k_mean = k if k in ks_at else max(ks_at)
    means = selection_means(table, k_mean, r_sum)
    st.markdown(f"**Mean over the {len(layers)} swept layer(s)** at k = {k_mean}, r = {r_sum} "
                "(the numbers exercise 3 asks for)")
    st.dataframe(means, key="lab_selection_means", hide_index=True, column_config={
        "mean_error": st.column_config.NumberColumn("mean cluster-wise ID error", format="%.3f"),
        "mean_svd_same_r": st.column_config.NumberColumn("mean SVD(r) error", format="%.3f"),
        "mean_gain": st.column_config.NumberColumn("mean gain", format="%+.3f"),
    })
if st.button("Use these (k, r, selection) per layer for export", key="lab_use_for_export"):
    state["layer_choices"] = {**state["layer_choices"], **choices_for_export(table, r_sum)}
    state["ex_normalize_rows"], state["ex_seed"] = params["normalize_rows"], params["seed"]
    st.toast(f"Export will use the best k and selection of {len(summary)} layer(s) at r = {r_sum}.")
with st.expander("Full sweep table"):
    st.dataframe(table, key="lab_table", hide_index=True, column_config={
        **{c: st.column_config.NumberColumn(c, format="%.4f") for c in ERROR_COLUMNS},
        "seconds": st.column_config.NumberColumn("seconds", format="%.3f"),
    })
    st.download_button("Download CSV", table.to_csv(index=False), "sweep.csv", "text/csv",
                       key="lab_download")

sensitivity_panel.show(loaded, layer, k, params)  # 5 · clustering sensitivity
