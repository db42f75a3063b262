"""The Budget planner page's plotly figures: the allocation heatmap and objective-vs-budget.

Figures only, from the DataFrames of `analysis.plan` (`plan_cells`, `budget_curve`); no maths.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.atlas import KIND_ORDER


def allocation_figure(cells: pd.DataFrame) -> go.Figure:
    """Return a block x layer-type heatmap: colour = rank r (0: not adapted), text "r=.. k=..",
    hover: the layer, its trainable parameters and its relative error."""
    types = [t for t in KIND_ORDER if t in set(cells["type"])]
    blocks = sorted(set(cells["block"]))
    z = pd.DataFrame(float("nan"), index=blocks, columns=types)
    text = pd.DataFrame("", index=blocks, columns=types)
    hover = pd.DataFrame("", index=blocks, columns=types)
    for row in cells.itertuples(index=False):
        z.loc[row.block, row.type] = row.r
        text.loc[row.block, row.type] = row.label.replace(" ", "<br>").replace("not<br>adapted", "—")
        hover.loc[row.block, row.type] = (f"{row.layer}<br>{row.label}, {row.params:,} trainable"
                                          f"<br>rel. error {row.error:.3f}")
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=types, y=[str(b) for b in blocks], text=text.to_numpy(),
        texttemplate="%{text}", customdata=hover.to_numpy(), colorscale="Blues", zmin=0,
        hovertemplate="%{customdata}<extra></extra>", colorbar={"title": "rank r"}, xgap=2, ygap=2,
    ))
    fig.update_layout(height=max(260, 44 * len(blocks) + 110), title="Allocation (r and k per layer)",
                      xaxis={"title": "layer type", "type": "category"},
                      yaxis={"title": "block", "autorange": "reversed", "type": "category"},
                      margin={"t": 50})
    return fig


def budget_figure(curve: pd.DataFrame, lora_total: int, lora_r: int, budget: int) -> go.Figure:
    """Return the objective against the budget (as a fraction of LoRA's count at r = lora_r):
    the plan and the best uniform (k, r); a dashed line marks the chosen budget."""
    x = curve["budget"] / lora_total
    fig = go.Figure()
    fig.add_scatter(x=x, y=curve["plan_objective"], name="plan (per-layer k, r)", mode="lines+markers",
                    hovertemplate="%{x:.2f}× LoRA: objective %{y:.4f}<extra>plan</extra>")
    labels = [f"k={k} r={r}" if r else "nothing fits" for k, r in zip(curve["uniform_k"], curve["uniform_r"],
                                                                     strict=True)]
    fig.add_scatter(x=x, y=curve["uniform_objective"], name="uniform (one k, r everywhere)",
                    mode="lines+markers", line={"shape": "hv", "dash": "dot"}, text=labels,
                    hovertemplate="%{x:.2f}× LoRA: objective %{y:.4f}, %{text}<extra>uniform</extra>")
    fig.add_vline(x=budget / lora_total, line_dash="dash", line_color="grey")
    fig.update_layout(title="Objective against the budget", height=360, margin={"t": 50},
                      xaxis_title=f"budget (× LoRA's trainable parameters at r = {lora_r})",
                      yaxis_title="size-weighted relative error (1 = nothing adapted)",
                      legend={"orientation": "h", "y": -0.25})
    return fig
