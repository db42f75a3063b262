"""IDLoRALinear on small nn.Linear layers: forward against a per-token numpy reference, RB,
gradients against finite differences, which tensors an optimiser step changes, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from idlora_core.adapters.budget import trainable_params
from idlora_core.adapters.idlora import IDLoRALinear


def _layer(m=12, n=10, k=3, r=4, p=1, dtype=torch.float64, seed=0, alpha=8.0):
    torch.manual_seed(seed)
    base = nn.Linear(n, m).to(dtype)
    skeleton = torch.randperm(m)[: k * r].reshape(k, r)
    return base, skeleton, IDLoRALinear(base, skeleton, alpha=alpha, rb_splits=p)


def _reference(layer: IDLoRALinear, x: np.ndarray) -> np.ndarray:
    """DESIGN §1 written token by token with numpy (float64)."""
    w = layer.base_layer.weight.detach().double().numpy()
    b = layer.base_layer.bias.detach().double().numpy()
    a_c = w[np.asarray(layer.skeleton)]  # (k, r, n)
    t = layer.idlora_T.detach().double().numpy()
    bp = layer.idlora_B.detach().double().numpy()
    p, r = layer.rb_splits, layer.r
    out = []
    for tok in x.reshape(-1, x.shape[-1]):
        z_c = np.stack([a_c[c] @ tok for c in range(layer.k)])
        logits = np.array([t[c] @ z_c[c] for c in range(layer.k)])
        a = np.exp(logits - logits.max())
        a /= a.sum()
        z = (a[:, None] * z_c).sum(0)
        dy = np.concatenate([bp @ z[j * r // p : (j + 1) * r // p] for j in range(p)])
        out.append(w @ tok + b + layer.scaling * dy)
    return np.array(out).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("k,r,p", [(1, 4, 1), (3, 4, 1), (3, 4, 2), (2, 6, 3), (3, 4, 4)])
def test_forward_matches_per_token_reference(k, r, p):
    _, _, layer = _layer(k=k, r=r, p=p)
    with torch.no_grad():
        layer.idlora_T.normal_()
        layer.idlora_B.normal_()
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    got = layer(x).detach().numpy()
    np.testing.assert_allclose(got, _reference(layer, x.numpy()), rtol=1e-10, atol=1e-10)


def test_init_equals_base_and_buffers_are_rows_of_w0():
    base, skeleton, layer = _layer()
    x = torch.randn(4, 10, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))
    w = base.weight.detach()
    for c in range(3):
        for j in range(4):
            assert torch.equal(layer.idlora_A[c, j], w[skeleton[c, j]])
    assert layer.skeleton == skeleton.tolist()
    names = {n for n, _ in layer.named_buffers()}
    assert names == {"idlora_A"} and layer.idlora_A.shape == (3, 4, 10)


@pytest.mark.parametrize("m,n,k,r,p", [(12, 10, 3, 4, 1), (12, 10, 3, 4, 2), (24, 7, 2, 8, 4), (12, 10, 1, 4, 1)])
def test_trainable_count_matches_formula(m, n, k, r, p):
    _, _, layer = _layer(m=m, n=n, k=k, r=r, p=p)
    trainable = {name: t.numel() for name, t in layer.named_parameters() if t.requires_grad}
    assert set(trainable) == {"idlora_T", "idlora_B"}
    assert layer.idlora_B.shape == (m // p, r // p)
    assert sum(trainable.values()) == trainable_params("idlora", m, n, r, k=k, p=p) == m * r // p**2 + k * r


@pytest.mark.parametrize("m,r,p,what", [(12, 4, 3, "m=12"), (12, 6, 4, "r=6"), (10, 4, 4, "m=10")])
def test_rb_bad_splits_is_clear_error(m, r, p, what):
    base = nn.Linear(8, m)
    with pytest.raises(ValueError, match=f"p to divide m and r: .*{what.split('=')[0]}={what.split('=')[1]}"):
        IDLoRALinear(base, torch.arange(2 * r).reshape(2, r) % m, rb_splits=p)


def test_bad_skeleton_and_base_errors():
    with pytest.raises(ValueError, match=r"shape \(k, r\)"):
        IDLoRALinear(nn.Linear(4, 6), [0, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        IDLoRALinear(nn.Linear(4, 6), [[0, 6]])
    with pytest.raises(TypeError, match="nn.Linear"):
        IDLoRALinear(nn.Conv1d(4, 6, 1), [[0, 1]])


def test_gradient_of_b_matches_finite_differences():
    _, _, layer = _layer(p=2)
    with torch.no_grad():
        layer.idlora_T.normal_()
        layer.idlora_B.normal_(std=0.1)
    x = torch.randn(3, 10, dtype=torch.float64)
    target = torch.randn(3, 12, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return ((layer(x) - target) ** 2).mean()

    loss().backward()
    analytic = layer.idlora_B.grad.clone()
    numeric = torch.zeros_like(analytic)
    eps = 1e-6
    with torch.no_grad():
        for idx in np.ndindex(*analytic.shape):
            layer.idlora_B[idx] += eps
            up = loss().item()
            layer.idlora_B[idx] -= 2 * eps
            down = loss().item()
            layer.idlora_B[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    # T gets a gradient through the router once B is non-zero.
    assert layer.idlora_T.grad.abs().sum() > 0


def test_optimizer_steps_change_only_b_and_t():
    base, _, layer = _layer(dtype=torch.float32)
    before = {n: t.detach().clone() for n, t in layer.state_dict().items()}
    opt = torch.optim.AdamW([t for t in layer.parameters() if t.requires_grad], lr=1e-2)
    x, target = torch.randn(6, 10), torch.randn(6, 12)
    for _ in range(2):  # T has no gradient while B = 0, so it moves from the second step on
        opt.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()
    after = layer.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"idlora_T", "idlora_B"}
    assert torch.equal(after["base_layer.weight"], before["base_layer.weight"])
    assert torch.equal(after["idlora_A"], before["idlora_A"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_follows_base_dtype(dtype):
    base = nn.Linear(16, 8).to(dtype)
    layer = IDLoRALinear(base, [[0, 1], [2, 3]])
    for t in [layer.idlora_A, layer.idlora_T, layer.idlora_B]:
        assert t.dtype == dtype and t.device == base.weight.device
    x = torch.randn(3, 16, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.equal(y, base(x))
    y.float().sum().backward()
    assert layer.idlora_B.grad.dtype == dtype


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = IDLoRALinear(nn.Linear(8, 8), [[0, 1], [2, 3]], dropout=0.5)
    with torch.no_grad():
        layer.idlora_B.normal_()
    x = torch.randn(4, 8)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))
