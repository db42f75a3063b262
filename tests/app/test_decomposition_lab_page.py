"""Decomposition lab on its own: controls, a small sweep run from the page, its numbers
against numpy, cached results shown at once, per-layer choices handed to the export; the
spectral columns and the spectra reuse the sweep's own clusters (no second k-means)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
from streamlit.testing.v1 import AppTest

from analysis.sweep import SweepResult, SweepSpec
from app.common import open_named
from app.report import report_files, report_zip
from app.sweeps import _sweep_store, stored_spectral, stored_sweeps
from idlora_core.layers import get_weight
from idlora_core.linalg import randomized
from idlora_core.linalg.clustering import MinSizeKMeans
from tests.analysis.test_sweep import numpy_spectral

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "decomposition_lab.py")
LAYER = "encoder.layer.0.attention.self.query"


def _values(v) -> list:
    """Plotly stores numeric arrays as base64 ("bdata") in the JSON spec."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _count_kmeans(monkeypatch) -> list:
    """Every MinSizeKMeans.fit call of the test appends its k."""
    calls, real = [], MinSizeKMeans.fit

    def fit(self, X, y=None):
        calls.append(self.n_clusters)
        return real(self, X, y)

    monkeypatch.setattr(MinSizeKMeans, "fit", fit)
    return calls


def _assert_spectra_of(chart: dict, W: np.ndarray, labels: np.ndarray) -> None:
    """The spectra chart shows the layer and exactly the clusters `labels` (numpy SVDs)."""
    lines = {t["name"]: np.asarray(_values(t["y"])) for t in chart["data"]}
    k = int(labels.max()) + 1
    assert sorted(lines) == sorted(["layer"] + [f"cluster {c}" for c in range(k)])
    W = np.asarray(W, dtype=np.float64)
    s1 = np.linalg.norm(W, 2)
    np.testing.assert_allclose(lines["layer"], np.linalg.svd(W, compute_uv=False) / s1, rtol=1e-9)
    for c in range(k):
        expected = np.linalg.svd(W[labels == c], compute_uv=False) / s1
        np.testing.assert_allclose(lines[f"cluster {c}"], expected, rtol=1e-9, atol=1e-12)


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
    assert at.multiselect(key="lab_selections").value == ["id", "centroid", "random"]
    assert at.checkbox(key="lab_normalize_rows").value is False
    assert at.number_input(key="lab_seed").value == 0
    assert "once per k" in " ".join(c.value for c in at.caption)
    assert "Run sweep" in at.info[0].value
    assert len(at.get("plotly_chart")) == 0
    assert not (empty_cache / "results").exists()


