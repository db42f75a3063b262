"""Every method, AdaLoRA included, is in every list the pages and the study read."""

from __future__ import annotations

from app import figures
from app import settings_io as sio
from idlora_core.adapters.budget import BUDGET_METHODS
from idlora_core.config import ALL_METHODS, METHOD_FIELDS, METHODS
from idlora_core.study.defaults import DEFAULT_LEARNING_RATES
from idlora_core.study.grid import USES


def test_every_method_has_a_label_colour_rate_and_grid_entry():
    assert "adalora" in METHODS and set(METHODS) == set(BUDGET_METHODS) == set(METHOD_FIELDS)
    for method in ALL_METHODS:
        assert method in sio.METHOD_LABELS and method in sio.LR_KEYS, method
        assert method in figures.METHOD_COLORS and method in DEFAULT_LEARNING_RATES and method in USES, method
    assert len(set(figures.METHOD_COLORS.values())) == len(figures.METHOD_COLORS)  # told apart
    assert sio.METHOD_LABELS["adalora"] == "AdaLoRA" and DEFAULT_LEARNING_RATES["adalora"] == 3e-2


def test_fine_tune_page_plans_adalora_runs():
    state = dict(sio.DEFAULTS) | {"ft_methods": ["adalora", "lora"], "ft_ranks": [4, 8], "ft_ks": [2, 4]}
    plan = sio.finetune_configs(state, "minilm", "encoder", ["encoder.layer.0.attention.self.query"])
    assert [label for label, _ in plan] == ["LoRA r=4", "LoRA r=8", "AdaLoRA r=4", "AdaLoRA r=8"]
    cfg = plan[3][1]
    assert cfg.adapter.method == "adalora" and cfg.adapter.targets[0].r == 8
    assert cfg.adapter.targets[0].k == 4 and cfg.adapter.targets[0].target_r is None  # defaults: unused
    assert cfg.train.learning_rate == state[sio.LR_KEYS["adalora"]] == 3e-2
