"""What the Cluster explorer shows for one layer: clusters, skeleton rows, per-cluster errors.

Assembles `idlora_core` results into DataFrames for plotting; the maths (min-size k-means,
skeleton selection, ID and SVD errors) lives in `idlora_core`. No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from idlora_core.linalg.clustering import MinSizeKMeans
from idlora_core.linalg.decomposition import id_fro_error, spectrum, svd_tail_errors
from idlora_core.linalg.selection import select_skeleton
from idlora_core.linalg.validation import SELECTIONS


@dataclass(frozen=True)
class ClusterView:
    """One clustering of a layer's rows and its skeletons.

    labels: int64 (m,) cluster of each row; skeletons: selection -> one int64 array of r
    global row indices per cluster; sizes: DataFrame (cluster, rows);
    errors: DataFrame (cluster, rows, selection, rel_fro_error, svd_same_r) — the cluster's
    rank-r ID error and its best rank-r (SVD) error, both relative to ||W_c||_F (values
    below 1e-12, round-off of an exact reconstruction, are reported as 0).
    """

    k: int
    r: int
    labels: np.ndarray
    skeletons: dict[str, list[np.ndarray]]
    sizes: pd.DataFrame
    errors: pd.DataFrame


def cluster_view(
    W: np.ndarray,
    k: int,
    r: int,
    selections: list[str] | tuple[str, ...] = SELECTIONS,
    *,
    normalize_rows: bool = False,
    seed: int = 0,
) -> ClusterView:
    """Return the clustering of W's rows into k clusters of >= r rows and each selection's skeletons.

    Raises ValueError (from idlora_core) when k*r exceeds the rows or r the columns.
    """
    W = np.asarray(W, dtype=np.float64)
    labels = MinSizeKMeans(k, min_size=r, normalize_rows=normalize_rows, random_state=seed).fit(W).labels_
    skeletons = {
        s: select_skeleton(W, labels, r, s, normalize_rows=normalize_rows, seed=seed)
        for s in selections
    }
    counts = np.bincount(labels, minlength=k)
    sizes = pd.DataFrame({"cluster": np.arange(k), "rows": counts})
    rows = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        Wc = W[members]
        norm = float(np.linalg.norm(Wc)) or 1.0
        svd_r = float(svd_tail_errors(spectrum(Wc))[min(r, min(Wc.shape))])
        for s, skel in skeletons.items():
            local = np.searchsorted(members, skel[c])
            rows.append({
                "cluster": c, "rows": int(counts[c]), "selection": s,
                "rel_fro_error": _exact_zero(id_fro_error(Wc, local) / norm),
                "svd_same_r": _exact_zero(svd_r),
            })
    return ClusterView(k, r, labels, skeletons, sizes, pd.DataFrame(rows))


def _exact_zero(error: float, tol: float = 1e-12) -> float:
    # Round-off (~1e-16) on exactly reconstructed clusters would dominate a log axis.
    return 0.0 if error < tol else float(error)


def points_frame(xy: pd.DataFrame, view: ClusterView) -> pd.DataFrame:
    """Return `xy` (columns row, x, y, ...) with `cluster` (str, for discrete colours) and one bool
    column `skeleton_<selection>` per selection marking the selected skeleton rows."""
    out = xy.copy()
    out["cluster"] = view.labels[out["row"].to_numpy()].astype(str)
    for s, skel in view.skeletons.items():
        chosen = np.zeros(len(view.labels), dtype=bool)
        chosen[np.concatenate(skel)] = True
        out[f"skeleton_{s}"] = chosen[out["row"].to_numpy()]
    return out


def spectra_frame(W: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Return the singular values of W and of each of its row clusters.

    labels: the cluster of every row of W (int, (m,); e.g. a sweep's own clustering,
    `SweepResult.labels(k)`), or None for the layer alone; with one cluster only the layer
    is shown (the cluster is the layer). No clustering happens here.
    Columns: part ("layer" or "cluster <c>"), rows (rows in that part), index (j = 1, 2, ...),
    sigma (singular value, units of W's entries), relative (sigma / sigma_1 of the whole layer).
    Raises ValueError when labels do not give one cluster id >= 0 per row.
    """
    W = np.asarray(W, dtype=np.float64)
    s = spectrum(W)
    s1 = float(s[0]) if len(s) and s[0] > 0 else 1.0
    parts = [("layer", W.shape[0], s)]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (W.shape[0],) or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise ValueError(f"labels must be one cluster id >= 0 per row of W ({W.shape[0]}), "
                             f"got shape {labels.shape}")
        clusters = np.unique(labels)
        if len(clusters) > 1:
            parts += [(f"cluster {c}", int((labels == c).sum()), spectrum(W[labels == c]))
                      for c in clusters]
    return pd.concat(
        [pd.DataFrame({"part": name, "rows": rows, "index": np.arange(1, len(sv) + 1),
                       "sigma": sv, "relative": sv / s1}) for name, rows, sv in parts],
        ignore_index=True,
    )
