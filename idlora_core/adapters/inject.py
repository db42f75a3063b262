"""Put adapters on a transformers model: find the target linears, create the adapter, replace.

One entry point, `inject_adapters(model, adapter_config)` (wrapped by `model.apply_adapters`), for
all six methods and two baselines:
  idlora     -> `IDLoRALinear` (skeleton rows from `clustering` + `selection`, or from
                `adapter_config.skeletons` when given, so a saved config needs no re-clustering)
  hydralora  -> `HydraLoRALinear`
  lora, dora -> PEFT (`LoraConfig(target_modules=[exact names], use_dora=...)`, `get_peft_model`)
  adalora    -> PEFT (`AdaLoraConfig`, built by `adalora.adalora_config`; r is PEFT's init_r)
  full       -> the chosen linears themselves are unfrozen, nothing else
  head-only  -> no adapter: only the head modules train (targets ignored)
  base       -> nothing trains (the reference point with 0 trainable parameters)
Everything else is frozen, except head modules named in `extra_trainable` (counted apart).
Save / load lives in `io.py`; skeleton resolution in `skeletons.py`; the wrapper and the public
`apply_adapters` / `load_adapters` in `model.py`, which sits on top of this module and `io.py`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from idlora_core.adapters.adalora import adalora_config
from idlora_core.adapters.budget import trainable_params
from idlora_core.adapters.hydralora import HydraLoRALinear
from idlora_core.adapters.idlora import IDLoRALinear
from idlora_core.adapters.report import AdapterReport, LayerRow
from idlora_core.adapters.skeletons import compute_skeleton, resolve_skeletons  # noqa: F401 (re-export)
from idlora_core.config import AdapterConfig, TargetConfig, uses_clusters, uses_heads
from idlora_core.layers import block_index, list_linear_layers
from idlora_core.patterns import matching

ADAPTER_PREFIXES = ("idlora_", "hydralora_")


def _hits(target: TargetConfig, names: list[str]) -> list[str]:
    if target.regex:  # under a time limit (idlora_core.patterns): a user pattern cannot hang us
        return matching(target.pattern, names)
    return [name for name in names if name == target.pattern or name.endswith("." + target.pattern)]


def _close_matches(pattern: str, names: list[str]) -> list[str]:
    suffixes = sorted({".".join(n.split(".")[-j:]) for n in names for j in (1, 2, 3)})
    close = difflib.get_close_matches(pattern, suffixes, n=6, cutoff=0.5)
    return close or sorted({n.split(".")[-1] for n in names})[:8]


def _more_specific(targets: list[TargetConfig], i: int, j: int, name: str) -> int:
    """Of two suffix targets matching one layer, the longer suffix wins ('attention.output.dense'
    over 'output.dense'); any other overlap is an error."""
    a, b = targets[i], targets[j]
    if not a.regex and not b.regex and len(a.pattern) != len(b.pattern):
        return i if len(a.pattern) > len(b.pattern) else j
    raise ValueError(
        f"layer {name!r} is matched by targets {i} and {j} ({a.pattern!r} and {b.pattern!r}); "
        "make the patterns disjoint"
    )


def resolve_targets(model: nn.Module, adapter_config: AdapterConfig) -> list[tuple[str, TargetConfig]]:
    """Return (layer name, its target) for every linear layer the config adapts, in model order.

    Raises ValueError naming the pattern (and close matches) when a target matches nothing,
    matches a module that is not an nn.Linear, or when two targets claim the same layer (except
    two suffixes, where the longer one wins: 'output.dense' then means BERT's FFN output only).
    """
    linears = {layer.name: layer for layer in list_linear_layers(model)}
    if not linears:
        raise ValueError("the model has no nn.Linear layers to adapt")
    claimed: dict[str, int] = {}
    for i, target in enumerate(adapter_config.targets):
        hits = _hits(target, [name for name, _ in model.named_modules() if name])
        not_linear = [name for name in hits if name not in linears]
        kind = "regex" if target.regex else "pattern"
        if not_linear:
            example = model.get_submodule(not_linear[0])
            raise ValueError(
                f"target {kind} {target.pattern!r} matches {not_linear[0]!r}, a "
                f"{type(example).__name__}, not an nn.Linear; close linear layers: "
                f"{', '.join(_close_matches(target.pattern, list(linears)))}"
            )
        if target.layers is not None:
            wanted = set(target.layers)
            hits = [name for name in hits if linears[name].block in wanted]
        if not hits:
            where = f" in blocks {target.layers}" if target.layers is not None else ""
            raise ValueError(
                f"target {kind} {target.pattern!r} matches no linear layer{where}; close matches: "
                f"{', '.join(_close_matches(target.pattern, list(linears)))}"
            )
        for name in hits:
            if name in claimed:
                claimed[name] = _more_specific(adapter_config.targets, claimed[name], i, name)
            else:
                claimed[name] = i
    order = {name: j for j, name in enumerate(linears)}
    return [(name, adapter_config.targets[i]) for name, i in sorted(claimed.items(), key=lambda kv: order[kv[0]])]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def head_module_names(model: nn.Module, extra_trainable: Sequence[str], targets: set[str]) -> list[str]:
    """Return the names of the outermost modules named (or ending with) one of `extra_trainable`,
    leaving out adapted target layers."""
    heads = []
    for name, _ in model.named_modules():
        if name and name not in targets and any(name == h or name.endswith("." + h) for h in extra_trainable):
            if not any(name.startswith(h + ".") for h in heads):
                heads.append(name)
    return heads


def _unwrap(model: nn.Module) -> nn.Module:
    """Return the transformers model inside a PEFT wrapper or an AdaptedModel (else the model)."""
    from peft import PeftModel

    if is_adapted(model):
        return model.unwrapped
    return model.base_model.model if isinstance(model, PeftModel) else model


PEFT_METHODS = ("lora", "dora", "adalora")  # built by PEFT, saved with save_pretrained


def _apply_peft(model, targets, adapter_config, adapter_name, heads):
    from peft import LoraConfig, get_peft_model

    if adapter_config.method == "adalora":
        return get_peft_model(model, adalora_config(targets, heads), adapter_name=adapter_name)
    dropouts = {t.dropout for _, t in targets}
    if len(dropouts) > 1:
        raise ValueError(f"PEFT LoRA/DoRA takes one dropout for all targets, got {sorted(dropouts)}")
    first = targets[0][1]
    config = LoraConfig(
        target_modules=[name for name, _ in targets],
        r=first.r,
        lora_alpha=first.alpha,
        lora_dropout=first.dropout,
        use_dora=adapter_config.method == "dora",
        rank_pattern={f"^{re.escape(n)}$": t.r for n, t in targets if t.r != first.r},
        alpha_pattern={f"^{re.escape(n)}$": t.alpha for n, t in targets if t.alpha != first.alpha},
        modules_to_save=heads or None,
        bias="none",
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def is_adapted(model: object) -> bool:
    """True for what `apply_adapters` / `load_adapters` return (an AdaptedModel, told apart by its
    resolved `adapter_config` so that this module need not import the class that imports it)."""
    return isinstance(getattr(model, "adapter_config", None), AdapterConfig) and hasattr(model, "module")


def inject_adapters(
    model: nn.Module,
    adapter_config: AdapterConfig,
    *,
    adapter_name: str = "default",
    extra_trainable: Sequence[str] = ("classifier", "score"),
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = True,
) -> tuple[nn.Module, AdapterConfig, AdapterReport]:
    """Adapt `model` IN PLACE (deep-copy it first to keep the original) and return its three parts:
    the model that runs (a `peft.PeftModel` for lora / dora / adalora), the config with resolved ID-LoRA
    skeletons and the `AdapterReport`. `idlora_core.adapters.model.apply_adapters` wraps them in
    an `AdaptedModel`.

    Every parameter is frozen except the adapters (or, for `full`, the target layers) and the
    head modules whose names end with one of `extra_trainable`; the head is reported apart as
    `head_trainable`. `adapter_name` is used by PEFT methods only. `progress(done, total,
    message)` is called after each ID-LoRA layer's skeleton is resolved; `cache` reuses
    skeletons clustered before for the same weight and parameters (`cached/skeletons/`).
    Configuration errors are raised before the model is touched.
    """
    base_params = sum(p.numel() for p in model.parameters())
    if adapter_config.method in ("head-only", "base"):
        model, report = _apply_baseline(model, adapter_config.method, extra_trainable, base_params)
        return model, adapter_config, report
    targets = resolve_targets(model, adapter_config)
    names = {name for name, _ in targets}
    heads = head_module_names(model, extra_trainable, names)
    method = adapter_config.method
    skeletons: dict[str, list[list[int]]] = {}
    if method == "idlora":
        skeletons = resolve_skeletons(model, targets, adapter_config, progress, cache)
    model.requires_grad_(False)
    if method in PEFT_METHODS:
        model = _apply_peft(model, targets, adapter_config, adapter_name, heads)
    else:
        for i, (name, target) in enumerate(targets):
            base = model.get_submodule(name)
            if method == "full":
                base.requires_grad_(True)
            elif method == "idlora":
                new = IDLoRALinear(
                    base, skeletons[name], alpha=target.alpha, dropout=target.dropout,
                    rb_splits=target.rb_splits, compile=adapter_config.compile_adapters,
                )
                _replace(model, name, new)
            elif method == "hydralora":
                gen = torch.Generator().manual_seed(adapter_config.seed * 100_003 + i)
                new = HydraLoRALinear(
                    base, r=target.r, num_heads=target.heads, alpha=target.alpha, dropout=target.dropout,
                    generator=gen,
                )
                _replace(model, name, new)
            else:  # pragma: no cover - the config schema only allows the six methods
                raise ValueError(f"unknown method {method!r}")
        for head in heads:
            model.get_submodule(head).requires_grad_(True)
    report = build_report(model, method, targets, heads, base_params)
    report.resolved_skeletons = skeletons
    resolved = adapter_config.model_copy(update={"skeletons": skeletons or None})
    return model, resolved, report


def _apply_baseline(model: nn.Module, method: str, extra_trainable: Sequence[str],
                    base_params: int) -> tuple[nn.Module, AdapterReport]:
    """Freeze `model`; for head-only unfreeze the head modules (targets are ignored)."""
    heads = head_module_names(model, extra_trainable, set())
    if method == "head-only" and not heads:
        raise ValueError(
            f"method 'head-only' trains only the task head, but the model has no module named "
            f"{' or '.join(repr(h) for h in extra_trainable)}; use it with a classification task "
            "(e.g. sentiment), or use 'base' as the reference"
        )
    model.requires_grad_(False)
    if method == "head-only":
        for head in heads:
            model.get_submodule(head).requires_grad_(True)
    return model, build_report(model, method, [], heads, base_params)


def build_report(
    model: nn.Module,
    method: str,
    targets: list[tuple[str, TargetConfig]],
    heads: Sequence[str],
    base_params: int,
) -> AdapterReport:
    """Return the AdapterReport of an adapted `model`, counting from its modules."""
    inner = _unwrap(model)
    rows = []
    for name, target in targets:
        module = inner.get_submodule(name)
        base = getattr(module, "base_layer", module)
        m, n = base.out_features, base.in_features
        trainable = [p for p in module.parameters() if p.requires_grad]
        buffers = [b for bname, b in module.named_buffers() if bname.split(".")[-1].startswith("idlora_")]
        # AdaLoRA's `ranknum`: a frozen one-element parameter per layer (the rank it divides by)
        buffers += [p for pname, p in module.named_parameters() if pname.startswith("ranknum.")]
        frozen = [b for b in buffers if b.is_floating_point()]
        p = target.rb_splits if method == "idlora" else 1
        r = None if method == "full" else target.r
        k = target.k if uses_clusters(method) else None
        n_heads = target.heads if uses_heads(method) else None
        has_bias = base.bias is not None
        rows.append(
            LayerRow(
                name=name, block=block_index(name), m=m, n=n, method=method, r=r, k=k, heads=n_heads,
                p=p, bias=has_bias,
                trainable=sum(t.numel() for t in trainable),
                frozen_adapter_elements=sum(b.numel() for b in frozen),
                formula=trainable_params(method, m, n, target.r, k=k, p=p, heads=n_heads, bias=has_bias),
                adapter_bytes=sum(t.numel() * t.element_size() for t in trainable + buffers),
            )
        )
    # PEFT wraps a head in ModulesToSaveWrapper: only its trainable copy counts.
    head_params = {id(p): p for h in heads for p in inner.get_submodule(h).parameters() if p.requires_grad}
    return AdapterReport(
        method=method,
        rows=rows,
        head_trainable=sum(p.numel() for p in head_params.values()),
        head_modules=list(heads),
        base_params=base_params,
        total_params=sum(p.numel() for p in model.parameters()),
    )


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the trainable tensors of an idlora / hydralora / full model or AdaptedModel
    (adapters and heads), keyed by the inner model's parameter names, detached."""
    model = model.module if is_adapted(model) else model
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def idlora_layers(model: nn.Module) -> dict[str, IDLoRALinear]:
    """Return every IDLoRALinear of `model` by module name."""
    return {name: m for name, m in _unwrap(model).named_modules() if isinstance(m, IDLoRALinear)}
