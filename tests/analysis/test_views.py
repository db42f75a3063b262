"""Reshaping of sweep tables for the Decomposition lab, on a real sweep of a random matrix."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.sweep import SweepSpec, sweep_layer
from analysis.views import (
    REFERENCE_CURVES,
    best_per_rank,
    choices_for_export,
    error_vs_rank,
    heatmap_grid,
    layer_summary,
)


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(48, 20)) @ np.diag(np.linspace(2.0, 0.1, 20))
    return sweep_layer(W, SweepSpec(ks=[1, 2, 8], ranks=[2, 4, 8], selections=["id", "random"]),
                       layer="L").table


def test_heatmap_grid_is_k_by_r_with_nan_for_infeasible(table):
    grid = heatmap_grid(table, "id")
    assert list(grid.index) == [1, 2, 8] and list(grid.columns) == [2, 4, 8]
    assert np.isnan(grid.loc[8, 8])  # 8 * 8 > 48 rows
    row = table[(table["selection"] == "id") & (table["k"] == 2) & (table["r"] == 4)]
    assert grid.loc[2, 4] == row["rel_fro_error"].item()


def test_error_vs_rank_curves(table):
    curves = error_vs_rank(table, 2)
    assert set(curves["curve"]) == {"cluster-wise ID (id)", "cluster-wise ID (random)"} | {
        label for _, label, _ in REFERENCE_CURVES}
    assert set(curves[curves["kind"] == "bound"]["curve"]) == {
        label for _, label, kind in REFERENCE_CURVES if kind == "bound"}
    svd = curves[curves["curve"] == "global SVD, same r"].set_index("r")["error"]
    ref = table[table["k"] == 2].drop_duplicates("r").set_index("r")["svd_same_r"]
    assert svd.to_dict() == ref.to_dict()
    assert error_vs_rank(table, 8)["r"].max() == 4  # r = 8 is infeasible at k = 8


def test_best_per_rank_and_export_choices(table):
    best = best_per_rank(table)
    ok = table[table["feasible"]]
    for row in best.itertuples():
        candidates = ok[ok["r"] == row.r]["rel_fro_error"]
        assert row.rel_fro_error == candidates.min()
        assert np.isclose(row.gain_vs_svd, row.svd_same_r - row.rel_fro_error)
        assert row.gap_vs_total >= -1e-12  # Eckart-Young
    at4 = layer_summary(table, 4)
    assert len(at4) == 1 and at4["r"].item() == 4
    choice = choices_for_export(table, 4)
    assert choice == {"L": {"k": int(at4["k"].item()), "r": 4, "selection": at4["selection"].item(),
                            "rb_splits": 1}}


def test_spectral_panel_uses_measured_spectral_errors_and_the_bounds():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(40, 16)) @ np.diag(np.linspace(3.0, 0.1, 16))
    spec = sweep_layer(W, SweepSpec(ks=[2], ranks=[2, 4], selections=["id"], spectral=True),
                       layer="L").table
    curves = error_vs_rank(spec, 2, norm="spectral")
    measured = curves[curves["curve"] == "cluster-wise ID (id)"].set_index("r")["error"]
    s = np.linalg.svd(W, compute_uv=False)
    fro = np.linalg.norm(W)
    for r, value in measured.items():
        row = spec[spec["r"] == r].iloc[0]
        assert value == row["rel_spec_error"]
        # W_hat has rank <= k*r (Eckart-Young floor) and ||.||_2 <= ||.||_F
        assert s[2 * r] / s[0] - 1e-12 <= value <= row["rel_fro_error"] * fro / s[0] + 1e-12
    assert set(curves["curve"]) == {"cluster-wise ID (id)", "global SVD, same r (σᵣ₊₁/σ₁)",
                                    "global ID, same r", "BOUND: cluster-wise ID", "BOUND: global ID"}
    frob = error_vs_rank(spec, 2, norm="frobenius")
    assert not (frob["kind"] == "bound").any()  # bounds live on the spectral panel only
    # without spectral=True the sweep has no measured spectral error: no curve, no fake zeros
    plain = sweep_layer(W, SweepSpec(ks=[2], ranks=[2, 4], selections=["id"]), layer="L").table
    assert {"cluster-wise ID (id)", "global ID, same r"}.isdisjoint(
        error_vs_rank(plain, 2, norm="spectral")["curve"])


def test_gain_is_a_signed_difference_and_selection_means(table):
    from analysis.views import selection_means, short_label

    best = best_per_rank(table)
    assert np.allclose(best["gain_vs_svd"], best["svd_same_r"] - best["rel_fro_error"])
    means = selection_means(table, 2, 4).set_index("selection")
    part = table[(table["k"] == 2) & (table["r"] == 4)]
    for selection in ("id", "random"):
        rows = part[part["selection"] == selection]
        assert np.isclose(means.loc[selection, "mean_error"], rows["rel_fro_error"].mean())
        assert np.isclose(means.loc[selection, "mean_gain"],
                          (rows["svd_same_r"] - rows["rel_fro_error"]).mean())
    assert short_label("encoder.layer.3.attention.output.dense") == "3 · attn_out"
    assert short_label("model.layers.12.mlp.down_proj") == "12 · down"
    assert short_label("classifier") == "classifier"
