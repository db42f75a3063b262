"""Runs that cannot fit are refused before any adapter is built (issue 8 #9)."""

from __future__ import annotations

import pytest

from idlora_core.config import AdapterConfig, TrainConfig, target_for
from idlora_core.training import cli, preflight
from idlora_core.training.preflight import ResourceError, check_run_fits

TRAIN = TrainConfig(batch_size=8, seq_len=64)


def _adapter(method: str, r: int, k: int = 2) -> AdapterConfig:
    # k: ID-LoRA's clusters and HydraLoRA's heads (target_for keeps the one the method uses)
    return AdapterConfig(method=method, targets=[target_for(method, pattern="query", r=r, k=k, heads=k),
                                                 target_for(method, pattern="value", r=r, k=k, heads=k)])


def test_rank_above_the_smaller_side_is_an_error(tiny_bert):
    # tiny BERT: every query/value layer is 32 x 32
    assert check_run_fits(tiny_bert, _adapter("lora", 32), TRAIN, "cpu") is not None
    with pytest.raises(ResourceError, match=r"r=33 exceeds min\(m, n\)=32 of layer .*query \(32 x 32\)"):
        check_run_fits(tiny_bert, _adapter("lora", 33), TRAIN, "cpu")


def test_estimate_matches_the_formulas_and_refuses_past_free_memory(tiny_bert, monkeypatch):
    est = check_run_fits(tiny_bert, _adapter("lora", 8), TRAIN, "cpu")
    layers = 4  # query + value of 2 blocks, each 32 x 32
    # LoRA: r*(m+n) trainable, x4 (weights, grads, 2 AdamW moments), 4 bytes each
    assert est.state == layers * 8 * (32 + 32) * 4 * 4
    assert est.activations == layers * 8 * 64 * 8 * 4  # batch x seq x r fp32 per layer
    monkeypatch.setattr(preflight, "available_bytes", lambda device: est.total - 1)
    with pytest.raises(ResourceError) as info:
        check_run_fits(tiny_bert, _adapter("lora", 8), TRAIN, "cpu")
    message = str(info.value)
    assert "GiB" in message and "batch_size=8 x seq_len=64" in message and "cpu has" in message
    monkeypatch.setattr(preflight, "available_bytes", lambda device: est.total)
    assert check_run_fits(tiny_bert, _adapter("lora", 8), TRAIN, "cpu").total == est.total


def test_hydralora_estimate_counts_its_heads(tiny_bert):
    # HydraLoRA with N = 3 heads on 4 layers of 32 x 32: r*n + N*r*m + N*n trainable, x4 states,
    # 4 bytes; activations N*r + N per token (the heads are `heads`, not ID-LoRA's k)
    est = check_run_fits(tiny_bert, _adapter("hydralora", 4, k=3), TRAIN, "cpu")
    assert est.state == 4 * (4 * 32 + 3 * 4 * 32 + 3 * 32) * 4 * 4
    assert est.activations == 4 * 8 * 64 * (3 * 4 + 3) * 4


def test_cli_refuses_an_oversized_rank_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"adapter: {{method: lora, targets: [{{pattern: query, r: 1000}}]}}\n"
                    f"tasks: [{{name: sentiment, num_train: 8, num_eval: 2}}]\n"
                    f"train: {{steps: 1, batch_size: 2, seq_len: 16}}\n"
                    f"output_dir: {tmp_path / 'run'}\n")
    assert cli.main([str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "r=1000 exceeds min(m, n)=384" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "adapter").exists()
