"""Plotly figures of the lab pages, built from the analysis DataFrames (no Streamlit here).

The pages draw them and the report export (`app/report.py`) saves the same figures as PNG.
Conventions: relative errors on log axes get explicit "nice" ticks (no 2…7 minor labels);
bar charts are always on linear axes (a bar's length must mean something); layers are
labelled "block · type" with the full name on hover; hover labels are words, not field names,
with three significant digits.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from analysis.views import short_label
from idlora_core.study.summary import pareto_mask, test_metric_name

SELECTION_COLORS = {"id": "#1f77b4", "centroid": "#ff7f0e", "random": "#2ca02c"}
SELECTION_SYMBOLS = {"id": "circle", "centroid": "diamond", "random": "x"}
# error-vs-rank curve styles: colour, dash, marker; bounds dotted, references dashed
CURVE_STYLES: dict[str, tuple[str, str, str]] = {
    "global SVD, same r": ("#000000", "dash", "square"),
    "global SVD, same r (σᵣ₊₁/σ₁)": ("#000000", "dash", "square"),
    "global SVD, same total rank k·r": ("#7f7f7f", "dashdot", "triangle-up"),
    "global ID, same r": ("#9467bd", "longdash", "star"),
    "BOUND: cluster-wise ID (spectral, /σ₁)": ("#d62728", "dot", "circle-open"),
    "BOUND: global ID (spectral, /σ₁)": ("#8c564b", "dot", "square-open"),
    "BOUND: cluster-wise ID": ("#d62728", "dot", "circle-open"),
    "BOUND: global ID": ("#8c564b", "dot", "square-open"),
}
# Clusters: Tableau-10 (D3) first, whose ten hues are told apart at a glance, then the rest of
# Alphabet for k > 10 (Alphabet alone put two violets among the first eight).
QUALITATIVE = px.colors.qualitative.D3 + [
    c for c in px.colors.qualitative.Alphabet if c not in px.colors.qualitative.D3]
TOP_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}  # room above the plot for the toolbar


def log_ticks(values: pd.Series | list[float]) -> list[float]:
    """Return 1-2-3-5 ticks covering the positive `values` (for a readable log axis)."""
    positive = [float(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not positive:
        return []
    lo, hi = min(positive), max(positive)
    ticks = [float(f"{m}e{e}") for e in range(-6, 7) for m in (1, 2, 3, 5)]
    chosen = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    return chosen or [lo, hi]


def _log_axis(fig: go.Figure, values, axis: str = "yaxis") -> None:
    ticks = log_ticks(values)
    fig.update_layout({axis: {"type": "log", "tickvals": ticks,
                              "ticktext": [f"{t:g}" for t in ticks], "minor": {"showgrid": False}}})


def heatmap(grid: pd.DataFrame, lo: float, hi: float, colorbar: bool = False) -> go.Figure:
    """Return the k x r heatmap of relative errors (`analysis.views.heatmap_grid`). A page
    draws a row of them without bars (`colorbar=False`) and one `colour_scale(lo, hi)` beside
    them: a bar inside one heatmap would make that one narrower. A figure on its own (the
    report) takes `colorbar=True`."""
    fig = px.imshow(grid.to_numpy(), x=[str(r) for r in grid.columns],
                    y=[str(k) for k in grid.index], text_auto=".3f" if grid.shape[1] <= 4 else ".2f", aspect="auto", zmin=lo,
                    zmax=hi, color_continuous_scale="Viridis_r")
    fig.update_traces(hovertemplate="k = %{y}, r = %{x}<br>relative error %{z:.3f}<extra></extra>")
    fig.update_xaxes(type="category", title="rank r (rows per cluster)", showgrid=False)
    fig.update_yaxes(type="category", title="clusters k", showgrid=False)
    fig.update_layout(height=340, margin=TOP_MARGIN, coloraxis_showscale=colorbar,
                      coloraxis_colorbar={"title": "rel. error", "thickness": 12})
    return fig


def colour_scale(lo: float, hi: float, title: str = "rel. error") -> go.Figure:
    """Return a figure holding only the colour bar of `heatmap(..., lo, hi)` (same height)."""
    fig = go.Figure(go.Scatter(
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
        marker={"colorscale": "Viridis_r", "cmin": lo, "cmax": hi, "color": [lo], "showscale": True,
                "colorbar": {"title": {"text": title, "side": "top"}, "thickness": 12, "x": 0.0,
                             "xanchor": "left", "len": 0.8}}))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=340, margin=TOP_MARGIN, plot_bgcolor="rgba(0,0,0,0)")
    return fig


def error_vs_rank_figure(curves: pd.DataFrame, y_title: str) -> go.Figure:
    """Return the error-vs-rank lines of `analysis.views.error_vs_rank`: one style per curve
    (selections by colour and marker, references dashed, bounds dotted), log-log axes."""
    fig = go.Figure()
    for name, part in curves.groupby("curve", sort=False):
        part = part.sort_values("r")
        if name.startswith("cluster-wise ID ("):
            selection = name[len("cluster-wise ID ("):-1]
            color, dash, symbol = SELECTION_COLORS.get(selection, "#17becf"), "solid", \
                SELECTION_SYMBOLS.get(selection, "circle")
        else:
            color, dash, symbol = CURVE_STYLES.get(name, ("#17becf", "solid", "circle"))
        fig.add_trace(go.Scatter(
            x=part["r"], y=part["error"], mode="lines+markers", name=name,
            line={"color": color, "dash": dash, "width": 2.5 if dash == "solid" else 2},
            marker={"symbol": symbol, "size": 8, "color": color},
            hovertemplate=f"{name}<br>r = %{{x}}: %{{y:.3f}}<extra></extra>",
        ))
    rs = sorted(curves["r"].unique())
    fig.update_layout(height=440, margin=TOP_MARGIN, yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.18, "title": None},
                      xaxis={"type": "log", "tickvals": rs, "ticktext": [str(r) for r in rs],
                             "title": "rank r (rows per cluster; log)"})
    _log_axis(fig, curves["error"])
    return fig


def gain_figure(summary: pd.DataFrame, r: int) -> go.Figure:
    """Return the per-layer gain over global SVD at the same r as bars on a linear axis,
    largest first; a loss (negative gain) is drawn red and labelled as a loss."""
    data = summary.sort_values("gain_vs_svd", ascending=False)
    labels = [short_label(name) for name in data["layer"]]
    colors = ["#2ca02c" if g >= 0 else "#d62728" for g in data["gain_vs_svd"]]
    fig = go.Figure(go.Bar(
        x=labels, y=data["gain_vs_svd"], marker_color=colors,
        customdata=data[["layer", "rel_fro_error", "svd_same_r", "k", "selection"]].to_numpy(),
        hovertemplate="%{customdata[0]}<br>gain %{y:+.3f}: SVD(r) %{customdata[2]:.3f} − "
                      "cluster-wise ID %{customdata[1]:.3f}<br>best k = %{customdata[3]}, "
                      "%{customdata[4]}<extra></extra>",
        text=[f"{g:+.3f}" if g < 0 else "" for g in data["gain_vs_svd"]],
        textposition="outside",
    ))
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(height=400, margin=TOP_MARGIN, xaxis_title="layer (block · type)",
                      yaxis_title=f"gain: SVD(r = {r}) − cluster-wise ID (relative error)",
                      xaxis={"type": "category", "tickangle": -45 if len(data) > 12 else 0})
    return fig


def spectra_figure(spectra: pd.DataFrame) -> go.Figure:
    """Return the singular values of a layer and of its clusters, relative to sigma_1(W), log y."""
    fig = px.line(spectra, x="index", y="relative", color="part", log_y=True,
                  custom_data=["part", "rows", "sigma"],
                  color_discrete_sequence=QUALITATIVE)
    fig.update_traces(hovertemplate="%{customdata[0]} (%{customdata[1]} rows)<br>j = %{x}: "
                      "σ_j/σ₁ = %{y:.3g}, σ_j = %{customdata[2]:.3g}<extra></extra>")
    fig.update_traces(selector={"name": "layer"}, line={"width": 4, "color": "black"})
    fig.update_layout(height=420, margin=TOP_MARGIN, xaxis_title="index j of the singular value",
                      yaxis_title="σ_j / σ₁(W) (log)", legend_title_text="rows of")
    _log_axis(fig, spectra["relative"])
    return fig


# --- Fine-tune -------------------------------------------------------------------------------
METHOD_COLORS = {"idlora": "#1f77b4", "lora": "#ff7f0e", "dora": "#2ca02c", "adalora": "#17becf",
                 "hydralora": "#9467bd", "full": "#d62728", "head-only": "#7f7f7f", "base": "#000000"}
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def loss_figure(frames: dict[str, pd.DataFrame], methods: dict[str, str],
                chance: float | None = None) -> go.Figure | None:
    """Return the live training-loss curves, one colour per method (runs of the same method
    differ by dash), with the chance level (ln of the number of labels) as a reference line;
    None while no run has logged a step yet (no empty axes)."""
    fig = go.Figure()
    seen: dict[str, int] = {}
    for label, df in frames.items():
        if "loss" not in df or not df["loss"].notna().any():
            continue
        method = methods.get(label, "")
        dash = DASHES[seen.get(method, 0) % len(DASHES)]
        seen[method] = seen.get(method, 0) + 1
        train = df[df["loss"].notna()]
        fig.add_trace(go.Scatter(
            x=train["step"], y=train["loss"], mode="lines+markers", name=label,
            line={"color": METHOD_COLORS.get(method, "#7f7f7f"), "dash": dash},
            marker={"size": 4}, hovertemplate=f"{label}<br>step %{{x}}: loss %{{y:.4f}}<extra></extra>",
        ))
    if not fig.data:
        return None
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="black",
                      annotation_text=f"chance level (ln {math.exp(chance):.0f} = {chance:.3f})",
                      annotation_position="top right")
    fig.update_layout(
        uirevision="ft-loss", height=380, margin={"t": 50, "b": 40},
        xaxis_title="optimiser step", yaxis_title="training loss (cross-entropy, nats)",
        legend_title="run", showlegend=True,
    )
    last = max((float(max(t.x)) for t in fig.data if t.x is not None and len(t.x)), default=0.0)
    if last <= 12:  # short runs: whole steps only (plotly's auto ticks read 1, 1.5, 2, ...)
        fig.update_xaxes(tick0=0, dtick=1)
    return fig


REFERENCE_METHODS = ("head-only", "base")  # drawn as stars: what an adapter must beat


def tradeoff_figure(done: pd.DataFrame, chance: float | None = None,
                    metric: str = "loss (nats)") -> go.Figure:
    """Return each finished run's final validation metric against its trainable parameters.

    `done` has the columns method, label, trainable_params and validation (the metric, named
    `metric`: "accuracy (rotten tomatoes)", "loss (nats)"), optionally step; without a
    validation column its `loss` column (final training loss) is drawn instead. Log x (base,
    which trains nothing, at 1); one colour per method; head-only and base are stars, and a
    dashed line carries head-only's value across the plot; `chance` is a dotted line. The
    y-axis starts at 0 (to 1 for a score, to 1.2 x the top for a loss) so that a difference of
    a few thousandths looks as small as it is.
    """
    if "validation" not in done:
        done, metric = done.rename(columns={"loss": "validation"}), "training loss (nats)"
    title = metric if metric.startswith("training") else f"validation {metric}"
    fig = go.Figure()
    data = done.assign(x=done["trainable_params"].clip(lower=1),
                       step=done["step"] if "step" in done else None)
    for method, part in data.groupby("method", sort=False):
        ref = method in REFERENCE_METHODS
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["validation"], mode="markers+text", name=str(method),
            text=part["label"], textposition="top center",
            marker={"size": 14 if ref else 11, "symbol": "star" if ref else "circle",
                    "color": METHOD_COLORS.get(str(method), "#7f7f7f")},
            customdata=part[["label", "trainable_params", "step"]].to_numpy(),
            hovertemplate=f"%{{customdata[0]}}<br>%{{customdata[1]:,}} trainable parameters<br>"
                          f"{title} %{{y:.4f}} (step %{{customdata[2]}})<extra></extra>",
        ))
    head = data.loc[data["method"] == "head-only", "validation"]
    if len(head):
        fig.add_hline(y=float(head.iloc[-1]), line_dash="dash", line_color=METHOD_COLORS["head-only"],
                      annotation_text=f"head only (linear probe) {float(head.iloc[-1]):.3f}",
                      annotation_position="top right")  # above its line; chance is below its own
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="black",
                      annotation_text=f"chance level {chance:.3g}", annotation_position="bottom right")
    values = [float(v) for v in data["validation"]] + ([chance] if chance is not None else [])
    loss = "loss" in metric.split(" (")[0]
    top = max(values, default=1.0) * 1.2 if loss or max(values, default=0.0) > 1 else 1.05
    based = (data["method"] == "base").any()
    fig.update_layout(
        uirevision="ft-scatter", height=380, margin={"t": 50, "b": 40}, legend_title="method",
        xaxis={"type": "log", "title": "trainable parameters (log scale"
               + ("; base, training none, at 1)" if based else ")")},
        yaxis={"range": [0, top], "title": title + ("; axis from 0" if loss else "")},
    )
    return fig


# --- Studies ---------------------------------------------------------------------------------
def study_tradeoff_figure(summary: pd.DataFrame, metric: str, direction: str = "maximize") -> go.Figure:
    """Return the trade-off plot: the TEST metric (mean over seeds at the validation-chosen
    learning rate, 95 % CI error bars) against trainable parameters when the runs report one,
    else the validation metric (log x; base at 1 parameter so it shows), one colour per method,
    the Pareto frontier of the plotted means as a dashed line; head-only and base drawn as
    reference points."""
    fig = go.Figure()
    df = summary.copy()
    on_test = "test_mean" in df and df["test_mean"].notna().any()
    prefix = "test" if on_test else "metric"
    df["y"], df["lo"], df["hi"] = df[f"{prefix}_mean"], df[f"{prefix}_ci95_low"], df[f"{prefix}_ci95_high"]
    if not metric.endswith("loss") and df["y"].dropna().between(0, 1).all():
        # a score in [0, 1]: a 2-seed t-interval can pass 1.0; draw it within the metric's range
        df["lo"], df["hi"] = df["lo"].clip(lower=0), df["hi"].clip(upper=1)
    df["x"] = df["trainable"].clip(lower=1)
    for method, part in df.groupby("method", sort=False):
        ref = method in ("head-only", "base")
        err_hi = (part["hi"] - part["y"]).fillna(0)
        err_lo = (part["y"] - part["lo"]).fillna(0)
        label = part.apply(lambda r: f"r={r['r']}" if pd.notna(r["r"]) else "", axis=1)
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["y"], mode="markers+text" if not ref else "markers", name=method,
            text=label, textposition="top center",
            marker={"size": 12 if ref else 9, "symbol": "star" if ref else "circle",
                    "color": METHOD_COLORS.get(method, "#7f7f7f")},
            error_y={"type": "data", "symmetric": False, "array": err_hi, "arrayminus": err_lo},
            customdata=part[["trainable", "best_learning_rate", "n_seeds"]].to_numpy(),
            hovertemplate="%{fullData.name} %{text}<br>trainable %{customdata[0]:,}<br>"
                          "best lr %{customdata[1]}<br>mean %{y:.3f} over %{customdata[2]} seeds<extra></extra>"))
    front = df[pareto_mask(df["x"], df["y"], direction == "maximize")].sort_values("x")
    if len(front):
        fig.add_trace(go.Scatter(x=front["x"], y=front["y"], mode="lines", name="Pareto frontier",
                                 line={"dash": "dash", "color": "#444"}, line_shape="hv"))
    shown = test_metric_name(metric) if on_test else metric
    note = " (held-out test; lr chosen on validation)" if on_test else ""
    fig.update_layout(xaxis_type="log", xaxis_title="trainable parameters (log; base shown at 1)",
                      yaxis_title=f"{shown}{note}, {'higher' if direction == 'maximize' else 'lower'} is better",
                      legend_title="method", margin={"t": 30})
    return fig


def study_lr_figure(trials: pd.DataFrame, metric: str) -> go.Figure:
    """Return metric against learning rate (log x), one line per (method, r, k) budget, mean over
    seeds with min-max bars: is every method compared at its own best learning rate?"""
    fig = go.Figure()
    done = trials[(trials["state"] == "COMPLETE") & trials["learning_rate"].notna()]
    if metric not in done:
        return fig
    order = {m: i for i, m in enumerate(METHOD_COLORS)}
    done = done.assign(_m=done["method"].map(order)).sort_values(["_m", "r", "k", "learning_rate"])
    done = done.assign(budget=done.apply(lambda r: f"{r['method']}" + (f" r={r['r']}" if pd.notna(r["r"]) else "")
                                         + (f" k={r['k']}" if pd.notna(r["k"]) else ""), axis=1))
    for budget, part in done.groupby("budget", sort=False):
        stats = part.groupby("learning_rate")[metric].agg(["mean", "min", "max"]).reset_index()
        method = part["method"].iloc[0]
        fig.add_trace(go.Scatter(
            x=stats["learning_rate"], y=stats["mean"], mode="lines+markers", name=budget,
            line={"color": METHOD_COLORS.get(method, "#7f7f7f")},
            error_y={"type": "data", "symmetric": False, "array": stats["max"] - stats["mean"],
                     "arrayminus": stats["mean"] - stats["min"]}))
    rates = sorted(done["learning_rate"].astype(float).unique())
    fig.update_layout(xaxis_type="log", xaxis_title="learning rate (log)", yaxis_title=f"{metric} (mean over seeds)",
                      legend_title="budget", margin={"t": 30})
    fig.update_xaxes(tickvals=rates, ticktext=[f"{v:g}" for v in rates])  # 0.003 reads as 0.003, not "3"
    return fig


# --- Reading a chart's selection ----------------------------------------------------------
def clicked_layer(chart_state) -> str | None:
    """Return the layer of the first selected cell in a Plotly chart's selection state
    (`{"selection": {"points": [{"customdata": [layer, ...]}, ...]}}`), or None."""
    points = ((chart_state or {}).get("selection") or {}).get("points") or []
    data = points[0].get("customdata") if points else None
    return str(data[0]) if data else None


# --- Decomposition lab: clustering sensitivity (app/sensitivity_panel.py) --------------------
def ari_heatmap_figure(ari: pd.DataFrame) -> go.Figure:
    """Return the seed x seed heatmap of adjusted Rand indices (`analysis.sensitivity`:
    1 = the same clusters, about 0 = no more alike than chance), the values in the cells."""
    seeds = [str(s) for s in ari.index]
    lo = min(0.0, float(ari.min().min()))
    fig = px.imshow(ari.to_numpy(), x=seeds, y=seeds, zmin=lo, zmax=1.0, aspect="auto",
                    text_auto=".2f", color_continuous_scale="Blues")
    fig.update_traces(hovertemplate="seeds %{y} and %{x}: ARI %{z:.3f}<extra></extra>")
    fig.update_xaxes(type="category", title="k-means seed", showgrid=False)
    fig.update_yaxes(type="category", title="k-means seed", showgrid=False)
    fig.update_layout(height=380, margin=TOP_MARGIN,
                      coloraxis_colorbar={"title": "ARI", "thickness": 12})
    return fig


def seed_spread_figure(spread: pd.DataFrame, k: int) -> go.Figure:
    """Return the cluster-wise ID error against r at `k` of `analysis.sensitivity.spread_table`:
    per selection the mean over the k-means seeds with ±1 standard deviation bars, and global
    SVD at the same r (dashed, seed-free) for scale; log x, linear y (the errors of one k span
    a narrow range, and a ±std bar reads the same length on either side)."""
    part = spread[(spread["k"] == k) & spread["feasible"]].sort_values("r")
    fig = go.Figure()
    for selection, rows in part.groupby("selection", sort=False):
        color = SELECTION_COLORS.get(selection, "#17becf")
        fig.add_trace(go.Scatter(
            x=rows["r"], y=rows["rel_error_mean"], mode="lines+markers",
            name=f"cluster-wise ID ({selection}), mean ± std",
            line={"color": color, "width": 2.5},
            marker={"symbol": SELECTION_SYMBOLS.get(selection, "circle"), "size": 8, "color": color},
            error_y={"type": "data", "array": rows["rel_error_std"], "visible": True, "thickness": 1.5},
            customdata=rows[["rel_error_std", "rel_error_min", "rel_error_max", "n_cluster_seeds"]].to_numpy(),
            hovertemplate=f"{selection}, r = %{{x}}: %{{y:.4f}} ± %{{customdata[0]:.4f}}<br>"
                          "min %{customdata[1]:.4f}, max %{customdata[2]:.4f} over "
                          "%{customdata[3]} seeds<extra></extra>",
        ))
    svd = part.drop_duplicates("r")
    color, dash, symbol = CURVE_STYLES["global SVD, same r"]
    fig.add_trace(go.Scatter(
        x=svd["r"], y=svd["svd_same_r"], mode="lines+markers", name="global SVD, same r",
        line={"color": color, "dash": dash, "width": 2}, marker={"symbol": symbol, "size": 7, "color": color},
        hovertemplate="global SVD, r = %{x}: %{y:.4f}<extra></extra>",
    ))
    rs = sorted(part["r"].unique())
    fig.update_layout(height=380, margin=TOP_MARGIN, yaxis_title="‖W − Ŵ‖_F / ‖W‖_F",
                      legend={"orientation": "h", "y": -0.2, "title": None},
                      xaxis={"type": "log", "tickvals": rs, "ticktext": [str(r) for r in rs],
                             "title": f"rank r (rows per cluster; log), k = {k}"})
    fig.update_yaxes(tickformat=".2f")
    return fig
