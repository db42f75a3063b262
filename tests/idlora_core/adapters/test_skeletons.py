"""The on-disk skeleton cache: keys, reuse, corrupt entries, and its use by apply_adapters."""

from __future__ import annotations

import numpy as np
import pytest

from idlora_core import models as catalog
from idlora_core.adapters import inject
from idlora_core.adapters.skeletons import cache_root, cached_skeleton, skeleton_key
from idlora_core.config import AdapterConfig, TargetConfig
from tests.conftest import make_tiny_llama

PARAMS = {"k": 2, "r": 4, "selection": "centroid", "normalize_rows": False, "seed": 0}


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "CACHE_DIR", tmp_path)


def test_key_changes_with_any_entry_or_parameter():
    w = np.arange(12.0).reshape(3, 4)
    key = skeleton_key(w, PARAMS)
    assert skeleton_key(w.copy(), dict(PARAMS)) == key
    changed = w.copy()
    changed[2, 3] += 1e-12
    assert skeleton_key(changed, PARAMS) != key
    assert skeleton_key(w, {**PARAMS, "seed": 1}) != key
    assert skeleton_key(w.reshape(4, 3), PARAMS) != key


def test_reuse_and_corrupt_entry_is_recomputed():
    w = np.random.default_rng(0).normal(size=(16, 8))
    calls = []

    def compute():
        calls.append(1)
        return [[0, 1], [2, 3]]

    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert len(calls) == 1
    (entry,) = cache_root().rglob("*.json")
    entry.write_text("{not json")
    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert len(calls) == 2 and entry.is_file()


def test_apply_adapters_reuses_cached_skeletons(monkeypatch):
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)])
    _, first = inject.apply_adapters(make_tiny_llama(), cfg)
    assert len(list(cache_root().rglob("*.json"))) == 2

    def boom(*args, **kwargs):
        raise AssertionError("clustering ran although the cache holds the skeletons")

    monkeypatch.setattr(inject, "compute_skeleton", boom)
    _, second = inject.apply_adapters(make_tiny_llama(), cfg)
    assert second.resolved_skeletons == first.resolved_skeletons
    with pytest.raises(AssertionError, match="clustering ran"):
        inject.apply_adapters(make_tiny_llama(), cfg, cache=False)
    other_seed = cfg.model_copy(update={"seed": 1})
    with pytest.raises(AssertionError, match="clustering ran"):
        inject.apply_adapters(make_tiny_llama(), other_seed)
