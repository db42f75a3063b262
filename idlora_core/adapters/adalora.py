"""AdaLoRA through PEFT: its config from our targets, its step schedule, and the call it needs
after every optimiser step.

AdaLoRA (Zhang et al. 2023, `peft.AdaLoraConfig`) writes each update as `B diag(E) A`
(an SVD-like triplet) and, during training, zeroes the singular values E of the least important
triplets until the average rank is `target_r`, so layers that matter keep more rank. Our
`TargetConfig.r` is PEFT's `init_r`, the rank every layer starts with: it fixes the parameters
that train (`r*(m+n+1)` per layer, counted from the module like every method's) — pruning
zeroes entries of E, it does not free them. `target_r` (default 2/3 of r, PEFT's 8 of 12) is
the average rank kept.

Its schedule (PEFT's three phases) follows the run's optimiser steps: `tinit` = 10 % of them
without pruning, a pruning phase, and `tfinal` = 20 % at the final ranks (the proportions of
PEFT's own docstring example, 10 / 80 / 20 of 100 steps); budget updates every step
(`deltaT` 1), PEFT's defaults otherwise (EMA betas 0.85, orthogonal regulariser weight 0.5).
`apply_adapters` cannot know the run's length: it builds the config for `DEFAULT_TOTAL_STEP`
steps, and `set_total_step` (the Trainer callback `training.callbacks.AdaLoraCallback` calls it
at the start of training with the Trainer's max_steps) sets the real schedule.
`update_and_allocate(model, step)` must run after each optimiser step, before the gradients
are zeroed (PEFT's rule; the callback does it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from idlora_core.config import TargetConfig

DEFAULT_TOTAL_STEP = 1000  # the schedule until set_total_step gives the run's own length
TINIT_SHARE = 0.1  # warm-up share of the steps without pruning
TFINAL_SHARE = 0.2  # final share of the steps at the final ranks


def default_target_r(r: int) -> int:
    """Return the average rank AdaLoRA keeps when `target_r` is not given: 2/3 of r, rounded
    half to even, at least 1 (PEFT's defaults: target_r 8 of init_r 12)."""
    return max(1, round(2 * r / 3))


def target_rank(target: TargetConfig) -> int:
    """Return the target's AdaLoRA final average rank (`target_r`, or `default_target_r(r)`)."""
    return target.target_r if target.target_r is not None else default_target_r(target.r)


def adalora_schedule(total_step: int) -> dict[str, int]:
    """Return PEFT's schedule fields for a run of `total_step` optimiser steps (>= 1):
    total_step, tinit (10 %), tfinal (20 %), deltaT (1); always leaves a pruning phase."""
    if isinstance(total_step, bool) or int(total_step) != total_step or total_step < 1:
        raise ValueError(f"AdaLoRA needs the run's number of optimiser steps (>= 1), got {total_step!r}")
    total_step = int(total_step)
    return {"total_step": total_step, "tinit": int(total_step * TINIT_SHARE),
            "tfinal": int(total_step * TFINAL_SHARE), "deltaT": 1}


def adalora_config(targets: Sequence[tuple[str, TargetConfig]], heads: Sequence[str],
                   total_step: int = DEFAULT_TOTAL_STEP) -> Any:
    """Return the `peft.AdaLoraConfig` for the resolved (layer name, target) pairs, with the
    `heads` as `modules_to_save`. PEFT's AdaLoRA takes one init_r, target_r, alpha and dropout
    for all layers (its rank_pattern is the pruning mask, not per-layer ranks): targets that
    differ in them raise ValueError naming the values."""
    from peft import AdaLoraConfig

    values = {name: sorted({f(t) for _, t in targets})
              for name, f in (("r", lambda t: t.r), ("target_r", target_rank),
                              ("alpha", lambda t: t.alpha), ("dropout", lambda t: t.dropout))}
    mixed = {name: v for name, v in values.items() if len(v) > 1}
    if mixed:
        shown = "; ".join(f"{name} {v}" for name, v in mixed.items())
        raise ValueError(f"PEFT's AdaLoRA takes one r, target_r, alpha and dropout for all targets, "
                         f"got {shown}; give every target the same values")
    first = targets[0][1]
    return AdaLoraConfig(
        target_modules=[name for name, _ in targets],
        init_r=first.r,
        target_r=target_rank(first),
        lora_alpha=first.alpha,
        lora_dropout=first.dropout,
        modules_to_save=list(heads) or None,
        bias="none",
        **adalora_schedule(total_step),
    )


def adalora_tuner(model: nn.Module) -> Any:
    """Return the `peft.AdaLoraModel` inside `model` (an AdaptedModel, a PeftModel or the tuner
    itself), or None when `model` holds no AdaLoRA."""
    from peft.tuners.adalora import AdaLoraModel

    for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None),
                      getattr(getattr(model, "module", None), "base_model", None)):
        if isinstance(candidate, AdaLoraModel):
            return candidate
    return None


def _tuner(model: nn.Module) -> Any:
    tuner = adalora_tuner(model)
    if tuner is None:
        raise ValueError(f"{type(model).__name__} holds no AdaLoRA adapter (method 'adalora')")
    return tuner


def set_total_step(model: nn.Module, total_step: int) -> dict[str, int]:
    """Set the AdaLoRA schedule of `model` for a run of `total_step` optimiser steps (its saved
    adapter_config.json then holds the same) and return the schedule fields."""
    tuner = _tuner(model)
    schedule = adalora_schedule(total_step)
    config = tuner.peft_config[tuner.trainable_adapter_name]
    for name, value in schedule.items():
        setattr(config, name, value)
    return schedule


def update_and_allocate(model: nn.Module, global_step: int) -> None:
    """Run AdaLoRA's budget step for `global_step` (0-based: the optimiser step just taken):
    update the importance scores from the gradients and zero the pruned singular values.
    Call it after `optimizer.step()` and before the gradients are zeroed."""
    _tuner(model).update_and_allocate(global_step)


def rank_pattern(model: nn.Module) -> dict[str, list[bool]] | None:
    """Return AdaLoRA's current pruning mask, {lora_E parameter name: kept flags}, or None
    while nothing has been pruned (before the first allocation)."""
    tuner = _tuner(model)
    return tuner.peft_config[tuner.trainable_adapter_name].rank_pattern
