"""The sweep: its table against independent least squares / SVD, properties, determinism, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analysis.sweep as sweep_module
from analysis.sweep import (
    COLUMNS,
    ERROR_COLUMNS,
    SPECTRAL_COLUMNS,
    SweepSpec,
    add_spectral,
    parse_grid,
    parse_selections,
    sweep_key,
    sweep_layer,
)
from idlora_core.cache import ResultCache
from idlora_core.linalg.clustering import MinSizeKMeans
from idlora_core.linalg.synthetic import decaying_spectrum, random_spectrum_matrix

SELS = ["id", "centroid", "random"]


def sweep(W, ks, ranks, selections=SELS, *, layer="", progress=None, **options):
    """The result of sweep_layer with SweepSpec(ks, ranks, selections, **options)."""
    return sweep_layer(W, SweepSpec(ks, ranks, selections, **options), layer=layer, progress=progress)


pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def lstsq_sq_error(M: np.ndarray, rows: np.ndarray) -> float:
    basis = M[rows].T
    X, *_ = np.linalg.lstsq(basis, M.T, rcond=None)
    return float(np.linalg.norm(M.T - basis @ X) ** 2)


def recompute_from_clusters(W: np.ndarray, clusters: dict) -> dict:
    """Return {(k, r, selection): relative Frobenius error} recomputed with lstsq from the JSON."""
    fro = np.linalg.norm(W)
    out = {}
    for clustering in clusters["clusterings"]:
        labels = np.asarray(clustering["labels"])
        for sel in clustering["selections"]:
            total = 0.0
            for c, skel in enumerate(sel["skeleton"]):
                assert len(skel) == sel["r"] and (labels[skel] == c).all()
                total += lstsq_sq_error(W[labels == c], np.searchsorted(np.flatnonzero(labels == c), skel))
            out[(clustering["k"], sel["r"], sel["selection"])] = np.sqrt(total) / fro
    return out


@pytest.fixture(scope="module")
def random_result():
    W = np.random.default_rng(0).standard_normal((60, 24))
    return W, sweep(W, [1, 2, 3, 8], [2, 5, 9, 30], SELS, seed=1, layer="rand")


def test_columns_rows_and_feasibility(random_result):
    W, res = random_result
    table = res.table
    assert list(table.columns) == COLUMNS
    assert len(table) == 4 * 4 * 3
    assert set(map(tuple, table[["k", "r", "selection"]].values)) == {
        (k, r, s) for k in (1, 2, 3, 8) for r in (2, 5, 9, 30) for s in SELS}
    infeasible = table[~table["feasible"]]
    # r=30 > n=24 always; k=8 with r=9 needs 72 > 60 rows
    assert set(zip(infeasible["k"], infeasible["r"], strict=True)) == {
        (1, 30), (2, 30), (3, 30), (8, 30), (8, 9)}
    assert infeasible["rel_fro_error"].isna().all() and infeasible["svd_same_r"].isna().all()
    feasible = table[table["feasible"]]
    assert feasible[["rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
                     "bound_cluster", "bound_global"]].notna().all().all()
    np.testing.assert_array_equal(table["total_rank"], table["k"] * table["r"])
    np.testing.assert_array_equal(table["trainable_idlora"], 60 * table["r"] + table["k"] * table["r"])
    np.testing.assert_array_equal(table["trainable_lora"], table["r"] * (60 + 24))
    # minimum cluster size = largest feasible r of the grid for that k
    assert dict(feasible.groupby("k")["min_cluster_size"].first()) == {1: 9, 2: 9, 3: 9, 8: 5}


def test_every_error_equals_lstsq_from_the_json(random_result):
    W, res = random_result
    recomputed = recompute_from_clusters(W, res.clusters_json())
    feasible = res.table[res.table["feasible"]]
    assert len(recomputed) == len(feasible)
    for row in feasible.itertuples():
        assert row.rel_fro_error == pytest.approx(recomputed[(row.k, row.r, row.selection)], rel=1e-8)
    for clustering in res.clusters_json()["clusterings"]:
        sizes = np.bincount(clustering["labels"])
        assert sizes.min() >= feasible[feasible["k"] == clustering["k"]]["min_cluster_size"].iloc[0]


def test_global_columns_against_svd_and_global_id(random_result):
    W, res = random_result
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    fro = np.linalg.norm(W)
    table = res.table[res.table["feasible"]]
    k1_id = table[(table["k"] == 1) & (table["selection"] == "id")].set_index("r")
    for row in table.itertuples():
        best = lambda R: np.linalg.norm(W - (U[:, :R] * s[:R]) @ Vt[:R]) / fro  # noqa: E731
        assert row.svd_same_r == pytest.approx(best(row.r), rel=1e-9)
        assert row.svd_same_total == pytest.approx(best(min(row.total_rank, 24)), abs=1e-12, rel=1e-9)
        assert row.svd_spec_same_r == pytest.approx(s[row.r] / s[0], rel=1e-9)
        assert row.bound_global == pytest.approx(np.sqrt(1 + row.r * (60 - row.r)) * s[row.r] / s[0])
        # k = 1 cluster-wise ID is the global ID
        assert row.global_id_same_r == pytest.approx(k1_id.loc[row.r, "rel_fro_error"], rel=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(6, 40), n=st.integers(2, 20), k=st.integers(1, 5), r=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_eckart_young_and_global_bounds_hold(m, n, k, r, seed):
    W = np.random.default_rng(seed).standard_normal((m, n))
    table = sweep(W, [k], [r], SELS, seed=seed).table
    for row in table.itertuples():
        if not row.feasible:
            assert k * r > m or r > n
            continue
        assert row.rel_fro_error >= row.svd_same_total - 1e-12  # no scheme beats rank-kr SVD
        assert row.global_id_same_r >= row.svd_same_r - 1e-12
        assert row.bound_global >= row.svd_spec_same_r - 1e-12


def test_real_minilm_query_sanity_numbers(minilm_weights):
    W = minilm_weights.weight("encoder.layer.0.attention.self.query")
    table = sweep(W, [8], [16], ["id"], layer="q", spectral=True).table
    row = table.iloc[0]
    assert row.svd_same_r == pytest.approx(0.845, abs=0.002)  # docs/LAB.md exercise 1: 0.85
    assert row.svd_same_total == pytest.approx(0.359, abs=0.002)  # docs/LAB.md exercise 1: 0.36
    assert 0.6 < row.rel_fro_error < 0.8  # docs/LAB.md exercise 1: about 0.73
    assert row.rel_fro_error < row.svd_same_r  # the same-r comparison of the paper
    s = np.linalg.svd(W, compute_uv=False)
    assert s[128] / s[0] <= row.rel_spec_error <= row.bound_cluster


def test_same_seed_same_table_and_progress():
    W = np.random.default_rng(2).standard_normal((50, 16))
    calls = []
    a = sweep(W, [2, 4], [3], SELS, seed=5, progress=lambda d, t, msg: calls.append((d, t))).table
    b = sweep(W, [2, 4], [3], SELS, seed=5).table
    cols = [c for c in COLUMNS if c != "seconds"]
    assert a[cols].equals(b[cols])
    assert calls[-1][0] == calls[-1][1] == 1 + 2 * 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_randomized_path_matches_exact_on_minilm(minilm_weights):
    W = minilm_weights.weight("encoder.layer.2.intermediate.dense")
    kw = dict(ks=[1, 4], ranks=[8, 32], selections=SELS, seed=0, n_init=1)
    exact = sweep(W, randomized=False, **kw).table
    fast = sweep(W, randomized=True, **kw).table
    assert fast["randomized"].all() and not exact["randomized"].any()
    for col in ("rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r"):
        np.testing.assert_allclose(fast[col], exact[col], rtol=0.02, err_msg=col)
    same_order = exact["selection"] != "id"  # centroid/random orders are shared: errors are exact
    np.testing.assert_allclose(fast.loc[same_order, "rel_fro_error"],
                               exact.loc[same_order, "rel_fro_error"], rtol=1e-5)  # float32 path


def test_randomized_large_spectrum_matrix_columns_close_to_known_spectrum():
    s = decaying_spectrum(300, scale=16.0)
    W = random_spectrum_matrix(500, 300, s, seed=3)
    table = sweep(W, [2], [4, 16], ["id"], randomized=True).table
    tail = lambda R: np.sqrt((s[R:] ** 2).sum() / (s**2).sum())  # noqa: E731
    for row in table.itertuples():
        assert row.svd_same_r == pytest.approx(tail(row.r), rel=0.02)
        assert row.svd_same_total == pytest.approx(tail(row.total_rank), rel=0.02)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ks=[0, 2], ranks=[2]), "ks must be >= 1"),
        (dict(ks=[2], ranks=[]), "ranks must not be empty"),
        (dict(ks=[2, "x"], ranks=[2]), "ks must be integers"),
        (dict(ks=[2], ranks=[2], selections=["svd"]), "selection must be one of"),
        (dict(ks=[2], ranks=[2], selections=[]), "at least one"),
    ],
)
def test_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SweepSpec(**kwargs)


def test_spec_is_frozen_normalised_and_takes_no_strings():
    spec = SweepSpec([4, 1, 4], np.array([8, 2]), ["random", "id", "random"], seed=np.int64(3))
    assert (spec.ks, spec.ranks, spec.selections, spec.seed) == ((4, 1), (8, 2), ("random", "id"), 3)
    assert spec == SweepSpec((4, 1), (8, 2), ("random", "id"), seed=3) and hash(spec)
    with pytest.raises(AttributeError):
        spec.seed = 1
    with pytest.raises(TypeError, match="parse_grid"):
        SweepSpec("1,2", [2])
    with pytest.raises(TypeError, match="parse_selections"):
        SweepSpec([1], [2], "id")
    # only the command lines parse strings
    assert parse_grid("1, 2,4,2", "ks") == (1, 2, 4)
    assert parse_selections("id,centroid") == ("id", "centroid")
    with pytest.raises(ValueError, match="ks must be integers"):
        parse_grid("2,x", "ks")
    assert ERROR_COLUMNS == ["rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
                             "svd_spec_same_r", "global_id_spec_same_r", "bound_cluster",
                             "bound_global", "rel_spec_error"]


def test_bad_weights():
    spec = SweepSpec([1], [1])
    with pytest.raises(ValueError, match="non-finite"):
        sweep_layer(np.full((5, 3), np.nan), spec)
    with pytest.raises(ValueError, match="must be 2-D"):
        sweep_layer(np.ones(5), spec)


def test_normalized_rows_cluster_in_cosine_geometry():
    W = np.random.default_rng(6).standard_normal((48, 10))
    scaled = W * np.random.default_rng(7).uniform(0.2, 5.0, size=(48, 1))
    a = sweep(W, [3], [2, 4], SELS, normalize_rows=True)
    b = sweep(scaled, [3], [2, 4], SELS, normalize_rows=True)
    labels_a = a.clusters_json()["clusterings"][0]["labels"]
    assert labels_a == b.clusters_json()["clusterings"][0]["labels"]  # row scale is ignored
    sel_a = {(s["r"], s["selection"]): s["skeleton"] for s in a.clusters_json()["clusterings"][0]["selections"]}
    sel_b = {(s["r"], s["selection"]): s["skeleton"] for s in b.clusters_json()["clusterings"][0]["selections"]}
    assert sel_a[(4, "centroid")] == sel_b[(4, "centroid")]  # centroid distances are cosine too
    recomputed = recompute_from_clusters(scaled, b.clusters_json())
    for row in b.table.itertuples():
        assert row.rel_fro_error == pytest.approx(recomputed[(row.k, row.r, row.selection)], rel=1e-8)


# --- the spectral columns: one more part of the same (cached) result ---------------------------

def numpy_spectral(W: np.ndarray, labels: np.ndarray, skeleton: list) -> float:
    """||W - W_hat||_2 / s_1(W), W_hat: each cluster's rows least-squares on its skeleton rows."""
    W = np.asarray(W, dtype=np.float64)
    residual = np.zeros_like(W)
    for c, rows in enumerate(skeleton):
        members = labels == c
        X, *_ = np.linalg.lstsq(W[rows].T, W[members].T, rcond=None)
        residual[members] = W[members] - (W[rows].T @ X).T
    return np.linalg.norm(residual, 2) / np.linalg.norm(W, 2)


