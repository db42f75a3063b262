"""Checks before a run starts (issue 8 #9): ranks that fit their layers, and memory.

`check_run_fits(model, adapter, train, device)` runs after the base model is loaded and before
any adapter is built: a rank larger than `min(m, n)` is an error naming the layer, and a run
whose adapter state (weights, gradients, AdamW moments, ID-LoRA buffers) plus adapter
activations would not fit the memory that is free now is refused with the estimate. The
estimate is a lower bound on what the run needs (the base model's own activations are not
counted), so a refused run would certainly not have fitted.

This file is not the trainer; it only measures and refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from idlora_core.adapters.budget import adapter_memory_bytes
from idlora_core.config import AdapterConfig, TrainConfig

GIB = 2**30


class ResourceError(ValueError):
    """A run that cannot fit: a rank larger than its layer, or memory beyond what is free."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run's adapters add: `state` (weights, grads, optimiser, buffers), `activations`."""

    state: int
    activations: int
    available: int

    @property
    def total(self) -> int:
        return self.state + self.activations


def available_bytes(device: str) -> int:
    """Return the memory free now on `device` ("cuda" or "cpu"), in bytes."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def _activation_width(method: str, r: int, k: int) -> int:
    # Elements per token an adapter keeps for the backward pass: LoRA/DoRA its r-vector,
    # ID-LoRA its k projections of r plus the router, HydraLoRA r plus N heads of m... bounded
    # below by N*r; AdaLoRA its r-vector (scaled by E); full fine-tuning keeps nothing beyond
    # the base model.
    return {"lora": r, "dora": r, "adalora": r, "idlora": k * r + k, "hydralora": k * r + k}.get(method, 0)


def estimate_memory(shapes: list[tuple[int, int, int, int, int]], method: str, train: TrainConfig,
                    device: str) -> MemoryEstimate:
    """Return the MemoryEstimate for layers given as (m, n, r, k, p) tuples (bytes, fp32)."""
    state = sum(adapter_memory_bytes(method, m, n, r, k=k, p=p if method == "idlora" else 1)
                for m, n, r, k, p in shapes)
    if method == "full":  # the weights themselves are loaded already
        state -= 4 * sum(m * n for m, n, *_ in shapes)
    tokens = train.batch_size * train.seq_len
    activations = 4 * tokens * sum(_activation_width(method, r, k) for _m, _n, r, k, _p in shapes)
    return MemoryEstimate(state, activations, available_bytes(device))


def check_run_fits(model: torch.nn.Module, adapter: AdapterConfig, train: TrainConfig,
                   device: str) -> MemoryEstimate | None:
    """Raise ResourceError when a target rank exceeds `min(m, n)` of its layer or the estimated
    adapter memory exceeds what `device` has free; return the estimate (None for `base`)."""
    from idlora_core.adapters.inject import resolve_targets

    method = adapter.method
    if method not in ("idlora", "lora", "dora", "adalora", "hydralora", "full"):
        return None
    shapes = []
    for name, target in resolve_targets(model, adapter):
        m, n = model.get_submodule(name).weight.shape
        if method != "full" and target.r > min(m, n):
            raise ResourceError(
                f"target {target.pattern!r}: r={target.r} exceeds min(m, n)={min(m, n)} of "
                f"layer {name} ({m} x {n}); a rank cannot exceed the layer's smaller side")
        shapes.append((int(m), int(n), target.r, target.k, target.rb_splits))
    est = estimate_memory(shapes, method, train, device)
    if est.total > est.available:
        raise ResourceError(
            f"the run needs at least {est.total / GIB:.1f} GiB for its adapters "
            f"({est.state / GIB:.1f} GiB of weights, gradients and optimiser state, "
            f"{est.activations / GIB:.1f} GiB of adapter activations at batch_size="
            f"{train.batch_size} x seq_len={train.seq_len}) but {device} has "
            f"{est.available / GIB:.1f} GiB free; lower r, k, batch_size or seq_len, or adapt "
            "fewer layers")
    return est
