"""The linear-layer table of a model (Model & layers page, notebooks) and a model summary.

Pure functions, no Streamlit. The source is a checkpoint's `WeightReader` (headers only, no
weights loaded: the analysis path) or a loaded torch model; the layers come from
`WeightReader.layers()` or `idlora_core.layers.list_linear_layers`; this file only shapes
and filters them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from idlora_core.layers import LinearLayer, list_linear_layers
from idlora_core.weights import WeightReader

if TYPE_CHECKING:
    from torch import nn


def _layers(source: WeightReader | nn.Module) -> list[LinearLayer]:
    return source.layers() if isinstance(source, WeightReader) else list_linear_layers(source)

COLUMNS = ["name", "block", "type", "m", "n", "shape", "params", "bias"]


def layer_table(source: WeightReader | nn.Module) -> pd.DataFrame:
    """Return one row per linear layer of `source` (a WeightReader or a model), in module order.

    Columns: name, block (transformer block index, <NA> outside blocks), type (q/k/v/o/...),
    m (out_features), n (in_features), shape ("m x n"), params (weights + bias, count), bias (bool).
    """
    rows = [
        {
            "name": layer.name,
            "block": layer.block,
            "type": layer.kind,
            "m": layer.out_features,
            "n": layer.in_features,
            "shape": f"{layer.out_features} x {layer.in_features}",
            "params": layer.params,
            "bias": layer.has_bias,
        }
        for layer in _layers(source)
    ]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["block"] = table["block"].astype("Int64")
    return table


def filter_layers(
    table: pd.DataFrame,
    kinds: list[str] | None = None,
    blocks: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Return the rows of `table` whose type is in `kinds` and block lies in `blocks` (inclusive).

    `kinds=None` keeps every type; `blocks=None` keeps every row (also those outside blocks);
    a block range drops rows without a block index.
    """
    keep = pd.Series(True, index=table.index)
    if kinds:
        keep &= table["type"].isin(list(kinds))
    if blocks is not None:
        lo, hi = int(blocks[0]), int(blocks[1])
        keep &= table["block"].between(lo, hi).fillna(False).astype(bool)
    return table[keep].reset_index(drop=True)


def block_span(table: pd.DataFrame) -> tuple[int, int] | None:
    """Return (first, last) block index present in `table`, or None when no layer has a block."""
    blocks = table["block"].dropna()
    if blocks.empty:
        return None
    return int(blocks.min()), int(blocks.max())


def model_summary(source: WeightReader | nn.Module) -> dict[str, object]:
    """Return architecture, parameter counts, dtype and device of a checkpoint or model.

    Keys: architecture (class name), model_type, params (total count), trainable (count),
    linear_params (count in linear layers), dtype (str), device (str: "on disk", not loaded, for
    a WeightReader), blocks (count or None), format ("safetensors" / "gguf"; only for a
    WeightReader).
    """
    if isinstance(source, WeightReader):
        info = source.summary()
        return {"architecture": info["architecture"], "model_type": info["model_type"],
                "params": info["params"], "trainable": 0, "linear_params": info["linear_params"],
                "dtype": info["dtype"], "device": "on disk", "blocks": info["blocks"],
                "format": info["format"]}
    import torch

    model = source
    params = list(model.parameters())
    first = params[0] if params else torch.empty(0)
    table = layer_table(model)
    config = getattr(model, "config", None)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", "") or "",
        "params": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "linear_params": int(table["params"].sum()),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "blocks": getattr(config, "num_hidden_layers", None),
    }
