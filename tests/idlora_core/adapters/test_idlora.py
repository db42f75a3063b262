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
    """docs/THEORY.md written token by token with numpy (float64)."""
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


def test_init_equals_base_and_only_the_skeleton_is_stored():
    base, skeleton, layer = _layer()
    x = torch.randn(4, 10, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))
    assert layer.skeleton == skeleton.tolist()
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"idlora_skeleton"}
    assert buffers["idlora_skeleton"].shape == (3, 4) and buffers["idlora_skeleton"].dtype == torch.long


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
    with pytest.raises(ValueError, match="distinct"):
        IDLoRALinear(nn.Linear(4, 6), [[0, 1], [1, 2]])
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
    assert torch.equal(after["idlora_skeleton"], before["idlora_skeleton"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_follows_base_dtype(dtype):
    base = nn.Linear(16, 8).to(dtype)
    layer = IDLoRALinear(base, [[0, 1], [2, 3]])
    for t in [layer.idlora_T, layer.idlora_B]:
        assert t.dtype == dtype and t.device == base.weight.device
    assert layer.idlora_skeleton.dtype == torch.long
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


# --- the gather path against the explicit A_c x formula (float64, independent of the layer) ---


def _formula(w, b, skeleton, T, B, x, scaling, p):
    """docs/THEORY.md with the copied rows A_c = W0[J_c, :] (k, r, n), everything float64 torch."""
    A = w[torch.as_tensor(skeleton)]  # (k, r, n): the copy the layer no longer makes
    zc = torch.einsum("krn,...n->...kr", A, x)
    a = torch.softmax(torch.einsum("...kr,kr->...k", zc, T), dim=-1)
    z = torch.einsum("...k,...kr->...r", a, zc)
    r = z.shape[-1]
    dy = torch.cat([z[..., j * r // p:(j + 1) * r // p] @ B.T for j in range(p)], dim=-1)
    y = x @ w.T + scaling * dy
    return y if b is None else y + b


def _check_against_formula(base: nn.Linear, skeleton, p: int, x64: torch.Tensor, rtol: float, atol: float):
    layer = IDLoRALinear(base, skeleton, alpha=12.0, rb_splits=p)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.idlora_T.copy_(torch.randn(layer.idlora_T.shape, generator=gen))
        layer.idlora_B.copy_(0.05 * torch.randn(layer.idlora_B.shape, generator=gen))
    dtype = base.weight.dtype
    x = x64.to(dtype).requires_grad_(True)
    y = layer(x)
    cot = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y.double() * cot).sum().backward()

    w = base.weight.detach().double()
    b = None if base.bias is None else base.bias.detach().double()
    T = layer.idlora_T.detach().double().clone().requires_grad_(True)
    B = layer.idlora_B.detach().double().clone().requires_grad_(True)
    xr = x.detach().double().clone().requires_grad_(True)
    ref = _formula(w, b, layer.skeleton, T, B, xr, layer.scaling, p)
    (ref * cot).sum().backward()
    torch.testing.assert_close(y.double(), ref.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(layer.idlora_B.grad.double(), B.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(layer.idlora_T.grad.double(), T.grad, rtol=rtol, atol=atol)
    assert B.grad.abs().max() > 0 and T.grad.abs().max() > 0  # the comparison is not 0 == 0
    n = base.in_features
    shapes = [tuple(t.shape) for t in list(layer.parameters()) + list(layer.buffers())]
    assert (layer.k, layer.r, n) not in shapes and layer.k * layer.r * n not in [
        t.numel() for t in layer.buffers()
    ]
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,r,p", [(3, 4, 1), (3, 4, 2), (2, 6, 3)])
def test_gather_equals_copied_rows_formula_random(bias, k, r, p):
    torch.manual_seed(3)
    base = nn.Linear(10, 12, bias=bias).double()
    skeleton = torch.randperm(12)[: k * r].reshape(k, r)
    _check_against_formula(base, skeleton, p, torch.randn(2, 5, 10, dtype=torch.float64), 1e-10, 1e-12)


@pytest.mark.parametrize("which,p", [("minilm", 1), ("minilm", 2), ("smollm2", 1), ("smollm2", 4)])
def test_gather_equals_copied_rows_formula_on_real_layers(which, p, request):
    """MiniLM's query has a bias, SmolLM2's q_proj none; fp32 layers against the float64 formula."""
    import copy

    loaded = request.getfixturevalue(which)
    name = "encoder.layer.0.attention.self.query" if which == "minilm" else "model.layers.0.self_attn.q_proj"
    base = copy.deepcopy(loaded.model.get_submodule(name))
    assert (base.bias is not None) == (which == "minilm")
    m = base.out_features
    skeleton = torch.randperm(m, generator=torch.Generator().manual_seed(0))[:32].reshape(4, 8)
    x = torch.randn(2, 7, base.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _check_against_formula(base, skeleton, p, x, 2e-4, 2e-4)
    # the same layer in float64 matches to rounding
    _check_against_formula(copy.deepcopy(base).double(), skeleton, p, x, 1e-9, 1e-9)


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_follows_the_formula(bias):
    torch.manual_seed(4)
    base = nn.Linear(64, 48, bias=bias)
    skeleton = torch.randperm(48)[:16].reshape(4, 4)
    x = torch.randn(3, 64, dtype=torch.float64)
    _check_against_formula(base.to(torch.bfloat16), skeleton, 2, x, 0.05, 0.05)


@pytest.mark.parametrize("m,n,k,r,p,bias", [(12, 10, 3, 4, 1, True), (24, 7, 2, 8, 4, False)])
def test_state_dict_size_equals_formula(m, n, k, r, p, bias):
    base = nn.Linear(n, m, bias=bias)
    layer = IDLoRALinear(base, torch.randperm(m)[: k * r].reshape(k, r), rb_splits=p)
    own = {key: t for key, t in layer.state_dict().items() if not key.startswith("base_layer.")}
    assert set(own) == {"idlora_skeleton", "idlora_T", "idlora_B"}
    assert sum(t.numel() for t in own.values()) == m * r // p**2 + k * r + k * r
    nbytes = sum(t.numel() * t.element_size() for t in own.values())
    assert nbytes == 4 * (m * r // p**2 + k * r) + 8 * k * r


def test_dropout_acts_on_z_not_on_x():
    """With dropout, training outputs are base + s B dropout(z); the router sees undropped z_c."""
    torch.manual_seed(0)
    layer = IDLoRALinear(nn.Linear(8, 8, bias=False), [[0, 1], [2, 3]], dropout=0.5).double()
    with torch.no_grad():
        layer.idlora_B.normal_()
        layer.idlora_T.normal_()
    x = torch.randn(5, 8, dtype=torch.float64)
    layer.train()
    torch.manual_seed(7)
    got = layer(x)
    zc = layer.gather(layer.base_layer(x))
    a = torch.softmax((zc * layer.idlora_T).sum(-1), -1)
    z = (a.unsqueeze(-1) * zc).sum(-2)
    torch.manual_seed(7)
    want = layer.base_layer(x) + layer.scaling * torch.nn.functional.dropout(z, 0.5, True) @ layer.idlora_B.T
    torch.testing.assert_close(got, want)


def test_compiled_update_matches_eager():
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    eager = IDLoRALinear(base, [[0, 1], [2, 3]], rb_splits=2)
    compiled = IDLoRALinear(base, [[0, 1], [2, 3]], rb_splits=2, compile=True)
    with torch.no_grad():
        eager.idlora_B.normal_()
        eager.idlora_T.normal_()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 16)
    try:
        got = compiled(x)
    except Exception as exc:  # no working C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable: {type(exc).__name__}")
    torch.testing.assert_close(got, eager(x), rtol=1e-5, atol=1e-6)
