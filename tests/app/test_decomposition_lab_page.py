"""Decomposition lab on its own: controls, a small sweep run from the page, its numbers
against numpy, cached results shown at once, per-layer choices handed to the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from idlora_core.layers import get_weight

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "decomposition_lab.py")
LAYER = "encoder.layer.0.attention.self.query"


def _values(v) -> list:
    """Plotly stores numeric arrays as base64 ("bdata") in the JSON spec."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_controls_exist_and_nothing_runs_before_the_button(empty_cache):
    at = _page(lab_ks=[1, 2], lab_ranks=[4, 8])
    assert not at.exception
    assert at.multiselect(key="lab_layers").value == [LAYER]
    assert at.multiselect(key="lab_ks").value == [1, 2]
    assert at.multiselect(key="lab_ranks").value == [4, 8]
    assert at.multiselect(key="lab_strategies").value == ["id", "centroid", "random"]
    assert at.checkbox(key="lab_normalize_rows").value is False
    assert at.number_input(key="lab_seed").value == 0
    assert "once per k" in " ".join(c.value for c in at.caption)
    assert "Run sweep" in at.info[0].value
    assert len(at.get("plotly_chart")) == 0
    assert not (empty_cache / "results").exists()


def test_run_small_sweep_shows_plots_and_true_numbers(minilm, empty_cache):
    from app.sweeps import _sweep_store

    _sweep_store.clear()
    at = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_strategies=["id", "centroid"])
    assert "Run sweep" in at.info[0].value  # nothing stored yet: this test computes the results
    at.button(key="lab_run").click().run()
    entries = list((empty_cache / "results").rglob("*.json"))  # written now, by this run:
    assert len(entries) == 2  # the sweep, and the inspected layer's spectral sweep
    assert not at.exception, at.exception
    assert "configurations over 1 layer" in at.success[0].value
    charts = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert {"lab_heatmap_id", "lab_heatmap_centroid", "lab_error_vs_rank", "lab_spectra",
            "lab_error_vs_rank_spectral"} <= set(charts)
    # the heatmaps of the row are drawn alike (a colour bar inside one made it narrower);
    # the one shared bar stands beside them, spanning the inspected layer's errors
    heatmaps = [charts[f"lab_heatmap_{s}"] for s in ("id", "centroid")]
    assert not any(h["layout"].get("coloraxis", {}).get("showscale", True) for h in heatmaps)
    assert heatmaps[0]["layout"]["margin"] == heatmaps[1]["layout"]["margin"]
    marker = charts["lab_heatmap_scale"]["data"][0]["marker"]
    for h in heatmaps:  # every heatmap and the bar use the same range
        assert (h["layout"]["coloraxis"]["cmin"], h["layout"]["coloraxis"]["cmax"]) == (marker["cmin"], marker["cmax"])
    assert marker["showscale"] and marker["cmin"] < marker["cmax"]
    curve = charts["lab_error_vs_rank"]
    assert curve["layout"]["yaxis"]["type"] == "log"
    names = {trace["name"] for trace in curve["data"]}
    assert any(name.startswith("global SVD, same total rank") for name in names)
    assert not any(name.startswith("BOUND") for name in names)  # Frobenius panel: measured only
    spectral = {trace["name"] for trace in charts["lab_error_vs_rank_spectral"]["data"]}
    assert {"BOUND: cluster-wise ID", "BOUND: global ID", "cluster-wise ID (id)"} <= spectral

    summary = at.dataframe[0].value  # per-layer summary at the middle rank (r = 16)
    row = summary.iloc[0]
    assert (row["layer"], row["r"]) == (LAYER, 16)
    s = np.linalg.svd(get_weight(minilm.model, LAYER), compute_uv=False)
    assert np.isclose(row["svd_same_r"], np.sqrt(np.sum(s[16:] ** 2) / np.sum(s**2)), rtol=1e-9)
    assert np.isclose(row["svd_same_total"], np.sqrt(np.sum(s[16 * row["k"]:] ** 2) / np.sum(s**2)))
    assert row["rel_fro_error"] >= row["svd_same_total"] - 1e-12  # Eckart-Young
    assert row["trainable_idlora"] == 384 * 16 + int(row["k"]) * 16
    assert row["trainable_lora"] == 16 * (384 + 384)

    # the same settings in a fresh session: results appear at once, without pressing Run
    again = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_strategies=["id", "centroid"])
    assert not again.exception
    assert len(again.success) == 1 and len(again.info) == 0
    assert again.dataframe[0].value.equals(summary)

    # a new app process (empty in-memory store) is served from the on-disk sweep cache
    _sweep_store.clear()
    fresh = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_strategies=["id", "centroid"])
    assert len(fresh.success) == 1 and len(fresh.info) == 0
    assert np.allclose(fresh.dataframe[0].value["rel_fro_error"], summary["rel_fro_error"])

    at.button(key="lab_use_for_export").click().run()
    choice = at.session_state["layer_choices"][LAYER]
    assert choice == {"k": int(row["k"]), "r": 16, "strategy": row["strategy"], "rb_splits": 1}

    # ... and only from it: without the entries the same fresh page has nothing to show
    for entry in entries:
        entry.unlink()
    _sweep_store.clear()
    gone = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_strategies=["id", "centroid"])
    assert len(gone.success) == 0 and "Run sweep" in gone.info[0].value


def test_infeasible_grid_reports_blank_cells_not_a_crash():
    at = _page(lab_ks=[64], lab_ranks=[8, 16], lab_strategies=["random"])
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert any("No feasible rank" in w.value for w in at.warning)  # 64 * 8 > 384 rows


def test_use_selected_layers_then_multi_layer_summary():
    at = _page()
    at.button(key="lab_use_selected").click().run()
    expected = [f"encoder.layer.{b}.attention.self.{p}" for b in range(6) for p in ("query", "value")]
    assert at.multiselect(key="lab_layers").value == expected
    two = expected[:2]
    at = _page(lab_layers=two, lab_ks=[2], lab_ranks=[8], lab_strategies=["id"])
    at.button(key="lab_run").click().run()
    assert not at.exception
    summary = at.dataframe[0].value
    assert summary["layer"].tolist() == two and (summary["k"] == 2).all()
    chart = [c for c in at.get("plotly_chart") if c.proto.id.endswith("lab_summary_chart")]
    assert len(chart) == 1
    spec = json.loads(chart[0].proto.spec)
    assert spec["layout"]["yaxis"].get("type", "linear") == "linear"  # bars on a linear axis
    (bars,) = spec["data"]
    assert sorted(bars["x"]) == ["0 · q", "0 · v"]  # block · type, the full name on hover
    gains = dict(zip(summary["layer"], summary["gain_vs_svd"], strict=True))
    assert np.allclose(sorted(gains.values()), sorted(_values(bars["y"])))
    assert np.allclose(summary["gain_vs_svd"], summary["svd_same_r"] - summary["rel_fro_error"])
