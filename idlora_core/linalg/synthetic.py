"""Synthetic matrices with a prescribed singular spectrum, fast enough for benches and tests.

`random_spectrum_matrix(m, n, s)` returns U diag(s) V^T where U and V are random orthogonal
matrices made of two orthonormal DCTs interleaved with random sign flips and a random row
permutation: O(mn log n) to build instead of the O(n^3) of a Haar-random QR, and the
singular values are exactly `s`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft


def _random_orthogonal_apply(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Q X for a random orthogonal Q = P DCT D1 DCT D2 (applied along axis 0).
    size = X.shape[0]
    X = rng.choice([-1.0, 1.0], size)[:, None] * X
    X = sfft.dct(X, axis=0, norm="ortho")
    X = rng.choice([-1.0, 1.0], size)[:, None] * X
    X = sfft.dct(X, axis=0, norm="ortho")
    return X[rng.permutation(size)]


def decaying_spectrum(size: int, scale: float = 64.0) -> np.ndarray:
    """Return s_j = 1 / (1 + j / scale), j = 0..size-1: a slowly decaying, pretrained-like spectrum."""
    return 1.0 / (1.0 + np.arange(size) / scale)


def random_spectrum_matrix(m: int, n: int, s: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Return an (m, n) float64 matrix whose singular values are exactly `s` (length min(m, n))."""
    rng = np.random.default_rng(seed)
    p = min(m, n)
    s = decaying_spectrum(p) if s is None else np.asarray(s, dtype=np.float64)
    core = np.zeros((m, n))
    core[np.arange(p), np.arange(p)] = s
    core = _random_orthogonal_apply(core, rng)  # U diag(s)
    return _random_orthogonal_apply(core.T, rng).T  # (U diag(s)) V^T
