"""Checks before a run starts (issue 8 #9, issue 18 #5): ranks that fit their layers, and memory.

`check_run_fits(model, adapter, train, device)` runs after the base model is loaded and before
any adapter is built: a rank larger than `min(m, n)` is an error naming the layer, and a run
whose memory would not fit what is free now (and under the process's address-space cap, which
the lab server sets for the runs it starts) is refused with the estimate. The estimate counts
the base model (its parameter bytes, and its activations at the chosen batch size and sequence
length: `base_activation_bytes`), the adapters' state (weights, gradients, AdamW moments,
ID-LoRA buffers) and the adapters' activations. `estimate_from_headers` gives the same estimate
before anything is loaded, from a checkpoint's config.json and tensor headers: the lab server
uses it to refuse a run before it is queued.

The activation coefficients were measured on all-MiniLM-L6-v2 (fp32, one forward and backward
pass, peak RSS): 12 elements per hidden unit, 2 per MLP unit and 3 per head and key position,
per token and block, about 96 % of the measured peak at sequence lengths 128 and 256. Batches
are padded to their longest example, so the figure at `seq_len` is what a batch of examples
that long needs.

This file is not the trainer; it only measures and refuses.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from idlora_core.adapters.budget import adapter_memory_bytes
from idlora_core.config import (
    AdapterConfig,
    RunConfig,
    TargetConfig,
    TrainConfig,
    uses_clusters,
    uses_heads,
)

GIB = 2**30
ACT_PER_HIDDEN = 12  # elements per token and block, per hidden unit (residual, attention, norms)
ACT_PER_INNER = 2  # per MLP unit: its input and activation
ACT_PER_HEAD_KEY = 3  # per head and key position: the attention probabilities and their copies


class ResourceError(ValueError):
    """A run that cannot fit: a rank larger than its layer, or memory beyond what is free."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a run: the adapters' `state` (weights, grads, optimiser, buffers) and
    `activations`, the base model's parameters (`base_params`) and activations
    (`base_activations`), and the memory `available` on the device (0 when not asked)."""

    state: int
    activations: int
    available: int
    base_params: int = 0
    base_activations: int = 0

    @property
    def total(self) -> int:
        """Every byte the run needs at its peak."""
        return self.state + self.activations + self.base_params + self.base_activations

    @property
    def needed(self) -> int:
        """The bytes still to allocate once the base model is loaded (total - base_params)."""
        return self.total - self.base_params


def available_bytes(device: str) -> int:
    """Return the memory free now on `device` ("cuda" or "cpu"), in bytes; on the CPU also at most
    what this process's address-space cap (RLIMIT_AS, set by the lab server) leaves."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    free = int(psutil.virtual_memory().available)
    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
    if cap != resource.RLIM_INFINITY:
        free = min(free, max(0, cap - psutil.Process().memory_info().vms))
    return free


