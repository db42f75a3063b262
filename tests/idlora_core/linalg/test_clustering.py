"""MinSizeKMeans: minimum cluster size, determinism, geometry and input errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from idlora_core.linalg.clustering import MinSizeKMeans, repair_min_size

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def blobs(sizes, n=12, spread=0.05, seed=0):
    """Rows in well-separated Gaussian blobs of the given sizes; returns (W, true labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), n)) * 5
    W = np.vstack([c + spread * rng.standard_normal((s, n)) for c, s in zip(centres, sizes, strict=True)])
    return W, np.repeat(np.arange(len(sizes)), sizes)


def test_recovers_separated_clusters():
    W, truth = blobs([30, 20, 25])
    km = MinSizeKMeans(3, min_size=5).fit(W)
    assert adjusted_rand_score(truth, km.labels_) == 1.0
    assert km.labels_.dtype == np.int64 and km.labels_.shape == (75,)
    assert not km.repaired_


@pytest.mark.parametrize("normalize_rows", [False, True])
@pytest.mark.parametrize("k,min_size", [(3, 10), (4, 12), (6, 8)])
def test_min_size_holds_and_centres_are_means(k, min_size, normalize_rows):
    W, _ = blobs([40, 4, 3, 1], seed=k)  # natural clusters far below min_size
    km = MinSizeKMeans(k, min_size=min_size, normalize_rows=normalize_rows).fit(W)
    sizes = np.bincount(km.labels_, minlength=k)
    assert sizes.sum() == W.shape[0] and len(sizes) == k
    assert sizes.min() >= min_size
    Z = W / np.linalg.norm(W, axis=1, keepdims=True) if normalize_rows else W
    for c in range(k):
        np.testing.assert_allclose(km.cluster_centers_[c], Z[km.labels_ == c].mean(0), atol=1e-12)
    d2 = ((Z[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_allclose(km.inertia_, d2[np.arange(len(Z)), km.labels_].sum(), rtol=1e-10)


def test_repair_was_needed_and_tight():
    W, _ = blobs([46, 2, 2])
    km = MinSizeKMeans(3, min_size=16).fit(W)
    assert km.repaired_
    assert sorted(np.bincount(km.labels_)) == [16, 16, 18]


def test_same_seed_same_labels_and_the_seed_reaches_kmeans():
    W = np.random.default_rng(1).standard_normal((120, 16))  # no structure: seeds disagree
    a = MinSizeKMeans(5, min_size=10, random_state=3).fit(W).labels_
    b = MinSizeKMeans(5, min_size=10, random_state=3).fit(W).labels_
    np.testing.assert_array_equal(a, b)
    # each seed gives scikit-learn's own KMeans partition for that seed (no repair needed at
    # min_size=1), and those partitions differ: random_state is passed on, not dropped
    labels = {}
    for seed in range(4):
        km = MinSizeKMeans(5, random_state=seed, n_init=1).fit(W)
        ref = KMeans(5, random_state=seed, n_init=1, max_iter=100).fit(W)
        assert not km.repaired_
        np.testing.assert_array_equal(km.labels_, ref.labels_)
        labels[seed] = km.labels_
    scores = [adjusted_rand_score(labels[0], labels[s]) for s in (1, 2, 3)]
    assert min(scores) < 0.9, scores


def test_normalized_geometry_ignores_row_scale():
    W, truth = blobs([20, 20, 20], spread=0.02)
    scales = np.random.default_rng(2).uniform(0.1, 10.0, size=(60, 1))
    plain = MinSizeKMeans(3, normalize_rows=True).fit(W).labels_
    scaled = MinSizeKMeans(3, normalize_rows=True).fit(W * scales).labels_
    assert adjusted_rand_score(plain, scaled) == 1.0
    assert adjusted_rand_score(truth, scaled) == 1.0


def test_single_cluster():
    W = np.arange(12.0).reshape(4, 3)
    km = MinSizeKMeans(1, min_size=4).fit(W)
    np.testing.assert_array_equal(km.labels_, np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(km.cluster_centers_[0], W.mean(0))


def test_repair_moves_the_cheapest_row():
    # 4 rows, 2 clusters; cluster 1 is empty and needs 1 row. Row 2 costs 0.5 more, the others more.
    d2 = np.array([[0.0, 5.0], [0.0, 3.0], [1.0, 1.5], [0.0, 9.0]])
    labels = repair_min_size(d2, np.zeros(4, dtype=np.int64), 1)
    np.testing.assert_array_equal(labels, [0, 0, 1, 0])


@pytest.mark.parametrize(
    "W,k,min_size,match",
    [
        (np.ones((10, 3)), 0, 1, "n_clusters=0"),
        (np.ones((10, 3)), 2, 0, "min_size=0"),
        (np.ones((10, 3)), 4, 3, "exceeds the 10 rows"),
        (np.ones(10), 2, 1, "must be 2-D"),
        (np.full((4, 3), np.nan), 2, 1, "non-finite"),
        (np.ones((0, 3)), 1, 1, "must not be empty"),
    ],
)
def test_bad_inputs(W, k, min_size, match):
    with pytest.raises(ValueError, match=match):
        MinSizeKMeans(k, min_size=min_size).fit(W)


def test_is_a_scikit_learn_estimator():
    """clone, get_params / set_params, fit(X, y=None), fit_predict and keyword-only parameters."""
    from sklearn.base import ClusterMixin, clone, is_classifier

    km = MinSizeKMeans(4, min_size=6, normalize_rows=True, random_state=5, n_init=2)
    assert isinstance(km, ClusterMixin) and not is_classifier(km)
    params = km.get_params()
    assert params == {"n_clusters": 4, "min_size": 6, "normalize_rows": True, "random_state": 5,
                      "n_init": 2, "max_iter": 100, "max_repair_iter": 10}
    twin = clone(km)
    assert twin is not km and twin.get_params() == params and not hasattr(twin, "labels_")
    W = np.random.default_rng(0).normal(size=(60, 5))
    labels = km.fit(W, y=np.arange(60)).labels_  # y is ignored
    np.testing.assert_array_equal(twin.fit_predict(W), labels)
    assert km.n_features_in_ == 5 and np.bincount(labels).min() >= 6
    assert twin.set_params(n_clusters=2) is twin and twin.fit(W).cluster_sizes().size == 2
    with pytest.raises(TypeError):
        MinSizeKMeans(4, 6)  # min_size is keyword-only
    assert "MinSizeKMeans(min_size=6" in repr(clone(km).set_params(n_clusters=8))
