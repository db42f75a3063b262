"""Clustering sensitivity: ARI against scikit-learn and a pair count, moved rows on constructed
relabellings, the spread over k-means seeds recomputed from one sweep per seed."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from analysis.sensitivity import (
    SPREAD_COLUMNS,
    clustering_sensitivity,
    match_labels,
    seed_sweeps,
    sensitivity_from_labels,
    spread_reading,
    spread_table,
    sweep_sensitivity,
    sweep_spread,
)
from analysis.sweep import SweepSpec, sweep_layer
from idlora_core.cache import ResultCache
from idlora_core.linalg.clustering import MinSizeKMeans

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def clustered_rows(m: int = 60, n: int = 12, k: int = 3, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """m rows around k random centres: a layer whose k-means is neither trivial nor random."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, n)) * 2
    return centres[np.arange(m) % k] + noise * rng.standard_normal((m, n))


def ari_by_pair_counting(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert & Arabie's adjusted Rand index from the contingency table, written out."""
    n = len(a)
    table = pd.crosstab(a, b).to_numpy()
    index = sum(comb(int(x), 2) for x in table.ravel())
    rows = sum(comb(int(x), 2) for x in table.sum(axis=1))
    cols = sum(comb(int(x), 2) for x in table.sum(axis=0))
    expected = rows * cols / comb(n, 2)
    return (index - expected) / ((rows + cols) / 2 - expected)


def test_identical_seeds_give_ari_one_and_move_nothing():
    W = clustered_rows(noise=1.5)  # noisy enough that other seeds do differ
    first = MinSizeKMeans(3, min_size=4, random_state=5).fit(W).labels_
    again = MinSizeKMeans(3, min_size=4, random_state=5).fit(W.copy()).labels_
    result = sensitivity_from_labels({5: first, 6: again})
    assert result.ari.to_numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert result.n_moved == 0 and result.mean_ari == 1.0
    # every seed agrees with itself: the diagonal of a real run is 1, the matrix symmetric
    run = clustering_sensitivity(W, 3, [0, 1, 2, 3], min_size=4)
    a = run.ari.to_numpy()
    assert np.array_equal(np.diag(a), np.ones(4)) and np.array_equal(a, a.T)
    assert list(run.ari.index) == [0, 1, 2, 3]


def test_ari_matches_sklearn_and_pair_counting_on_a_constructed_pair():
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    b = np.array([1, 1, 1, 0, 0, 0, 2, 2, 2, 2, 1, 1])
    c = np.array([2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1])  # a renamed
    result = sensitivity_from_labels({10: a, 11: b, 12: c})
    ari = result.ari
    assert ari.loc[10, 11] == pytest.approx(adjusted_rand_score(a, b), abs=1e-15)
    assert ari.loc[10, 11] == pytest.approx(ari_by_pair_counting(a, b), abs=1e-12)
    assert ari.loc[11, 12] == pytest.approx(ari_by_pair_counting(b, c), abs=1e-12)
    assert ari.loc[10, 12] == 1.0  # a renaming is the same partition
    assert ari.loc[10, 11] < 0.5
    upper = [ari.loc[10, 11], ari.loc[10, 12], ari.loc[11, 12]]
    assert result.mean_ari == pytest.approx(np.mean(upper))
    assert result.per_seed()["ari_vs_reference"].tolist() == pytest.approx([1.0, ari.loc[10, 11], 1.0])


def test_a_permutation_moves_no_row_and_three_changed_rows_move_three():
    rng = np.random.default_rng(1)
    ref = np.repeat(np.arange(4), 10)  # 40 rows, 4 clusters of 10
    perm = np.array([2, 0, 3, 1])
    renamed = perm[ref]
    assert np.array_equal(match_labels(ref, renamed), ref)  # the renaming is undone
    changed = renamed.copy()
    rows = np.array([3, 17, 25])  # into another cluster each
    changed[rows] = perm[(ref[rows] + 1) % 4]
    shuffled = rng.permutation(4)[ref]  # and one more renaming of the reference
    result = sensitivity_from_labels({0: ref, 1: renamed, 2: changed, 3: shuffled})
    assert result.per_seed()["rows_moved"].tolist() == [0, 0, 3, 0]
    assert result.n_moved == 3 and result.share_moved == pytest.approx(3 / 40)
    assert np.flatnonzero(result.moved_rows).tolist() == rows.tolist()
    table = result.rows()
    assert table["row"].tolist() == [3, 17, 25] and table["seeds_moved"].tolist() == [1, 1, 1]
    assert table["reference_cluster"].tolist() == ref[rows].tolist()
    assert table["clusters"].tolist() == [f"{c} {c} {(c + 1) % 4} {c}" for c in ref[rows]]
    assert "3 of 40 rows (7.5 %)" in result.reading()


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="same rows|same layer"):
        sensitivity_from_labels({0: np.zeros(5, int), 1: np.zeros(6, int)})
    with pytest.raises(ValueError, match="at least one"):
        sensitivity_from_labels({})
    with pytest.raises(ValueError, match="cluster ids"):
        sensitivity_from_labels({0: np.array([0.5, 1.0])})
    with pytest.raises(ValueError, match="at least one seed"):
        clustering_sensitivity(clustered_rows(), 3, [])
    with pytest.raises(ValueError, match=">= 0"):
        clustering_sensitivity(clustered_rows(), 3, [-1])
    with pytest.raises(ValueError, match="exceeds the 60 rows"):
        clustering_sensitivity(clustered_rows(), 3, [0], min_size=21)


