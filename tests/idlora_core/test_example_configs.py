"""The example configs in configs/ validate, round-trip, and fit their models and tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from idlora_core.adapters.inject import resolve_targets
from idlora_core.config import dumps_config, load_config, loads_config
from idlora_core.tasks import load_tasks
from idlora_core.training.setup import model_head

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_three_examples_ship():
    names = [p.name for p in CONFIGS]
    assert len(names) >= 3
    assert any("minilm" in n for n in names) and sum("smollm2" in n for n in names) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_is_valid(path, minilm, smollm2):
    cfg = load_config(path)
    assert loads_config(dumps_config(cfg)) == cfg
    tasks = load_tasks(cfg.tasks, seed=cfg.train.seed)
    head = model_head(cfg, tasks)
    model = minilm.model if cfg.model.name == "minilm" else smollm2.model
    assert head == ("classification" if cfg.model.name == "minilm" else "causal-lm")
    targets = resolve_targets(model, cfg.adapter)  # every target pattern matches real layers
    assert len(targets) == len(cfg.adapter.targets) * (6 if cfg.model.name == "minilm" else 30)
    assert cfg.output_dir.startswith("runs/")
