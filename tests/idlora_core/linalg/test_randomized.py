"""Randomized path: exact prefix errors, and accuracy against the exact path where both run."""

from __future__ import annotations

import numpy as np
import pytest

from idlora_core.linalg.decomposition import ordered_row_errors, row_id, spectrum, svd_tail_errors
from idlora_core.linalg.randomized import (
    RANDOMIZED_MIN_ELEMENTS,
    prefix_row_errors,
    randomized_row_id,
    randomized_spectrum,
    use_randomized,
)
from idlora_core.linalg.synthetic import decaying_spectrum, random_spectrum_matrix

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def W():
    return random_spectrum_matrix(600, 400, decaying_spectrum(400, scale=32.0), seed=1)


def test_synthetic_matrix_has_the_prescribed_spectrum():
    s = decaying_spectrum(50, scale=8.0)
    M = random_spectrum_matrix(80, 50, s, seed=2)
    np.testing.assert_allclose(np.linalg.svd(M, compute_uv=False), s, rtol=1e-10)


def test_prefix_errors_equal_full_qr(W):
    order = np.random.default_rng(0).permutation(W.shape[0])
    exact = ordered_row_errors(W, order).errors()
    fast = prefix_row_errors(W, order[:40]).errors()
    fro = np.linalg.norm(W)
    np.testing.assert_allclose(fast / fro, exact[:41] / fro, rtol=1e-8, atol=1e-12)


def test_prefix_errors_ignore_dependent_rows():
    M = np.random.default_rng(1).standard_normal((6, 5))
    M[3] = 2 * M[0] - M[1]
    fit = prefix_row_errors(M, np.array([0, 1, 3, 2]))
    assert fit.sq_errors[2] == pytest.approx(fit.sq_errors[3], rel=1e-9)


def test_randomized_spectrum_close_to_exact(W):
    s = spectrum(W)
    est = randomized_spectrum(W, 40, seed=0)
    np.testing.assert_allclose(est, s[:40], rtol=0.05)
    fro = np.linalg.norm(W)
    np.testing.assert_allclose(svd_tail_errors(est, fro), svd_tail_errors(s)[:41], rtol=0.02)


def test_randomized_id_close_to_pivoted_qr(W):
    exact = row_id(W).errors()
    fit = randomized_row_id(W, 48, seed=0)
    assert fit.order.shape == (48,) and len(set(fit.order.tolist())) == 48
    fro = np.linalg.norm(W)
    np.testing.assert_allclose(fit.errors()[1:] / fro, exact[1:49] / fro, rtol=0.02)
    # its errors are the exact errors of its own skeleton
    for r in (5, 48):
        basis = W[fit.order[:r]].T
        X, *_ = np.linalg.lstsq(basis, W.T, rcond=None)
        assert fit.errors()[r] == pytest.approx(np.linalg.norm(W.T - basis @ X), rel=1e-8)


def test_use_randomized_threshold():
    assert not use_randomized(1536, 576)
    assert use_randomized(4096, 4096)
    assert use_randomized(10, 10, True) and not use_randomized(4096, 4096, False)
    # the automatic switch sits exactly at the documented element count
    assert not use_randomized(RANDOMIZED_MIN_ELEMENTS, 1)
    assert use_randomized(RANDOMIZED_MIN_ELEMENTS + 1, 1)
    assert not use_randomized(1, RANDOMIZED_MIN_ELEMENTS) and use_randomized(2, RANDOMIZED_MIN_ELEMENTS)