def check_spectral_against_numpy(W: np.ndarray, res, rtol: float) -> None:
    table = res.table[res.table["feasible"]]
    assert res.has_spectral and len(table)
    for row in table.itertuples():
        labels = res.labels(row.k)
        expected = numpy_spectral(W, labels, res.skeleton(row.k, row.r, row.selection))
        assert row.rel_spec_error == pytest.approx(expected, rel=rtol), row
        glob = numpy_spectral(W, np.zeros(len(W), int), [np.asarray(res.global_order[: row.r])])
        assert row.global_id_spec_same_r == pytest.approx(glob, rel=rtol), row


def test_spectral_columns_equal_numpy_from_the_stored_labels_and_skeletons(random_result):
    W, plain = random_result
    assert not plain.has_spectral and plain.table["rel_spec_error"].isna().all()
    res = sweep(W, [1, 2, 3, 8], [2, 5, 9, 30], SELS, seed=1, layer="rand", spectral=True)
    check_spectral_against_numpy(W, res, rtol=1e-9)
    # the global ID's stored order is the pivoted QR of W.T (independently: SciPy's geqp3)
    _, _, piv = scipy.linalg.qr(W.T, pivoting=True)
    assert res.global_order == piv[:9].tolist()
    k1 = res.table[(res.table["k"] == 1) & (res.table["selection"] == "id") & res.table["feasible"]]
    np.testing.assert_allclose(k1["rel_spec_error"], k1["global_id_spec_same_r"], rtol=1e-12)
    s = np.linalg.svd(W, compute_uv=False)
    feasible = res.table[res.table["feasible"]]
    assert (feasible["rel_spec_error"] >= s[np.minimum(feasible["total_rank"], 23)] / s[0] - 1e-12).all()
    cols = [c for c in COLUMNS if c not in ("seconds", "rel_spec_error", "global_id_spec_same_r")]
    assert res.table[cols].equals(plain.table[cols])  # the rest of the table is unchanged


