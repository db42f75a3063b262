"""Linear layers of a model: list them, name their kind and block, read one weight.

This file does not load models (see `models.py`) and does not adapt them (see `adapters/`);
reading weights from the files without a model is `weights.py`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a model is handled, not for the weight reader
    from torch import nn

# Linear-layer kinds, from the last component of the module name.
_KINDS = {
    "query": "q", "q_proj": "q", "key": "k", "k_proj": "k", "value": "v", "v_proj": "v",
    "o_proj": "o", "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}



@dataclass(frozen=True)
class LinearLayer:
    """One nn.Linear of a model: its name, block index, kind and shape."""

    name: str
    block: int | None  # transformer block index, None outside the blocks
    kind: str  # q / k / v / o / attn_out / up / down / gate / ffn_in / ffn_out / other
    out_features: int  # m
    in_features: int  # n
    has_bias: bool

    @property
    def params(self) -> int:
        """Number of parameters (weights + bias)."""
        return self.out_features * self.in_features + (self.out_features if self.has_bias else 0)


def block_index(name: str) -> int | None:
    """Return the transformer block index in a module name (layer.3., layers.3., h.3., blocks.3.), or None."""
    match = re.search(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def layer_kind(name: str) -> str:
    """Return the layer kind (q, k, v, o, attn_out, up, down, gate, ffn_in, ffn_out, other) of a module name."""
    last = name.rsplit(".", 1)[-1]
    if last in _KINDS:
        return _KINDS[last]
    if name.endswith("attention.output.dense"):
        return "attn_out"
    if name.endswith("intermediate.dense"):
        return "ffn_in"
    if name.endswith("output.dense"):
        return "ffn_out"
    return "other"


def list_linear_layers(model: nn.Module) -> list[LinearLayer]:
    """Return every nn.Linear of `model` in module order (output heads tied to embeddings excluded)."""
    tied = None
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None and getattr(model.config, "tie_word_embeddings", False):
        tied = out
    from torch import nn

    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not tied:
            layers.append(
                LinearLayer(
                    name=name,
                    block=block_index(name),
                    kind=layer_kind(name),
                    out_features=module.out_features,
                    in_features=module.in_features,
                    has_bias=module.bias is not None,
                )
            )
    return layers


def get_linear(model: nn.Module, name: str) -> nn.Linear:
    """Return the nn.Linear called `name`; raises ValueError naming close matches when there is none."""
    from torch import nn

    modules = dict(model.named_modules())
    module = modules.get(name)
    if isinstance(module, nn.Linear):
        return module
    names = [layer.name for layer in list_linear_layers(model)]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:5]
    reason = "is not a linear layer" if module is not None else "does not exist"
    raise ValueError(f"layer {name!r} {reason}; close matches: {', '.join(close)}")


def get_weight(model: nn.Module, name: str) -> np.ndarray:
    """Return the weight of linear layer `name` as a float64 numpy array of shape (out, in)."""
    import torch

    return get_linear(model, name).weight.detach().to(torch.float64).cpu().numpy().copy()
