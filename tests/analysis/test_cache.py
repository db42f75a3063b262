"""The content-addressed cache and the cached / multi-layer sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

import analysis.sweep as sweep_module
from analysis.sweep import COLUMNS, SweepSpec, sweep_layer
from analysis.sweep_model import resolve_layers, sweep_model
from idlora_core.cache import ResultCache, cache_key
from idlora_core.layers import get_weight

pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def test_key_depends_on_every_byte_and_parameter():
    W = np.arange(12.0).reshape(3, 4)
    base = cache_key("sweep", [W], {"ks": [1, 2], "seed": 0})
    assert base == cache_key("sweep", [W.copy()], {"seed": 0, "ks": [1, 2]})  # order-free params
    W2 = W.copy()
    W2[1, 2] = np.nextafter(W2[1, 2], np.inf)  # one ulp in one entry
    assert cache_key("sweep", [W2], {"ks": [1, 2], "seed": 0}) != base
    assert cache_key("sweep", [W], {"ks": [1, 2], "seed": 1}) != base
    assert cache_key("sweep", [W.reshape(4, 3)], {"ks": [1, 2], "seed": 0}) != base
    assert cache_key("sweep", [W.astype(np.float32)], {"ks": [1, 2], "seed": 0}) != base
    assert cache_key("other", [W], {"ks": [1, 2], "seed": 0}) != base


def test_save_load_and_corrupt_entry_recomputed(tmp_path):
    cache = ResultCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"value": [1.5, None]}

    assert cache.get_or_compute("ab12", compute) == ({"value": [1.5, None]}, False)
    assert cache.get_or_compute("ab12", compute) == ({"value": [1.5, None]}, True)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    path = cache.path("ab12")
    assert json.loads(path.read_text())["key"] == "ab12"
    assert [p.name for p in path.parent.iterdir()] == ["ab12.json"]  # no temporary files left
    path.write_text('{"key": "ab12", "payl')  # truncated write
    assert cache.load("ab12") is None and not path.exists()
    assert cache.get_or_compute("ab12", compute) == ({"value": [1.5, None]}, False)
    assert len(calls) == 2
    path.write_text(json.dumps({"key": "other", "payload": {}}))  # entry of another key
    assert cache.load("ab12") is None


def test_cached_sweep_is_identical_and_served_from_disk(tmp_path, monkeypatch):
    W = np.random.default_rng(0).standard_normal((40, 12))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([1, 2], [2, 4, 20], seed=3)
    first = sweep_layer(W, spec, layer="x", cache=cache)
    calls = []
    monkeypatch.setattr(sweep_module, "_sweep",
                        lambda *a, **k: calls.append(1) or pytest.fail("recomputed"))
    second = sweep_layer(W, spec, layer="x", cache=cache)
    assert not first.from_cache and second.from_cache and not calls
    assert list(second.table.columns) == COLUMNS
    assert second.table.drop(columns="seconds").equals(first.table.drop(columns="seconds"))
    assert second.table.dtypes.equals(first.table.dtypes)
    assert second.clusters_json() == first.clusters_json()
    monkeypatch.undo()
    direct = sweep_layer(W, spec, layer="x").table
    np.testing.assert_allclose(second.table["rel_fro_error"], direct["rel_fro_error"], rtol=1e-12)
    other = sweep_layer(W, SweepSpec([1, 2], [2, 4, 20], seed=4), layer="x", cache=cache)
    assert not other.from_cache  # any spec field is part of the key


def test_lookup_only_never_computes(tmp_path, monkeypatch):
    W = np.random.default_rng(1).standard_normal((30, 10))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([1, 2], [2, 4])
    real = sweep_module._sweep
    monkeypatch.setattr(sweep_module, "_sweep",
                        lambda *a, **k: pytest.fail("lookup_only computed a sweep"))
    assert sweep_layer(W, spec, layer="y", cache=cache, lookup_only=True) is None
    assert list(tmp_path.rglob("*.json")) == []
    monkeypatch.setattr(sweep_module, "_sweep", real)
    computed = sweep_layer(W, spec, layer="y", cache=cache)
    monkeypatch.setattr(sweep_module, "_sweep",
                        lambda *a, **k: pytest.fail("lookup_only computed a sweep"))
    found = sweep_layer(W, spec, layer="y", cache=cache, lookup_only=True)
    assert found.from_cache
    assert found.table.drop(columns="seconds").equals(computed.table.drop(columns="seconds"))


def test_sweep_model_by_pattern_and_names(minilm, minilm_weights, tmp_path):
    cache = ResultCache(tmp_path)
    spec = SweepSpec([4], [8], ["id"])
    pattern = r"layer\.[01]\.attention\.self\.(query|value)$"
    names = resolve_layers(minilm_weights, pattern)
    assert names == [f"encoder.layer.{b}.attention.self.{p}" for b in (0, 1) for p in ("query", "value")]
    seen = []
    table = sweep_model(minilm_weights, pattern, spec, cache=cache,
                        progress=lambda d, t, m: seen.append((d, t)))
    assert list(table["layer"]) == names and seen[-1] == (4, 4)
    for name, row in zip(names, table.itertuples(), strict=True):
        # independent source of the weight: the full transformers model
        alone = sweep_layer(get_weight(minilm.model, name), spec).table
        assert row.rel_fro_error == pytest.approx(alone["rel_fro_error"].iloc[0], rel=1e-12)
    again = sweep_model(minilm_weights, names[:2], spec, cache=cache)
    assert cache.hits == 2 and again["rel_fro_error"].tolist() == table["rel_fro_error"][:2].tolist()


def test_resolve_layers_errors(minilm_weights):
    with pytest.raises(ValueError, match="no linear layer matches"):
        resolve_layers(minilm_weights, "nothing_like_this")
    with pytest.raises(ValueError, match="not a valid regex"):
        resolve_layers(minilm_weights, "query(")
    with pytest.raises(ValueError, match="close matches"):
        resolve_layers(minilm_weights, ["encoder.layer.0.attention.self.qury"])


def test_entry_with_right_key_and_empty_payload_is_recomputed(tmp_path):
    """Used to raise KeyError on every run until the entry was deleted by hand."""
    W = np.random.default_rng(2).standard_normal((20, 8))
    cache = ResultCache(tmp_path)
    spec = SweepSpec([1, 2], [2, 4])
    first = sweep_layer(W, spec, layer="z", cache=cache)
    (entry,) = tmp_path.rglob("*.json")
    key = json.loads(entry.read_text())["key"]
    entry.write_text(json.dumps({"key": key, "payload": {}}))
    assert sweep_layer(W, spec, layer="z", cache=cache, lookup_only=True) is None
    entry.write_text(json.dumps({"key": key, "payload": {"table": {"data": [], "columns": COLUMNS},
                                                         "layer": "z", "clusterings": []}}))
    again = sweep_layer(W, spec, layer="z", cache=cache)
    assert not again.from_cache
    assert again.table.drop(columns="seconds").equals(first.table.drop(columns="seconds"))
    assert json.loads(entry.read_text())["payload"]["table"]["data"]  # overwritten with the real rows
