"""The linear-layer table of a model (Model & layers page, notebooks) and a model summary.

Pure functions on a loaded torch model; no Streamlit. The table comes from
`idlora_core.layers.list_linear_layers`; this file only shapes and filters it.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from idlora_core.layers import list_linear_layers

COLUMNS = ["name", "block", "type", "m", "n", "shape", "params", "bias"]


def layer_table(model: nn.Module) -> pd.DataFrame:
    """Return one row per nn.Linear of `model`, in module order.

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
        for layer in list_linear_layers(model)
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


def model_summary(model: nn.Module) -> dict[str, object]:
    """Return architecture, parameter counts, dtype and device of `model`.

    Keys: architecture (class name), model_type, params (total count), trainable (count),
    linear_params (count in nn.Linear layers), dtype (str), device (str), blocks (count or None).
    """
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
