"""Runs that cannot fit are refused before any adapter is built (issue 8 #9)."""

from __future__ import annotations

import numpy as np
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
    # the base model: its parameters (loaded already) and its activations at batch x seq_len
    assert est.base_params == sum(p.numel() * p.element_size() for p in tiny_bert.parameters())
    per_token = 2 * (12 * 32 + 2 * 64 + 3 * 4 * 64)  # 2 blocks, hidden 32, MLP 64, 4 heads, seq 64
    assert est.base_activations == 4 * 8 * 64 * per_token
    assert est.needed == est.total - est.base_params
    monkeypatch.setattr(preflight, "available_bytes", lambda device: est.needed - 1)
    with pytest.raises(ResourceError) as info:
        check_run_fits(tiny_bert, _adapter("lora", 8), TRAIN, "cpu")
    message = str(info.value)
    assert "GiB" in message and "batch_size=8 x seq_len=64" in message and "cpu has" in message
    assert "base model" in message
    monkeypatch.setattr(preflight, "available_bytes", lambda device: est.needed)
    assert check_run_fits(tiny_bert, _adapter("lora", 8), TRAIN, "cpu").total == est.total


def test_hydralora_estimate_counts_its_heads(tiny_bert):
    # HydraLoRA with N = 3 heads on 4 layers of 32 x 32: r*n + N*r*m + N*n trainable, x4 states,
    # 4 bytes; activations N*r + N per token (the heads are `heads`, not ID-LoRA's k)
    est = check_run_fits(tiny_bert, _adapter("hydralora", 4, k=3), TRAIN, "cpu")
    assert est.state == 4 * (4 * 32 + 3 * 4 * 32 + 3 * 32) * 4 * 4
    assert est.activations == 4 * 8 * 64 * (3 * 4 + 3) * 4


def test_the_base_models_activations_dominate_a_large_batch(minilm, minilm_weights):
    """Issue 18 #5: MiniLM LoRA at batch_size 4096 passed the adapters-only preflight and grew to
    7.9 GB; counted with the base model it is refused before it is queued."""
    from idlora_core.config import parse_config
    from idlora_core.jobs.limits import LimitError, ServerLimits, check_runs

    params = sum(p.numel() * p.element_size() for p in minilm.model.parameters())
    shapes = {n: tuple(t.shape) for n, t in minilm_weights.linear.items()}
    count = sum(int(np.prod(t.shape)) for t in minilm_weights.tensors.values())
    raw = {"adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 8}]},
           "train": {"batch_size": 4096, "seq_len": 128}}
    big = preflight.estimate_from_headers(parse_config(raw), minilm_weights.config, count, shapes)
    assert abs(big.base_params - params) / params < 1e-3  # the headers' count = the loaded model's bytes
    assert big.base_activations > 50 * big.activations > 0  # the base model, not the adapters
    with pytest.raises(LimitError, match=r"needs about \d+\.\d GB"):
        check_runs([parse_config(raw)], [big.total], ServerLimits(run_memory_gb=8))
    raw["train"]["batch_size"] = 16
    small = preflight.estimate_from_headers(parse_config(raw), minilm_weights.config, count, shapes)
    assert small.total < 1e9 and small.base_activations * 256 == big.base_activations
    live = check_run_fits(minilm.model, parse_config(raw).adapter, parse_config(raw).train, "cpu")
    assert (live.base_params, live.base_activations) == (params, small.base_activations)


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
