"""Randomized decompositions for large layers: cost grows with the largest rank r_max, not with
the full dimension.

  - `randomized_spectrum`: the top singular values by a randomized range finder
    (Gaussian sketch, power iterations, oversampling);
  - `randomized_row_id`: sketch-then-pivot row ID — the rows of M (p x n) are sketched
    to p x l with a Gaussian test matrix (l = r_max + oversampling, with power iterations),
    a column-pivoted QR of the sketch's transpose picks the first r_max skeleton rows, and
    `prefix_row_errors` measures the exact ID error of every prefix of that order.
Cost: O(p n l) per matrix; exact QR/SVD paths cost O(p n min(p, n)). The large products run
in `products.py`: NumPy, or torch float32 on a CUDA GPU when one is present.

`use_randomized` says when the sweep switches to these: above RANDOMIZED_MIN_ELEMENTS
weight entries (a 4096 x 4096 attention projection of Llama-8B is above, every layer of
MiniLM and SmolLM2-135M is below), or when asked explicitly.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from idlora_core.linalg import products as _products
from idlora_core.linalg.decomposition import RowID, sq_norm, top_spectrum
from idlora_core.linalg.validation import check_weight

RANDOMIZED_MIN_ELEMENTS = 4_000_000
WIDE_SKETCH = 256  # sketch width above which randomized_spectrum does one power iteration


def use_randomized(m: int, n: int, randomized: bool | None = None) -> bool:
    """Return True when the randomized path should be used for an (m, n) matrix.

    randomized: True / False force it; None chooses by size (m*n > RANDOMIZED_MIN_ELEMENTS).
    """
    if randomized is None:
        return m * n > RANDOMIZED_MIN_ELEMENTS
    return bool(randomized)


def randomized_spectrum(
    W: np.ndarray, rank: int, *, oversample: int | None = None, power_iters: int = 2, seed: int = 0
) -> np.ndarray:
    """Return estimates of the top `rank` singular values of W, descending (float64).

    Randomized range finder (Halko, Martinsson & Tropp 2011): Gaussian sketch of width
    rank + oversample (default max(10, rank // 2): a slowly decaying spectrum needs the
    margin for its tail sums to be within 1-2 %), `power_iters` power iterations (LU-normalised, as scikit-learn does),
    orthonormal basis Q, then the singular values of Q.T A from the eigenvalues of its small
    Gram matrix. Only matrix products and thin factorisations: cost O(m n (rank + oversample)).
    Uses the exact top values instead (`decomposition.top_spectrum`, a Gram eigensolve) when
    that is cheaper: small clusters, or a sketch reaching half of min(m, n).
    """
    W = check_weight(W)
    A = W if W.shape[0] >= W.shape[1] else W.T  # tall (p, q), same singular values
    full = min(W.shape)
    rank = min(int(rank), full)
    width = rank + (max(10, rank // 2) if oversample is None else int(oversample))
    # A wide sketch already holds most of the energy: one power iteration is enough there.
    iters = min(power_iters, 1) if width > WIDE_SKETCH else power_iters
    long, short = A.shape
    # flops: Gram product + symmetric eigensolve (weighted x4: memory bound) vs sketch products
    exact_cost = 2 * short**2 * long + 4 * (4 / 3) * short**3
    sketch_cost = 2 * (2 * iters + 2) * long * short * width
    if 2 * width >= full or exact_cost <= sketch_cost:
        return top_spectrum(W, rank)
    # Products in W's dtype (float32 for a large layer: no float64 copy of W), the small
    # factorisations after them in float64.
    ops = _products.products(A)  # NumPy, or torch float32 on a CUDA GPU
    Y = ops.mul(np.random.default_rng(seed).standard_normal((A.shape[1], width)))
    for _ in range(iters):
        Y = sla.lu(Y, permute_l=True, check_finite=False)[0]
        Y = ops.mul(ops.tmul(Y))
    Q = sla.qr(Y, mode="economic", check_finite=False)[0]
    B = ops.tmul(Q).T.astype(np.float64)  # Q.T @ A, (width, q)
    eig = sla.eigvalsh(B @ B.T, check_finite=False)[::-1]
    return np.sqrt(np.maximum(eig[:rank], 0.0))


def prefix_row_errors(M: np.ndarray, prefix: np.ndarray) -> RowID:
    """Return the exact ID errors of M (p x n) for skeletons prefix[:r], r = 0..len(prefix).

    One QR of the L chosen rows (M.T[:, prefix], n x L) and one product M @ Q: the error of
    rank r is ||M||_F^2 minus the energy of M on the first r orthonormal directions.
    Cost O(p n L).
    """
    M = check_weight(M, "M")
    prefix = np.asarray(prefix, dtype=np.int64)
    total = sq_norm(M)
    if prefix.size == 0:
        return RowID(order=prefix, sq_errors=np.array([total]))
    Q, R = sla.qr(M.T[:, prefix], mode="economic", check_finite=False)
    C = _products.products(M).mul(Q).astype(np.float64)  # (p, L): rows on the skeleton directions
    energy = np.einsum("ij,ij->j", C, C)
    diag = np.abs(np.diag(R))
    tol = max(M.shape) * np.finfo(M.dtype).eps * (diag.max() if diag.size else 0.0)
    energy = np.where(diag > tol, energy, 0.0)  # a row dependent on earlier ones adds nothing
    if len(energy) < len(prefix):  # more rows than columns: the rest add nothing
        energy = np.concatenate([energy, np.zeros(len(prefix) - len(energy))])
    sq = np.maximum(total - np.concatenate([[0.0], np.cumsum(energy)]), 0.0)
    return RowID(order=prefix, sq_errors=sq)


def randomized_row_id(
    M: np.ndarray, r_max: int, *, oversample: int = 10, power_iters: int = 1, seed: int = 0
) -> RowID:
    """Return a sketch-then-pivot row ID of M (p x n): the first min(r_max, p) skeleton rows and
    the exact squared Frobenius error of every prefix (index r = 0..len(order))."""
    M = check_weight(M, "M")
    p, n = M.shape
    r_max = min(int(r_max), p)
    width = min(n, r_max + oversample)
    rng = np.random.default_rng(seed)
    ops = _products.products(M)  # NumPy, or torch float32 on a CUDA GPU
    S = ops.mul(rng.standard_normal((n, width)))  # (p, l) sketch of the row geometry
    for _ in range(power_iters):
        S = sla.qr(S, mode="economic", check_finite=False)[0]  # keep the sketch well conditioned
        S = ops.mul(ops.tmul(S))
    _, piv = sla.qr(S.T, mode="r", pivoting=True, check_finite=False)
    return prefix_row_errors(M, piv[:r_max].astype(np.int64))
