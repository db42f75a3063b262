"""`AdaptedModel`: what `apply_adapters` and `load_adapters` return, the same for all five methods.

`adapted.module` is the model that runs (a `peft.PeftModel` for lora / dora, the transformers model with
`IDLoRALinear` / `HydraLoRALinear` layers in it for idlora / hydralora, the model itself for
full; named like DDP's `.module`, so that a transformers model's own `.model` stays reachable),
`adapted.adapter_config` the resolved `AdapterConfig` (ID-LoRA skeletons filled in),
`adapted.report` the `AdapterReport` and `adapted.run_config` the run config if any, so
`save_adapters(adapted, folder)` needs nothing else. Calling it calls the model; any attribute
it does not define is the model's (`adapted.config`, `adapted.generate`, `adapted.parameters()`).
Methods that return the model itself (`to`, `train`, `eval`, ...) return the wrapper.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from idlora_core.adapters.report import AdapterReport
from idlora_core.config import AdapterConfig, RunConfig

_RETURNS_SELF = ("to", "cpu", "cuda", "train", "eval", "requires_grad_", "float", "half", "bfloat16", "double")


class AdaptedModel:
    """A model with adapters, its AdapterConfig and its AdapterReport (see the module docstring)."""

    def __init__(self, module: nn.Module, adapter_config: AdapterConfig, report: AdapterReport,
                 run_config: RunConfig | None = None):
        self.__dict__.update(module=module, adapter_config=adapter_config, report=report, run_config=run_config)

    @property
    def method(self) -> str:
        """The adapter method: idlora, lora, dora, hydralora or full."""
        return self.adapter_config.method

    @property
    def unwrapped(self) -> nn.Module:
        """The transformers model with the adapter layers in it (inside PEFT's wrapper for
        lora / dora); its module names are the ones the report rows use."""
        from peft import PeftModel

        module = self.module
        return module.base_model.model if isinstance(module, PeftModel) else module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "module" not in self.__dict__:
            raise AttributeError(name)
        attr = getattr(self.__dict__["module"], name)
        if name in _RETURNS_SELF and callable(attr):
            def keep_wrapper(*args: Any, **kwargs: Any) -> AdaptedModel:
                result = attr(*args, **kwargs)
                if result is not self.__dict__["module"]:
                    self.__dict__["module"] = result
                return self
            return keep_wrapper
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["module"], name, value)

    def __repr__(self) -> str:
        totals = self.report.totals
        return (f"AdaptedModel(method={self.method!r}, layers={len(self.report.rows)}, "
                f"trainable={totals['trainable']:,}, module={type(self.module).__name__})")
