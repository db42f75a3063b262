"""Cluster explorer on its own: the projection with clusters and skeletons, hover text,
cluster sizes and per-cluster errors checked against least squares, bad (k, r) errors."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import background
from idlora_core.layers import get_weight

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "cluster_explorer.py")
LAYER = "encoder.layer.0.attention.self.query"


@pytest.fixture(autouse=True)
def _no_umap_warmup(monkeypatch):
    monkeypatch.setenv("IDLORA_NO_UMAP_WARM", "1")


def _values(v) -> np.ndarray:
    # plotly writes numeric arrays as {"dtype", "bdata": base64}
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def _charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def test_projection_clusters_skeletons_and_errors(minilm, settle):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["explorer_k"] = 4
    at.session_state["explorer_r"] = 8
    settle(at)
    assert not at.exception
    assert at.selectbox(key="explorer_layer").value == LAYER
    assert at.radio(key="explorer_projection").value == "PCA"
    charts = _charts(at)
    scatter = charts["explorer_scatter"]
    clusters = [t for t in scatter["data"] if not t["name"].startswith("skeleton")]
    skeletons = {t["name"]: t for t in scatter["data"] if t["name"].startswith("skeleton")}
    assert sorted(t["name"] for t in clusters) == ["cluster 0", "cluster 1", "cluster 2", "cluster 3"]
    assert sum(len(t["customdata"]) for t in clusters) == 384
    assert set(skeletons) == {"skeleton rows: id"}  # one selection at a time
    assert all(len(t["customdata"]) == 4 * 8 for t in skeletons.values())
    assert "row %{customdata[0]}" in clusters[0]["hovertemplate"]
    assert "cluster %{customdata[1]}" in clusters[0]["hovertemplate"]

    sizes = np.array([y for t in charts["explorer_sizes"]["data"] for y in _values(t["y"])])
    assert sizes.tolist() == [len(t["customdata"]) for t in sorted(clusters, key=lambda t: t["name"])]
    assert sizes.sum() == 384 and sizes.min() >= 8
    label = charts["explorer_sizes"]["layout"]["annotations"][0]
    assert label["text"] == "minimum size r = 8" and label["bgcolor"].startswith("rgba(255,255,255")

    # per-cluster error of the id skeleton, recomputed with least squares from the plotted points
    W = get_weight(minilm.model, LAYER)
    table = at.dataframe[0].value
    labels = np.empty(384, dtype=int)
    for trace in clusters:
        labels[[row for row, _ in trace["customdata"]]] = int(trace["name"].split()[-1])
    skel = [row for row, _ in skeletons["skeleton rows: id"]["customdata"]]
    for c in range(4):
        Wc = W[labels == c]
        J = W[[i for i in skel if labels[i] == c]]
        X = np.linalg.lstsq(J.T, Wc.T, rcond=None)[0].T
        expected = np.linalg.norm(Wc - X @ J) / np.linalg.norm(Wc)
        got = table[(table["cluster"] == c) & (table["selection"] == "id")]["rel_fro_error"].item()
        assert np.isclose(got, expected, rtol=1e-6, atol=1e-12)
        s = np.linalg.svd(Wc, compute_uv=False)
        svd = table[(table["cluster"] == c) & (table["selection"] == "id")]["svd_same_r"].item()
        assert np.isclose(svd, np.sqrt(np.sum(s[8:] ** 2) / np.sum(s**2)))
        assert got >= svd - 1e-12

    at.button(key="explorer_use_for_export").click().run()
    assert (at.session_state["adapter_k"], at.session_state["adapter_r"]) == (4, 8)


def test_too_many_clusters_shows_error(settle, fresh_pool):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["explorer_k"] = 100
    at.session_state["explorer_r"] = 8
    settle(at)
    assert not at.exception
    assert "k × r ≤ 384" in at.error[0].value
    at.run()  # the failed job is kept for these inputs: not submitted again on every rerun
    assert "k × r ≤ 384" in at.error[0].value
    assert len(fresh_pool.jobs(kind="explorer")) == 1


def test_clustering_runs_in_the_background_pool_once(settle, fresh_pool, monkeypatch):
    import analysis.explorer

    threads = []
    real = analysis.explorer.cluster_view

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis.explorer, "cluster_view", recording)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["explorer_k"], at.session_state["explorer_r"] = 3, 4
    at.run()
    jobs = fresh_pool.jobs(kind="explorer")
    assert [j.label for j in jobs] == ["clustering the rows"]
    settle(at)
    assert "explorer_scatter" in _charts(at) and "explorer_sizes" in _charts(at)
    at.radio(key="explorer_skeleton").set_value("centroid").run()  # same clustering: kept
    assert not at.exception and "explorer_scatter" in _charts(at)
    assert len(fresh_pool.jobs(kind="explorer")) == 1
    assert len(threads) == 1 and threads[0].startswith("idlora-job"), threads  # not the script thread
    at.session_state["explorer_k"] = 2
    settle(at)  # new inputs: a new job
    assert len(fresh_pool.jobs(kind="explorer")) == 2 and len(threads) == 2


@pytest.mark.slow
def test_umap_replaces_pca_when_ready():
    from app.background import umap_async

    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["explorer_projection"] = "UMAP"
    at.run()
    for job in background.pool().jobs(kind="explorer"):  # the clustering, not the UMAP
        job.result(timeout=120)
    at.run()
    assert not at.exception
    first = _charts(at)["explorer_scatter"]["layout"]["title"]["text"]
    if first.startswith("PCA"):  # UMAP still computing: PCA is shown meanwhile, with a note
        assert "UMAP is computing" in at.info[0].value
    from idlora_core.models import load_model

    W = get_weight(load_model("minilm").model, LAYER)
    umap_async(W, normalize_rows=False, seed=0).result(timeout=240)
    at.run()
    assert _charts(at)["explorer_scatter"]["layout"]["title"]["text"].startswith("UMAP")
