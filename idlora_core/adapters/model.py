"""`AdaptedModel`: what `apply_adapters` and `load_adapters` return, the same for all six methods.

An `nn.Module` with one submodule, `module`: the model that runs (a `peft.PeftModel` for
lora / dora / adalora, the transformers model with `IDLoRALinear` / `HydraLoRALinear` layers in it for
idlora / hydralora, the model itself for full; named like DDP's `.module`, so that a
transformers model's own `.model` stays reachable). Besides it: `adapter_config` (the resolved
`AdapterConfig`, ID-LoRA skeletons filled in), `report` (the `AdapterReport`) and `run_config`
(the run config, if any), so `save_adapters(adapted, folder)` needs nothing else.

It is a module like any other: calling it runs `module`; `parameters()`, `to()`, `train()`,
`state_dict()` (keys `module.<name>`, as DDP's) are nn.Module's own. Any attribute it does not
define is the wrapped model's (`adapted.config`, `adapted.generate`). `forward` shows the
transformers model's signature, so `transformers.Trainer` keeps the dataset columns the model
takes: give the Trainer the AdaptedModel itself. PEFT's conveniences: `print_trainable_parameters()`,
`with adapted.disable_adapters():` (the base model's output) and `save_pretrained(folder)` /
`AdaptedModel.from_pretrained(base_model, folder)` (= `save_adapters` / `load_adapters`).
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from idlora_core.adapters.hydralora import HydraLoRALinear
from idlora_core.adapters.idlora import IDLoRALinear
from idlora_core.adapters.inject import inject_adapters
from idlora_core.adapters.io import load_adapter_parts, save_adapters
from idlora_core.adapters.report import AdapterReport
from idlora_core.config import AdapterConfig, RunConfig


def _forward(self: AdaptedModel, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
    if labels is not None:
        kwargs["labels"] = labels
    tuner = getattr(self.module, "base_model", None)
    if self.training and self.adapter_config.method == "adalora" and hasattr(tuner, "trainable_adapter_name"):
        # PeftModel.forward skips the tuner's forward, where AdaLoRA adds its orthogonal
        # regulariser to the loss: call the tuner (training only, and only with an adapter that
        # trains: evaluation and inference-only loads keep the plain loss)
        return tuner(*args, **kwargs)
    return self.module(*args, **kwargs)


class AdaptedModel(nn.Module):
    """A model with adapters, its AdapterConfig and its AdapterReport (see the module docstring)."""

    # `labels` is named so that Trainer (which reads the class's forward) finds the label column.
    forward = _forward

    def __init__(self, module: nn.Module, adapter_config: AdapterConfig, report: AdapterReport,
                 run_config: RunConfig | None = None):
        super().__init__()
        self.module = module
        self.adapter_config = adapter_config
        self.report = report
        self.run_config = run_config
        self._show_signature()

    def _show_signature(self) -> None:
        """Make `self.forward` an instance method with the transformers model's signature (what
        Trainer's remove_unused_columns and loss-kwargs checks inspect); PEFT does the same."""
        try:
            params = list(inspect.signature(self.unwrapped.forward).parameters.values())
        except (TypeError, ValueError, AttributeError):
            return
        fn = types.FunctionType(_forward.__code__, _forward.__globals__, "forward", _forward.__defaults__,
                                _forward.__closure__)
        fn.__kwdefaults__ = _forward.__kwdefaults__
        fn.__doc__ = getattr(type(self.unwrapped).forward, "__doc__", None)
        fn.__signature__ = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])
        self.forward = types.MethodType(fn, self)

    def __setstate__(self, state: dict[str, Any]) -> None:  # pickle, deepcopy
        super().__setstate__(state)
        self._show_signature()

    @property
    def method(self) -> str:
        """The adapter method: idlora, lora, dora, adalora, hydralora or full (or head-only, base)."""
        return self.adapter_config.method

    @property
    def unwrapped(self) -> nn.Module:
        """The transformers model with the adapter layers in it (inside PEFT's wrapper for
        lora / dora / adalora); its module names are the ones the report rows use."""
        from peft import PeftModel

        module = self.module
        return module.base_model.model if isinstance(module, PeftModel) else module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules of the wrapper
        except AttributeError:
            modules = self.__dict__.get("_modules") or {}
            if name.startswith("__") or name == "module" or "module" not in modules:
                raise
            return getattr(modules["module"], name)

    def print_trainable_parameters(self) -> None:
        """Print `trainable params: X || all params: Y || trainable%: Z` (as PEFT does), counted
        from `parameters()`: adapters and trainable heads over every parameter element."""
        params = list(self.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Within this context the model computes what the base model does: every ID-LoRA /
        HydraLoRA layer returns its base layer's output, a PEFT model runs
        `disable_adapter()` (which also swaps in the original heads). Heads trained in place
        (idlora, hydralora, head-only) stay as trained; `full` has no adapter to disable."""
        from peft import PeftModel

        if self.method == "full":
            raise ValueError("method 'full' trains the layers themselves: there is no adapter to "
                             "disable (keep a copy of the base model instead)")
        if isinstance(self.module, PeftModel):
            with self.module.disable_adapter():
                yield
            return
        layers = [m for m in self.module.modules() if isinstance(m, (IDLoRALinear, HydraLoRALinear))]
        before = [m.adapter_disabled for m in layers]
        for m in layers:
            m.adapter_disabled = True
        try:
            yield
        finally:
            for m, flag in zip(layers, before, strict=True):
                m.adapter_disabled = flag

    disable_adapter = disable_adapters  # PEFT's name

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Path:
        """Write the adapters and the resolved config to `folder`: `save_adapters(self, folder)`."""
        return save_adapters(self, folder, **kwargs)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, folder: str | Path, **kwargs: Any) -> AdaptedModel:
        """Put the adapters saved in `folder` on `base_model` (in place): `load_adapters`."""
        return load_adapters(base_model, folder, **kwargs)

    def extra_repr(self) -> str:
        totals = self.report.totals
        return f"method={self.method!r}, layers={len(self.report.rows)}, trainable={totals['trainable']:,}"


def apply_adapters(
    model: nn.Module,
    adapter_config: AdapterConfig,
    *,
    adapter_name: str = "default",
    extra_trainable: Sequence[str] = ("classifier", "score"),
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = True,
) -> AdaptedModel:
    """Adapt `model` IN PLACE (deep-copy it first to keep the original) and return the
    `AdaptedModel` (an nn.Module): the model that runs (`.module`; a `peft.PeftModel` for lora /
    dora), the config with resolved ID-LoRA skeletons (`.adapter_config`) and the `AdapterReport`
    (`.report`). The arguments are `inject.inject_adapters`'s: every parameter is frozen except
    the adapters (for `full`, the target layers) and the heads named in `extra_trainable`;
    `progress(done, total, message)` follows ID-LoRA's skeletons; `cache` reuses them.
    Configuration errors are raised before the model is touched."""
    return AdaptedModel(*inject_adapters(model, adapter_config, adapter_name=adapter_name,
                                         extra_trainable=extra_trainable, progress=progress, cache=cache))


def load_adapters(
    base_model: nn.Module,
    folder: str | Path,
    *,
    extra_trainable: tuple[str, ...] = ("classifier", "score"),
    is_trainable: bool = True,
) -> AdaptedModel:
    """Put the adapters saved in `folder` (by `save_adapters`) on `base_model` (modified in place)
    and return the `AdaptedModel` (its `run_config` set when the folder holds a whole run config).
    The model computes exactly what the saved one did; every check is `io.load_adapter_parts`'s."""
    return AdaptedModel(*load_adapter_parts(base_model, folder, extra_trainable=extra_trainable,
                                            is_trainable=is_trainable))
