"""idlora_core: ID-LoRA and its baselines on transformers models, the analysis maths, training.

The public API, PEFT-like::

    from idlora_core import AdapterConfig, TargetConfig, apply_adapters, save_adapters, load_adapters
    adapted = apply_adapters(model, AdapterConfig(method="idlora", r=8, k=4, target_modules=["q_proj", "v_proj"]))
    # = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=8, k=4), TargetConfig(pattern="v_proj", ...)])
    adapted.print_trainable_parameters()               # an nn.Module: Trainer(model=adapted, ...)
    save_adapters(adapted, "out/adapter")              # weights + resolved config
    again = load_adapters(fresh_base_model, "out/adapter")

Names are imported on first use (PEP 562), so `import idlora_core` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # configuration
    "AdapterConfig": "idlora_core.config",
    "TargetConfig": "idlora_core.config",
    "RunConfig": "idlora_core.config",
    "ConfigError": "idlora_core.config",
    "load_config": "idlora_core.config",
    "save_config": "idlora_core.config",
    # models and layers
    "load_model": "idlora_core.models",
    "LoadedModel": "idlora_core.models",
    "list_linear_layers": "idlora_core.layers",
    "get_weight": "idlora_core.layers",
    # adapters
    "AdaptedModel": "idlora_core.adapters.model",
    "apply_adapters": "idlora_core.adapters.model",
    "save_adapters": "idlora_core.adapters.io",
    "load_adapters": "idlora_core.adapters.model",
    "AdapterLoadError": "idlora_core.adapters.io",
    "AdapterReport": "idlora_core.adapters.report",
    "IDLoRALinear": "idlora_core.adapters.idlora",
    "HydraLoRALinear": "idlora_core.adapters.hydralora",
    "layer_skeletons": "idlora_core.adapters.skeletons",
    "trainable_params": "idlora_core.adapters.budget",
    # linear algebra (no torch)
    "MinSizeKMeans": "idlora_core.linalg.clustering",
    "select_skeleton": "idlora_core.linalg.selection",
    "row_id": "idlora_core.linalg.decomposition",
    # the per-layer budget planner (no torch)
    "Plan": "idlora_core.planner",
    "LayerCurve": "idlora_core.planner",
    "plan_budget": "idlora_core.planner",
    "parse_budget": "idlora_core.planner",
    # training
    "run_training": "idlora_core.training.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'idlora_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
