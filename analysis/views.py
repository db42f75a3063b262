"""Views of a sweep table for the Decomposition lab: heatmap grids, error-vs-rank curves,
per-layer summaries and the best (k, selection) per layer.

Input is the DataFrame of `analysis.sweep.sweep_layer` (one row per layer, k, r, selection;
its columns are documented there). Only reshaping and picking; no new maths, no Streamlit.
"""

from __future__ import annotations

import pandas as pd

from idlora_core.layers import block_index, layer_kind

# error-vs-rank curves: (column, label, kind); "bound" curves are spectral-norm bounds / sigma_1
REFERENCE_CURVES: list[tuple[str, str, str]] = [
    ("svd_same_r", "global SVD, same r", "measured"),
    ("svd_same_total", "global SVD, same total rank k·r", "measured"),
    ("global_id_same_r", "global ID, same r", "measured"),
    ("bound_cluster", "BOUND: cluster-wise ID (spectral, /σ₁)", "bound"),
    ("bound_global", "BOUND: global ID (spectral, /σ₁)", "bound"),
]
# the spectral-norm panel: measured spectral errors against the spectral bounds
SPECTRAL_CURVES: list[tuple[str, str, str]] = [
    ("svd_spec_same_r", "global SVD, same r (σᵣ₊₁/σ₁)", "measured"),
    ("global_id_spec_same_r", "global ID, same r", "measured"),
    ("bound_cluster", "BOUND: cluster-wise ID", "bound"),
    ("bound_global", "BOUND: global ID", "bound"),
]
FROBENIUS_CURVES: list[tuple[str, str, str]] = REFERENCE_CURVES[:3]


def short_label(name: str) -> str:
    """Return a short layer label "block · type" (e.g. "3 · attn_out"), or the name itself."""
    block, kind = block_index(name), layer_kind(name)
    if block is None or kind == "other":
        return name
    return f"{block} · {kind}"


def feasible(table: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of a sweep table whose (k, r) pair could be computed."""
    return table[table["feasible"].astype(bool)]


def heatmap_grid(table: pd.DataFrame, selection: str, value: str = "rel_fro_error") -> pd.DataFrame:
    """Return a k x r grid of `value` for one layer and `selection` (index k, columns r; NaN = infeasible)."""
    part = table[table["selection"] == selection]
    grid = part.pivot_table(index="k", columns="r", values=value, aggfunc="first", dropna=False)
    ks = sorted(table["k"].unique())
    rs = sorted(table["r"].unique())
    return grid.reindex(index=ks, columns=rs)


def error_vs_rank(table: pd.DataFrame, k: int, norm: str = "both") -> pd.DataFrame:
    """Return the long-form curves of one layer at cluster count `k`, for plotting against r.

    Columns: r, curve (label), kind ("measured" | "bound"), error (relative: Frobenius errors
    divided by ||W||_F, spectral errors and bounds divided by sigma_1(W)).
    norm="frobenius": one "cluster-wise ID (<selection>)" curve per selection (rel_fro_error) and
    FROBENIUS_CURVES; norm="spectral": the measured spectral error per selection
    (rel_spec_error, only where the sweep measured it) and SPECTRAL_CURVES; "both": the
    Frobenius curves and the two bounds (REFERENCE_CURVES).
    """
    column, refs = {"frobenius": ("rel_fro_error", FROBENIUS_CURVES),
                    "spectral": ("rel_spec_error", SPECTRAL_CURVES),
                    "both": ("rel_fro_error", REFERENCE_CURVES)}[norm]
    part = feasible(table[table["k"] == k]).sort_values(["selection", "r"])
    frames = [
        pd.DataFrame({"r": g["r"], "curve": f"cluster-wise ID ({s})", "kind": "measured",
                      "error": g[column]})
        for s, g in part.groupby("selection", sort=False)
    ]
    one = part.drop_duplicates("r").sort_values("r")
    frames += [
        pd.DataFrame({"r": one["r"], "curve": label, "kind": kind, "error": one[col]})
        for col, label, kind in refs
    ]
    frames = [f.dropna(subset=["error"]) for f in frames]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["r", "curve", "kind", "error"])
    return out.astype({"r": int, "error": float})


def best_per_rank(table: pd.DataFrame) -> pd.DataFrame:
    """Return, per (layer, r), the feasible (k, selection) with the smallest cluster-wise error.

    Columns: layer, m, n, r, k, selection, rel_fro_error, svd_same_r, global_id_same_r,
    svd_same_total, gain_vs_svd (svd_same_r - rel_fro_error, a difference of relative errors:
    > 0 means clustering beats the best global rank-r factorisation at the same r, < 0 is a
    loss), gap_vs_total (rel_fro_error - svd_same_total, never < 0 by Eckart-Young),
    trainable_idlora, trainable_lora (counts for one layer).
    """
    ok = feasible(table).dropna(subset=["rel_fro_error"])
    if ok.empty:
        return pd.DataFrame(columns=["layer", "m", "n", "r", "k", "selection", "rel_fro_error"])
    idx = ok.groupby(["layer", "r"])["rel_fro_error"].idxmin()
    best = ok.loc[idx].sort_values(["layer", "r"]).reset_index(drop=True)
    best["gain_vs_svd"] = best["svd_same_r"] - best["rel_fro_error"]
    best["gap_vs_total"] = best["rel_fro_error"] - best["svd_same_total"]
    cols = ["layer", "m", "n", "r", "k", "selection", "rel_fro_error", "svd_same_r",
            "global_id_same_r", "svd_same_total", "gain_vs_svd", "gap_vs_total",
            "trainable_idlora", "trainable_lora"]
    return best[cols]


def layer_summary(table: pd.DataFrame, r: int) -> pd.DataFrame:
    """Return one row per layer at rank `r`: its best (k, selection) and the references (see best_per_rank)."""
    best = best_per_rank(table)
    return best[best["r"] == r].reset_index(drop=True)


def selection_means(table: pd.DataFrame, k: int, r: int) -> pd.DataFrame:
    """Return the mean relative Frobenius error over the swept layers at (k, r), one row per
    selection: selection, layers, mean_error, mean_svd_same_r, mean_gain (svd - cluster-wise ID).
    """
    part = feasible(table[(table["k"] == k) & (table["r"] == r)]).dropna(subset=["rel_fro_error"])
    rows = [
        {"selection": s, "layers": int(g["layer"].nunique()),
         "mean_error": float(g["rel_fro_error"].mean()),
         "mean_svd_same_r": float(g["svd_same_r"].mean()),
         "mean_gain": float((g["svd_same_r"] - g["rel_fro_error"]).mean())}
        for s, g in part.groupby("selection", sort=False)
    ]
    return pd.DataFrame(rows, columns=["selection", "layers", "mean_error", "mean_svd_same_r",
                                       "mean_gain"])


def choices_for_export(table: pd.DataFrame, r: int) -> dict[str, dict]:
    """Return {layer: {"k", "r", "selection", "rb_splits": 1}}: the best clustering of each layer at rank r."""
    return {
        row.layer: {"k": int(row.k), "r": int(row.r), "selection": str(row.selection), "rb_splits": 1}
        for row in layer_summary(table, r).itertuples()
    }
