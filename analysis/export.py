"""Resolved ID-LoRA skeleton rows for an exported configuration.

For each target layer: cluster the rows of its weight (min cluster size r) and pick r skeleton
rows per cluster, exactly as `idlora_core.adapters.inject.apply_adapters` does (its `compute_skeleton`).
The result goes into `adapter.skeletons` of the YAML, so a run at scale uses the very rows the
student looked at, without re-clustering. No Streamlit here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idlora_core.config import TargetConfig
from idlora_core.layers import get_linear
from idlora_core.weights import WeightReader

if TYPE_CHECKING:
    from torch import nn


def resolve_skeletons(
    source: WeightReader | nn.Module, targets: list[TargetConfig], seed: int = 0
) -> dict[str, list[list[int]]]:
    """Return {layer name: k lists of r global row indices} for targets naming single layers.

    source: the checkpoint's WeightReader (reads only the targets' weights) or a loaded model.
    Each target's `pattern` must be a full linear-layer name; raises ValueError (with close
    matches) for an unknown name or when k*r exceeds the layer's rows.
    """
    import numpy as np
    import torch

    from idlora_core.adapters.inject import compute_skeleton

    def weight(name: str) -> torch.Tensor:
        if isinstance(source, WeightReader):
            return torch.from_numpy(source.weight(name, dtype=np.float64))
        return get_linear(source, name).weight

    return {t.pattern: compute_skeleton(weight(t.pattern), t, seed) for t in targets}
