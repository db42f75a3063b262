"""Save adapters to one folder and load them onto a fresh base model.

Folder layout:
  config.yaml                the RunConfig or AdapterConfig given to `save_adapters`, with the
                             resolved ID-LoRA skeleton row indices filled in (`adapter.skeletons`)
  adapter_model.safetensors  idlora / hydralora / full: the trainable tensors (adapters, unfrozen
                             layers, heads) by parameter name, and for ID-LoRA each layer's (k, r)
                             int64 skeleton `<layer>.idlora_skeleton` (no copied rows: A_c x is
                             read from the base output); its metadata `skeleton_rows_sha256` holds
                             per layer the SHA-256 of the rows W0[J] the skeleton reads (rounded
                             to bfloat16, so an fp32 and a bf16 load of one checkpoint agree).
                             lora / dora / adalora: PEFT's own file (AdaLoRA: only the ranks
                             its allocator kept, so a loaded AdaLoRA counts its final ranks)
  adapter_config.json        lora / dora / adalora only: PEFT's config (`save_pretrained`)
Writes go only into `folder`; each file is written to a temporary name, then renamed.

Loading checks what it reads: a missing, empty or truncated weights file, a config that does not
parse, NaN / inf in any tensor, and (ID-LoRA) a skeleton that differs from the saved one or rows
of the base model that differ from the saved hash (another base model, duplicated, swapped or
re-derived rows) are each one `AdapterLoadError` line naming the file; nothing loads silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from idlora_core.adapters.inject import (
    PEFT_METHODS,
    adapter_state_dict,
    build_report,
    head_module_names,
    idlora_layers,
    inject_adapters,
    is_adapted,
    resolve_targets,
)
from idlora_core.adapters.report import AdapterReport
from idlora_core.cache import write_text_atomic
from idlora_core.config import MAX_CONFIG_BYTES, AdapterConfig, RunConfig, dumps_config
from idlora_core.safe_yaml import YAMLInputError, safe_load_bounded

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "adapter_model.safetensors"
ROWS_HASH_KEY = "skeleton_rows_sha256"


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be loaded as saved; the message is one line naming the file."""


def skeleton_rows_hash(weight: torch.Tensor, skeleton: torch.Tensor) -> str:
    """Return the hex SHA-256 of the rows W0[J] (in skeleton order, rounded to bfloat16) and J."""
    rows = weight.detach().index_select(0, skeleton.reshape(-1).to(weight.device))
    digest = hashlib.sha256(str(tuple(skeleton.shape)).encode())
    digest.update(skeleton.reshape(-1).cpu().to(torch.int64).numpy().tobytes())
    digest.update(rows.to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, metadata) of a safetensors file; one-line AdapterLoadError when it is
    missing, empty, truncated or holds NaN / inf."""
    if not path.is_file():
        raise AdapterLoadError(f"{path}: adapter weights file is missing")
    if path.stat().st_size == 0:
        raise AdapterLoadError(f"{path}: adapter weights file is empty")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AdapterLoadError(f"{path}: not a readable safetensors file (truncated or corrupt: {reason})") from None
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise AdapterLoadError(f"{path}: tensor {name!r} holds {bad} NaN/inf value(s); the adapter is unusable")
    return tensors, metadata


def _resolved(adapted: nn.Module, run_config: RunConfig | None) -> RunConfig | AdapterConfig:
    """Return the config to save: the run config (if any) with the adapter's resolved config."""
    skeletons = {name: layer.skeleton for name, layer in idlora_layers(adapted).items()}
    adapter = adapted.adapter_config.model_copy(update={"skeletons": skeletons or None})
    run_config = run_config or adapted.run_config
    return adapter if run_config is None else run_config.model_copy(update={"adapter": adapter})


