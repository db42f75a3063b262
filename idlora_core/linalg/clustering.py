"""Row clustering with a minimum cluster size, for choosing ID-LoRA skeleton rows.

`MinSizeKMeans` groups the m rows of a weight matrix into k clusters so that every
cluster holds at least `min_size` rows (ID-LoRA takes r rows from each cluster, so
`min_size = r`). It is a scikit-learn estimator (`BaseEstimator`, `ClusterMixin`):
`__init__` only stores its parameters (all but `n_clusters` keyword-only), `fit(X, y=None)`
checks them and returns self, learned attributes end in `_`, and `clone`, `get_params`,
`set_params` and `fit_predict` work as for any scikit-learn clusterer.

Algorithm (deterministic for a given `random_state`):
  1. Geometry: the rows of W, or the rows scaled to unit L2 norm (`normalize_rows=True`,
     cosine geometry; an all-zero row stays zero).
  2. scikit-learn `KMeans` (Lloyd, k-means++ seeding, `n_init` restarts, seeded).
  3. If some cluster has fewer than `min_size` rows, a constrained Lloyd loop follows:
     a greedy repair fills the smallest deficient cluster (lowest id on ties) with the rows
     whose squared distance to its centre grows least over the distance to their current
     centre (ties: lowest row index), taking a row only while its own cluster keeps at
     least `min_size` rows, and repeats for the next deficient cluster; then the centres
     are recomputed as cluster means, every row is reassigned to its nearest centre and
     repaired again, until the labels stop changing (at most `max_repair_iter` rounds). The result always satisfies the minimum size.
`cluster_centers_` are the means of the final clusters in the clustering geometry.

k-means-constrained (an exact min-cost-flow formulation) is not used: it needs ortools.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans

from idlora_core.linalg.validation import check_weight


def row_geometry(W: np.ndarray, normalize_rows: bool = False) -> np.ndarray:
    """Return the rows used for clustering: W itself, or W with rows scaled to unit L2 norm
    (float32 stays float32, anything else becomes float64)."""
    W = check_weight(W)
    if not normalize_rows:
        return W
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(norms > 0, norms, 1.0)


def cluster_means(Z: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return the (k, n) means of the rows of Z in each cluster (clusters must be non-empty)."""
    onehot = np.zeros((k, Z.shape[0]), dtype=Z.dtype)
    onehot[labels, np.arange(Z.shape[0])] = 1.0
    return (onehot @ Z) / onehot.sum(axis=1, keepdims=True)


def squared_distances(Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Return the (m, k) squared Euclidean distances between the rows of Z and the centres."""
    z2 = np.einsum("ij,ij->i", Z, Z)  # no (m, n) temporary
    d2 = z2[:, None] - 2.0 * (Z @ centers.T) + (centers * centers).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def repair_min_size(d2: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Return labels with every cluster >= min_size rows, moving the rows that cost least.

    d2: (m, k) squared distances to the centres; labels: (m,) current assignment.
    Requires k * min_size <= m. See the module docstring for the rule.
    """
    m, k = d2.shape
    labels = labels.astype(np.int64, copy=True)
    sizes = np.bincount(labels, minlength=k)
    rows = np.arange(m)
    while (sizes < min_size).any():
        target = int(np.argmin(sizes))  # smallest cluster first, lowest id on ties
        cost = d2[:, target] - d2[rows, labels]
        cost = np.where((sizes[labels] > min_size) & (labels != target), cost, np.inf)
        for i in np.argsort(cost, kind="stable"):  # cheapest first, lowest row on ties
            if sizes[target] >= min_size or not np.isfinite(cost[i]):
                break
            if sizes[labels[i]] > min_size:  # its cluster can still spare a row
                sizes[labels[i]] -= 1
                labels[i] = target
                sizes[target] += 1
    return labels


class MinSizeKMeans(ClusterMixin, BaseEstimator):
    """k-means on the rows of a matrix with every cluster holding at least `min_size` rows.

    Attributes after `fit(W)`: `labels_` (int64, shape (m,), values 0..k-1),
    `cluster_centers_` (float64, shape (k, n), in the clustering geometry),
    `repaired_` (True when the minimum-size repair had to move rows),
    `inertia_` (sum of squared distances of the rows to their centres).
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        min_size: int = 1,
        normalize_rows: bool = False,
        random_state: int = 0,
        n_init: int = 4,
        max_iter: int = 100,
        max_repair_iter: int = 10,
    ) -> None:
        self.n_clusters = n_clusters
        self.min_size = min_size
        self.normalize_rows = normalize_rows
        self.random_state = random_state
        self.n_init = n_init
        self.max_iter = max_iter
        self.max_repair_iter = max_repair_iter

    def _check(self, m: int) -> None:
        k, s = self.n_clusters, self.min_size
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"n_clusters={k!r}: the number of clusters must be an integer >= 1")
        if not isinstance(s, int | np.integer) or s < 1:
            raise ValueError(f"min_size={s!r}: the minimum cluster size must be an integer >= 1")
        if k * s > m:
            raise ValueError(
                f"n_clusters*min_size={k}*{s}={k * s} exceeds the {m} rows: "
                "the clusters cannot all reach the minimum size"
            )

    def fit(self, X: np.ndarray, y: None = None) -> MinSizeKMeans:
        """Cluster the rows of X (m, n); returns self with `labels_` and `cluster_centers_` set.
        `y` is ignored (scikit-learn's signature)."""
        W = check_weight(X)
        m = W.shape[0]
        self._check(m)
        k = int(self.n_clusters)
        Z = row_geometry(W, self.normalize_rows)
        self.repaired_ = False
        if k == 1:
            labels = np.zeros(m, dtype=np.int64)
        else:
            km = KMeans(
                n_clusters=k, n_init=self.n_init, max_iter=self.max_iter,
                random_state=self.random_state,
            ).fit(Z)
            labels = km.labels_.astype(np.int64)
            if (np.bincount(labels, minlength=k) < self.min_size).any():
                labels = self._constrained_lloyd(Z, labels, km.cluster_centers_)
        self.labels_ = labels
        self.n_features_in_ = W.shape[1]
        self.cluster_centers_ = cluster_means(Z, labels, k)
        self.inertia_ = float(squared_distances(Z, self.cluster_centers_)[np.arange(m), labels].sum())
        return self

    def _constrained_lloyd(self, Z: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
        self.repaired_ = True
        k = int(self.n_clusters)
        labels = repair_min_size(squared_distances(Z, centers), labels, self.min_size)
        for _ in range(self.max_repair_iter):
            d2 = squared_distances(Z, cluster_means(Z, labels, k))
            new = repair_min_size(d2, np.argmin(d2, axis=1), self.min_size)
            if np.array_equal(new, labels):
                break
            labels = new
        return labels

    def cluster_sizes(self) -> np.ndarray:
        """Return the number of rows in each cluster (int64, shape (k,))."""
        return np.bincount(self.labels_, minlength=int(self.n_clusters))