def test_spectral_columns_on_the_randomized_float32_path():
    W = np.random.default_rng(4).standard_normal((120, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    res = sweep(W, [2, 4], [3, 6], ["id", "centroid"], randomized=True, spectral=True, seed=2)
    assert res.table["randomized"].all()
    check_spectral_against_numpy(W, res, rtol=2e-5)  # float32 residuals


class Counter:
    """Counts the calls of the functions it wraps (monkeypatch them with .wrap)."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls = monkeypatch, {}

    def wrap(self, owner, name):
        real = getattr(owner, name)
        self.calls[name] = 0

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return real(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, counted)


def count_sweep_work(monkeypatch) -> dict:
    """Count k-means fits, QR orders (every cluster and global ID), spectra and whole sweeps."""
    counter = Counter(monkeypatch)
    counter.wrap(MinSizeKMeans, "fit")
    for name in ("_order_errors", "_sweep", "_global_spectrum", "spectrum", "top_spectrum",
                 "randomized_spectrum"):
        counter.wrap(sweep_module, name)
    return counter.calls


def test_adding_spectral_to_a_cached_sweep_clusters_nothing_and_extends_the_same_entry(
        tmp_path, monkeypatch):
    W = np.random.default_rng(5).standard_normal((48, 20))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([1, 3], [2, 4], SELS, seed=3)
    first = sweep_layer(W, spec, layer="L", cache=cache)
    assert not first.has_spectral
    (entry,) = tmp_path.rglob("*.json")
    assert entry == cache.path(sweep_key(W, spec, "L"))
    calls = count_sweep_work(monkeypatch)
    spectral_spec = SweepSpec([1, 3], [2, 4], SELS, seed=3, spectral=True)
    ticks = []
    extended = sweep_layer(W, spectral_spec, layer="L", cache=cache,
                           progress=lambda d, t, m: ticks.append((d, t)))
    assert set(calls.values()) == {0}, calls  # no k-means, no QR, no spectrum, no sweep
    assert extended.from_cache and extended.has_spectral and ticks[-1][0] == ticks[-1][1] > 0
    assert list(tmp_path.rglob("*")) == [entry.parent, entry]  # no second key, no temp file
    check_spectral_against_numpy(W, extended, rtol=1e-9)
    # the saved entry has them: served to both specs with no computation at all
    for asked in (spec, spectral_spec):
        again = sweep_layer(W, asked, layer="L", cache=cache, lookup_only=True)
        assert again is not None and again.has_spectral
        assert again.table[SPECTRAL_COLUMNS].equals(extended.table[SPECTRAL_COLUMNS])
    assert set(calls.values()) == {0}, calls
    monkeypatch.undo()
    direct = sweep_layer(W, spectral_spec, layer="L")  # no cache: one go
    np.testing.assert_allclose(direct.table[SPECTRAL_COLUMNS], extended.table[SPECTRAL_COLUMNS],
                               rtol=1e-12)
    # in memory (the app's store): the same, and the input result is left as it was
    again = add_spectral(W, first, spec)
    assert not first.has_spectral and again.has_spectral
    with pytest.raises(ValueError, match="pass the weight that was swept"):
        add_spectral(W[:40], first, spec)


def test_old_format_entry_loads_and_gets_only_what_is_missing(tmp_path, monkeypatch):
    """An entry written before the global order, s_1 and the global-ID spectral column were
    stored: it still serves the Frobenius sweep, and the spectral columns cost no k-means."""
    W = np.random.default_rng(6).standard_normal((40, 16))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([2, 4], [2, 3], ["id", "random"])
    fresh = sweep_layer(W, SweepSpec([2, 4], [2, 3], ["id", "random"], spectral=True), layer="old")
    payload = sweep_layer(W, spec, layer="old").to_payload()
    del payload["global_order"], payload["attrs"]["sigma_1"]
    split = payload["table"]
    drop = split["columns"].index("global_id_spec_same_r")
    split["columns"].pop(drop)
    for values in split["data"]:
        values.pop(drop)
    cache.save(sweep_key(W, spec, "old"), payload)

    calls = count_sweep_work(monkeypatch)
    old = sweep_layer(W, spec, layer="old", cache=cache)
    assert old.from_cache and old.global_order is None and not old.has_spectral
    assert list(old.table.columns) == COLUMNS and old.table["global_id_spec_same_r"].isna().all()
    np.testing.assert_allclose(old.table["rel_fro_error"], fresh.table["rel_fro_error"], rtol=1e-12)
    extended = sweep_layer(W, SweepSpec([2, 4], [2, 3], ["id", "random"], spectral=True),
                           layer="old", cache=cache)
    # recomputed: only what the entry lacked (s_1 and the global ID's order: one QR)
    assert calls["fit"] == calls["_sweep"] == 0 and calls["_order_errors"] == 1, calls
    np.testing.assert_allclose(extended.table[SPECTRAL_COLUMNS], fresh.table[SPECTRAL_COLUMNS],
                               rtol=1e-12)
    stored = json.loads(cache.path(sweep_key(W, spec, "old")).read_text())["payload"]
    assert stored["global_order"] == fresh.global_order
    assert stored["attrs"]["sigma_1"] == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)


@pytest.mark.parametrize("damage", ["label out of range", "skeleton row of another cluster",
                                    "selection missing", "global order out of range"])
def test_entry_with_unusable_clusterings_is_recomputed(tmp_path, damage):
    W = np.random.default_rng(7).standard_normal((30, 12))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([3], [2, 4], ["id"])
    first = sweep_layer(W, spec, layer="bad", cache=cache)
    path = cache.path(sweep_key(W, spec, "bad"))
    entry = json.loads(path.read_text())
    clustering = entry["payload"]["clusterings"][0]
    if damage == "label out of range":
        clustering["labels"][0] = 3
    elif damage == "skeleton row of another cluster":
        skeleton = clustering["selections"][0]["skeleton"]
        skeleton[0][0] = skeleton[1][0]
    elif damage == "selection missing":
        clustering["selections"].pop()
    else:
        entry["payload"]["global_order"][0] = 30
    path.write_text(json.dumps(entry))
    assert sweep_layer(W, spec, layer="bad", cache=cache, lookup_only=True) is None
    again = sweep_layer(W, spec, layer="bad", cache=cache)
    assert not again.from_cache
    assert again.clusters_json() == first.clusters_json()