SPEC = SweepSpec(ks=(1, 2, 3), ranks=(2, 4, 30), selections=("id", "centroid", "random"))
SEEDS = [0, 1, 2, 3]


def test_rel_error_std_recomputed_from_one_sweep_per_seed(tmp_path):
    W = clustered_rows(m=48, n=16, noise=1.2)
    cache = ResultCache(tmp_path)
    steps: list[tuple[int, int]] = []
    spread = sweep_spread(W, SPEC, SEEDS, layer="toy", cache=cache,
                          progress=lambda done, total, _msg: steps.append((done, total)))
    assert steps and steps[-1][0] == steps[-1][1] and all(d <= t for d, t in steps)
    # independent: sweep_layer per seed, numpy's mean / std (ddof 1) per configuration
    per_seed = [sweep_layer(W, SweepSpec(SPEC.ks, SPEC.ranks, SPEC.selections, seed=s), layer="toy").table
                for s in SEEDS]
    errors = np.stack([t["rel_fro_error"].to_numpy() for t in per_seed])  # (seeds, configs)
    assert list(spread.columns[-len(SPREAD_COLUMNS):]) == SPREAD_COLUMNS
    feasible = spread["feasible"].to_numpy()
    assert (~feasible).sum() == 9  # r = 30: 30 > n = 16 at every k and selection
    np.testing.assert_allclose(spread["rel_error_std"][feasible], np.std(errors, axis=0, ddof=1)[feasible],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(spread["rel_error_mean"][feasible], errors.mean(axis=0)[feasible], rtol=1e-12)
    np.testing.assert_allclose(spread["rel_error_min"][feasible], errors.min(axis=0)[feasible])
    np.testing.assert_allclose(spread["rel_error_max"][feasible], errors.max(axis=0)[feasible])
    assert spread["rel_error_std"][~feasible].isna().all()
    assert (spread["n_cluster_seeds"] == np.where(feasible, 4, 0)).all()
    # the table is the first seed's sweep; k = 1 has one cluster whatever the seed (id: no spread)
    np.testing.assert_allclose(spread["rel_fro_error"], per_seed[0]["rel_fro_error"])
    one = spread[(spread["k"] == 1) & (spread["selection"] == "id") & spread["feasible"]]
    assert (one["rel_error_std"] == 0).all()
    assert (spread[(spread["k"] == 3) & feasible]["rel_error_std"] > 0).any()  # the seed matters
    assert spread.attrs["cluster_seeds"] == SEEDS
    # asked again: every seed's sweep comes from the cache, same numbers
    again = seed_sweeps(W, SPEC, SEEDS, layer="toy", cache=cache)
    assert all(r.from_cache for r in again.values())
    pd.testing.assert_frame_equal(spread_table(again), spread)


def test_sweep_sensitivity_uses_the_sweeps_own_clusters():
    W = clustered_rows(m=48, n=16, noise=1.2)
    results = seed_sweeps(W, SPEC, SEEDS)
    result = sweep_sensitivity(results, 3)
    for i, seed in enumerate(SEEDS):
        assert np.array_equal(result.labels[i], results[seed].labels(3))
    # the same clusters from k-means directly, with the sweep's minimum size (largest feasible r)
    direct = clustering_sensitivity(W, 3, SEEDS, min_size=4, n_init=4)
    assert np.array_equal(direct.labels, result.labels)
    pd.testing.assert_frame_equal(direct.ari, result.ari)
    with pytest.raises(ValueError, match="no clusters at k = 5"):
        sweep_sensitivity(results, 5)


def test_spread_reading_quotes_the_table():
    W = clustered_rows(m=48, n=16, noise=1.2)
    spread = spread_table(seed_sweeps(W, SPEC, SEEDS))
    row = spread[(spread["k"] == 3) & (spread["r"] == 4) & (spread["selection"] == "id")].iloc[0]
    text = spread_reading(spread, 3, 4, "id")
    assert f"{row['rel_error_mean']:.4f} ± {row['rel_error_std']:.4f}" in text and "4 seeds" in text
    assert f"min {row['rel_error_min']:.4f}, max {row['rel_error_max']:.4f}" in text
    assert "No feasible" in spread_reading(spread, 3, 30, "id")
    # the verdict follows min / max against SVD(r): moved across it, it changes
    for svd, verdict in ((row["rel_error_max"] + 0.01, "beats it under every seed"),
                         (row["rel_error_min"] - 0.01, "loses to it under every seed"),
                         (row["rel_error_mean"], "under some seeds only")):
        moved = spread.copy()
        moved.loc[row.name, "svd_same_r"] = svd
        assert verdict in spread_reading(moved, 3, 4, "id")


def test_the_numbers_docs_lab_quotes(minilm_weights):
    """docs/LAB.md, extra exercise: MiniLM block-0 query, the lab's default grid, seeds 0-4."""
    W = minilm_weights.weight("encoder.layer.0.attention.self.query")
    results = seed_sweeps(W, SweepSpec(ks=(1, 2, 4, 8), ranks=(4, 8, 16, 32)), range(5))
    at4 = sweep_sensitivity(results, 4)
    assert round(at4.mean_ari, 2) == 0.13 and at4.n_moved == 362
    assert at4.per_seed()["ari_vs_reference"].round(2).tolist() == [1.0, 0.17, 0.03, 0.08, 0.07]
    assert round(sweep_sensitivity(results, 2).mean_ari, 2) == 0.33
    assert round(sweep_sensitivity(results, 8).mean_ari, 2) == 0.06
    spread = spread_table(results)
    text = {s: spread_reading(spread, 4, 8, s) for s in ("id", "centroid", "random")}
    assert "0.8769 ± 0.0039" in text["id"] and "min 0.8735, max 0.8820" in text["id"]
    assert "global SVD at r = 8: 0.9127" in text["id"] and "beats it under every seed" in text["id"]
    assert "0.9453 ± 0.0036" in text["centroid"] and "loses to it under every seed" in text["centroid"]
    assert "0.9168 ± 0.0062" in text["random"] and "min 0.9101, max 0.9239" in text["random"]
    assert "under some seeds only" in text["random"]
