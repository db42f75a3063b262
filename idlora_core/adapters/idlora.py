"""`IDLoRALinear`: ID-LoRA on one frozen nn.Linear (DESIGN §1), with optional rank boosting.

    z_c = A_c x            A_c = W0[J_c, :]  frozen, one (k, r, n) buffer `idlora_A`
    a   = softmax_c(t_c . z_c)              router T (k, r) trainable, `idlora_T`
    dy  = alpha/r * B z,   z = sum_c a_c z_c  B (m, r) trainable, zero at init, `idlora_B`
RB with p splits (our reading of the paper): B' of shape (m/p, r/p) maps each r/p slice of z
to one m/p slice of dy. Every adapter tensor name starts with `idlora_`.

This file does not choose skeleton rows (see `selection.py`) nor walk a model (`inject.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
        self.skeleton: list[list[int]] = index.tolist()
        self.idlora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        self.register_buffer("idlora_A", w.detach()[index.to(w.device)].clone())  # (k, r, n)
        self.idlora_T = nn.Parameter(torch.zeros(k, r, device=w.device, dtype=w.dtype))
        self.idlora_B = nn.Parameter(torch.zeros(m // p, r // p, device=w.device, dtype=w.dtype))

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Return dy (..., m), scaling included, for input x (..., n), in the adapter's dtype."""
        x = self.idlora_dropout(x.to(self.idlora_A.dtype))
        k, r, n = self.idlora_A.shape
        zc = (x @ self.idlora_A.reshape(k * r, n).T).unflatten(-1, (k, r))  # (..., k, r)
        # The scaling rides on the k router weights: cheaper than scaling the m outputs.
        a = torch.softmax((zc * self.idlora_T).sum(-1), dim=-1) * self.scaling  # (..., k)
        z = (a.unsqueeze(-1) * zc).sum(-2)  # (..., r)
        p = self.rb_splits
        if p == 1:
            return z @ self.idlora_B.T  # (..., m)
        return (z.unflatten(-1, (p, r // p)) @ self.idlora_B.T).flatten(-2)  # (..., p, m/p) -> (..., m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter_delta(x).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, k={self.k}, r={self.r}, "
            f"p={self.rb_splits}, scaling={self.scaling:g}"
        )
