"""Building the model of a run: device and precision, the task head, the base model in the
run's precision, the adapters, and float32 trainable tensors.

`build_model(config, tasks)` is what `trainer.run_training` and a study worker call; this file
does not train (see `trainer.py`).
"""

from __future__ import annotations

import os

import torch
from transformers import set_seed

from idlora_core.config import RunConfig, TrainConfig
from idlora_core.models import load_model
from idlora_core.tasks import TaskData


def resolve_device(train: TrainConfig) -> tuple[str, str]:
    """Return (device, precision) for `train`: auto = cuda when available, bf16 on a GPU that has it.

    Raises ValueError for cuda without a GPU, or fp16 on the CPU.
    """
    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if train.device == "auto" else train.device
    if device == "cuda" and not cuda:
        raise ValueError("train.device is 'cuda' but no CUDA GPU is available (use auto or cpu)")
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ValueError("train.precision fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
    return device, precision


def model_head(config: RunConfig, tasks: list[TaskData]) -> str:
    """Return the model head the tasks need ('causal-lm' or 'classification'); checks model.head."""
    needed = "classification" if tasks[0].kind == "classification" else "causal-lm"
    if config.model.head not in ("auto", needed):
        raise ValueError(f"model.head is {config.model.head!r} but the tasks need a {needed!r} head")
    if config.adapter.method == "head-only" and needed != "classification":
        raise ValueError("adapter.method 'head-only' trains only a classification head, but these tasks "
                         "need a causal-lm head; use 'base' as the reference for causal-LM tasks")
    return needed


HEAD_MODULES = ("classifier", "score")


def reset_heads(model: torch.nn.Module, seed: int) -> list[str]:
    """Re-initialise the new task-head linears of `model` (N(0, initializer_range) weights, zero bias)
    from a generator seeded with `seed`; return their names. Causal-LM heads are never touched.

    The head then depends on the seed only, not on what the global RNG did while loading, so a
    study worker's copied model and a freshly loaded one start from the same head.
    """
    from idlora_core.adapters.inject import head_module_names

    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    gen = torch.Generator().manual_seed(int(seed))
    names = head_module_names(model, HEAD_MODULES, set())
    for name in names:
        for module in model.get_submodule(name).modules():
            if isinstance(module, torch.nn.Linear):
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                    if module.bias is not None:
                        module.bias.zero_()
    return names


LOAD_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_placement(device: str, precision: str) -> tuple[torch.dtype, str | None]:
    """Return (dtype, device) to load the base model in: the run's precision directly (no
    float32 copy first), and on a GPU straight to this process's card (LOCAL_RANK)."""
    place = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if device == "cuda" else None
    return LOAD_DTYPES[precision], place


def upcast_trainable(model: torch.nn.Module) -> int:
    """Cast every trainable parameter to float32 (optimiser state and updates in full precision
    while the frozen base stays bf16 / fp16); return how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def build_model(config: RunConfig, tasks: list[TaskData], source=None):
    """Return (AdaptedModel, tokenizer, AdapterReport) for a run, seeded for repeatable heads; the
    AdaptedModel carries the run config (`save_adapters(adapted, folder)` saves the whole run)
    and is the nn.Module to train.

    `source(name, head, num_labels, trust_remote_code, dtype=, device=)` may return a fresh
    (model, tokenizer) pair, loaded in that dtype on that device, to adapt (a study worker
    hands out copies of a model it keeps loaded); by default the model is loaded from disk. Either way the head and adapter initialisation depend on the
    seed only.
    """
    from idlora_core.adapters.model import apply_adapters
    from idlora_core.training.preflight import check_run_fits

    head = model_head(config, tasks)
    num_labels = max(tasks[0].num_labels, 2)
    device, precision = resolve_device(config.train)
    dtype, place = load_placement(device, precision)
    if source is None:
        loaded = load_model(config.model.name, head=head, num_labels=num_labels,
                            trust_remote_code=config.model.trust_remote_code, dtype=dtype,
                            device=place)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        model, tokenizer = source(config.model.name, head, num_labels, config.model.trust_remote_code,
                                  dtype=dtype, device=place)
    if tokenizer.pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if head == "classification":
        reset_heads(model, config.train.seed)
    set_seed(config.train.seed)
    check_run_fits(model, config.adapter, config.train, device)
    if config.train.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support "
                             "it; set it to false")
        # non-reentrant: works with a frozen base whose inputs need no grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    adapted = apply_adapters(model, config.adapter, extra_trainable=HEAD_MODULES)
    adapted.run_config = config
    upcast_trainable(adapted)
    return adapted, tokenizer, adapted.report


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter elements of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
