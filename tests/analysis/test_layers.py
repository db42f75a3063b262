"""Layer table and filters of analysis.layers, against the model's own modules."""

from __future__ import annotations

import pandas as pd
from torch import nn

from analysis.layers import block_span, filter_layers, layer_table, model_summary


def test_layer_table_matches_modules(tiny_bert):
    table = layer_table(tiny_bert)
    linears = {n: m for n, m in tiny_bert.named_modules() if isinstance(m, nn.Linear)}
    assert list(table["name"]) == list(linears)
    for row in table.itertuples():
        mod = linears[row.name]
        assert (row.m, row.n) == (mod.out_features, mod.in_features)
        assert row.params == mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        assert row.shape == f"{row.m} x {row.n}"
    q = table[table["name"] == "encoder.layer.1.attention.self.query"].iloc[0]
    assert (q["block"], q["type"], q["params"]) == (1, "q", 32 * 32 + 32)


def test_filter_by_type_and_block_range(tiny_llama):
    table = layer_table(tiny_llama)
    assert block_span(table) == (0, 1)
    qv = filter_layers(table, kinds=["q", "v"])
    assert list(qv["name"]) == [
        f"model.layers.{b}.self_attn.{p}_proj" for b in (0, 1) for p in ("q", "v")
    ]
    block1 = filter_layers(table, kinds=["down"], blocks=(1, 1))
    assert list(block1["name"]) == ["model.layers.1.mlp.down_proj"]
    assert len(filter_layers(table)) == len(table) == 14
    assert filter_layers(table, kinds=["q"], blocks=(5, 9)).empty


def test_rows_outside_blocks_dropped_by_block_range():
    table = pd.DataFrame({"name": ["a", "b"], "type": ["q", "other"], "block": pd.array([0, None], "Int64")})
    assert list(filter_layers(table)["name"]) == ["a", "b"]
    assert list(filter_layers(table, blocks=(0, 3))["name"]) == ["a"]
    assert block_span(table.iloc[1:]) is None


def test_model_summary_counts(tiny_bert):
    info = model_summary(tiny_bert)
    assert info["params"] == sum(p.numel() for p in tiny_bert.parameters())
    assert info["linear_params"] == int(layer_table(tiny_bert)["params"].sum())
    assert (info["architecture"], info["dtype"], info["device"], info["blocks"]) == (
        "BertModel", "float32", "cpu", 2)