def _config_int(config: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def base_activation_bytes(config: Mapping[str, Any], batch_size: int, seq_len: int, *,
                          logits: bool = False, bytes_per_element: int = 4,
                          checkpointing: bool = False) -> int:
    """Return the bytes the base model keeps for the backward pass of one batch of `batch_size`
    sequences of `seq_len` tokens: per token and block 12 x hidden + 2 x intermediate + 3 x heads
    x seq_len elements (measured on MiniLM; see the module docstring), plus 2 x vocab per token for
    a causal LM's logits (`logits`). With gradient checkpointing only each block's input and one
    block are kept. `config`: the model's config.json as a dict; 0 when it names no sizes."""
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    blocks = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    if not hidden or not blocks:
        return 0
    inner = _config_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    heads = _config_int(config, "num_attention_heads", "n_head") or 1
    block = ACT_PER_HIDDEN * hidden + ACT_PER_INNER * inner + ACT_PER_HEAD_KEY * heads * seq_len
    per_token = (blocks * hidden + block) if checkpointing else blocks * block
    if logits:
        per_token += 2 * _config_int(config, "vocab_size")
    return bytes_per_element * batch_size * seq_len * per_token


def _bytes_per_element(train: TrainConfig, device: str) -> int:
    half = train.precision in ("bf16", "fp16") or (train.precision == "auto" and device.startswith("cuda"))
    return 2 if half else 4


def _activation_width(method: str, r: int, k: int) -> int:
    # Elements per token an adapter keeps for the backward pass: LoRA/DoRA its r-vector,
    # ID-LoRA its k projections of r plus the router, HydraLoRA r plus N heads of m... bounded
    # below by N*r (here k is N); AdaLoRA its r-vector (scaled by E); full fine-tuning keeps
    # nothing beyond the base model.
    return {"lora": r, "dora": r, "adalora": r, "idlora": k * r + k, "hydralora": k * r + k}.get(method, 0)


def estimate_memory(shapes: list[tuple[int, int, int, int, int]], method: str, train: TrainConfig,
                    device: str | None, *, base_params: int = 0, base_activations: int = 0) -> MemoryEstimate:
    """Return the MemoryEstimate for layers given as (m, n, r, k, p) tuples (bytes, fp32), with the
    base model's parameter and activation bytes; k is ID-LoRA's clusters or HydraLoRA's heads N
    (each method's count of parallel parts); `device=None` leaves `available` at 0."""
    def counts(k: int, p: int) -> dict[str, int | None]:
        return {"k": k if uses_clusters(method) else None, "heads": k if uses_heads(method) else None,
                "p": p if method == "idlora" else 1}

    state = sum(adapter_memory_bytes(method, m, n, r, **counts(k, p)) for m, n, r, k, p in shapes)
    if method == "full":  # the weights themselves are counted in base_params
        state -= 4 * sum(m * n for m, n, *_ in shapes)
    tokens = train.batch_size * train.seq_len
    activations = 4 * tokens * sum(_activation_width(method, r, k) for _m, _n, r, k, _p in shapes)
    return MemoryEstimate(state, activations, available_bytes(device) if device else 0,
                          base_params, base_activations)


def _is_causal_lm(model: torch.nn.Module) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


def describe(est: MemoryEstimate, train: TrainConfig) -> str:
    """Return the estimate as one phrase: total GiB and its parts."""
    return (f"{est.total / GIB:.1f} GiB (base model {est.base_params / GIB:.1f} GiB of parameters "
            f"and {est.base_activations / GIB:.1f} GiB of activations at batch_size="
            f"{train.batch_size} x seq_len={train.seq_len}; adapters {est.state / GIB:.1f} GiB of "
            f"weights, gradients and optimiser state and {est.activations / GIB:.1f} GiB of "
            "activations)")


def check_run_fits(model: torch.nn.Module, adapter: AdapterConfig, train: TrainConfig,
                   device: str) -> MemoryEstimate | None:
    """Raise ResourceError when a target rank exceeds `min(m, n)` of its layer or the estimated
    memory still to allocate (adapters, and the base model's activations; its parameters are
    loaded already) exceeds what `device` has free; return the estimate (None for `base`)."""
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
        shapes.append((int(m), int(n), target.r, _parts(method, target), target.rb_splits))
    config = getattr(model, "config", None)
    acts = base_activation_bytes(
        config.to_dict() if hasattr(config, "to_dict") else {}, train.batch_size, train.seq_len,
        logits=_is_causal_lm(model), bytes_per_element=_bytes_per_element(train, device),
        checkpointing=bool(train.gradient_checkpointing))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate_memory(shapes, method, train, device, base_params=params, base_activations=acts)
    if est.needed > est.available:
        raise ResourceError(
            f"the run needs {describe(est, train)}; {est.needed / GIB:.1f} GiB of it is still to "
            f"allocate but {device} has {est.available / GIB:.1f} GiB free; lower batch_size or "
            "seq_len (or r, k), turn on gradient checkpointing, or adapt fewer layers")
    return est


def _parts(method: str, target: TargetConfig) -> int:
    """Return a target's count of parallel parts: HydraLoRA's heads N, else ID-LoRA's clusters k."""
    return target.heads if uses_heads(method) else target.k


def estimate_from_headers(config: RunConfig, hf_config: Mapping[str, Any], param_count: int,
                          layer_shapes: Mapping[str, tuple[int, int]]) -> MemoryEstimate:
    """Return the run's MemoryEstimate before anything is loaded (available = 0): the base model as
    `param_count` fp32 parameters, its activations from `hf_config` (config.json), and adapters on
    the layers of `layer_shapes` ({name: (m, n)}) that the config's targets name (by suffix, or all
    of them for a regex target)."""
    method = config.adapter.method
    shapes = []
    if method in ("idlora", "lora", "dora", "hydralora", "full"):
        for target in config.adapter.targets:
            exact = layer_shapes.get(target.pattern)
            hits = [exact] if exact is not None and not target.regex else [
                shape for name, shape in layer_shapes.items()
                if target.regex or name.endswith("." + target.pattern)]
            shapes += [(int(m), int(n), target.r, _parts(method, target), target.rb_splits)
                       for m, n in hits]
    causal = any(str(a).endswith("ForCausalLM") for a in hf_config.get("architectures") or [])
    train = config.train
    acts = 0 if method == "base" else base_activation_bytes(hf_config, train.batch_size, train.seq_len, logits=causal,
                                 bytes_per_element=_bytes_per_element(train, train.device),
                                 checkpointing=bool(train.gradient_checkpointing))
    return estimate_memory(shapes, method if shapes else "base", train, None,
                           base_params=4 * int(param_count), base_activations=acts)
