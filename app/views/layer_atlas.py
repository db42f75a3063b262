"""Layer atlas page: a whole-model scan as heatmaps (block x layer type); a cell opens that
layer in the Decomposition lab."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.atlas import atlas_cells, read_atlas
from analysis.scan import scan
from analysis.sweep import SweepSpec
from app import background, url_state
from app.background import Job
from app.common import SELECTIONS, get_model, init_state, literal, model_name, valid
from app.figures import clicked_layer
from app.report import readable
from app.settings_io import lab_read_path
from idlora_core.patterns import PatternError, matching

JOB = "atlas_job"  # this session's background scan (app.background.Job), None when none
POLL_SECONDS = 1.0
K_OPTIONS, R_OPTIONS = [1, 2, 4, 8, 16], [4, 8, 16, 32, 64]
PENDING = "_atlas_open_layer"  # set by a click on a cell, consumed after the charts are drawn
LAB_PAGE = str(Path(__file__).resolve().parent / "decomposition_lab.py")
TITLES = {"gain_vs_svd": "Gain of cluster-wise ID over SVD at the same r  (SVD(r) − ID; > 0: ID wins)",
          "gap_vs_total": "Gap to SVD at rank k·r  (ID − SVD(k·r); ≥ 0 always)"}


def open_in_lab(layer: str) -> None:
    """Hand `layer` to the Decomposition lab and go there."""
    st.session_state["lab_layers"] = [layer]
    st.session_state["lab_focus_layer"] = layer
    st.switch_page(LAB_PAGE)


def heatmap(cells, column: str, key: str) -> None:
    """Draw one block x type grid as square markers (clickable cells) coloured by `column`."""
    types = list(dict.fromkeys(cells.sort_values("type", key=_kind_rank)["type"]))
    values = cells[column].to_numpy(dtype=float)
    mid = 0.0 if column == "gain_vs_svd" else None
    fig = go.Figure(go.Scatter(
        x=[types.index(t) for t in cells["type"]], y=cells["block"], mode="markers",
        marker={"symbol": "square", "size": 26, "color": values, "showscale": True,
                "colorscale": "RdBu" if mid is not None else "Viridis", "cmid": mid,
                "line": {"width": 0}},
        customdata=np.stack([cells["layer"], cells["k"], cells["selection"]], axis=1),
        text=[f"{v:.3f}" for v in values],
        hovertemplate="%{customdata[0]}<br>best k=%{customdata[1]}, %{customdata[2]}<br>"
                      f"{column} = %{{text}}<extra></extra>",
    ))
    blocks = sorted(int(b) for b in cells["block"].unique())
    fig.update_layout(height=max(300, 30 * len(blocks) + 140), title=TITLES[column],
                      margin={"l": 110, "r": 20, "t": 60, "b": 50},
                      xaxis={"tickvals": list(range(len(types))), "ticktext": types,
                             "title": "layer type"},
                      yaxis={"title": "block", "range": [blocks[-1] + 0.5, blocks[0] - 0.5],
                             "tickvals": blocks,  # no ticks between blocks; -1 is outside them
                             "ticktext": ["outside blocks" if b < 0 else str(b) for b in blocks]})
    # A callback, not the return value: it fires once per click, so coming back to this page
    # (whose chart keeps its selection) does not jump to the lab again.
    st.plotly_chart(fig, key=key, on_select=functools.partial(_clicked, key),
                    selection_mode="points")


def _clicked(key: str) -> None:
    layer = clicked_layer(st.session_state.get(key))
    if layer is not None:
        st.session_state[PENDING] = layer


def _scan_job(job: Job, model: str, spec: SweepSpec, names: list[str]):
    return scan(model, spec, layers=names, progress=lambda d, t, layer, hit: job.report(
        d / t, f"[{d}/{t}] {layer} ({'cached' if hit else 'swept'})"))


def start_scan(pattern: str, names, spec: SweepSpec) -> None:
    """Check the layer pattern (within MATCH_SECONDS: a pattern that backtracks without end is one
    error line) and start the scan of the layers it matches in the background pool."""
    try:
        chosen = matching(pattern, names) if pattern else list(names)
    except PatternError as exc:
        st.error(literal(exc))
        return
    if not chosen:
        st.error(literal(f"No linear layer matches {pattern!r}: try a part of a name, e.g. 'query' or "
                         "'layer\\.0\\.'"))
        return
    try:  # a new scan of this session replaces its unfinished one
        st.session_state[JOB] = background.submit(
            _scan_job, model_name(), spec, chosen, kind="scan", supersede=True,
            label=f"scan of {len(chosen)} layer{'s' * (len(chosen) != 1)}")
    except background.JobRefused as exc:
        st.error(str(exc))


@st.fragment(run_every=POLL_SECONDS)
def scan_progress() -> None:
    """Poll this session's scan: progress and Cancel while it runs; its table (a full rerun) or its
    error once it ends."""
    job = st.session_state.get(JOB)
    if job is None:
        return
    if not job.done():
        background.show_job(job, "atlas_cancel")
        return
    st.session_state[JOB] = None
    if job.state == "done":
        st.session_state["atlas_table"] = job.result()
        st.rerun()
    elif job.state == "cancelled":
        st.info("The scan was cancelled; the layers it finished are cached and are not recomputed.")
    else:
        st.error(f"Could not scan: {job.exception()}")


def _kind_rank(series):
    from analysis.atlas import KIND_ORDER

    return series.map({k: i for i, k in enumerate(KIND_ORDER)})


init_state()
st.title("Layer atlas")
url_state.mirror("atlas")
st.caption("A whole-model scan (`python -m analysis.scan --model DIR ... --out atlas.csv`), one "
           "cell per layer: its best clustering (k, selection) at rank r against global SVD. "
           "Click a cell to open that layer in the Decomposition lab.")
source = st.radio("Scan", ["Load a scan CSV", "Scan the current model here"], horizontal=True,
                  key="atlas_source")
table = st.session_state.get("atlas_table")
if source == "Load a scan CSV":
    c1, c2 = st.columns([3, 2])
    path = c1.text_input("Scan CSV path", key="atlas_path", placeholder="atlas.csv")
    upload = c2.file_uploader("or upload it", type=["csv"], key="atlas_upload")
    if st.button("Load", key="atlas_load") and (path.strip() or upload is not None):
        try:
            table = read_atlas(upload if upload is not None
                               else lab_read_path(path.strip(), "scan CSV"))
            st.session_state["atlas_table"] = table
        except (OSError, ValueError) as exc:
            st.error(literal(f"Could not read the scan: {exc}"))
else:
    loaded = get_model()
    if loaded is None:
        st.stop()
    c1, c2, c3, c4 = st.columns(4)
    state = st.session_state
    for key, options in (("atlas_ks", K_OPTIONS), ("atlas_ranks", R_OPTIONS),
                         ("atlas_selections", list(SELECTIONS))):
        state[key] = valid(state.get(key) or [], options)  # a URL may name others
    ks = c1.multiselect("Clusters k", K_OPTIONS, key="atlas_ks")
    ranks = c2.multiselect("Ranks r", R_OPTIONS, key="atlas_ranks")
    selections = c3.multiselect("Selections", list(SELECTIONS), key="atlas_selections")
    pattern = c4.text_input("Layers (regex, empty = all)", key="atlas_layers")
    st.caption(f"{len(loaded.weights.linear)} linear layers; each is read alone, swept, cached "
               "and released. Cached layers are not recomputed. The scan runs in the background: "
               "other pages stay usable, and Cancel stops it after the current layer.")
    if st.button("Run the scan", key="atlas_run", type="primary", disabled=not (ks and ranks and selections)):
        start_scan(pattern.strip(), loaded.weights.linear, SweepSpec(sorted(ks), sorted(ranks), selections))
    if st.session_state.get(JOB) is not None:
        scan_progress()
        table = st.session_state.get("atlas_table")

if table is None:
    st.info("Load a scan CSV or run a scan to see the atlas.")
    st.stop()
ranks = sorted(int(r) for r in table["r"].unique())
if st.session_state.get("atlas_r") not in ranks:  # default: the largest rank of the scan
    st.session_state["atlas_r"] = ranks[-1]
r = st.select_slider("Rank r", ranks, key="atlas_r")
cells = atlas_cells(table, int(r))
if cells.empty:
    st.warning(f"No feasible (k, r = {r}) in this scan.")
    st.stop()
left, right = st.columns(2)
with left:
    heatmap(cells, "gain_vs_svd", "atlas_gain")
with right:
    heatmap(cells, "gap_vs_total", "atlas_gap")
if (clicked := st.session_state.pop(PENDING, None)) is not None:
    open_in_lab(clicked)
pick, go_button = st.columns([2, 1], vertical_alignment="bottom")  # the label fits
layer = pick.selectbox("Layer", list(cells["layer"]), key="atlas_pick")
if go_button.button("Open in the Decomposition lab", key="atlas_open"):
    open_in_lab(layer)
st.dataframe(readable(cells), key="atlas_cells", hide_index=True)  # headers as in the lab report
