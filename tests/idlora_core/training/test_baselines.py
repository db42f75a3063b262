"""The two reference methods: head-only (only the task head trains) and base (nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idlora_core.adapters.model import apply_adapters
from idlora_core.config import AdapterConfig, parse_config
from idlora_core.training.run_files import read_metrics
from idlora_core.training.setup import count_params
from idlora_core.training.trainer import run_training
from tests.conftest import make_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


def cfg(model_dir: str, out: Path, method: str, **train) -> dict:
    return {"model": {"name": model_dir}, "adapter": {"method": method, "targets": [{"pattern": "query"}]},
            "tasks": [{"name": "sentiment", "num_train": 32, "num_eval": 16}],
            "train": {"steps": 8, "batch_size": 8, "seq_len": 24, "learning_rate": 0.05, "schedule": "constant",
                      "eval_interval": 0, "save_interval": 0, **train},
            "output_dir": str(out)}


def test_apply_head_only_and_base():
    tiny_bert = make_tiny_bert(num_labels=2)
    head = sum(p.numel() for p in tiny_bert.classifier.parameters())
    adapted = apply_adapters(tiny_bert, AdapterConfig(method="head-only"))
    model, report = adapted.module, adapted.report
    assert adapted.method == "head-only" and model is tiny_bert
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    assert count_params(model)[0] == head == report.totals["trainable_total"] and report.rows == []
    adapted = apply_adapters(model, AdapterConfig(method="base"))
    model, report = adapted.module, adapted.report
    assert count_params(model)[0] == 0 and report.totals["trainable_total"] == 0


def test_head_only_needs_a_head(tiny_llama):
    with pytest.raises(ValueError, match="head-only.*classification task"):
        apply_adapters(tiny_llama, AdapterConfig(method="head-only"))


def test_head_only_trains_and_base_only_evaluates(tiny_bert_dir, tmp_path):
    result = run_training(parse_config(cfg(tiny_bert_dir, tmp_path / "head", "head-only")), progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "head")]
    assert result.state == "finished" and len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
    assert result.final_metrics["trainable_params"] == result.report["totals"]["head_trainable"] > 0
    base = run_training(parse_config(cfg(tiny_bert_dir, tmp_path / "base", "base")), progress=False)
    assert base.state == "finished" and base.steps == 0 and base.final_metrics["trainable_params"] == 0
    rows = read_metrics(tmp_path / "base")
    assert len(rows) == 1 and rows[0]["step"] == 0 and 0 <= rows[0]["eval_sentiment_accuracy"] <= 1
    run = json.loads((tmp_path / "base" / "run.json").read_text())
    assert run["state"] == "finished" and run["final_metrics"]["eval_sentiment_accuracy"] == \
        rows[0]["eval_sentiment_accuracy"]
    # same seed, same untrained head: base equals the head-only run's model before its first step
    again = run_training(parse_config(cfg(tiny_bert_dir, tmp_path / "base2", "base")), progress=False)
    assert again.final_metrics["eval_sentiment_loss"] == base.final_metrics["eval_sentiment_loss"]


def test_head_only_refuses_causal_lm_tasks(tiny_llama_dir, tmp_path):
    data = cfg(tiny_llama_dir, tmp_path / "x", "head-only")
    data["tasks"] = [{"name": "arithmetic", "num_train": 4, "num_eval": 2}]
    with pytest.raises(ValueError, match="use 'base' as the reference"):
        run_training(parse_config(data), progress=False)
