"""Resolved ID-LoRA skeleton rows for an exported configuration.

For each target layer: cluster the rows of its weight (min cluster size r) and pick r skeleton
rows per cluster, exactly as `idlora_core.adapters.inject.apply_adapters` does (its `compute_skeleton`).
The result goes into `adapter.skeletons` of the YAML, so a run at scale uses the very rows the
student looked at, without re-clustering. No Streamlit here.
"""

from __future__ import annotations

from torch import nn

from idlora_core.config import TargetConfig
from idlora_core.layers import get_linear


def resolve_skeletons(
    model: nn.Module, targets: list[TargetConfig], seed: int = 0
) -> dict[str, list[list[int]]]:
    """Return {layer name: k lists of r global row indices} for targets naming single layers.

    Each target's `pattern` must be a full linear-layer name of `model`; raises ValueError
    (with close matches) for an unknown name or when k*r exceeds the layer's rows.
    """
    from idlora_core.adapters.inject import compute_skeleton

    return {
        t.pattern: compute_skeleton(get_linear(model, t.pattern).weight, t, seed) for t in targets
    }
