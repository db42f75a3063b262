"""2-D projections of a weight matrix's rows for the Cluster explorer: PCA now, UMAP soon after.

PCA takes the top two eigenvectors of the n x n Gram matrix (milliseconds). UMAP (umap-learn) is imported only when first asked for,
its numba kernels are compiled once per process by `warm_umap()`, and the exact
nearest-neighbour graph is computed up front with scikit-learn and handed to UMAP as
`precomputed_knn`, so a 1536-row layer projects in seconds. No Streamlit and no threads here:
the app runs UMAP in the background through `app/background.py`.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
import scipy.linalg as sla

_WARM_LOCK = threading.Lock()
_warm = False


def _rows(W: np.ndarray, normalize_rows: bool) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] < 3:
        raise ValueError(f"need a 2-D matrix with at least 3 rows, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("the matrix holds NaN or infinite values")
    if normalize_rows:
        norms = np.linalg.norm(W, axis=1, keepdims=True)
        W = W / np.where(norms > 0, norms, 1.0)
    return W


def _frame(xy: np.ndarray, method: str) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(xy)), "x": xy[:, 0], "y": xy[:, 1], "method": method})


def _top2(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Top-2 eigenpairs of the n x n Gram matrix X^T X (descending): cheaper than a full SVD.
    n = X.shape[1]
    gram = X.T @ X
    if n <= 2:
        w, V = np.linalg.eigh(gram)
    else:
        w, V = sla.eigh(gram, subset_by_index=[n - 2, n - 1])
    w, V = w[::-1][:2], V[:, ::-1][:, :2]
    if V.shape[1] < 2:  # a single column: the second axis is all zeros
        V = np.hstack([V, np.zeros((n, 1))])
        w = np.append(w, 0.0)
    return np.maximum(w, 0.0), V


def pca_2d(W: np.ndarray, *, normalize_rows: bool = False) -> pd.DataFrame:
    """Return the rows of `W` on their first two principal axes.

    Columns: row (row index of W), x, y (coordinates in the units of W's entries, centred),
    method ("PCA"). The sign of each axis is fixed so the largest |coordinate| is positive.
    """
    X = _rows(W, normalize_rows)
    X = X - X.mean(axis=0)
    _, V = _top2(X)
    xy = X @ V
    signs = np.sign(xy[np.abs(xy).argmax(axis=0), [0, 1]])
    return _frame(xy * np.where(signs == 0, 1.0, signs), "PCA")


def pca_explained(W: np.ndarray, *, normalize_rows: bool = False) -> tuple[float, float]:
    """Return the fractions (0..1) of the rows' variance on the first and second principal axes."""
    X = _rows(W, normalize_rows)
    X = X - X.mean(axis=0)
    w, _ = _top2(X)
    total = max(float(np.sum(X * X)), np.finfo(float).tiny)
    return float(w[0] / total), float(w[1] / total)


def knn_graph(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, distances), each (rows, n_neighbors): exact Euclidean neighbours, self first."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(X)
    dist, idx = nn.kneighbors(X)
    return idx.astype(np.int64), dist.astype(np.float32)


def warm_umap() -> None:
    """Compile UMAP's numba kernels once per process (a few seconds the first time, then free)."""
    global _warm
    with _WARM_LOCK:
        if _warm:
            return
        rng = np.random.default_rng(0)
        _umap_xy(rng.normal(size=(40, 4)), n_neighbors=5, seed=0, n_epochs=10)
        _warm = True


def _umap_xy(X: np.ndarray, *, n_neighbors: int, seed: int, n_epochs: int | None) -> np.ndarray:
    import umap  # heavy (numba, pynndescent): imported only here

    k = int(min(n_neighbors, len(X) - 1))
    idx, dist = knn_graph(X, k)
    reducer = umap.UMAP(
        n_neighbors=k, n_components=2, random_state=seed, n_epochs=n_epochs,
        precomputed_knn=(idx, dist, None), init="spectral" if len(X) > k + 2 else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no search index (we never call transform); n_jobs=1
        return np.asarray(reducer.fit_transform(X), dtype=np.float64)


def umap_2d(
    W: np.ndarray,
    *,
    normalize_rows: bool = False,
    n_neighbors: int = 15,
    seed: int = 0,
    n_epochs: int | None = None,
) -> pd.DataFrame:
    """Return the rows of `W` embedded in 2-D by UMAP (seeded, so repeatable).

    Columns: row, x, y (UMAP coordinates, no units), method ("UMAP"). The exact kNN graph
    (`n_neighbors`, self included) is computed first with scikit-learn.
    """
    X = _rows(W, normalize_rows)
    warm_umap()
    return _frame(_umap_xy(X, n_neighbors=n_neighbors, seed=seed, n_epochs=n_epochs), "UMAP")


def umap_is_warm() -> bool:
    """Return True once UMAP's kernels are compiled in this process."""
    return _warm
