"""Exact decompositions: all-ranks errors against brute-force least squares, SVD errors, bounds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

from idlora_core.layers import get_weight
from idlora_core.linalg.clustering import MinSizeKMeans
from idlora_core.linalg.decomposition import (
    cluster_id_bound,
    clusterwise_residual,
    id_bound,
    id_fro_error,
    id_spectral_error,
    ordered_row_errors,
    row_id,
    spectrum,
    svd_spectral_errors,
    svd_tail_errors,
    top_spectrum,
)
from idlora_core.linalg.selection import select_skeleton

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def lstsq_error(M: np.ndarray, skeleton: np.ndarray) -> float:
    """||M - X M[skeleton]||_F with X from numpy least squares (the brute-force reference)."""
    if len(skeleton) == 0:
        return float(np.linalg.norm(M))
    basis = M[skeleton].T  # (n, r)
    X, *_ = np.linalg.lstsq(basis, M.T, rcond=None)
    return float(np.linalg.norm(M.T - basis @ X))


def matrices():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((25, 4)) @ rng.standard_normal((4, 18))
    return {
        "tall": rng.standard_normal((40, 15)),
        "wide": rng.standard_normal((12, 30)),
        "rank4": low,
        "decaying": rng.standard_normal((30, 30)) * (0.7 ** np.arange(30)),
    }


@pytest.mark.parametrize("name", list(matrices()))
def test_row_id_all_ranks_equal_lstsq(name):
    M = matrices()[name]
    fit = row_id(M)
    fro = np.linalg.norm(M)
    _, _, piv = sla.qr(M.T, pivoting=True)
    np.testing.assert_array_equal(fit.order, piv)
    brute = np.array([lstsq_error(M, fit.order[:r]) for r in range(M.shape[0] + 1)])
    np.testing.assert_allclose(fit.errors() / fro, brute / fro, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(matrices()))
def test_fixed_order_all_ranks_equal_lstsq(name):
    M = matrices()[name]
    order = np.random.default_rng(5).permutation(M.shape[0])
    fit = ordered_row_errors(M, order)
    fro = np.linalg.norm(M)
    brute = np.array([lstsq_error(M, order[:r]) for r in range(M.shape[0] + 1)])
    np.testing.assert_allclose(fit.errors() / fro, brute / fro, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("selection", ["id", "centroid", "random"])
def test_real_minilm_cluster_errors_equal_lstsq(minilm, selection):
    W = get_weight(minilm.model, "encoder.layer.1.attention.self.value")
    labels = MinSizeKMeans(4, min_size=32).fit(W).labels_
    fro = np.linalg.norm(W)
    for c, skel in enumerate(select_skeleton(W, labels, 32, selection, seed=3)):
        members = np.flatnonzero(labels == c)
        local = np.searchsorted(members, skel)
        order = np.concatenate([local, np.setdiff1d(np.arange(len(members)), local)])
        fit = row_id(W[members]) if selection == "id" else ordered_row_errors(W[members], order)
        for r in (1, 2, 8, 17, 32):
            brute = lstsq_error(W[members], local[:r])
            assert abs(fit.errors()[r] - brute) / fro <= 1e-8 * max(brute / fro, 1e-3)


def test_real_minilm_global_id_every_rank(minilm):
    W = get_weight(minilm.model, "encoder.layer.0.attention.self.query")
    fit = row_id(W)
    fro = np.linalg.norm(W)
    for r in (0, 1, 16, 64, 200, 383, 384):
        brute = lstsq_error(W, fit.order[:r])
        np.testing.assert_allclose(fit.errors()[r] / fro, brute / fro, rtol=1e-8, atol=1e-12)


def test_svd_errors_equal_explicit_truncation():
    W = matrices()["tall"]
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    rel = svd_tail_errors(spectrum(W))
    spec = svd_spectral_errors(s)
    assert rel.shape == (16,) and rel[0] == pytest.approx(1.0) and rel[-1] == 0.0
    for R in (0, 1, 5, 14):
        approx = (U[:, :R] * s[:R]) @ Vt[:R]
        np.testing.assert_allclose(rel[R], np.linalg.norm(W - approx) / np.linalg.norm(W), rtol=1e-10)
        np.testing.assert_allclose(spec[R], np.linalg.norm(W - approx, 2) / s[0], rtol=1e-10)
    # a truncated spectrum plus ||W||_F gives the same tail errors
    np.testing.assert_allclose(svd_tail_errors(s[:6], np.linalg.norm(W)), rel[:7], rtol=1e-10)


def test_spectral_error_and_bounds():
    M = matrices()["decaying"]
    s = np.linalg.svd(M, compute_uv=False)
    fit = row_id(M)
    for r in (1, 3, 10):
        skel = fit.order[:r]
        basis = M[skel].T
        X, *_ = np.linalg.lstsq(basis, M.T, rcond=None)
        explicit = np.linalg.norm(M.T - basis @ X, 2)
        assert id_spectral_error(M, skel) == pytest.approx(explicit, rel=1e-9)
        assert id_fro_error(M, skel) == pytest.approx(lstsq_error(M, skel), rel=1e-9)
        assert id_spectral_error(M, skel) >= s[r] * (1 - 1e-12)  # Eckart-Young
        assert id_bound(s, r, 30) == pytest.approx(np.sqrt(1 + r * (30 - r)) * s[r])
    assert id_bound(s, 30, 30) == 0.0


def test_cluster_bound_and_residual():
    W = matrices()["tall"]
    labels = np.repeat([0, 1], 20)
    blocks = [W[:20], W[20:]]
    spectra = [np.linalg.svd(b, compute_uv=False) for b in blocks]
    expected = np.sqrt(sum((1 + 3 * (20 - 3)) * s[3] ** 2 for s in spectra))
    assert cluster_id_bound(spectra, [20, 20], 3) == pytest.approx(expected)
    skeletons = [np.array([0, 4, 7]), np.array([21, 30, 39])]
    res = clusterwise_residual(W, labels, skeletons)
    expected_fro = np.hypot(lstsq_error(W[:20], [0, 4, 7]), lstsq_error(W[20:], [1, 10, 19]))
    assert np.linalg.norm(res) == pytest.approx(expected_fro, rel=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be 2-D"):
        row_id(np.ones(5))
    with pytest.raises(ValueError, match="non-finite"):
        row_id(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="permutation of range\\(3\\)"):
        ordered_row_errors(np.eye(3), [0, 0, 1])
    with pytest.raises(ValueError, match="exceeds"):
        row_id(np.eye(3)).skeleton(4)


@pytest.mark.parametrize("shape", [(40, 15), (12, 30)])
def test_top_spectrum_equals_svd(shape):
    M = np.random.default_rng(4).standard_normal(shape)
    s = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(top_spectrum(M, 5), s[:5], rtol=1e-10)
    np.testing.assert_allclose(top_spectrum(M, 100), s, rtol=1e-8)
