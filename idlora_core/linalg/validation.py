"""Input checks shared by the decomposition, clustering and selection code.

Every check raises a `ValueError` whose message names the offending value and says why
it is wrong; nothing here computes anything else.
"""

from __future__ import annotations

import numpy as np

from idlora_core.config import SELECTIONS  # "id", "centroid", "random": the config's Literal

__all__ = ["SELECTIONS", "check_labels", "check_rank", "check_selection", "check_weight", "rank_problem"]


def check_weight(W: object, name: str = "W") -> np.ndarray:
    """Return `W` as a 2-D float array (m, n): float32 input stays float32 (no copy of a large
    layer), anything else becomes float64. ValueError if it is not 2-D, empty or finite."""
    dtype = np.float32 if getattr(W, "dtype", None) == np.float32 else np.float64
    try:
        arr = np.asarray(W, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 2-D array of numbers: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    # A float64 sum is finite iff every entry is (barring overflow, then checked entry-wise):
    # no (m, n) boolean temporary for a large layer.
    if not np.isfinite(arr.sum(dtype=np.float64)) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf)")
    return arr


def check_selection(selection: str) -> str:
    """Return `selection` if it is one of SELECTIONS; ValueError otherwise."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    return selection


def rank_problem(m: int, n: int, k: int, r: int) -> str | None:
    """Return why k clusters of r skeleton rows do not fit an (m, n) matrix, or None if they do."""
    if k < 1:
        return f"k={k}: the number of clusters must be at least 1"
    if r < 1:
        return f"r={r}: the rank must be at least 1"
    if k > m:
        return f"k={k} exceeds the {m} rows of the matrix"
    if r > n:
        return f"r={r} exceeds the {n} columns of the matrix (at most n independent rows)"
    if k * r > m:
        return f"k*r={k}*{r}={k * r} exceeds the {m} rows: every cluster needs at least r={r} rows"
    return None


def check_rank(m: int, n: int, k: int, r: int) -> None:
    """Raise ValueError when k clusters of r skeleton rows do not fit an (m, n) matrix."""
    problem = rank_problem(m, n, k, r)
    if problem is not None:
        raise ValueError(problem)


def check_labels(labels: object, m: int) -> tuple[np.ndarray, int]:
    """Return (labels as int64, k) for a cluster assignment of m rows with every id 0..k-1 used."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != m:
        raise ValueError(f"labels must have shape ({m},) (one cluster id per row), got {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError("labels must be integer cluster ids")
    lab = lab.astype(np.int64)
    if lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(lab.min())}")
    k = int(lab.max()) + 1
    sizes = np.bincount(lab, minlength=k)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        raise ValueError(f"labels must use every cluster id 0..{k - 1}; cluster {int(empty[0])} is empty")
    return lab, k
