"""Both branches of the randomized path's products: NumPy, and torch (the GPU code, run here on
the CPU by monkeypatching the device), within the tolerance the randomized tests use."""

from __future__ import annotations

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


def test_device_detection(monkeypatch):
    import torch

    products.gpu_device.cache_clear()
    monkeypatch.setattr(products.Path, "exists", lambda self: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("IDLORA_NO_GPU", raising=False)
    assert products.gpu_device() == "cuda"
    products.gpu_device.cache_clear()
    monkeypatch.setenv("IDLORA_NO_GPU", "1")
    assert products.gpu_device() is None
    products.gpu_device.cache_clear()
    monkeypatch.delenv("IDLORA_NO_GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert products.gpu_device() is None
    products.gpu_device.cache_clear()
    small, large = np.ones((10, 10)), np.ones((1000, 1001))
    monkeypatch.setattr(products, "gpu_device", lambda: "cuda")
    monkeypatch.setattr(products, "TorchProducts", lambda A, device: ("torch", device))
    assert isinstance(products.products(small), products.NumpyProducts)  # not worth a round trip
    assert products.products(large) == ("torch", "cuda")
