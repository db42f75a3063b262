"""Save adapters to one folder and load them onto a fresh base model.

Folder layout:
  config.yaml                the RunConfig or AdapterConfig given to `save_adapters`, with the
                             resolved ID-LoRA skeleton row indices filled in (`adapter.skeletons`)
  adapter_model.safetensors  idlora / hydralora / full: the trainable tensors (adapters, unfrozen
                             layers, heads) by parameter name; the frozen A_c are rebuilt from W0
                             and the saved indices. lora / dora: PEFT's own file
  adapter_config.json        lora / dora only: PEFT's config (`save_pretrained`)
Writes go only into `folder`; each file is written to a temporary name, then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from idlora_core.adapters.inject import (
    adapter_state_dict,
    apply_adapters,
    build_report,
    head_module_names,
    idlora_layers,
    resolve_targets,
    unwrap_peft,
)
from idlora_core.adapters.report import AdapterReport
from idlora_core.cache import write_text_atomic
from idlora_core.config import AdapterConfig, RunConfig, dumps_config

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "adapter_model.safetensors"


def _resolved(config: RunConfig | AdapterConfig, model: nn.Module) -> RunConfig | AdapterConfig:
    skeletons = {name: layer.skeleton for name, layer in idlora_layers(model).items()}
    adapter = config.adapter if isinstance(config, RunConfig) else config
    adapter = adapter.model_copy(update={"skeletons": skeletons or None})
    if isinstance(config, RunConfig):
        return config.model_copy(update={"adapter": adapter})
    return adapter


def save_adapters(model: nn.Module, config: RunConfig | AdapterConfig, folder: str | Path) -> Path:
    """Write the adapters of `model` (adapted with `config`) and the resolved config to `folder`;
    return the folder path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resolved = _resolved(config, model)
    adapter = resolved.adapter if isinstance(resolved, RunConfig) else resolved
    if adapter.method in ("lora", "dora"):
        model.save_pretrained(str(folder))
    else:
        tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"method": adapter.method})
        os.replace(tmp, folder / WEIGHTS_FILE)
    if isinstance(resolved, RunConfig):
        text = dumps_config(resolved)
    else:
        text = yaml.safe_dump({"adapter": resolved.model_dump(mode="json")}, sort_keys=False)
    write_text_atomic(folder / CONFIG_FILE, text)
    return folder


def read_adapter_config(folder: str | Path) -> AdapterConfig:
    """Return the AdapterConfig stored in `folder/config.yaml` (a full run config or only its
    `adapter` section)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}: not an adapter folder")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if set(data) == {"adapter"}:
        return AdapterConfig.model_validate(data["adapter"])
    return RunConfig.model_validate(data).adapter


def _peft_folder(folder: Path) -> tuple[Path, str]:
    """Return (folder holding adapter_config.json, adapter name): PEFT saves an adapter not
    named 'default' in a subfolder of that name."""
    if (folder / "adapter_config.json").is_file():
        return folder, "default"
    subs = sorted(p.parent for p in folder.glob("*/adapter_config.json"))
    if len(subs) != 1:
        raise FileNotFoundError(f"no single PEFT adapter (adapter_config.json) in {folder}")
    return subs[0], subs[0].name


def load_adapters(
    base_model: nn.Module,
    folder: str | Path,
    *,
    extra_trainable: tuple[str, ...] = ("classifier", "score"),
    is_trainable: bool = True,
) -> tuple[nn.Module, AdapterReport]:
    """Put the adapters saved in `folder` on `base_model` (modified in place) and return
    (model, report). The model computes exactly what the saved one did."""
    folder = Path(folder)
    adapter = read_adapter_config(folder)
    if adapter.method in ("lora", "dora"):
        from peft import PeftModel

        base_params = sum(p.numel() for p in base_model.parameters())
        targets = resolve_targets(base_model, adapter)
        heads = head_module_names(base_model, extra_trainable, {n for n, _ in targets})
        where, name = _peft_folder(folder)
        model = PeftModel.from_pretrained(base_model, str(where), adapter_name=name, is_trainable=is_trainable)
        return model, build_report(model, adapter.method, targets, heads, base_params)
    model, report = apply_adapters(base_model, adapter, extra_trainable=extra_trainable)
    saved = load_file(str(folder / WEIGHTS_FILE))
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights in {folder} do not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, value in saved.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{name}: saved shape {tuple(value.shape)} != model {tuple(expected[name].shape)}")
    unwrap_peft(model).load_state_dict(saved, strict=False)
    if not is_trainable:
        model.requires_grad_(False)
    return model, report
