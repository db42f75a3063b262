"""2-D projections of weight rows: PCA against numpy's SVD, the kNN graph against brute force,
UMAP (slow: numba compilation) for shape, determinism and cluster separation."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.projection import knn_graph, pca_2d, pca_explained, umap_2d


def _blobs(seed: int = 0, per: int = 40, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=8.0, size=(3, n))
    labels = np.repeat(np.arange(3), per)
    return centers[labels] + rng.normal(size=(3 * per, n)), labels


def test_pca_matches_numpy_svd():
    W, _ = _blobs()
    df = pca_2d(W)
    assert list(df.columns) == ["row", "x", "y", "method"]
    assert list(df["row"]) == list(range(len(W)))
    X = W - W.mean(axis=0)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    ref = X @ Vt[:2].T
    got = df[["x", "y"]].to_numpy()
    for j in range(2):  # equal up to the sign of each axis
        assert min(np.abs(got[:, j] - ref[:, j]).max(), np.abs(got[:, j] + ref[:, j]).max()) < 1e-9
    # pairwise distances in the plane equal those of the rank-2 projection
    assert np.allclose(np.linalg.norm(got[0] - got[5]), np.linalg.norm(ref[0] - ref[5]))
    ev = pca_explained(W)
    assert np.allclose(ev, (s[:2] ** 2) / np.sum(s**2))


def test_pca_normalized_rows_equals_pca_of_unit_rows():
    W, _ = _blobs(1)
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    a = pca_2d(W, normalize_rows=True)[["x", "y"]].to_numpy()
    b = pca_2d(unit)[["x", "y"]].to_numpy()
    assert np.allclose(a, b)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="2-D"):
        pca_2d(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        pca_2d(np.full((4, 3), np.nan))


def test_knn_graph_matches_brute_force():
    W, _ = _blobs(2, per=10)
    idx, dist = knn_graph(W, 5)
    d = np.linalg.norm(W[:, None, :] - W[None, :, :], axis=2)
    ref = np.argsort(d, axis=1, kind="stable")[:, :5]
    assert idx.shape == dist.shape == (30, 5)
    assert np.array_equal(idx[:, 0], np.arange(30))  # self first, at distance 0
    assert np.allclose(dist, np.take_along_axis(d, ref, axis=1), atol=1e-4)


@pytest.mark.slow
def test_umap_separates_blobs_and_is_repeatable():
    W, labels = _blobs(3)
    a = umap_2d(W, n_neighbors=10, seed=0)
    b = umap_2d(W, n_neighbors=10, seed=0)
    assert list(a.columns) == ["row", "x", "y", "method"] and (a["method"] == "UMAP").all()
    assert np.allclose(a[["x", "y"]], b[["x", "y"]])
    xy = a[["x", "y"]].to_numpy()
    centers = np.stack([xy[labels == c].mean(axis=0) for c in range(3)])
    within = max(np.linalg.norm(xy[labels == c] - centers[c], axis=1).mean() for c in range(3))
    between = min(np.linalg.norm(centers[i] - centers[j]) for i in range(3) for j in range(i))
    assert between > 2 * within
