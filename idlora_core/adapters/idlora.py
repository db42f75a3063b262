"""`IDLoRALinear`: ID-LoRA on one frozen nn.Linear (docs/THEORY.md), with optional rank boosting.

    z_c = A_c x = (W0 x)[J_c]   gathered from the base output: no copy of the rows A_c = W0[J_c, :]
    a   = softmax_c(t_c . z_c)  router T (k, r) trainable, `idlora_T`
    dy  = alpha/r * B z,   z = sum_c a_c z_c     B (m, r) trainable, zero at init, `idlora_B`
The skeleton J is a persistent (k, r) integer buffer `idlora_skeleton`; no (k, r, n) tensor
exists. The base layer runs unchanged (its output is bit-identical to `base(x)`), and the k*r
entries z_c are read from that output minus the bias. Adapter dropout acts on z (the r mixed
projections before B), not on x: a gather cannot see a dropped-out input; at the default
dropout 0 the two are the same function.
RB with p splits (our reading of the paper): B' of shape (m/p, r/p) maps each r/p slice of z
to one m/p slice of dy. Every adapter tensor name starts with `idlora_`.

This file does not choose skeleton rows (see `selection.py`) nor walk a model (`inject.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def idlora_update(zc: torch.Tensor, T: torch.Tensor, B: torch.Tensor, scaling: float, p: int,
                  dropout: float = 0.0, training: bool = False,
                  y: torch.Tensor | None = None) -> torch.Tensor:
    """Return dy (..., m) from the gathered projections zc (..., k, r), or y + dy when the base
    output `y` is given: router, mixing and B.

    The router and mix: one multiply-sum for the k logits, the softmax, the scaling on the k
    weights (cheaper than on the m outputs) and one batched matmul (..., 1, k) @ (..., k, r)
    for z, where the old code multiplied and summed again. With p = 1 and `y`, the output is
    one addmm (y + z B^T), no separate pass over the m outputs. A plain function of tensors, so
    `torch.compile` can take it.
    """
    a = torch.softmax((zc * T).sum(-1), dim=-1) * scaling  # (..., k)
    if torch.is_grad_enabled():  # measured: the batched matmul is faster with autograd,
        z = (a.unsqueeze(-2) @ zc).squeeze(-2)  # (..., r)
    else:  # multiply-sum without it (no-grad inference, about 5 % of the adapter's time)
        z = (a.unsqueeze(-1) * zc).sum(-2)
    if dropout:
        z = F.dropout(z, dropout, training)
    if p == 1:
        if y is not None and y.dtype == z.dtype:
            return torch.addmm(y.reshape(-1, y.shape[-1]), z.reshape(-1, z.shape[-1]), B.T).view(y.shape)
        dy = z @ B.T  # (..., m)
    else:
        dy = (z.unflatten(-1, (p, -1)) @ B.T).flatten(-2)  # (..., p, m/p) -> (..., m)
    return dy if y is None else y + dy.to(y.dtype)


_COMPILED: dict[str, object] = {}


def compiled_update():
    """Return `torch.compile(idlora_update)`, built once per process (shared by all layers)."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(idlora_update, dynamic=True)
    return _COMPILED["fn"]


class IDLoRALinear(nn.Module):
    """A frozen `base` nn.Linear plus the ID-LoRA update; output = base(x) + dy."""

    def __init__(
        self,
        base: nn.Linear,
        skeleton: Sequence[Sequence[int]] | torch.Tensor,
        *,
        alpha: float = 16.0,
        dropout: float = 0.0,
        rb_splits: int = 1,
        compile: bool = False,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"IDLoRALinear wraps an nn.Linear, got {type(base).__name__}")
        index = torch.as_tensor(skeleton, dtype=torch.long, device="cpu")
        if index.ndim != 2 or index.numel() == 0:
            raise ValueError(
                f"skeleton must be k lists of r row indices (shape (k, r)), got shape {tuple(index.shape)}"
            )
        m, n = base.out_features, base.in_features
        k, r = index.shape
        if index.min() < 0 or index.max() >= m:
            raise ValueError(f"skeleton row indices must lie in [0, {m}), got {index.min()}..{index.max()}")
        if index.unique().numel() != index.numel():
            raise ValueError("skeleton row indices must be distinct (each row belongs to one cluster)")
        p = int(rb_splits)
        if p < 1 or m % p or r % p:
            raise ValueError(
                f"rank boosting needs p to divide m and r: m={m} (out_features), r={r}, p={p}"
            )
        self.base_layer = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.in_features, self.out_features = n, m
        self.k, self.r, self.rb_splits = k, r, p
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.dropout = float(dropout)
        self.compile = bool(compile)
        self.adapter_disabled = False  # True: the base layer's output only (AdaptedModel.disable_adapters)
        w = base.weight
        self.register_buffer("idlora_skeleton", index.to(w.device))  # (k, r) int64, persistent
        self.idlora_T = nn.Parameter(torch.zeros(k, r, device=w.device, dtype=w.dtype))
        self.idlora_B = nn.Parameter(torch.zeros(m // p, r // p, device=w.device, dtype=w.dtype))

    @property
    def skeleton(self) -> list[list[int]]:
        """The k lists of r global row indices of W0 (a Python copy of `idlora_skeleton`)."""
        return self.idlora_skeleton.tolist()

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """Return z_c = (W0 x)[J_c] of shape (..., k, r) from the base output y = W0 x + b."""
        zc = y.index_select(-1, self.idlora_skeleton.view(-1))
        bias = self.base_layer.bias
        if bias is not None:
            zc = zc - bias.index_select(0, self.idlora_skeleton.view(-1))
        return zc.unflatten(-1, (self.k, self.r)).to(self.idlora_B.dtype)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Return dy (..., m), scaling included, for input x (..., n), in the adapter's dtype.
        (Runs the base layer to read z_c; `forward` does both in one pass.)"""
        return self._update(self.gather(self.base_layer(x)), None)

    def _update(self, zc: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        fn = compiled_update() if self.compile else idlora_update
        return fn(zc, self.idlora_T, self.idlora_B, self.scaling, self.rb_splits,
                  self.dropout, self.training, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y if self.adapter_disabled else self._update(self.gather(y), y)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, k={self.k}, r={self.r}, "
            f"p={self.rb_splits}, scaling={self.scaling:g}, dropout={self.dropout:g}"
        )
