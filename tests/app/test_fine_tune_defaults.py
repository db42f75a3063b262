"""The Fine-tune page's defaults: the page builds exactly the benchmark's runs, on real data;
each default run trains (2 steps, small sizes: the same code path, in seconds); and (slow)
every default run, at full length, reaches the benchmark's accuracy threshold (issue 10).

`bench/finetune_defaults.py` times the same runs; its THRESHOLD (0.80 until it sets one) is
the test accuracy every default run must reach on the default task.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from analysis.layers import filter_layers, layer_table
from app.common import DEFAULTS as PAGE_DEFAULTS
from app.settings_io import ENCODER_TASKS, finetune_configs, init_defaults
from idlora_core.training.run_files import read_metrics
from idlora_core.training.trainer import run_training
from idlora_core.weights import open_weights
from tests.conftest import single_thread

BENCH = Path(__file__).resolve().parents[2] / "bench" / "finetune_defaults.py"


def _bench():
    """Import bench/finetune_defaults.py from its path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_finetune_defaults", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_runs() -> list:
    """(label, RunConfig) of every run the page starts with its default settings on MiniLM."""
    state: dict = {}
    init_defaults(state)
    layers = list(filter_layers(layer_table(open_weights("minilm")),
                                kinds=PAGE_DEFAULTS["layer_kinds"],
                                blocks=PAGE_DEFAULTS["block_range"])["name"])
    return finetune_configs(state, "minilm", "encoder", layers)


def test_page_builds_exactly_the_benchmark_runs():
    runs = _page_runs()
    assert runs == _bench().default_runs()
    assert [label for label, _ in runs] == ["ID-LoRA r=8 k=4", "LoRA r=8"]
    for label, cfg in runs:  # real data: sentiment saturates and would pass any threshold
        assert [t.name for t in cfg.tasks] == [ENCODER_TASKS[0]] == ["rotten_tomatoes"], label


def test_page_defaults_are_the_documented_runs():
    """The values the page's defaults turn into (docs/STUDIES.md, bench/finetune_defaults.py)."""
    runs = dict(_page_runs())
    expected_layers = [f"encoder.layer.{b}.attention.self.{kind}" for b in range(6)
                       for kind in ("query", "value")]  # q and v of every MiniLM block
    for label, method, lr in (("ID-LoRA r=8 k=4", "idlora", 1e-2), ("LoRA r=8", "lora", 3e-3)):
        cfg = runs[label]
        assert cfg.model.name == "minilm" and cfg.adapter.method == method
        assert [t.pattern for t in cfg.adapter.targets] == expected_layers
        assert {(t.r, t.k) for t in cfg.adapter.targets} == {(8, 4)}
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps) == (150, 16, 15)
        assert cfg.train.learning_rate == lr and cfg.train.schedule == "linear"
        (task,) = cfg.tasks
        assert (task.num_train, task.num_eval, task.num_test) == (2000, 500, 1000)
    assert {t.selection for t in runs["ID-LoRA r=8 k=4"].adapter.targets} == {"id"}


def test_every_default_run_trains_two_steps(tmp_path):
    """Each default run, cut to 2 steps on 32 / 16 / 16 examples, trains its adapter on the real
    task and scores validation and test (the slow test below runs the full length)."""
    with single_thread():  # 2 steps: one thread is as fast, and steady on a shared CPU
        runs = _page_runs()
        results = []
        for i, (_, cfg) in enumerate(runs):
            task = cfg.tasks[0].model_copy(update={"num_train": 32, "num_eval": 16, "num_test": 16})
            small = cfg.model_copy(update={
                "output_dir": str(tmp_path / str(i)), "tasks": [task],
                "train": cfg.train.model_copy(update={"steps": 2, "warmup_steps": 0, "save_interval": 0})})
            results.append(run_training(small, progress=False))
    for (label, cfg), result in zip(runs, results, strict=True):
        assert result.state == "finished" and result.steps == 2, (label, result.message)
        rows = read_metrics(result.output_dir)
        assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
        # 12 layers of 384 x 384; ID-LoRA trains m*r + k*r, LoRA r*(m + n); the head 384*2 + 2
        per_layer = 384 * 8 + 4 * 8 if cfg.adapter.method == "idlora" else 8 * (384 + 384)
        totals = result.report["totals"]
        assert (totals["trainable"], totals["head_trainable"]) == (12 * per_layer, 770), label
        for split in ("eval", "test"):
            accuracy = result.final_metrics[f"{split}_rotten_tomatoes_accuracy"]
            assert accuracy * 16 == round(accuracy * 16), (label, split, accuracy)  # of 16 texts


@pytest.mark.slow
def test_every_default_run_reaches_the_threshold(tmp_path):
    threshold = getattr(_bench(), "THRESHOLD", 0.80)
    for i, (label, cfg) in enumerate(_page_runs()):
        result = run_training(cfg.model_copy(update={"output_dir": str(tmp_path / str(i))}),
                              progress=False)
        accuracy = result.final_metrics[f"test_{cfg.tasks[0].name}_accuracy"]
        assert result.state == "finished" and accuracy >= threshold, (label, accuracy)