def save_adapters(model: nn.Module, folder: str | Path, *, run_config: RunConfig | None = None) -> Path:
    """Write the adapters of `model` (what `apply_adapters` / `load_adapters` returned) and its
    resolved config to `folder`; return the folder path. With `run_config` (or the model's own
    `run_config`) the whole run config is saved, its `adapter` section replaced by the model's."""
    if not is_adapted(model):
        raise TypeError(f"save_adapters takes the AdaptedModel apply_adapters returned, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resolved = _resolved(model, run_config)
    adapter = resolved.adapter if isinstance(resolved, RunConfig) else resolved
    if adapter.method in PEFT_METHODS:
        model.module.save_pretrained(str(folder))
    else:
        tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
        hashes = {}
        for name, layer in idlora_layers(model).items():
            tensors[f"{name}.idlora_skeleton"] = layer.idlora_skeleton.cpu().contiguous()
            hashes[name] = skeleton_rows_hash(layer.base_layer.weight, layer.idlora_skeleton)
        metadata = {"method": adapter.method}
        if hashes:
            metadata[ROWS_HASH_KEY] = json.dumps(hashes, sort_keys=True)
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
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
    return _read_configs(Path(folder))[0]


def _read_configs(folder: Path) -> tuple[AdapterConfig, RunConfig | None]:
    """Return (AdapterConfig, the whole RunConfig or None when only the adapter part is saved)
    from `folder/config.yaml`, read and validated once; AdapterLoadError names the file."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}: not an adapter folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterLoadError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes, not an adapter config")
    try:
        data = safe_load_bounded(path.read_bytes()) or {}
        if not isinstance(data, dict):
            raise AdapterLoadError(f"{path}: expected a mapping, got {type(data).__name__}")
        if set(data) == {"adapter"}:
            return AdapterConfig.model_validate(data["adapter"]), None
        run_config = RunConfig.model_validate(data)
        return run_config.adapter, run_config
    except YAMLInputError as exc:
        raise AdapterLoadError(f"{path}: not readable YAML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdapterLoadError(
            f"{path}: invalid adapter config at {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def _peft_folder(folder: Path) -> tuple[Path, str]:
    """Return (folder holding adapter_config.json, adapter name): PEFT saves an adapter not
    named 'default' in a subfolder of that name."""
    if (folder / "adapter_config.json").is_file():
        return folder, "default"
    subs = sorted(p.parent for p in folder.glob("*/adapter_config.json"))
    if len(subs) != 1:
        raise FileNotFoundError(f"no single PEFT adapter (adapter_config.json) in {folder}")
    return subs[0], subs[0].name


def load_adapter_parts(
    base_model: nn.Module,
    folder: str | Path,
    *,
    extra_trainable: tuple[str, ...] = ("classifier", "score"),
    is_trainable: bool = True,
) -> tuple[nn.Module, AdapterConfig, AdapterReport, RunConfig | None]:
    """Put the adapters saved in `folder` on `base_model` (modified in place) and return the parts
    of its AdaptedModel: the model that runs, the adapter config, the report and the run config
    (None unless the folder holds a whole run config). The model computes exactly what the saved
    one did; `idlora_core.adapters.model.load_adapters` wraps the parts."""
    folder = Path(folder)
    adapter, run_config = _read_configs(folder)
    if adapter.method in PEFT_METHODS:
        from peft import PeftModel

        base_params = sum(p.numel() for p in base_model.parameters())
        targets = resolve_targets(base_model, adapter)
        heads = head_module_names(base_model, extra_trainable, {n for n, _ in targets})
        where, name = _peft_folder(folder)
        _read_weights(where / "adapter_model.safetensors")  # one-line errors, NaN / inf check
        model = PeftModel.from_pretrained(base_model, str(where), adapter_name=name, is_trainable=is_trainable)
        return model, adapter, build_report(model, adapter.method, targets, heads, base_params), run_config
    path = folder / WEIGHTS_FILE
    saved, metadata = _read_weights(path)
    for name, skeleton in (adapter.skeletons or {}).items():
        stored = saved.get(f"{name}.idlora_skeleton")
        if stored is not None and stored.tolist() != skeleton:
            raise AdapterLoadError(
                f"{path}: the skeleton of {name!r} in {CONFIG_FILE} differs from the saved one "
                "(edited, duplicated, swapped or re-derived rows); refusing to load"
            )
    model, adapter, report = inject_adapters(base_model, adapter, extra_trainable=extra_trainable)
    _verify_skeletons(model, saved, metadata, path)
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
    model.load_state_dict(saved, strict=False)
    if not is_trainable:
        model.requires_grad_(False)
    return model, adapter, report, run_config


def _verify_skeletons(model: nn.Module, saved: dict[str, torch.Tensor], metadata: dict[str, str],
                      path: Path) -> None:
    """Refuse (AdapterLoadError) an ID-LoRA skeleton that differs from the one saved in `path`,
    or base-model rows W0[J] whose hash differs from the saved one; pops the skeleton tensors."""
    layers = idlora_layers(model)
    hashes = json.loads(metadata.get(ROWS_HASH_KEY, "{}"))
    for name, layer in layers.items():
        key = f"{name}.idlora_skeleton"
        stored = saved.pop(key, None)
        if stored is None or name not in hashes:
            raise AdapterLoadError(f"{path}: no saved skeleton for ID-LoRA layer {name!r}; save the adapter again")
        if tuple(stored.shape) != tuple(layer.idlora_skeleton.shape) or not torch.equal(
            stored.to(torch.int64), layer.idlora_skeleton.cpu()
        ):
            raise AdapterLoadError(
                f"{path}: the skeleton of {name!r} in {CONFIG_FILE} differs from the saved one "
                "(edited, duplicated, swapped or re-derived rows); refusing to load"
            )
        if skeleton_rows_hash(layer.base_layer.weight, layer.idlora_skeleton) != hashes[name]:
            raise AdapterLoadError(
                f"{path}: the rows W0[J] of {name!r} in this base model differ from those the adapter "
                "was trained on (another base model or checkpoint); refusing to load"
            )
    extra = sorted(k for k in saved if k.endswith(".idlora_skeleton"))
    if extra:
        raise AdapterLoadError(f"{path}: skeletons for layers this config does not adapt: {extra[:3]}")
