"""Skeleton-row selection for ID-LoRA: which r rows of each cluster become the frozen A_c.

Selections (docs/THEORY.md), each defined as an ORDER of a cluster's rows whose first r rows
are the rank-r skeleton (so one order serves every rank):
  - `centroid`: rows by increasing distance to the cluster centroid (the mean of the
    cluster's rows in the clustering geometry: raw rows, or L2-normalised rows when
    `normalize_rows=True`); ties broken by row index. The paper's choice.
  - `id`: the skeleton order of the cluster's interpolative decomposition, i.e. the pivot
    order of a column-pivoted QR of W[cluster].T (on the raw rows, since the ID
    reconstructs W). The theory-backed choice. Large clusters can use the randomized
    sketch-then-pivot ID (`randomized=True`, or automatically by size).
  - `random`: a seeded random permutation of the cluster (numpy generator seeded with
    [seed, cluster id]). The ablation baseline.
Indices returned are GLOBAL row indices of W.
"""

from __future__ import annotations

import numpy as np

from idlora_core.linalg.clustering import row_geometry
from idlora_core.linalg.decomposition import row_id
from idlora_core.linalg.randomized import randomized_row_id, use_randomized
from idlora_core.linalg.validation import check_labels, check_rank, check_selection, check_weight


def centroid_order(Z: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Return `members` sorted by squared distance of Z[members] to their mean (stable on ties)."""
    rows = Z if len(members) == len(Z) and (np.diff(members) == 1).all() else Z[members]
    mean = rows.mean(axis=0)
    d2 = np.einsum("ij,ij->i", rows, rows) - 2.0 * (rows @ mean) + mean @ mean  # no (p, n) temporaries
    return members[np.argsort(d2, kind="stable")]


def random_order(members: np.ndarray, seed: int, cluster: int) -> np.ndarray:
    """Return a permutation of `members` drawn from a generator seeded with [seed, cluster]."""
    return members[np.random.default_rng([int(seed), int(cluster)]).permutation(len(members))]


def id_order(W: np.ndarray, members: np.ndarray, r_max: int | None = None,
             randomized: bool = False, seed: int = 0) -> np.ndarray:
    """Return `members` in pivoted-QR skeleton order of W[members] (exact: all rows; randomized:
    the first r_max rows of a sketch-then-pivot ID)."""
    block = W[members]
    if randomized:
        return members[randomized_row_id(block, r_max or len(members), seed=seed).order]
    return members[row_id(block).order]


def cluster_orders(
    W: np.ndarray,
    labels: np.ndarray,
    selection: str,
    *,
    normalize_rows: bool = False,
    seed: int = 0,
    r_max: int | None = None,
    randomized: bool | None = False,
) -> list[np.ndarray]:
    """Return one int64 array of global row indices per cluster, in the selection's order.

    Exact orders cover the whole cluster; a randomized `id` order covers its first r_max rows.
    randomized: None chooses by the size of W (see `randomized.use_randomized`).
    """
    W = check_weight(W)
    labels, k = check_labels(labels, W.shape[0])
    check_selection(selection)
    rand = use_randomized(*W.shape, randomized) and r_max is not None
    Z = row_geometry(W, normalize_rows) if selection == "centroid" else W
    orders = []
    for c in range(k):
        members = np.flatnonzero(labels == c).astype(np.int64)
        if selection == "centroid":
            orders.append(centroid_order(Z, members))
        elif selection == "random":
            orders.append(random_order(members, seed, c))
        else:
            orders.append(id_order(W, members, r_max, rand, seed + c))
    return orders


def select_skeleton(
    W: np.ndarray,
    labels: np.ndarray,
    r: int,
    selection: str,
    *,
    normalize_rows: bool = False,
    seed: int = 0,
    randomized: bool | None = None,
) -> list[np.ndarray]:
    """Return the skeleton of each cluster c = 0..k-1: an int64 array of r GLOBAL row indices of W.

    W: (m, n) weight; labels: (m,) cluster ids 0..k-1 (every cluster must have >= r rows);
    selection: "id" | "centroid" | "random". Raises ValueError naming the bad value.
    randomized: for "id" on large W, None picks the sketch-then-pivot ID by size.
    """
    W = check_weight(W)
    m, n = W.shape
    labels, k = check_labels(labels, m)
    check_selection(selection)
    if not isinstance(r, int | np.integer):
        raise ValueError(f"r must be an integer, got {r!r}")
    check_rank(m, n, k, int(r))
    sizes = np.bincount(labels, minlength=k)
    small = np.flatnonzero(sizes < r)
    if small.size:
        c = int(small[0])
        raise ValueError(f"cluster {c} has {int(sizes[c])} rows, fewer than r={r}")
    orders = cluster_orders(
        W, labels, selection, normalize_rows=normalize_rows, seed=seed, r_max=int(r),
        randomized=randomized,
    )
    return [o[: int(r)].copy() for o in orders]
