"""Skeleton selection: shapes, each selection against an independent computation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

from idlora_core.linalg.clustering import MinSizeKMeans
from idlora_core.linalg.selection import select_skeleton

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def clustered():
    W = np.random.default_rng(0).standard_normal((90, 20))
    labels = MinSizeKMeans(4, min_size=8).fit(W).labels_
    return W, labels


@pytest.mark.parametrize("selection", ["id", "centroid", "random"])
def test_shape_membership_and_prefix(clustered, selection):
    W, labels = clustered
    sk8 = select_skeleton(W, labels, 8, selection, seed=1)
    sk3 = select_skeleton(W, labels, 3, selection, seed=1)
    assert len(sk8) == 4
    for c, (a, b) in enumerate(zip(sk8, sk3, strict=True)):
        assert a.dtype == np.int64 and a.shape == (8,)
        assert len(set(a.tolist())) == 8
        assert (labels[a] == c).all()  # global indices inside cluster c
        np.testing.assert_array_equal(a[:3], b)  # one order serves every rank


def test_id_is_pivoted_qr_of_each_cluster(clustered):
    W, labels = clustered
    for c, skel in enumerate(select_skeleton(W, labels, 6, "id")):
        members = np.flatnonzero(labels == c)
        _, _, piv = sla.qr(W[members].T, pivoting=True)
        np.testing.assert_array_equal(skel, members[piv[:6]])


@pytest.mark.parametrize("normalize_rows", [False, True])
def test_centroid_takes_the_nearest_rows(clustered, normalize_rows):
    W, labels = clustered
    Z = W / np.linalg.norm(W, axis=1, keepdims=True) if normalize_rows else W
    for c, skel in enumerate(select_skeleton(W, labels, 5, "centroid", normalize_rows=normalize_rows)):
        members = np.flatnonzero(labels == c)
        dist = np.linalg.norm(Z[members] - Z[members].mean(0), axis=1)
        chosen = np.linalg.norm(Z[skel] - Z[members].mean(0), axis=1)
        assert np.all(np.diff(chosen) >= 0)
        assert chosen.max() <= np.sort(dist)[5]  # no unchosen row is strictly nearer
        np.testing.assert_allclose(np.sort(chosen), np.sort(dist)[:5])


def test_random_is_seeded(clustered):
    W, labels = clustered
    a = select_skeleton(W, labels, 8, "random", seed=4)
    b = select_skeleton(W, labels, 8, "random", seed=4)
    c = select_skeleton(W, labels, 8, "random", seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_single_cluster_id_is_global_id():
    W = np.random.default_rng(3).standard_normal((30, 12))
    (skel,) = select_skeleton(W, np.zeros(30, dtype=int), 7, "id")
    _, _, piv = sla.qr(W.T, pivoting=True)
    np.testing.assert_array_equal(skel, piv[:7])


@pytest.mark.parametrize(
    "labels,r,selection,match",
    [
        (np.repeat([0, 1, 2, 3], [10, 10, 5, 5]), 8, "id", "k\\*r=4\\*8=32 exceeds the 30 rows"),
        (np.repeat([0, 1, 2], [20, 5, 5]), 6, "id", "cluster 1 has 5 rows, fewer than r=6"),
        (np.repeat([0, 1], 15), 9, "id", "r=9 exceeds the 8 columns"),
        (np.repeat([0, 1], 15), 0, "id", "r=0"),
        (np.repeat([0, 1], 15), 2, "pca", "selection must be one of"),
        (np.repeat([0, 2], 15), 2, "id", "cluster 1 is empty"),
        (np.zeros(29, dtype=int), 2, "id", "labels must have shape \\(30,\\)"),
        (np.repeat([0, -1], 15), 2, "id", "labels must be >= 0"),
    ],
)
def test_bad_requests(labels, r, selection, match):
    W = np.random.default_rng(0).standard_normal((30, 8))
    with pytest.raises(ValueError, match=match):
        select_skeleton(W, labels, r, selection)


def test_bad_weights():
    with pytest.raises(ValueError, match="non-finite"):
        select_skeleton(np.full((6, 3), np.inf), np.zeros(6, dtype=int), 2, "id")
    with pytest.raises(ValueError, match="must be 2-D"):
        select_skeleton(np.ones((2, 3, 4)), np.zeros(2, dtype=int), 1, "id")
