"""Matrix products of the randomized path, on the CPU (NumPy) or, with CUDA, on the GPU (torch).

The randomized decompositions (`randomized.py`) spend their time in products of the large
matrix A with thin matrices (sketches, bases). `products(A)` returns an object that keeps A
where those products run: NumPy on the CPU, or torch float32 on a CUDA GPU when one is
present (A is copied to the GPU once per matrix). Only thin results come back as NumPy arrays;
the small factorisations (QR, LU, eigensolves) stay in SciPy.

torch is imported only when a GPU may be there (an NVIDIA driver is loaded): analysis on a
CPU machine never pays for it. IDLORA_NO_GPU=1 forces the CPU path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np


class NumpyProducts:
    """Products with A (p, q) in NumPy, in A's dtype."""

    def __init__(self, A: np.ndarray) -> None:
        self.A = A

    def mul(self, X: np.ndarray) -> np.ndarray:
        """Return A @ X, shape (p, k)."""
        return self.A @ X.astype(self.A.dtype, copy=False)

    def tmul(self, Y: np.ndarray) -> np.ndarray:
        """Return A.T @ Y, shape (q, k)."""
        return self.A.T @ Y.astype(self.A.dtype, copy=False)


class TorchProducts:
    """Products with A (p, q) held as a float32 torch tensor on `device` (results as NumPy)."""

    def __init__(self, A: np.ndarray, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.A = torch.as_tensor(np.ascontiguousarray(A), dtype=torch.float32).to(device)
        self.dtype = A.dtype

    def _run(self, left, X: np.ndarray) -> np.ndarray:
        X = self.torch.as_tensor(np.ascontiguousarray(X), dtype=self.torch.float32).to(self.device)
        return (left @ X).cpu().numpy().astype(self.dtype, copy=False)

    def mul(self, X: np.ndarray) -> np.ndarray:
        """Return A @ X, shape (p, k), computed in float32 on the device."""
        return self._run(self.A, X)

    def tmul(self, Y: np.ndarray) -> np.ndarray:
        """Return A.T @ Y, shape (q, k), computed in float32 on the device."""
        return self._run(self.A.T, Y)


@functools.lru_cache(maxsize=1)
def gpu_device() -> str | None:
    """Return "cuda" when torch sees a CUDA GPU (and IDLORA_NO_GPU is not set), else None."""
    if os.environ.get("IDLORA_NO_GPU", "").strip() not in ("", "0"):
        return None
    if not Path("/proc/driver/nvidia/version").exists():  # no driver: do not import torch
        return None
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


# Below this many entries a GPU round trip costs more than it saves.
GPU_MIN_ELEMENTS = 1_000_000


def products(A: np.ndarray) -> NumpyProducts | TorchProducts:
    """Return the product engine for A: torch on the GPU for a large A when CUDA is present,
    NumPy otherwise."""
    device = gpu_device()
    if device is not None and A.size >= GPU_MIN_ELEMENTS:
        return TorchProducts(A, device)
    return NumpyProducts(A)
