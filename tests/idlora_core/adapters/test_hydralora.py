"""HydraLoRALinear: forward against a per-token numpy reference, counts, init, gradients, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from idlora_core.adapters.budget import trainable_params
from idlora_core.adapters.hydralora import HydraLoRALinear


def _layer(m=12, n=10, r=4, heads=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(n, m).to(dtype)
    return base, HydraLoRALinear(base, r=r, num_heads=heads, alpha=8.0, generator=torch.Generator().manual_seed(seed))


def test_forward_matches_per_token_reference():
    base, layer = _layer()
    with torch.no_grad():
        layer.hydralora_B.normal_()
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    w, b = base.weight.detach().numpy(), base.bias.detach().numpy()
    a = layer.hydralora_A.detach().numpy()
    router = layer.hydralora_router.detach().numpy()
    heads = layer.hydralora_B.detach().numpy().transpose(1, 0, 2)  # (N, m, r)
    assert heads.shape == (3, 12, 4)
    expected = []
    for tok in x.numpy().reshape(-1, 10):
        logits = router @ tok
        g = np.exp(logits - logits.max())
        g /= g.sum()
        dy = sum(g[i] * heads[i] @ (a @ tok) for i in range(3))
        expected.append(w @ tok + b + layer.scaling * dy)
    got = layer(x).detach().numpy().reshape(-1, 12)
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("m,n,r,heads", [(12, 10, 4, 3), (8, 20, 2, 1), (30, 6, 8, 4)])
def test_count_matches_formula_and_init_equals_base(m, n, r, heads):
    base, layer = _layer(m=m, n=n, r=r, heads=heads)
    count = sum(t.numel() for t in layer.parameters() if t.requires_grad)
    assert count == trainable_params("hydralora", m, n, r, heads=heads) == r * n + heads * r * m + heads * n
    assert not base.weight.requires_grad and not base.bias.requires_grad
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))


def test_same_generator_same_init():
    _, one = _layer(seed=3)
    _, two = _layer(seed=3)
    _, other = _layer(seed=4)
    assert torch.equal(one.hydralora_A, two.hydralora_A)
    assert not torch.equal(one.hydralora_A, other.hydralora_A)


def test_step_changes_adapter_not_base():
    _, layer = _layer(dtype=torch.float32)
    before = {n: t.detach().clone() for n, t in layer.state_dict().items()}
    opt = torch.optim.AdamW([t for t in layer.parameters() if t.requires_grad], lr=1e-2)
    x, target = torch.randn(6, 10), torch.randn(6, 12)
    for _ in range(2):
        opt.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()
    after = layer.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"hydralora_A", "hydralora_router", "hydralora_B"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_follows_base_dtype(dtype):
    base = nn.Linear(16, 8).to(dtype)
    layer = HydraLoRALinear(base, r=2, num_heads=2)
    assert {t.dtype for t in layer.parameters()} == {dtype}
    x = torch.randn(3, 16, dtype=dtype)
    assert layer(x).dtype == dtype


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        HydraLoRALinear(nn.Linear(4, 4), r=2, num_heads=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        HydraLoRALinear(nn.Identity(), r=2)
