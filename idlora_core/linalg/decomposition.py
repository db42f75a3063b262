"""Exact decompositions behind the analysis: global SVD errors, row ID errors and the ID bounds.

All errors here are for approximations of the ROWS of a matrix M (p x n):
  - global SVD, rank R: Frobenius error sqrt(sum_{j>R} s_j^2), spectral error s_{R+1};
  - row interpolative decomposition (ID) on skeleton rows J: M ~ X M[J, :] with the
    least-squares X, i.e. every row projected on the span of the skeleton rows.
One QR factorisation of M.T with its columns in a fixed order (pivoted, or any given
order) gives the ID error for EVERY rank r at once: the residual of reconstructing all
rows from the first r is ||R[r:, r:]||_F, and because R is upper triangular that is the
suffix sum of the squared row norms of R (docs/THEORY.md). Arrays indexed by rank use index
r = 0..p (r = 0: nothing kept, the error is ||M||_F).

The randomized variants for large layers are in `randomized.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from idlora_core.linalg.validation import check_weight


@dataclass(frozen=True)
class RowID:
    """A row order and the squared Frobenius ID error of keeping its first r rows.

    order: int64 (p,) (or a prefix of length r_max) — positions of the rows of M;
    sq_errors: float64, index r = ||M - X M[order[:r], :]||_F^2 for r = 0..len(order).
    """

    order: np.ndarray
    sq_errors: np.ndarray

    def errors(self) -> np.ndarray:
        """Return the absolute Frobenius errors for r = 0..len(order)."""
        return np.sqrt(self.sq_errors)

    def skeleton(self, r: int) -> np.ndarray:
        """Return the first r rows of the order (the rank-r skeleton)."""
        if r > len(self.order):
            raise ValueError(f"r={r} exceeds the {len(self.order)} ordered rows")
        return self.order[:r]


def sq_norm(M: np.ndarray, chunk: int = 1 << 20) -> float:
    """Return ||M||_F^2 accumulated in float64, a few rows at a time (no full-size temporary)."""
    M = np.asarray(M)
    rows = max(1, chunk // max(M.shape[-1], 1))
    return float(sum(np.einsum("ij,ij->", b, b, dtype=np.float64)
                     for b in (M[i: i + rows] for i in range(0, M.shape[0], rows))))


def spectrum(W: np.ndarray) -> np.ndarray:
    """Return all singular values of W, descending (float64, length min(m, n))."""
    return sla.svdvals(check_weight(W), check_finite=False)


def top_spectrum(M: np.ndarray, count: int) -> np.ndarray:
    """Return the `count` largest singular values of M, descending, from the eigenvalues of its
    smaller Gram matrix (one matrix product and a partial symmetric eigensolve).

    Much cheaper than an SVD for the few leading values the ID bounds need; values below
    about 1e-8 * s_1 lose relative accuracy (they come from squares).
    """
    M = check_weight(M, "M")
    # The Gram product in M's dtype (float32 for a large layer), its eigensolve in float64.
    G = (M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M).astype(np.float64, copy=False)
    size = G.shape[0]
    count = min(int(count), size)
    if count <= 0:
        return np.zeros(0)
    eig = sla.eigvalsh(G, subset_by_index=[size - count, size - 1], check_finite=False)
    return np.sqrt(np.maximum(eig[::-1], 0.0))


def svd_tail_errors(s: np.ndarray, fro_norm: float | None = None) -> np.ndarray:
    """Return the relative Frobenius error of the best rank-R approximation for R = 0..len(s).

    Index R holds sqrt(sum_{j>R} s_j^2) / ||W||_F (Eckart-Young). With a truncated spectrum
    (top values only) pass `fro_norm` = ||W||_F; the tail is then ||W||_F^2 - sum_{j<=R} s_j^2.
    """
    s = np.asarray(s, dtype=np.float64)
    sq = s * s
    total = float(sq.sum()) if fro_norm is None else float(fro_norm) ** 2
    if total == 0.0:
        return np.zeros(len(s) + 1)
    if fro_norm is None:
        tail = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    else:
        tail = np.maximum(total - np.concatenate([[0.0], np.cumsum(sq)]), 0.0)
    return np.sqrt(tail / total)


def svd_spectral_errors(s: np.ndarray) -> np.ndarray:
    """Return the relative spectral error s_{R+1}/s_1 of the best rank-R approximation, R = 0..len(s).

    The last entry (R = len(s)) is 0: `s` is taken to be the full spectrum.
    """
    s = np.asarray(s, dtype=np.float64)
    if len(s) == 0 or s[0] == 0:
        return np.zeros(len(s) + 1)
    return np.concatenate([s / s[0], [0.0]])


def _suffix_sq_errors(R: np.ndarray, p: int) -> np.ndarray:
    # Index r: sum of squared norms of rows r.. of R (rows past min(n, p) are zero).
    rn2 = np.einsum("ij,ij->i", R, R)
    out = np.zeros(p + 1)
    depth = min(len(rn2), p)
    out[:depth] = np.cumsum(rn2[:depth][::-1])[::-1]
    return out


def row_id(M: np.ndarray) -> RowID:
    """Return the pivoted-QR row ID of M (p x n): skeleton order and errors for every rank.

    One column-pivoted QR of M.T (SciPy/LAPACK geqp3); the pivot order is greedy, so the
    rank-r skeleton is the first r rows of `order` for every r.
    """
    M = check_weight(M, "M")
    R, piv = sla.qr(M.T, mode="r", pivoting=True, check_finite=False)
    return RowID(order=piv.astype(np.int64), sq_errors=_suffix_sq_errors(R, M.shape[0]))


def ordered_row_errors(M: np.ndarray, order: np.ndarray) -> RowID:
    """Return the ID errors of M (p x n) when the skeleton is the first r rows of `order`, every r.

    `order` must be a permutation of range(p) (nearest-to-centroid, random, ...). One
    unpivoted QR of M.T[:, order].
    """
    M = check_weight(M, "M")
    order = np.asarray(order, dtype=np.int64)
    p = M.shape[0]
    if order.shape != (p,) or not np.array_equal(np.sort(order), np.arange(p)):
        raise ValueError(f"order must be a permutation of range({p})")
    (R,) = sla.qr(M.T[:, order], mode="r", check_finite=False)
    return RowID(order=order, sq_errors=_suffix_sq_errors(R, p))


def id_residual(M: np.ndarray, skeleton: np.ndarray) -> np.ndarray:
    """Return M - X M[skeleton, :] with the least-squares X (rows projected off the skeleton span)."""
    M = check_weight(M, "M")
    skeleton = np.asarray(skeleton, dtype=np.int64)
    if skeleton.size == 0:
        return M.copy()
    basis = sla.orth(M[skeleton].T)  # (n, rank) orthonormal basis of the skeleton rows' span
    return M - (M @ basis) @ basis.T


def id_spectral_error(M: np.ndarray, skeleton: np.ndarray) -> float:
    """Return the spectral-norm error ||M - X M[skeleton, :]||_2 of a row ID (absolute units of M)."""
    res = id_residual(M, skeleton)
    return float(sla.svdvals(res, check_finite=False)[0]) if res.size else 0.0


def id_fro_error(M: np.ndarray, skeleton: np.ndarray) -> float:
    """Return the Frobenius error ||M - X M[skeleton, :]||_F of a row ID (absolute units of M)."""
    return float(np.linalg.norm(id_residual(M, skeleton)))


def id_bound(s: np.ndarray, r: int, p: int) -> float:
    """Return sqrt(1 + r(p - r)) * s_{r+1}: the spectral-norm error a rank-r ID of a p-row matrix
    with singular values `s` can reach (strong rank-revealing QR); 0 when r >= len(s)."""
    s = np.asarray(s, dtype=np.float64)
    tail = float(s[r]) if r < len(s) else 0.0
    return float(np.sqrt(1.0 + r * max(p - r, 0)) * tail)


def cluster_id_bound(spectra: list[np.ndarray], sizes: list[int], r: int) -> float:
    """Return sqrt(sum_c (1 + r(m_c - r)) s_{r+1}(W_c)^2): the spectral bound of cluster-wise ID.

    spectra: singular values of each cluster's rows W_c; sizes: each cluster's row count m_c.
    """
    return float(np.sqrt(sum(id_bound(s, r, p) ** 2 for s, p in zip(spectra, sizes, strict=True))))


def clusterwise_residual(W: np.ndarray, labels: np.ndarray, skeletons: list[np.ndarray]) -> np.ndarray:
    """Return W - W_hat for cluster-wise ID: each cluster's rows projected off the span of its
    skeleton rows. labels: (m,) cluster ids; skeletons[c]: GLOBAL row indices chosen in cluster c."""
    W = check_weight(W)
    labels = np.asarray(labels)
    residual = np.empty_like(W)
    for c, skel in enumerate(skeletons):
        members = np.flatnonzero(labels == c)
        residual[members] = id_residual(W[members], np.searchsorted(members, skel))
    return residual
