"""The skeleton entries of the one cache: keys, reuse, corrupt or invalid entries, and their use
by apply_adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idlora_core.adapters import model as model_module
from idlora_core.adapters import skeletons as skeleton_module
from idlora_core.cache import cached_skeleton, skeleton_key
from idlora_core.config import AdapterConfig, TargetConfig
from tests.conftest import make_tiny_llama

PARAMS = {"k": 2, "r": 4, "selection": "centroid", "normalize_rows": False, "seed": 0}


@pytest.fixture(autouse=True)
def _tmp_cache(empty_cache):
    return empty_cache


def _entries(cache) -> list:
    return sorted((cache / "skeletons").rglob("*.json"))


def test_key_changes_with_any_entry_or_parameter():
    w = np.arange(12.0).reshape(3, 4)
    key = skeleton_key(w, PARAMS)
    assert skeleton_key(w.copy(), dict(PARAMS)) == key
    changed = w.copy()
    changed[2, 3] += 1e-12
    assert skeleton_key(changed, PARAMS) != key
    assert skeleton_key(w, {**PARAMS, "seed": 1}) != key
    assert skeleton_key(w.reshape(4, 3), PARAMS) != key


def test_reuse_and_corrupt_entry_is_recomputed(empty_cache):
    w = np.random.default_rng(0).normal(size=(16, 8))
    calls = []

    def compute():
        calls.append(1)
        return [[0, 1], [2, 3]]

    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert len(calls) == 1
    (entry,) = _entries(empty_cache)
    entry.write_text("{not json")
    assert cached_skeleton(w, PARAMS, compute) == [[0, 1], [2, 3]]
    assert len(calls) == 2 and entry.is_file()


@pytest.mark.parametrize("bad", [[[0, 1], [2, 99]], [[0, 1], [1, 2]], [[0, 1], [2, -1]],
                                 [[0, 1], [2, "3"]], [[0, 1], [2, 3.0]], []])
def test_invalid_rows_are_recomputed_and_overwritten(empty_cache, bad):
    w = np.random.default_rng(1).normal(size=(16, 8))
    cached_skeleton(w, PARAMS, lambda: [[0, 1], [2, 3]])
    (entry,) = _entries(empty_cache)
    doc = json.loads(entry.read_text())
    doc["payload"]["skeleton"] = bad  # the right key, unusable rows (99 >= m = 16, repeated, ...)
    entry.write_text(json.dumps(doc))

    def check(skeleton):
        if len(skeleton) != 2:
            raise ValueError("wrong k")

    assert cached_skeleton(w, PARAMS, lambda: [[4, 5], [6, 7]], check) == [[4, 5], [6, 7]]
    assert json.loads(entry.read_text())["payload"]["skeleton"] == [[4, 5], [6, 7]]  # overwritten


def test_out_of_range_entry_does_not_break_training(empty_cache):
    """An entry with out-of-range rows used to make every later adaptation fail."""
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="layers.0.self_attn.q_proj",
                                                                r=4, k=2)])
    adapted = model_module.apply_adapters(make_tiny_llama(), cfg)
    first = adapted.report
    (entry,) = _entries(empty_cache)
    doc = json.loads(entry.read_text())
    doc["payload"]["skeleton"][0][0] = 10_000
    entry.write_text(json.dumps(doc))
    adapted = model_module.apply_adapters(make_tiny_llama(), cfg)
    second = adapted.report
    assert second.resolved_skeletons == first.resolved_skeletons
    assert json.loads(entry.read_text())["payload"]["skeleton"] == next(
        iter(first.resolved_skeletons.values()))


def test_apply_adapters_reuses_cached_skeletons(monkeypatch, empty_cache):
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)])
    adapted = model_module.apply_adapters(make_tiny_llama(), cfg)
    first = adapted.report
    assert len(_entries(empty_cache)) == 2

    def boom(*args, **kwargs):
        raise AssertionError("clustering ran although the cache holds the skeletons")

    monkeypatch.setattr(skeleton_module, "compute_skeleton", boom)
    adapted = model_module.apply_adapters(make_tiny_llama(), cfg)
    second = adapted.report
    assert second.resolved_skeletons == first.resolved_skeletons
    with pytest.raises(AssertionError, match="clustering ran"):
        model_module.apply_adapters(make_tiny_llama(), cfg, cache=False)
    other_seed = cfg.model_copy(update={"seed": 1})
    with pytest.raises(AssertionError, match="clustering ran"):
        model_module.apply_adapters(make_tiny_llama(), other_seed)
