"""Formula counts of idlora_core.adapters.budget against the docs/ADAPTERS.md table, written out by hand."""

from __future__ import annotations

import pytest

from idlora_core.adapters.budget import (
    adapter_memory_bytes,
    frozen_adapter_elements,
    trainable_params,
)

CASES = [
    # method, m, n, r, k, p, bias, expected
    ("full", 384, 384, 8, 4, 1, False, 147456),
    ("full", 384, 384, 8, 4, 1, True, 147456 + 384),
    ("lora", 384, 1536, 8, 4, 1, True, 8 * (384 + 1536)),
    ("dora", 384, 1536, 8, 4, 1, False, 8 * (384 + 1536) + 384),
    ("hydralora", 576, 576, 8, 4, 1, False, 8 * 576 + 4 * 8 * 576 + 4 * 576),
    ("idlora", 576, 576, 8, 4, 1, False, 576 * 8 + 4 * 8),
    ("idlora", 576, 576, 8, 4, 2, False, 576 * 8 // 4 + 4 * 8),
    ("idlora", 1536, 576, 16, 8, 4, False, 1536 * 16 // 16 + 8 * 16),
]


@pytest.mark.parametrize("method,m,n,r,k,p,bias,expected", CASES)
def test_trainable_params_matches_table(method, m, n, r, k, p, bias, expected):
    # k is ID-LoRA's clusters and, for HydraLoRA, the heads N (its own keyword `heads`)
    counts = {"heads": k} if method == "hydralora" else {"k": k}
    assert trainable_params(method, m, n, r, p=p, bias=bias, **counts) == expected


def test_hydralora_counts_heads_not_k():
    # N heads: r*n + N*r*m + N*n, written out for N = 2 and 6 (default 4)
    assert trainable_params("hydralora", 12, 10, 3, heads=2) == 3 * 10 + 2 * 3 * 12 + 2 * 10
    assert trainable_params("hydralora", 12, 10, 3, heads=6) == 3 * 10 + 6 * 3 * 12 + 6 * 10
    assert trainable_params("hydralora", 12, 10, 3) == 3 * 10 + 4 * 3 * 12 + 4 * 10
    with pytest.raises(ValueError, match="hydralora has heads, not clusters k: pass heads=8"):
        trainable_params("hydralora", 12, 10, 3, k=8)
    with pytest.raises(ValueError, match="idlora has clusters k, not heads"):
        trainable_params("idlora", 12, 10, 3, heads=8)
    with pytest.raises(ValueError, match="heads must be a positive integer"):
        trainable_params("hydralora", 12, 10, 3, heads=0)
    assert adapter_memory_bytes("hydralora", 12, 10, 3, heads=2) == 4 * 4 * (30 + 72 + 20)


def test_idlora_count_depends_on_k_only_through_router():
    counts = [trainable_params("idlora", 576, 576, 8, k=k) for k in (1, 2, 4, 8)]
    assert [c - 576 * 8 for c in counts] == [8, 16, 32, 64]


def test_idlora_about_half_of_lora_on_square_layer():
    ratio = trainable_params("idlora", 576, 576, 8) / trainable_params("lora", 576, 576, 8)
    assert 0.5 < ratio < 0.51


@pytest.mark.parametrize("m,r,p", [(576, 8, 3), (10, 8, 4)])
def test_rb_needs_divisible_m_and_r(m, r, p):
    with pytest.raises(ValueError, match="divide"):
        trainable_params("idlora", m, 64, r, p=p)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown method"):
        trainable_params("vera", 4, 4, 2)
    assert trainable_params("lora", 4, 4, 2, p=2) == trainable_params("lora", 4, 4, 2)  # p: idlora only
    with pytest.raises(ValueError, match="positive"):
        trainable_params("lora", 0, 4, 2)


def test_frozen_elements_and_memory():
    assert frozen_adapter_elements("idlora", 576, 1536, 8, k=4) == 0  # no copied rows (issue 13)
    assert frozen_adapter_elements("hydralora", 576, 1536, 8, heads=4) == 0
    trainable = 576 * 8 + 32
    assert adapter_memory_bytes("idlora", 576, 1536, 8, k=4) == 4 * 4 * trainable + 8 * 4 * 8
