"""Both branches of the randomized path's products: NumPy, and torch (the GPU code, run here on
the CPU by monkeypatching the device), within the tolerance the randomized tests use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.sweep import SweepSpec, sweep_layer
from idlora_core.linalg import products
from idlora_core.linalg.randomized import randomized_row_id, randomized_spectrum
from idlora_core.linalg.synthetic import decaying_spectrum, random_spectrum_matrix


@pytest.fixture
def torch_branch(monkeypatch):
    """Route every product through TorchProducts (float32 torch) as on a CUDA machine."""
    made = []

    def engine(A):
        made.append(A.shape)
        return products.TorchProducts(A, "cpu")

    monkeypatch.setattr(products, "products", engine)
    return made


def matrix():
    return random_spectrum_matrix(400, 300, decaying_spectrum(300, scale=16.0), seed=1)


def test_spectrum_and_row_id_match_numpy_branch(torch_branch):
    W = matrix()
    s_torch = randomized_spectrum(W, 40, seed=0)
    id_torch = randomized_row_id(W, 32, seed=0)
    assert torch_branch  # the torch code ran
    torch_branch.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(products, "products", products.NumpyProducts)
        s_np = randomized_spectrum(W, 40, seed=0)
        id_np = randomized_row_id(W, 32, seed=0)
    assert not torch_branch
    np.testing.assert_allclose(s_torch, s_np, rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(id_torch.sq_errors), np.sqrt(id_np.sq_errors), rtol=1e-3)


def test_sweep_on_the_torch_branch_matches_cpu(torch_branch):
    W = matrix().astype(np.float32)
    spec = SweepSpec([1, 2], [4, 16], ["id", "random"], randomized=True)
    on_torch = sweep_layer(W, spec).table
    assert torch_branch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(products, "products", products.NumpyProducts)
        on_cpu = sweep_layer(W, spec).table
    for col in ("rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r"):
        np.testing.assert_allclose(on_torch[col], on_cpu[col], rtol=0.02, err_msg=col)


def test_torch_products_compute_the_products_in_the_matrix_dtype():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 30))
    X, Y = rng.standard_normal((30, 4)), rng.standard_normal((50, 3))
    engine = products.TorchProducts(A, "cpu")
    AX, ATY = engine.mul(X), engine.tmul(Y)
    assert (AX.shape, ATY.shape) == ((50, 4), (30, 3))
    assert AX.dtype == ATY.dtype == np.float64  # float32 on the device, A's dtype back
    np.testing.assert_allclose(AX, A @ X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ATY, A.T @ Y, rtol=1e-5, atol=1e-5)


def test_products_choose_torch_only_for_large_matrices_on_a_device(monkeypatch):
    """products(A) dispatches on gpu_device() and A's size; "cpu" stands in for "cuda" so that
    the chosen engine is a real TorchProducts whose products can be checked."""
    n = products.GPU_MIN_ELEMENTS
    below, at = np.ones((1, n - 1)), np.full((1, n), 2.0)
    X = np.ones((n, 1))
    monkeypatch.setattr(products, "gpu_device", lambda: None)
    assert type(products.products(at)) is products.NumpyProducts  # no device: NumPy at any size
    monkeypatch.setattr(products, "gpu_device", lambda: "cpu")
    assert type(products.products(below)) is products.NumpyProducts  # not worth a round trip
    engine = products.products(at)
    assert type(engine) is products.TorchProducts and engine.device == "cpu"
    assert engine.mul(X)[0, 0] == pytest.approx(2.0 * n)  # it holds this A


@pytest.mark.parametrize("env,driver,cuda,expected", [
    ("", True, True, "cuda"), ("0", True, True, "cuda"), ("1", True, True, None),
    ("", True, False, None), ("", False, True, None)])
def test_gpu_device_needs_driver_and_cuda_and_honours_idlora_no_gpu(monkeypatch, env, driver, cuda,
                                                                    expected):
    import torch

    products.gpu_device.cache_clear()
    monkeypatch.setenv("IDLORA_NO_GPU", env)
    monkeypatch.setattr(products.Path, "exists",
                        lambda self: driver if str(self) == "/proc/driver/nvidia/version" else False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    try:
        assert products.gpu_device() == expected
    finally:
        products.gpu_device.cache_clear()


def test_without_a_gpu_driver_torch_is_never_imported():
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver")
    code = ("import sys, numpy as np; from idlora_core.linalg import products; "
            "e = products.products(np.ones((2000, 1000))); "
            "print(products.gpu_device(), type(e).__name__, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "IDLORA_NO_GPU"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    assert out == ["None", "NumpyProducts", "False"]


@pytest.mark.skipif(products.gpu_device() is None, reason="no CUDA GPU here")
def test_cuda_engine_matches_numpy():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((1200, 1000)).astype(np.float32)
    X = rng.standard_normal((1000, 8)).astype(np.float32)
    engine = products.products(A)
    assert type(engine) is products.TorchProducts and engine.device == "cuda"
    A64, X64 = A.astype(np.float64), X.astype(np.float64)
    for got, ref in ((engine.mul(X), A64 @ X64), (engine.tmul(A @ X), A64.T @ (A64 @ X64))):
        assert got.dtype == np.float32
        assert np.linalg.norm(got - ref) <= 1e-4 * np.linalg.norm(ref)  # float32 round-off