def test_run_small_sweep_shows_plots_and_true_numbers(minilm, empty_cache, monkeypatch, settle):
    _sweep_store.clear()
    at = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_selections=["id", "centroid"])
    assert "Run sweep" in at.info[0].value  # nothing stored yet: this test computes the results
    fits = _count_kmeans(monkeypatch)
    settle(at.button(key="lab_run").click())
    assert not at.exception, at.exception
    # k-means once per k: the spectral columns and the spectra reuse the sweep's clusters
    assert sorted(fits) == [1, 4]
    entries = list((empty_cache / "results").rglob("*.json"))  # written now, by this run:
    assert len(entries) == 1  # one entry: the sweep, extended by the spectral columns
    stored = SweepResult.from_payload(json.loads(entries[0].read_text())["payload"])
    assert stored.has_spectral and stored.global_order is not None
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
    spectral = {t["name"]: dict(zip(_values(t["x"]), _values(t["y"]), strict=True))
                for t in charts["lab_error_vs_rank_spectral"]["data"]}
    assert {"BOUND: cluster-wise ID", "BOUND: global ID", "cluster-wise ID (id)",
            "global ID, same r"} <= set(spectral)
    # the measured lines against numpy: the global ID on the first r pivots of a pivoted QR of
    # W.T, the cluster-wise ID on the stored clusters and skeletons of k = 4
    W = get_weight(minilm.model, LAYER)
    _, _, piv = scipy.linalg.qr(W.astype(np.float64).T, pivoting=True)
    for r in (4, 16):
        glob = numpy_spectral(W, np.zeros(384, int), [piv[:r]])
        assert np.isclose(spectral["global ID, same r"][r], glob, rtol=1e-9)
        expected = numpy_spectral(W, stored.labels(4), stored.skeleton(4, r, "id"))
        assert np.isclose(spectral["cluster-wise ID (id)"][r], expected, rtol=1e-9)
    _assert_spectra_of(charts["lab_spectra"], W, stored.labels(4))  # the sweep's own clusters
    full = [d.value for d in at.dataframe if "rel_spec_error" in d.value.columns]
    assert len(full) == 1 and full[0]["rel_spec_error"][full[0]["feasible"]].notna().all()

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
    again = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_selections=["id", "centroid"])
    assert not again.exception
    assert len(again.success) == 1 and len(again.info) == 0
    assert again.dataframe[0].value.equals(summary)

    # a new app process (empty in-memory store) is served from the on-disk sweep cache
    _sweep_store.clear()
    fresh = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_selections=["id", "centroid"])
    assert len(fresh.success) == 1 and len(fresh.info) == 0
    assert np.allclose(fresh.dataframe[0].value["rel_fro_error"], summary["rel_fro_error"])

    # the lab report's sweep_full.csv (its table comes from stored_sweeps) holds the spectral column
    params = dict(ks=[1, 4], ranks=[4, 16], selections=["id", "centroid"], seed=0,
                  normalize_rows=False)
    handle = open_named("minilm")
    table = stored_sweeps(handle, [LAYER], **params)
    assert stored_spectral(handle, LAYER, **params) is not None
    with zipfile.ZipFile(io.BytesIO(report_zip(report_files(table, 16, None, {}, {})))) as z:
        csv = pd.read_csv(z.open("idlora-lab-report/sweep_full.csv"))
        readme = z.read("idlora-lab-report/README.txt").decode()
    measured = csv["cluster-wise ID error (rel. spectral)"]
    assert measured.notna().sum() == int(csv["feasible"].sum()) == 8
    np.testing.assert_allclose(measured, table["rel_spec_error"].round(4))
    assert csv["global ID error, same r (rel. spectral)"].notna().sum() == 8
    assert "measured spectral errors for 1 layer(s): 0 · q" in readme

    at.button(key="lab_use_for_export").click().run()
    choice = at.session_state["layer_choices"][LAYER]
    assert choice == {"k": int(row["k"]), "r": 16, "selection": row["selection"], "rb_splits": 1}

    # ... and only from it: without the entries the same fresh page has nothing to show
    for entry in entries:
        entry.unlink()
    _sweep_store.clear()
    gone = _page(lab_ks=[1, 4], lab_ranks=[4, 16], lab_selections=["id", "centroid"])
    assert len(gone.success) == 0 and "Run sweep" in gone.info[0].value


def test_infeasible_grid_reports_blank_cells_not_a_crash(settle):
    at = _page(lab_ks=[64], lab_ranks=[8, 16], lab_selections=["random"])
    settle(at.button(key="lab_run").click())
    assert not at.exception
    assert any("No feasible rank" in w.value for w in at.warning)  # 64 * 8 > 384 rows


def test_use_selected_layers_then_multi_layer_summary(settle):
    at = _page()
    at.button(key="lab_use_selected").click().run()
    expected = [f"encoder.layer.{b}.attention.self.{p}" for b in range(6) for p in ("query", "value")]
    assert at.multiselect(key="lab_layers").value == expected
    two = expected[:2]
    at = _page(lab_layers=two, lab_ks=[2], lab_ranks=[8], lab_selections=["id"])
    settle(at.button(key="lab_run").click())
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


def test_randomized_path_spectra_and_spectral_errors_use_the_sweeps_clusters(
        minilm, empty_cache, monkeypatch, settle):
    """On the randomized path (float32, one k-means restart) a fresh k-means finds other
    clusters than the sweep's: the spectra and the spectral errors must be the sweep's."""
    monkeypatch.setattr(randomized, "RANDOMIZED_MIN_ELEMENTS", 10_000)  # 384 x 384 goes randomized
    _sweep_store.clear()
    fits = _count_kmeans(monkeypatch)
    at = _page(lab_ks=[8], lab_ranks=[4, 16], lab_selections=["id"])
    settle(at.button(key="lab_run").click())
    assert not at.exception, at.exception
    assert fits == [8]  # one k-means for the whole page
    result = _sweep_store()[("all-MiniLM-L6-v2", LAYER, SweepSpec([8], [4, 16], ["id"]))]
    assert result.table["randomized"].all() and result.has_spectral
    labels = result.labels(8)
    W = get_weight(minilm.model, LAYER)
    charts = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    _assert_spectra_of(charts["lab_spectra"], W, labels)
    for r in (4, 16):  # float32 residuals on this path
        expected = numpy_spectral(W, labels, result.skeleton(8, r, "id"))
        assert np.isclose(result.table.set_index("r").loc[r, "rel_spec_error"], expected, rtol=1e-4)
    # what the page drew before: a fresh exact k-means (4 restarts, float64) — other clusters
    fresh = MinSizeKMeans(8, min_size=16, random_state=0).fit(W.astype(np.float64)).labels_
    assert not np.array_equal(np.bincount(fresh, minlength=8), np.bincount(labels, minlength=8))
