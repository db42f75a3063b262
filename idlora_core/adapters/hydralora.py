"""`HydraLoRALinear`: HydraLoRA on one frozen nn.Linear (Tian et al., 2024), the MoE-LoRA baseline.

    z  = A x                 A (r, n) trainable, shared by all heads, `hydralora_A`
    g  = softmax(R x)        router R (N, n) trainable, no bias, `hydralora_router`
    dy = alpha/r * sum_i g_i B_i z     heads B (m, N, r) trainable, zero at init, `hydralora_B`
Head i is `hydralora_B[:, i, :]`; stored m-first so that the (m, N*r) matrix of all heads is a
view, not a permute-and-copy on every forward.
Trainable elements: r*n + N*r*m + N*n. Every adapter tensor name starts with `hydralora_`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class HydraLoRALinear(nn.Module):
    """A frozen `base` nn.Linear plus the HydraLoRA update; output = base(x) + dy."""

    def __init__(
        self,
        base: nn.Linear,
        *,
        r: int = 8,
        num_heads: int = 4,
        alpha: float = 16.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"HydraLoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r < 1 or num_heads < 1:
            raise ValueError(f"r and num_heads must be >= 1, got r={r}, num_heads={num_heads}")
        self.base_layer = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        m, n = base.out_features, base.in_features
        self.in_features, self.out_features, self.r, self.num_heads = n, m, r, num_heads
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.hydralora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_disabled = False  # True: the base layer's output only (AdaptedModel.disable_adapters)
        w = base.weight
        # LoRA's init for A and a Linear's default init for the router (uniform, bound 1/sqrt(n)).
        a = torch.empty(r, n, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(n)
        router = torch.empty(num_heads, n, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.hydralora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.hydralora_router = nn.Parameter(router.to(device=w.device, dtype=w.dtype))
        self.hydralora_B = nn.Parameter(torch.zeros(m, num_heads, r, device=w.device, dtype=w.dtype))

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Return dy (..., m) for input x (..., n), in the adapter's dtype."""
        x = self.hydralora_dropout(x.to(self.hydralora_A.dtype))
        z = x @ self.hydralora_A.T  # (..., r)
        g = torch.softmax(x @ self.hydralora_router.T, dim=-1)  # (..., N)
        u = (g.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)  # (..., N*r)
        heads = self.hydralora_B.view(self.out_features, -1)  # (m, N*r), a view
        return self.scaling * (u @ heads.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y if self.adapter_disabled else y + self.adapter_delta(x).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"heads={self.num_heads}, scaling={self.scaling:g}"
        )
